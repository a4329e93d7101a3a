"""`train --hierarchy multitask`: an auxiliary head that predicts each image's parent label (its
phylum, its order, ...) from the features the main head sees, trained with an extra loss. The saved
model stays a plain classifier: the head lives in checkpoints only (`<column>_head.safetensors`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from hf_classifier.hierarchy import ParentLabels
from hf_classifier.models.build import AUXILIARY_LOGITS, AuxiliaryHeadHooks, attach_auxiliary_head


class ParentHead:
    """The trainer's `AuxiliaryTask` for a parent level: a head on the model, and the cross-entropy of
    its logits against the label targets summed within each parent, times `weight`."""

    def __init__(self, model: PreTrainedModel, labels: Sequence[str], parents: ParentLabels, weight: float):
        self.head_name = f"{parents.column}_head"
        self.hooks: AuxiliaryHeadHooks = attach_auxiliary_head(model, self.head_name, len(parents.parents))
        self.weight = weight
        # (labels x parents): a label's target (one-hot, smoothed or mixed) @ it = its parent's target.
        self.label_to_parent = nn.functional.one_hot(torch.tensor(parents.indices(labels))).float()

    def loss(self, outputs: Any, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mapping = self.label_to_parent = self.label_to_parent.to(labels.device)  # moved once, kept there
        label_targets = (
            targets if targets.is_floating_point() else nn.functional.one_hot(labels, len(mapping)).float()
        )
        return self.weight * nn.functional.cross_entropy(
            outputs[AUXILIARY_LOGITS].float(), label_targets @ mapping
        )
