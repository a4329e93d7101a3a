"""Recall = true positives / actual positives (support), per class or averaged."""

from hf_classifier.evaluation.metric_modules import _classification


class Recall(_classification.ClassificationScore):
    metric_name = "recall"
    metric_description = "Recall = true positives / actual positives (support)."

    @staticmethod
    def score(true_positive, predicted, support, zero_division):
        return _classification.safe_divide(true_positive, support, zero_division)
