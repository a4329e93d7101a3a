"""Classification metrics through `evaluate`, from metric modules bundled with the package (no Hub)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
from transformers import EvalPrediction

TOP_K = 5


@functools.cache
def load_metric(name: str) -> Any:
    """One of the bundled modules: accuracy, f1, precision, recall, top_k_accuracy."""
    import evaluate

    path = resources.files("hf_classifier.evaluation.metric_modules") / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"No bundled metric {name!r}")
    return evaluate.load(str(path), keep_in_memory=True)


def classification_metrics(logits: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """accuracy, f1_macro, f1_weighted and (with at least 5 classes) top5_accuracy."""
    logits = np.asarray(logits, dtype=np.float32)
    references = np.asarray(references, dtype=np.int64)
    predictions = logits.argmax(axis=-1)
    metrics = {
        "accuracy": load_metric("accuracy").compute(predictions=predictions, references=references)[
            "accuracy"
        ],
        "f1_macro": load_metric("f1").compute(
            predictions=predictions, references=references, average="macro"
        )["f1"],
        "f1_weighted": load_metric("f1").compute(
            predictions=predictions, references=references, average="weighted"
        )["f1"],
    }
    if logits.shape[-1] >= TOP_K:
        metrics[f"top{TOP_K}_accuracy"] = load_metric("top_k_accuracy").compute(
            predictions=logits, references=references, k=TOP_K
        )["top_k_accuracy"]
    return metrics


def cross_entropy(logits: np.ndarray, references: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(references)), np.asarray(references, dtype=np.int64)].mean())


def build_compute_metrics() -> Callable[[EvalPrediction], dict[str, float]]:
    """`Trainer(compute_metrics=...)`: logits and labels of the whole evaluation set -> metrics."""

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, (tuple, list)):  # models that also return hidden states
            logits = logits[0]
        return {
            **classification_metrics(logits, prediction.label_ids),
            "cross_entropy": cross_entropy(logits, prediction.label_ids),
            # Shows that no image was dropped or counted twice when several processes evaluate.
            "num_images": len(prediction.label_ids),
        }

    return compute_metrics
