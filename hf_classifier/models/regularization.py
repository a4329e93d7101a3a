"""Against overfitting and class imbalance: class-weighted loss, a class-balanced sampler, mixup /
cutmix, and an exponential moving average (EMA) of the weights."""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler

ClassWeighting = Literal["none", "balanced", "effective_number"]
CLASS_WEIGHTINGS: tuple[ClassWeighting, ...] = get_args(ClassWeighting)


def class_weights(
    labels: Sequence[int], num_classes: int, method: ClassWeighting = "balanced", beta: float = 0.999
) -> torch.Tensor | None:
    """Loss weights per class, normalised so that they average 1 over the classes.

    - `balanced`: n / (K * n_c), inversely proportional to the class's count (scikit-learn's rule).
    - `effective_number`: (1 - beta) / (1 - beta ** n_c) (Cui et al., CVPR 2019): like `balanced` for
      small classes, but with diminishing returns for large ones, since extra images of a big class
      add less new information.
    A class absent from training gets the weight of a class with one image.
    """
    if method == "none":
        return None
    if method not in CLASS_WEIGHTINGS:
        raise ValueError(f"--class_weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, got {method!r}")
    counts = Counter(labels)
    n = torch.tensor([max(1, counts.get(c, 0)) for c in range(num_classes)], dtype=torch.float64)
    if method == "balanced":
        weights = n.sum() / (num_classes * n)
    else:
        if not 0 < beta < 1:
            raise ValueError(f"--effective_number_beta must be in (0, 1), got {beta}")
        weights = (1 - beta) / (1 - beta**n)
    return (weights * num_classes / weights.sum()).float()


class ClassBalancedSampler(Sampler[int]):
    """Draws `num_samples` indices per epoch with replacement, each class equally likely.

    The draw depends only on (seed, epoch), so every process of a distributed run draws the same
    sequence and Accelerate's batch sharding gives each process its own part of it, with no overlap.
    """

    def __init__(self, labels: Sequence[int], num_samples: int | None = None, seed: int = 0):
        counts = Counter(labels)
        self.weights = torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)
        self.num_samples = num_samples or len(labels)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(
            torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist()
        )

    def __len__(self) -> int:
        return self.num_samples


class Mixer:
    """Mixup (blend two images) and CutMix (paste a box of one image into another), with soft targets.

    Applied to a normalised batch on the device; `lam` comes from Beta(alpha, alpha) and, for CutMix,
    is corrected to the area actually pasted. With both enabled, each batch uses one of them
    (`switch_probability` for CutMix)."""

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        probability: float = 1.0,
        switch_probability: float = 0.5,
    ):
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.probability = probability
        self.switch_probability = switch_probability

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every draw comes from `rng` (training passes one seeded by (seed, step, micro-batch), so a
        resumed run mixes exactly as an uninterrupted one); without it, from a generator seeded by
        torch's global one."""
        if rng is None:
            rng = np.random.default_rng(int(torch.randint(2**62, ())))
        targets = nn.functional.one_hot(labels, self.num_classes).to(pixel_values.dtype)
        if not self.enabled or rng.random() >= self.probability:
            return pixel_values, targets
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or rng.random() < self.switch_probability
        )
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        permutation = torch.from_numpy(rng.permutation(pixel_values.shape[0])).to(pixel_values.device)
        mixed = pixel_values.clone()
        if use_cutmix:
            height, width = pixel_values.shape[-2:]
            cut = math.sqrt(1 - lam)
            box_h, box_w = int(height * cut), int(width * cut)
            cy, cx = int(rng.integers(height)), int(rng.integers(width))
            top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
            left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
            mixed[..., top:bottom, left:right] = pixel_values[permutation][..., top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (height * width)
        else:
            mixed = lam * pixel_values + (1 - lam) * pixel_values[permutation]
        return mixed, lam * targets + (1 - lam) * targets[permutation]


class ModelEMA:
    """An exponential moving average of a model's floating-point weights (buffers are copied).

    The average is kept in fp32 whatever the model's dtype: a model cast to bf16 (DeepSpeed) would
    otherwise round every update away (with decay 0.9999 a bf16 average never moves)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"--ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {
            name: value.detach().to(torch.float32 if value.is_floating_point() else value.dtype, copy=True)
            for name, value in model.state_dict().items()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averages, values = [], []
        for name, value in model.state_dict().items():
            average = self.shadow[name]
            if average.device != value.device:  # once: the copy follows the model onto its device
                average = self.shadow[name] = average.to(value.device)
            if average.dtype.is_floating_point:
                averages.append(average)
                values.append(value.detach().float())  # a cast copy for a bf16/fp16 model: lerp in fp32
            else:
                average.copy_(value)
        if averages:
            torch._foreach_lerp_(averages, values, 1 - self.decay)  # one fused kernel, no host sync

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow, strict=True)

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[None]:
        """Use the averaged weights inside the block, the trained ones after it."""
        trained = {name: value.detach().clone() for name, value in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield
        finally:
            model.load_state_dict(trained, strict=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().cpu().contiguous() for name, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)
