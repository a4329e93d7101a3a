"""Images in, one row per image out: `id, <label>[, <parent>], score[, <label>_2, score_2, ...], error`
(`<parent>`: the coarser label column the model learned, when it learned one).

Inputs are a folder (searched recursively), a CSV listing images, or image files; the inference
engine (`evaluation.inference.classify`) classifies them. A file that cannot be read gets a row with
the reason in `error` instead of stopping the run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hf_classifier.data.resolve import resolve_images
from hf_classifier.evaluation.inference import InferenceOptions, classify, load_predictor
from hf_classifier.io_utils import write_csv
from hf_classifier.training.distributed import is_main_process

logger = logging.getLogger(__name__)


@dataclass
class PredictionSummary:
    output: Path
    rows: int
    errors: int
    label_name: str


# ---------------------------------------------------------------------------------------------
# predict


def predict(
    model: str,
    inputs: list[str],
    output: str | os.PathLike,
    options: InferenceOptions | None = None,
    *,
    image_root: str | None = None,
    image_column: str | None = None,
    id_column: str | None = None,
    top_k: int = 1,
    **overrides: Any,
) -> PredictionSummary:
    """Classify every input image, as `options` say (`overrides`, e.g. `batch_size=8`, replace some of
    them), and write the predictions CSV (atomically). With `distributed`, the processes share the
    images and only the main process writes."""
    predictor = load_predictor(model)
    items = resolve_images(inputs, image_root=image_root, image_column=image_column, id_column=id_column)
    probabilities, errors = classify(
        predictor, [item.source for item in items], options, top_k=max(1, top_k), **overrides
    )
    labels, label_name, parents = predictor.labels, predictor.label_name, predictor.parents
    if not is_main_process():  # the rows went to the main process, which writes them
        return PredictionSummary(output=Path(output), rows=0, errors=0, label_name=label_name)
    top_k = min(top_k, len(labels))

    header = ["id", label_name] + ([parents.column] if parents else []) + ["score"]
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
        if parents:
            row.append(parents.of.get(labels[best[0]], ""))
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
