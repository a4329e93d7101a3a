"""Per-class counting shared by the precision, recall and f1 metric modules."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import datasets
import evaluate
import numpy as np

AVERAGES = ("macro", "weighted", "micro", None)

INPUTS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    average (str or None): "macro" (unweighted mean over classes), "weighted" (mean weighted by
        support), "micro" (from global counts), or None (one value per class). Default "macro".
    labels (list of int, optional): the classes to report, in this order. Default: every label that
        occurs in references or predictions, sorted (as scikit-learn does).
    zero_division (float): the value when a ratio has a zero denominator. Default 0.
Returns:
    a dict with one entry named after the metric: a float, or a list of floats when average is None.
"""


def per_class_counts(
    predictions: Sequence[int], references: Sequence[int], labels: Sequence[int] | None = None
):
    """(true positives, predicted count, support) per class, as float arrays in `labels` order."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    labels = np.union1d(predictions, references) if labels is None else np.asarray(labels)
    true_positive = np.array(
        [np.sum((predictions == c) & (references == c)) for c in labels], dtype=np.float64
    )
    predicted = np.array([np.sum(predictions == c) for c in labels], dtype=np.float64)
    support = np.array([np.sum(references == c) for c in labels], dtype=np.float64)
    return true_positive, predicted, support


def safe_divide(numerator, denominator, zero_division: float) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(numerator.shape, float(zero_division))
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


# score(true_positive, predicted, support, zero_division) -> per-class values
Score = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]


class ClassificationScore(evaluate.Metric):
    """Base of precision / recall / f1: subclasses set `metric_name`, `metric_description` and `score`.

    Metric scripts import this module, not this class: evaluate takes the first Metric class it finds
    in a script as the script's metric.
    """

    metric_name: str
    metric_description: str
    score: Score

    def _info(self):
        return evaluate.MetricInfo(
            description=self.metric_description,
            citation="",
            inputs_description=INPUTS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average="macro", labels=None, zero_division=0.0):
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
        true_positive, predicted, support = per_class_counts(predictions, references, labels)
        score = type(self).score
        if average == "micro":
            values = score(
                true_positive.sum(keepdims=True),
                predicted.sum(keepdims=True),
                support.sum(keepdims=True),
                zero_division,
            )
            return {self.metric_name: float(values[0])}
        values = score(true_positive, predicted, support, zero_division)
        if average is None:
            return {self.metric_name: values.tolist()}
        if average == "macro":
            return {self.metric_name: float(values.mean()) if len(values) else 0.0}
        total = support.sum()
        return {self.metric_name: float((values * support).sum() / total) if total else float(zero_division)}
