"""F1 = 2 * true positives / (predicted positives + actual positives), per class or averaged."""

from hf_classifier.evaluation.metric_modules import _classification


class F1(_classification.ClassificationScore):
    metric_name = "f1"
    metric_description = __doc__
