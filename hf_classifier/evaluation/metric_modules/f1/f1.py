"""F1 = harmonic mean of precision and recall, per class or averaged."""

from hf_classifier.evaluation.metric_modules import _classification


class F1(_classification.ClassificationScore):
    metric_name = "f1"
    metric_description = "F1 = 2 * true positives / (predicted positives + actual positives)."

    @staticmethod
    def score(true_positive, predicted, support, zero_division):
        return _classification.safe_divide(2 * true_positive, predicted + support, zero_division)
