"""Top-k accuracy = examples whose reference is among the k best-scored labels / all examples."""

from hf_classifier.evaluation import metrics
from hf_classifier.evaluation.metric_modules import _classification


class TopKAccuracy(_classification.BundledMetric):
    metric_description = __doc__
    metric_inputs = """
Args:
    predictions (list of list of float): one score (logit or probability) per label for each example.
    references (list of int): true labels.
    k (int): how many of the best-scored labels count. Default 5.
Returns:
    top_k_accuracy (float): between 0 and 1.
"""
    prediction_feature = _classification.SCORES

    def _compute(self, predictions, references, k=metrics.TOP_K):
        return {"top_k_accuracy": metrics.top_k_accuracy(predictions, references, k)}
