"""Accuracy = correct predictions / all predictions."""

from hf_classifier.evaluation import metrics
from hf_classifier.evaluation.metric_modules import _classification


class Accuracy(_classification.BundledMetric):
    metric_description = __doc__
    metric_inputs = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
Returns:
    accuracy (float): between 0 and 1.
"""

    def _compute(self, predictions, references):
        return {"accuracy": metrics.accuracy(predictions, references)}
