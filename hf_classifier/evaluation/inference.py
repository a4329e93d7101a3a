"""From decoded images to label probabilities: one fine-tuned model, or a phylum classifier that routes
each image to the family model of its phylum (`--hierarchy experts`). `predict` and `evaluate` use
either through the same interface."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageClassification

from hf_classifier.models.build import CONFIG_KEY, is_conv_net, load_from_hub, load_image_processor
from hf_classifier.transforms.pipeline import create_normalizer

EXPERTS_FILE = "experts.json"


class ModelPredictor:
    """A fine-tuned `AutoModelForImageClassification` and its image processor."""

    def __init__(self, model: Any, processor: Any):
        self.model = model.eval()
        self.processor = processor
        self.normalize = create_normalizer(processor)
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        extra = getattr(model.config, CONFIG_KEY, {}) or {}
        self.label_name = extra.get("label_name", "label")
        self.phylum_of: dict[str, str] | None = extra.get("phylum_of")
        self.memory_format = torch.contiguous_format

    @classmethod
    def load(cls, path: str | Path) -> ModelPredictor:
        model = load_from_hub(AutoModelForImageClassification.from_pretrained, "model", str(path))
        return cls(model, load_image_processor(str(path)))

    def to(self, device: torch.device) -> ModelPredictor:
        self.model.to(device)
        if is_conv_net(self.model):  # oneDNN and cuDNN both prefer channels_last for convolutions
            self.model.to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.inference_mode()
    def probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 (or already normalised) images -> probabilities over `labels`, float32."""
        pixels = self.normalize(pixel_values).contiguous(memory_format=self.memory_format)
        logits = self.model(pixel_values=pixels).logits
        return logits.float().softmax(dim=-1)


class ExpertsPredictor:
    """A phylum classifier (the router) and one family model per phylum with two or more families;
    a phylum with a single family needs no model. Each image goes to the family model of its most
    likely phylum; its score is p(phylum) x p(family | phylum)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        spec = json.loads((folder / EXPERTS_FILE).read_text(encoding="utf-8"))
        self.router = ModelPredictor.load(folder / spec["router"])
        self.experts = {phylum: ModelPredictor.load(folder / sub) for phylum, sub in spec["experts"].items()}
        self.single_family: dict[str, str] = spec["single_family"]
        self.labels: list[str] = spec["labels"]
        self.label_name: str = spec["label_name"]
        self.phylum_of: dict[str, str] = spec["phylum_of"]
        self.processor = self.router.processor
        index = {label: i for i, label in enumerate(self.labels)}
        # Where each router output lands among `labels`, built once (not per batch): for a phylum with
        # an expert, the columns of its families; for a single-family phylum, that family's column.
        self._columns = {
            phylum: torch.tensor([index[label] for label in expert.labels])
            for phylum, expert in self.experts.items()
        }
        self._single_column = {phylum: index[family] for phylum, family in self.single_family.items()}

    def to(self, device: torch.device) -> ExpertsPredictor:
        self.router.to(device)
        for expert in self.experts.values():
            expert.to(device)
        self._columns = {phylum: columns.to(device) for phylum, columns in self._columns.items()}
        return self

    def num_parameters(self) -> int:
        return self.router.num_parameters() + sum(e.num_parameters() for e in self.experts.values())

    @torch.inference_mode()
    def probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        phylum_probs = self.router.probabilities(pixel_values)
        weight, chosen = phylum_probs.max(dim=-1)
        result = torch.zeros(len(pixel_values), len(self.labels), device=phylum_probs.device)
        # The rows of each phylum: one sort and one read of the counts per batch (a single host
        # synchronisation), instead of a nonzero() per phylum.
        order = chosen.argsort(stable=True)
        counts = torch.bincount(chosen, minlength=len(self.router.labels)).tolist()
        for phylum, rows in zip(self.router.labels, order.split(counts), strict=True):
            if len(rows) == 0:
                continue
            if phylum in self._single_column:
                result[rows, self._single_column[phylum]] = weight[rows]
                continue
            family_probs = self.experts[phylum].probabilities(pixel_values[rows])
            result[rows.unsqueeze(1), self._columns[phylum].unsqueeze(0)] = (
                weight[rows].unsqueeze(1) * family_probs
            )
        return result


Predictor = ModelPredictor | ExpertsPredictor


def load_predictor(path: str | Path) -> Predictor:
    """An experts folder (with experts.json) or a model folder / Hub id."""
    if Path(path, EXPERTS_FILE).is_file():
        return ExpertsPredictor(path)
    return ModelPredictor.load(path)
