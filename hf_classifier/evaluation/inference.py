"""The inference engine: images in, label probabilities out. A predictor is one fine-tuned model, or a
parent classifier that routes each image to the model of its parent label (`--hierarchy experts`);
`classify` decodes images in DataLoader workers with the training eval transform and runs a predictor
over them in batches (bf16 on a GPU), on one process or several. `predict` and `evaluate` both use it."""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import AutoModelForImageClassification

from hf_classifier.data.images import BadImageError, ImageSource
from hf_classifier.evaluation.options import InferenceOptions, Precision
from hf_classifier.hierarchy import ParentLabels
from hf_classifier.models.build import CONFIG_KEY, is_conv_net, load_from_hub, load_image_processor
from hf_classifier.training.distributed import process_state
from hf_classifier.transforms.pipeline import create_normalizer, create_transform, transform_source

EXPERTS_FILE = "experts.json"


class ModelPredictor:
    """A fine-tuned `AutoModelForImageClassification` and its image processor."""

    def __init__(self, model: Any, processor: Any):
        self.model = model.eval()
        self.processor = processor
        self.normalize = create_normalizer(processor)
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        extra = getattr(model.config, CONFIG_KEY, {}) or {}
        self.label_name = extra.get("label_name", "label")
        self.parents = ParentLabels.from_config(extra)
        self.memory_format = torch.contiguous_format

    @classmethod
    def load(cls, path: str | Path) -> ModelPredictor:
        model = load_from_hub(AutoModelForImageClassification.from_pretrained, "model", str(path))
        return cls(model, load_image_processor(str(path)))

    def to(self, device: torch.device) -> ModelPredictor:
        self.model.to(device)
        if is_conv_net(self.model):  # oneDNN and cuDNN both prefer channels_last for convolutions
            self.model.to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.inference_mode()
    def probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 (or already normalised) images -> probabilities over `labels`, float32."""
        pixels = self.normalize(pixel_values).contiguous(memory_format=self.memory_format)
        logits = self.model(pixel_values=pixels).logits
        return logits.float().softmax(dim=-1)


class ExpertsPredictor:
    """A parent classifier (the router) and one model per parent with two or more
    labels; a parent with a single label needs no model. Each image goes to the model of its most
    likely parent; its score is p(parent) x p(label | parent)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        spec = json.loads((folder / EXPERTS_FILE).read_text(encoding="utf-8"))
        self.router = ModelPredictor.load(folder / spec["router"])
        self.experts = {parent: ModelPredictor.load(folder / sub) for parent, sub in spec["experts"].items()}
        self.single_family: dict[str, str] = spec["single_family"]
        self.labels: list[str] = spec["labels"]
        self.label_name: str = spec["label_name"]
        self.parents = ParentLabels.from_config(spec)
        self.processor = self.router.processor
        index = {label: i for i, label in enumerate(self.labels)}
        # Where each router output lands among `labels`, built once (not per batch): for a parent with
        # an expert, the columns of its labels; for a single-label parent, that label's column.
        self._columns = {
            parent: torch.tensor([index[label] for label in expert.labels])
            for parent, expert in self.experts.items()
        }
        self._single_column = {parent: index[label] for parent, label in self.single_family.items()}

    def to(self, device: torch.device) -> ExpertsPredictor:
        self.router.to(device)
        for expert in self.experts.values():
            expert.to(device)
        self._columns = {parent: columns.to(device) for parent, columns in self._columns.items()}
        return self

    def num_parameters(self) -> int:
        return self.router.num_parameters() + sum(e.num_parameters() for e in self.experts.values())

    @torch.inference_mode()
    def probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        parent_probs = self.router.probabilities(pixel_values)
        weight, chosen = parent_probs.max(dim=-1)
        result = torch.zeros(len(pixel_values), len(self.labels), device=parent_probs.device)
        # The rows of each parent: one sort and one read of the counts per batch (a single host
        # synchronisation), instead of a nonzero() per parent.
        order = chosen.argsort(stable=True)
        counts = torch.bincount(chosen, minlength=len(self.router.labels)).tolist()
        for parent, rows in zip(self.router.labels, order.split(counts), strict=True):
            if len(rows) == 0:
                continue
            if parent in self._single_column:
                result[rows, self._single_column[parent]] = weight[rows]
                continue
            label_probs = self.experts[parent].probabilities(pixel_values[rows])
            result[rows.unsqueeze(1), self._columns[parent].unsqueeze(0)] = (
                weight[rows].unsqueeze(1) * label_probs
            )
        return result


Predictor = ModelPredictor | ExpertsPredictor


def load_predictor(path: str | Path) -> Predictor:
    """An experts folder (with experts.json) or a model folder / Hub id."""
    if Path(path, EXPERTS_FILE).is_file():
        return ExpertsPredictor(path)
    return ModelPredictor.load(path)


# ---------------------------------------------------------------------------------------------
# Batched inference: `predict`, `evaluate` and the experts' evaluation all classify through here

COPIES_IN_FLIGHT = 4  # batches whose probabilities are still on their way to the host


class _DecodedImages(Dataset):
    def __init__(self, sources: Sequence[ImageSource], transform: Any):
        self.sources = sources
        self.transform = transform

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return index, transform_source(self.transform, self.sources[index]), ""
        except BadImageError as error:
            return index, None, error.reason


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> dict[str, Any]:
    good = [(i, t) for i, t, _ in items if t is not None]
    return {
        "indices": [i for i, _ in good],
        "pixel_values": torch.stack([t for _, t in good]) if good else None,
        "errors": [(i, e) for i, t, e in items if t is None],
    }


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda was asked for, but no CUDA GPU is available; use --device cpu or auto."
        )
    return torch.device(device)


def inference_autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """`auto`: bf16 on a GPU that has it, fp32 elsewhere. `bf16` on a CPU with AVX512-BF16/AMX runs
    about twice as fast as fp32, at the price of probabilities that differ in the third decimal."""
    if precision == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    else:
        use_bf16 = precision == "bf16"
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def classify(
    predictor: Predictor,
    sources: Sequence[ImageSource],
    options: InferenceOptions | None = None,
    *,
    top_k: int | None = None,
    **overrides: Any,
) -> tuple[np.ndarray, list[str]]:
    """Probabilities over `predictor.labels` for every source (NaN rows for unreadable ones), and the
    reason each unreadable source failed ("" for the others), run as `options` say (`overrides`, e.g.
    `batch_size=8`, replace some of them).

    With `distributed` under `accelerate launch`/`torchrun`, process k classifies images k, k+N,
    ... on its own device, and the main process gets back all the rows, in order: none is dropped or
    counted twice, whatever the remainder of len(sources) / N. Only the main process receives them
    (the others get no rows), and with `top_k` only each row's `top_k` most likely classes are sent:
    the other columns arrive as 0, which leaves the top-k ranking (and so every figure computed from
    it) exactly as in one process."""
    options = replace(options or InferenceOptions(), **overrides)
    state = process_state() if options.distributed else None
    if state is not None and state.num_processes > 1:
        share = Subset(sources, range(state.process_index, len(sources), state.num_processes))
        part, part_errors = classify(
            predictor,
            share,
            options,
            distributed=False,
            device=str(state.device) if options.device == "auto" else options.device,
            progress=options.progress and state.is_main_process,
        )
        gathered = _gather_to_main_process((_top_k_rows(part, top_k), part_errors))
        if not state.is_main_process:
            return np.empty((0, len(predictor.labels)), dtype=np.float32), []
        probabilities = np.full((len(sources), len(predictor.labels)), np.nan, dtype=np.float32)
        errors = [""] * len(sources)
        for rank, (rank_rows, rank_errors) in enumerate(gathered):
            probabilities[rank :: state.num_processes] = _dense_rows(rank_rows, len(predictor.labels))
            errors[rank :: state.num_processes] = rank_errors
        return probabilities, errors
    target = resolve_device(options.device)
    predictor.to(target)
    loader = DataLoader(
        _DecodedImages(sources, create_transform(predictor.processor)),
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=_collate,
        pin_memory=target.type == "cuda",
    )
    probabilities = np.full((len(sources), len(predictor.labels)), np.nan, dtype=np.float32)
    errors = [""] * len(sources)
    autocast = inference_autocast(target, options.precision)
    if options.progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="Classifying", unit="batch")
    # Each batch's probabilities go to the host without waiting (a blocking `.cpu()` per batch
    # would idle a GPU while the copy runs); a copy is read once the batches after it are queued.
    pending: deque[tuple[list[int], torch.Tensor, Any]] = deque()
    for batch in loader:
        for index, reason in batch["errors"]:
            errors[index] = reason
        if batch["pixel_values"] is None:
            continue
        pixels = batch["pixel_values"].to(target, non_blocking=True)
        with autocast:
            probs = predictor.probabilities(pixels)
            if options.tta == "flip":
                probs = (probs + predictor.probabilities(torch.flip(pixels, dims=[-1]))) / 2
        copy = probs.float().to("cpu", non_blocking=target.type == "cuda")
        pending.append((batch["indices"], copy, _copy_done(target)))
        _read_copies(pending, probabilities, keep=COPIES_IN_FLIGHT)
    _read_copies(pending, probabilities, keep=0)
    return probabilities, errors


def _gather_to_main_process(value: Any) -> list[Any]:
    """Every process's `value`, in process order, on the main process only (the others get an empty
    list): only the process that writes receives the rows."""
    state = process_state()
    gathered: list[Any] | None = [None] * state.num_processes if state.is_main_process else None
    torch.distributed.gather_object(value, gathered, dst=0)
    return gathered or []


def _copy_done(device: torch.device) -> Any:
    """A marker of the copy just queued on a GPU (None elsewhere: there the copy is already done)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def _read_copies(pending: deque, probabilities: np.ndarray, keep: int) -> None:
    """Write the oldest copies into `probabilities` until `keep` are left in flight (so few pinned
    host buffers exist at a time), waiting for each to finish if it has not."""
    while len(pending) > keep:
        indices, copy, done = pending.popleft()
        if done is not None:
            done.synchronize()
        probabilities[indices] = copy.numpy()


def _top_k_rows(probabilities: np.ndarray, k: int | None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The whole matrix, or each row's `k` highest probabilities and their columns, ranked as
    `np.argsort(-p, kind="stable")` ranks them (ties keep the lower column first)."""
    if k is None or k >= probabilities.shape[1]:
        return probabilities
    columns = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(probabilities, columns, axis=1), columns.astype(np.int32)


def _dense_rows(rows: np.ndarray | tuple[np.ndarray, np.ndarray], num_labels: int) -> np.ndarray:
    if not isinstance(rows, tuple):
        return rows
    values, columns = rows
    dense = np.zeros((len(values), num_labels), dtype=np.float32)
    np.put_along_axis(dense, columns.astype(np.int64), values, axis=1)
    # An unreadable image's row stays NaN in every column, as in one process.
    dense[np.isnan(values).any(axis=1)] = np.nan
    return dense
