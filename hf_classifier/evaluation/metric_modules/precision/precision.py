"""Precision = true positives / predicted positives, per class or averaged."""

from hf_classifier.evaluation.metric_modules import _classification


class Precision(_classification.ClassificationScore):
    metric_name = "precision"
    metric_description = __doc__
