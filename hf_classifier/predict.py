"""Images in, one row per image out: `id, <label>, score[, <label>_2, score_2, ...], error`.

Inputs are a folder (searched recursively), a CSV listing images, or image files. Images are decoded
in DataLoader workers with the training eval transform and run through the model in batches. A file
that cannot be read gets a row with the reason in `error` instead of stopping the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForImageClassification

from .images import BadImageError, open_image, relative_or_absolute
from .io_utils import write_csv
from .modeling import CONFIG_KEY, load_from_hub, load_image_processor
from .sources import (
    DataSourceError,
    find_id_column,
    image_files_below,
    read_csv_table,
    resolve_image_column,
)
from .transforms import create_normalizer, create_transform

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".tsv")


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


class _ImageFiles(Dataset):
    def __init__(self, inputs: list[PredictionInput], transform: Any):
        self.inputs = inputs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return index, self.transform(open_image(self.inputs[index].source)), ""
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


def load_classifier(model: str) -> tuple[Any, Any]:
    """A fine-tuned model folder (or Hub id) and its image processor."""
    classifier = load_from_hub(AutoModelForImageClassification.from_pretrained, "model", model)
    return classifier, load_image_processor(model)


def label_name_of(model: Any) -> str:
    return getattr(model.config, CONFIG_KEY, {}).get("label_name", "label")


@torch.inference_mode()
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
) -> PredictionSummary:
    """Classify every input image and write the predictions CSV (atomically)."""
    classifier, processor = load_classifier(model)
    items = collect_inputs(inputs, image_root=image_root, image_column=image_column, id_column=id_column)
    target = resolve_device(device)
    classifier.to(target).eval()
    normalize = create_normalizer(processor)
    labels = classifier.config.id2label
    top_k = min(top_k, len(labels))
    label_name = label_name_of(classifier)

    loader = DataLoader(
        _ImageFiles(items, create_transform(processor)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=target.type == "cuda",
    )
    results: list[tuple[list[str], list[float], str]] = [([], [], "")] * len(items)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if target.type == "cuda" else contextlib.nullcontext()
    )
    for batch in loader:
        for index, reason in batch["errors"]:
            results[index] = ([], [], reason)
        if batch["pixel_values"] is None:
            continue
        with autocast:
            logits = classifier(
                pixel_values=normalize(batch["pixel_values"].to(target, non_blocking=True))
            ).logits
        scores, classes = logits.float().softmax(dim=-1).topk(top_k, dim=-1)
        for index, row_scores, row_classes in zip(
            batch["indices"], scores.tolist(), classes.tolist(), strict=True
        ):
            results[index] = ([labels[c] for c in row_classes], row_scores, "")

    header = ["id", label_name, "score"]
    for rank in range(2, top_k + 1):
        header += [f"{label_name}_{rank}", f"score_{rank}"]
    header.append("error")
    rows = []
    for item, (row_labels, row_scores, error) in zip(items, results, strict=True):
        row: list[Any] = [item.id]
        for rank in range(top_k):
            row += [row_labels[rank], f"{row_scores[rank]:.6f}"] if row_labels else ["", ""]
        rows.append(row + [error])
    write_csv(output, header, rows)
    errors = sum(1 for _, _, error in results if error)
    if errors:
        logger.warning(
            "%d of %d images could not be read; their rows carry the reason in 'error'.", errors, len(items)
        )
    return PredictionSummary(output=Path(output), rows=len(rows), errors=errors, label_name=label_name)
