"""The base of the bundled metric modules: evaluate's boilerplate, written once. The figures come from
`hf_classifier.evaluation.metrics`, the functions `Trainer`, `evaluate` and `compare` use."""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np

from hf_classifier.evaluation import metrics

LABEL = datasets.Value("int64")
SCORES = datasets.Sequence(datasets.Value("float32"))
AVERAGES = ("macro", "weighted", "micro", None)

SCORE_INPUTS = """
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


class BundledMetric(evaluate.Metric):
    """Subclasses set `metric_description`, `metric_inputs` (and `prediction_feature` when the
    predictions are scores, not labels) and define `_compute`.

    Metric scripts import this module, not its classes: evaluate takes the first Metric class it finds
    in a script as the script's metric."""

    metric_description: str
    metric_inputs: str
    prediction_feature: Any = LABEL

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.metric_description,
            citation="",
            inputs_description=self.metric_inputs,
            features=datasets.Features({"predictions": self.prediction_feature, "references": LABEL}),
        )


class ClassificationScore(BundledMetric):
    """precision, recall or f1 (`metric_name`, a key of `metrics.PER_CLASS`), per class or averaged."""

    metric_name: str
    metric_inputs = SCORE_INPUTS

    def _compute(self, predictions, references, average="macro", labels=None, zero_division=0.0):
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
        labels = np.union1d(predictions, references) if labels is None else np.asarray(labels)
        position = {label: i for i, label in enumerate(labels.tolist())}

        def positions(values: Any) -> np.ndarray:  # -1 for a label not listed: not counted
            return np.array([position.get(v, -1) for v in np.asarray(values).tolist()], dtype=np.int64)

        counts = metrics.class_counts(positions(predictions), positions(references), len(labels))
        if average == "micro":
            counts = metrics.ClassCounts(*(c.sum(keepdims=True) for c in counts))
        values = metrics.PER_CLASS[self.metric_name](counts, zero_division)
        if average is None:
            return {self.metric_name: values.tolist()}
        if average == "micro":
            return {self.metric_name: float(values[0])}
        if average == "macro":  # every listed class counts, even one that never occurs
            return {self.metric_name: float(values.mean()) if len(values) else 0.0}
        if not counts.support.sum():
            return {self.metric_name: float(zero_division)}
        return {self.metric_name: float(metrics.weighted_average(values, counts))}
