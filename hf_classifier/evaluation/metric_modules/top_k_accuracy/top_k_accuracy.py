"""Top-k accuracy: the share of examples whose true label is among the k highest scores."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-k accuracy = examples whose reference is among the k best-scored labels / all examples."
_INPUTS = """
Args:
    predictions (list of list of float): one score (logit or probability) per label for each example.
    references (list of int): true labels.
    k (int): how many of the best-scored labels count. Default 5.
Returns:
    top_k_accuracy (float): between 0 and 1.
"""


class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, k=5):
        scores, references = np.asarray(predictions, dtype=np.float64), np.asarray(references)
        if len(references) == 0:
            return {"top_k_accuracy": 0.0}
        k = min(k, scores.shape[1])
        # A tie at the k-th score counts as a hit only if the reference scores strictly above the
        # (k+1)-th best, i.e. rank = number of labels scored strictly higher than the reference.
        reference_scores = scores[np.arange(len(references)), references]
        rank = (scores > reference_scores[:, None]).sum(axis=1)
        return {"top_k_accuracy": float((rank < k).mean())}
