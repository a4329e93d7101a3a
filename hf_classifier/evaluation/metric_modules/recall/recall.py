"""Recall = true positives / actual positives (support), per class or averaged."""

from hf_classifier.evaluation.metric_modules import _classification


class Recall(_classification.ClassificationScore):
    metric_name = "recall"
    metric_description = __doc__
