"""The classification metrics, each computed in one place: `Trainer`'s `compute_metrics`, `evaluate`'s
reports and `compare`'s bootstrap use these functions, and so do the `evaluate` modules bundled with the
package (`load_metric`, for code that wants `evaluate`'s interface; they load without the Hub).

Per-class figures come from one count of (true positives, predictions, support) per class."""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
from transformers import EvalPrediction

TOP_K = 5
WEAKEST_CLASSES = 10


class ClassCounts(NamedTuple):
    """Per class: images predicted correctly, images predicted as it, images that are it (support)."""

    true_positive: np.ndarray
    predicted: np.ndarray
    support: np.ndarray


def class_counts(predictions: Any, references: Any, num_classes: int) -> ClassCounts:
    """The counts of classes 0..num_classes-1 (float arrays); labels outside that range are not
    counted. 2-D inputs give one row of counts per row of labels (e.g. bootstrap resamples)."""
    batched = np.ndim(references) > 1
    predicted = np.atleast_2d(np.asarray(predictions, dtype=np.int64))
    true = np.atleast_2d(np.asarray(references, dtype=np.int64))
    # One bincount for every row at once: row i counts into columns i*num_classes and up.
    offsets = np.arange(len(true))[:, None] * num_classes

    def count(labels: np.ndarray, where: np.ndarray) -> np.ndarray:
        counts = np.bincount((labels + offsets)[where], minlength=len(true) * num_classes)
        return counts.reshape(len(true), num_classes).astype(np.float64)

    predicted_listed = (predicted >= 0) & (predicted < num_classes)
    true_listed = (true >= 0) & (true < num_classes)
    counts = ClassCounts(
        count(true, true_listed & (predicted == true)),
        count(predicted, predicted_listed),
        count(true, true_listed),
    )
    return counts if batched else ClassCounts(*(c[0] for c in counts))


def _ratio(numerator: np.ndarray, denominator: np.ndarray, zero_division: float) -> np.ndarray:
    out = np.full(np.shape(numerator), float(zero_division))
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def precision(counts: ClassCounts, zero_division: float = 0.0) -> np.ndarray:
    return _ratio(counts.true_positive, counts.predicted, zero_division)


def recall(counts: ClassCounts, zero_division: float = 0.0) -> np.ndarray:
    return _ratio(counts.true_positive, counts.support, zero_division)


def f1(counts: ClassCounts, zero_division: float = 0.0) -> np.ndarray:
    return _ratio(2 * counts.true_positive, counts.predicted + counts.support, zero_division)


PER_CLASS: dict[str, Callable[[ClassCounts, float], np.ndarray]] = {
    "precision": precision,
    "recall": recall,
    "f1": f1,
}


def macro_average(values: np.ndarray, counts: ClassCounts) -> np.ndarray:
    """The mean of per-class `values` over the classes that occur (in truth or prediction), per row."""
    present = (counts.predicted + counts.support) > 0
    return (values * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def weighted_average(values: np.ndarray, counts: ClassCounts) -> np.ndarray:
    """The mean of per-class `values` weighted by support, per row."""
    total = counts.support.sum(axis=-1)
    return (values * counts.support).sum(axis=-1) / np.maximum(total, 1)


def macro_f1(references: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """Macro-F1 over the classes present in truth or prediction: one value per row of a 2-D batch of
    resamples (an array of one value for 1-D labels)."""
    counts = class_counts(np.atleast_2d(predictions), np.atleast_2d(references), num_classes)
    return macro_average(f1(counts), counts)


def accuracy(predictions: Any, references: Any) -> float:
    predictions, references = np.asarray(predictions), np.asarray(references)
    return float((predictions == references).mean()) if len(references) else 0.0


def top_k_accuracy(scores: Any, references: Any, k: int = TOP_K) -> float:
    """The share of rows whose reference is among the `k` best-scored labels. A tie at the k-th score
    counts as a hit only if fewer than k labels score strictly higher than the reference."""
    scores, references = np.asarray(scores, dtype=np.float64), np.asarray(references, dtype=np.int64)
    if len(references) == 0:
        return 0.0
    reference_scores = scores[np.arange(len(references)), references]
    rank = (scores > reference_scores[:, None]).sum(axis=1)
    return float((rank < min(k, scores.shape[1])).mean())


def classification_metrics(logits: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """accuracy, f1_macro, f1_weighted (over the classes present) and, with at least 5 classes, top5_accuracy."""
    logits = np.asarray(logits, dtype=np.float32)
    references = np.asarray(references, dtype=np.int64)
    predictions = logits.argmax(axis=-1)
    counts = class_counts(predictions, references, logits.shape[-1])
    scores = f1(counts)
    metrics = {
        "accuracy": accuracy(predictions, references),
        "f1_macro": float(macro_average(scores, counts)),
        "f1_weighted": float(weighted_average(scores, counts)),
    }
    if logits.shape[-1] >= TOP_K:
        metrics[f"top{TOP_K}_accuracy"] = top_k_accuracy(logits, references, TOP_K)
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


def weakest_classes(
    per_class: dict[str, dict[str, Any]], count: int = WEAKEST_CLASSES
) -> list[tuple[str, dict[str, Any]]]:
    """The `count` classes with images and the lowest F1 (ties by name), weakest first: (label, its
    figures) from a report's `per_class`."""
    scored = [(label, values) for label, values in per_class.items() if values.get("support", 0) > 0]
    return sorted(scored, key=lambda item: (item[1]["f1"], item[0]))[:count]


@functools.cache
def load_metric(name: str) -> Any:
    """One of the bundled `evaluate` modules: accuracy, f1, precision, recall, top_k_accuracy."""
    import evaluate

    path = resources.files("hf_classifier.evaluation.metric_modules") / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"No bundled metric {name!r}")
    return evaluate.load(str(path), keep_in_memory=True)
