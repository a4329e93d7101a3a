"""Fine-tuning strategies that keep what the pretrained model knows.

- `full`: everything trains from the first step.
- `linear_probe`: only the new head trains.
- `freeze_then_unfreeze`: the head alone for `freeze_epochs`, then everything (the backbone at its lower rate).
- `gradual_unfreeze`: the head alone for `freeze_epochs`, then depth levels are unfrozen from the top
  down, `unfreeze_blocks_per_epoch` levels each epoch (ULMFiT).

Every strategy combines with layer-wise learning-rate decay (the rate at depth i is
`lr * layer_decay ** (top - i)`, with 0 the embeddings, 1..N the blocks and top = N + 1 the final norm)
and a separate head learning rate. The optimizer holds one parameter group per (depth, weight decay)
plus the head, created once; a frozen group has `requires_grad` off and learning rate 0, and when it
is unfrozen it gets its own warmup and cosine (or linear / constant) decay to the end of training.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from torch import nn

from hf_classifier.models.depth import DepthMap

logger = logging.getLogger(__name__)

FinetuneStrategy = Literal["full", "linear_probe", "freeze_then_unfreeze", "gradual_unfreeze"]
STRATEGIES: tuple[FinetuneStrategy, ...] = get_args(FinetuneStrategy)
NEVER = math.inf
# Parameters without weight decay besides biases and norm weights (any tensor of 0 or 1 dimension).
NO_DECAY_NAMES = (
    "position_embeddings",
    "position_embedding",
    "pos_embed",
    "cls_token",
    "mask_token",
    "distillation_token",
    "relative_position_bias_table",
    "layer_scale",
    "lambda_1",
    "lambda_2",
)


def skips_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    """Norms, biases, tokens and position embeddings are not decayed (decay would shrink them toward 0)."""
    return parameter.ndim <= 1 or any(key in name for key in NO_DECAY_NAMES)


@dataclass
class FinetunePlan:
    depth_map: DepthMap
    strategy: FinetuneStrategy = "full"
    learning_rate: float = 5e-5
    head_learning_rate: float | None = None
    layer_decay: float = 1.0
    freeze_epochs: int = 1
    unfreeze_blocks_per_epoch: int | None = None
    num_train_epochs: float = 1.0
    steps_per_epoch: int | None = field(default=None)  # known once the train loader exists

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"--finetune_strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer_decay must be in (0, 1], got {self.layer_decay}")
        if (
            self.strategy in ("freeze_then_unfreeze", "gradual_unfreeze")
            and self.freeze_epochs >= self.num_train_epochs
        ):
            raise ValueError(
                f"--freeze_epochs {self.freeze_epochs} leaves no epoch to train the backbone "
                f"(--num_train_epochs {self.num_train_epochs:g}); lower it or use --finetune_strategy linear_probe."
            )
        if self.strategy == "gradual_unfreeze" and self.unfreeze_blocks_per_epoch is None:
            # Everything is unfrozen halfway through the epochs that follow the head-only phase.
            remaining = max(1, math.ceil((self.num_train_epochs - self.freeze_epochs) / 2))
            self.unfreeze_blocks_per_epoch = math.ceil((self.depth_map.top + 1) / remaining)

    @property
    def freezes(self) -> bool:
        return self.strategy != "full"

    def head_rate(self) -> float:
        return self.head_learning_rate if self.head_learning_rate is not None else self.learning_rate

    def rate_at_depth(self, depth: int) -> float:
        return self.learning_rate * self.layer_decay ** (self.depth_map.top - depth)

    def start_epoch(self, name: str) -> float:
        """The epoch from which parameter `name` trains (`NEVER` for a linear probe's backbone)."""
        if name in self.depth_map.head or self.strategy == "full":
            return 0
        if self.strategy == "linear_probe":
            return NEVER
        if self.strategy == "freeze_then_unfreeze":
            return self.freeze_epochs
        level = self.depth_map.top - self.depth_map.depth[name]  # 0 = top, the first to thaw
        return self.freeze_epochs + level // self.unfreeze_blocks_per_epoch

    def trainable(self, name: str, epoch: int) -> bool:
        return self.start_epoch(name) <= epoch

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """Optimizer groups: the head first (its rate is the one Trainer logs), then the depths from
        the top down, each split by weight decay. Every group records its depth and start epoch."""
        groups: dict[tuple, dict] = {}
        for name, parameter in model.named_parameters():
            is_head = name in self.depth_map.head
            depth = self.depth_map.depth[name]
            decay = 0.0 if skips_weight_decay(name, parameter) else weight_decay
            key = (not is_head, -depth, decay == 0.0)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "names": [],
                    "lr": self.head_rate() if is_head else self.rate_at_depth(depth),
                    "weight_decay": decay,
                    "depth": depth,
                    "is_head": is_head,
                    "start_epoch": self.start_epoch(name),
                }
            groups[key]["params"].append(parameter)
            groups[key]["names"].append(name)
        return [groups[key] for key in sorted(groups)]

    def apply_freezing(self, model: nn.Module, epoch: int) -> list[str]:
        """Set `requires_grad` for `epoch`; return the names that changed."""
        changed = []
        for name, parameter in model.named_parameters():
            trainable = self.trainable(name.removeprefix("module."), epoch)
            if parameter.requires_grad != trainable:
                parameter.requires_grad_(trainable)
                changed.append(name)
        return changed

    def epoch_of_step(self, step: int) -> int:
        return step // self.steps_per_epoch if self.steps_per_epoch else 0

    def lr_lambda(self, start_epoch: float, schedule: str, warmup_steps: int, total_steps: int):
        """The multiplier of a group that starts training at `start_epoch`: 0 before, then its own
        linear warmup and `schedule` decay to the end of training."""

        def multiplier(step: int) -> float:
            if start_epoch == NEVER:
                return 0.0
            if start_epoch > 0 and not self.steps_per_epoch:
                return 0.0  # the scheduler's first call comes before the loader's length is known: step 0
            start = int(start_epoch * self.steps_per_epoch) if start_epoch > 0 else 0
            if step < start:
                return 0.0
            since = step - start
            warmup = min(warmup_steps, max(1, total_steps - start))
            if since < warmup:
                return (since + 1) / warmup
            if schedule in ("constant", "constant_with_warmup"):
                return 1.0
            progress = (since - warmup) / max(1, total_steps - start - warmup)
            progress = min(1.0, progress)
            if schedule == "linear":
                return max(0.0, 1.0 - progress)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        return multiplier


SUPPORTED_SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup")


def describe_plan(plan: FinetunePlan) -> str:
    top = plan.depth_map.top
    rates = ", ".join(
        f"depth {d}: {plan.rate_at_depth(d):.2e}" for d in (0, 1, top - 1, top) if 0 <= d <= top
    )
    text = f"{plan.strategy}: {plan.depth_map.describe()}; head lr {plan.head_rate():.2e}; {rates}"
    if plan.strategy == "gradual_unfreeze":
        text += (
            f"; head only for {plan.freeze_epochs} epoch(s), then {plan.unfreeze_blocks_per_epoch} "
            f"depth level(s) unfrozen per epoch from the top"
        )
    elif plan.strategy == "freeze_then_unfreeze":
        text += f"; head only for {plan.freeze_epochs} epoch(s), then everything"
    return text
