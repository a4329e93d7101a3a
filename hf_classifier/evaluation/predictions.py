"""Images in, one row per image out: `id, <label>[, phylum], score[, <label>_2, score_2, ...], error`.

Inputs are a folder (searched recursively), a CSV listing images, or image files. Images are decoded
in DataLoader workers with the training eval transform and classified in batches (bf16 on a GPU).
A file that cannot be read gets a row with the reason in `error` instead of stopping the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from hf_classifier.data.images import BadImageError, ImageSource, relative_or_absolute
from hf_classifier.data.sources import (
    DataSourceError,
    find_id_column,
    image_files_below,
    read_csv_table,
    resolve_image_column,
)
from hf_classifier.evaluation.inference import Predictor, load_predictor
from hf_classifier.io_utils import write_csv
from hf_classifier.training.distributed import is_main_process, process_state
from hf_classifier.transforms.pipeline import create_transform, transform_source

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".tsv")
TTA_MODES = ("none", "flip")
PRECISIONS = ("auto", "fp32", "bf16")
COPIES_IN_FLIGHT = 4  # batches whose probabilities are still on their way to the host


@dataclass(frozen=True)
class PredictionInput:
    id: str
    source: str  # path of the image


@dataclass
class PredictionSummary:
    output: Path
    rows: int
    errors: int
    label_name: str


def collect_inputs(
    inputs: list[str],
    *,
    image_root: str | None = None,
    image_column: str | None = None,
    id_column: str | None = None,
) -> list[PredictionInput]:
    """Expand folders, CSVs and files into (id, path) pairs, in a stable order."""
    collected: list[PredictionInput] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images, skipped = image_files_below(path)
            if skipped:
                logger.warning(
                    "Ignored %d file(s) in %s that are not images, e.g. %s", len(skipped), path, skipped[0]
                )
            collected.extend(PredictionInput(p.relative_to(path).as_posix(), str(p)) for p in images)
        elif path.suffix.lower() in CSV_SUFFIXES and path.is_file():
            collected.extend(_inputs_from_csv(path, image_root, image_column, id_column))
        else:
            # A missing file still gets a row (with its error), like any unreadable one.
            collected.append(
                PredictionInput(relative_or_absolute(path, image_root) if image_root else item, item)
            )
    if not collected:
        raise DataSourceError(f"No images found in {', '.join(inputs)}.")
    return collected


def _inputs_from_csv(
    path: Path, image_root: str | None, image_column: str | None, id_column: str | None
) -> list[PredictionInput]:
    table = read_csv_table(path)
    image_column = resolve_image_column(table, image_column, path)
    if id_column and id_column not in table:
        raise DataSourceError(
            f"{path} has no column {id_column!r} (--id_column). Columns: {', '.join(table)}."
        )
    id_column = id_column or find_id_column(table)
    root = Path(image_root) if image_root else path.parent
    ids = table[id_column] if id_column else table[image_column]
    return [
        PredictionInput(identifier, str(Path(value) if Path(value).is_absolute() else root / value))
        for identifier, value in zip(ids, table[image_column], strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Batched inference, shared with `evaluate`


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


def inference_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """`auto`: bf16 on a GPU that has it, fp32 elsewhere. `bf16` on a CPU with AVX512-BF16/AMX runs
    about twice as fast as fp32, at the price of probabilities that differ in the third decimal."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
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
    *,
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int = 0,
    tta: str = "none",
    precision: str = "auto",
    progress: bool = False,
    distributed: bool = False,
    top_k: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Probabilities over `predictor.labels` for every source (NaN rows for unreadable ones), and the
    reason each unreadable source failed ("" for the others). `tta="flip"` averages the
    probabilities of the image and its mirror image.

    With `distributed=True` under `accelerate launch`/`torchrun`, process k classifies images k, k+N,
    ... on its own device, and the main process gets back all the rows, in order: none is dropped or
    counted twice, whatever the remainder of len(sources) / N. Only the main process receives them
    (the others get no rows), and with `top_k` only each row's `top_k` most likely classes are sent:
    the other columns arrive as 0, which leaves the top-k ranking (and so every figure computed from
    it) exactly as in one process."""
    if tta not in TTA_MODES:
        raise ValueError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    state = process_state() if distributed else None
    if state is not None and state.num_processes > 1:
        if device == "auto":
            device = str(state.device)
        share = Subset(sources, range(state.process_index, len(sources), state.num_processes))
        part, part_errors = classify(
            predictor,
            share,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            tta=tta,
            precision=precision,
            progress=progress and state.is_main_process,
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
    target = resolve_device(device)
    predictor.to(target)
    loader = DataLoader(
        _DecodedImages(sources, create_transform(predictor.processor)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=target.type == "cuda",
    )
    probabilities = np.full((len(sources), len(predictor.labels)), np.nan, dtype=np.float32)
    errors = [""] * len(sources)
    autocast = inference_autocast(target, precision)
    if progress:
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
            if tta == "flip":
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


# ---------------------------------------------------------------------------------------------
# predict


def predict(
    model: str,
    inputs: list[str],
    output: str | os.PathLike,
    *,
    image_root: str | None = None,
    image_column: str | None = None,
    id_column: str | None = None,
    top_k: int = 1,
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int = 0,
    tta: str = "none",
    precision: str = "auto",
    distributed: bool = False,
) -> PredictionSummary:
    """Classify every input image and write the predictions CSV (atomically). With `distributed`,
    the processes share the images and only the main process writes."""
    predictor = load_predictor(model)
    items = collect_inputs(inputs, image_root=image_root, image_column=image_column, id_column=id_column)
    probabilities, errors = classify(
        predictor,
        [item.source for item in items],
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        tta=tta,
        precision=precision,
        distributed=distributed,
        top_k=max(1, top_k),
    )
    labels, label_name, phylum_of = predictor.labels, predictor.label_name, predictor.phylum_of
    if not is_main_process():  # the rows went to the main process, which writes them
        return PredictionSummary(output=Path(output), rows=0, errors=0, label_name=label_name)
    top_k = min(top_k, len(labels))

    header = ["id", label_name] + (["phylum"] if phylum_of else []) + ["score"]
    for rank in range(2, top_k + 1):
        header += [f"{label_name}_{rank}", f"score_{rank}"]
    header.append("error")
    rows = []
    for item, probs, error in zip(items, probabilities, errors, strict=True):
        if error:
            rows.append([item.id] + [""] * (len(header) - 2) + [error])
            continue
        best = np.argsort(-probs, kind="stable")[:top_k]
        row: list[Any] = [item.id, labels[best[0]]]
        if phylum_of:
            row.append(phylum_of.get(labels[best[0]], ""))
        row.append(f"{probs[best[0]]:.6f}")
        for index in best[1:]:
            row += [labels[index], f"{probs[index]:.6f}"]
        rows.append(row + [""])
    write_csv(output, header, rows)
    failed = sum(1 for error in errors if error)
    if failed:
        logger.warning(
            "%d of %d images could not be read; their rows carry the reason in 'error'.", failed, len(items)
        )
    return PredictionSummary(output=Path(output), rows=len(rows), errors=failed, label_name=label_name)
