"""Precision = true positives / predicted positives, per class or averaged."""

from hf_classifier.evaluation.metric_modules import _classification


class Precision(_classification.ClassificationScore):
    metric_name = "precision"
    metric_description = "Precision = true positives / predicted positives."

    @staticmethod
    def score(true_positive, predicted, support, zero_division):
        return _classification.safe_divide(true_positive, predicted, zero_division)
