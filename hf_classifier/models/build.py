"""One `build_model` for every architecture: a pretrained checkpoint with its head replaced for our
labels (or a random initialisation from its config), plus the checkpoint's image processor."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel
from transformers.utils import ModelOutput

from hf_classifier.hub.offline import (
    HubUnavailableError,
    is_local_path,
    unavailable_message,
    use_local_files_only,
)
from hf_classifier.models.depth import AUXILIARY_HEADS, find_classifier

logger = logging.getLogger(__name__)

# Our own entries in config.json (label column name, label hierarchy, ...).
CONFIG_KEY = "hf_classifier"


def load_image_processor(name_or_path: str, **hub_kwargs: Any) -> Any:
    """The checkpoint's image processor (PIL backend when torchvision is absent)."""
    try:
        return load_from_hub(
            AutoImageProcessor.from_pretrained, "image processor", name_or_path, **hub_kwargs
        )
    except (OSError, ValueError) as error:
        if isinstance(error, HubUnavailableError):
            raise
        raise OSError(
            f"No image processor in {name_or_path} (preprocessor_config.json): {error}. "
            "Pass --image_processor_name with a checkpoint that has one."
        ) from error


def build_model(
    checkpoint: str,
    labels: list[str],
    *,
    from_config: bool = False,
    drop_path_rate: float | None = None,
    extra_config: dict[str, Any] | None = None,
    **hub_kwargs: Any,
) -> PreTrainedModel:
    """An `AutoModelForImageClassification` for `labels`.

    Pretrained weights are kept everywhere but the classification head, which is re-initialised
    whenever the checkpoint's label set differs from `labels` (even when the sizes happen to match).
    `from_config` builds random weights from the checkpoint's config instead (tests, quickstart).
    `drop_path_rate` sets stochastic depth where the architecture has it, and refuses where it has not.
    """
    id2label = dict(enumerate(labels))
    label2id = {label: index for index, label in id2label.items()}
    config = load_from_hub(AutoConfig.from_pretrained, "model config", checkpoint, **hub_kwargs)
    same_labels = [config.id2label[i] for i in sorted(config.id2label)] == list(labels)
    if drop_path_rate is not None:
        set_drop_path_rate(config, drop_path_rate)
    config.id2label, config.label2id = id2label, label2id
    if from_config:
        if getattr(config, "architectures", None) is None:
            config.architectures = []  # from_config iterates it (fails on None for e.g. DeiT in transformers 5)
        model = AutoModelForImageClassification.from_config(
            config, trust_remote_code=hub_kwargs.get("trust_remote_code", False)
        )
    else:
        model = load_from_hub(
            AutoModelForImageClassification.from_pretrained,
            "model",
            checkpoint,
            config=config,
            ignore_mismatched_sizes=True,  # the head: checked and re-initialised below
            **hub_kwargs,
        )
        if not same_labels:
            head = find_classifier(model, len(labels))
            reset_parameters(model, head)
            logger.info(
                "Replaced the %s head of %s with a new one for %d classes.",
                type(head).__name__,
                checkpoint,
                len(labels),
            )
    if extra_config:
        setattr(model.config, CONFIG_KEY, {**getattr(model.config, CONFIG_KEY, {}), **extra_config})
    return model


# Config attributes that hold the stochastic-depth rate, by architecture family.
DROP_PATH_ATTRIBUTES = ("drop_path_rate", "drop_connect_rate", "stochastic_depth_rate")


def set_drop_path_rate(config: Any, rate: float) -> None:
    if not 0 <= rate < 1:
        raise ValueError(f"--drop_path_rate must be in [0, 1), got {rate}")
    for attribute in DROP_PATH_ATTRIBUTES:
        if hasattr(config, attribute):
            setattr(config, attribute, rate)
            return
    raise ValueError(
        f"--drop_path_rate: {config.model_type} models have no stochastic depth "
        f"(their config has none of {', '.join(DROP_PATH_ATTRIBUTES)}); leave it out for this architecture."
    )


def load_saved_weights(model: PreTrainedModel, folder: str) -> None:
    """Load the weights saved in `folder` (a checkpoint) into `model`, in place.

    Goes through `from_pretrained`, which maps saved key names to in-memory ones: transformers 5
    saves ViT, Swin, DINOv2 and BEiT under their legacy names, so the plain `load_state_dict` that
    Trainer uses for resuming and for the best model matches no key and silently loads nothing.
    """
    reloaded = type(model).from_pretrained(folder, config=model.config, dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(reloaded.state_dict(), strict=False)
    # Only parameters deliberately left out of saved files (an auxiliary head) may be missing.
    not_saved = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    if unexpected or set(missing) - not_saved:
        raise RuntimeError(
            f"The weights in {folder} do not match the model: missing {sorted(set(missing) - not_saved)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}."
        )


def is_conv_net(model: nn.Module) -> bool:
    """Convolutions beyond a patch embedding: channels_last helps these."""
    return sum(isinstance(module, nn.Conv2d) for module in model.modules()) > 2


AUXILIARY_LOGITS = "auxiliary_logits"


class AuxiliaryHeadHooks:
    """Runs an auxiliary head inside the model's own forward pass, in training mode.

    A hook on the classification layer feeds the head the pooled features the main head sees (inside
    the same autocast region, so both heads compute in one dtype), and a hook on the model adds the
    result to its outputs as `auxiliary_logits`. Being part of the forward and of its outputs is what
    lets DDP (with `find_unused_parameters`) and FSDP account for the head's parameters. In evaluation
    mode nothing is added, so the outputs (and the metrics) stay those of a plain classifier.
    """

    def __init__(self, model: nn.Module, classifier: nn.Module, head: nn.Module):
        self.head = head
        self._logits: torch.Tensor | None = None
        self.handles = [
            classifier.register_forward_pre_hook(self._run_head),
            model.register_forward_hook(self._add_to_outputs),
        ]

    def _run_head(self, module: nn.Module, inputs: tuple) -> None:
        if module.training:
            features = inputs[0]
            # A 1x1-conv classifier sees (N, C, 1, 1); the head is a Linear.
            self._logits = self.head(features.flatten(1) if features.ndim > 2 else features)

    def _add_to_outputs(self, _model: nn.Module, _inputs: tuple, outputs: Any) -> Any:
        logits, self._logits = self._logits, None  # not kept alive past the forward
        if logits is None or not isinstance(outputs, ModelOutput):
            return outputs
        return _with_auxiliary_logits(type(outputs))(**outputs, **{AUXILIARY_LOGITS: logits})

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# The model's output class with an `auxiliary_logits` field added, per output class. A new ModelOutput
# dataclass (not an extra key on the old one): DDP rebuilds outputs from their fields (pytree).
_OUTPUTS_WITH_AUXILIARY: dict[type, type] = {}


def _with_auxiliary_logits(output_type: type) -> type:
    if output_type not in _OUTPUTS_WITH_AUXILIARY:
        _OUTPUTS_WITH_AUXILIARY[output_type] = dataclasses.make_dataclass(
            f"{output_type.__name__}WithAuxiliary",
            [(AUXILIARY_LOGITS, torch.Tensor | None, dataclasses.field(default=None))],
            bases=(output_type,),
        )
    return _OUTPUTS_WITH_AUXILIARY[output_type]


def attach_auxiliary_head(model: PreTrainedModel, name: str, num_outputs: int) -> AuxiliaryHeadHooks:
    """Add a classifier with `num_outputs` outputs, as the submodule `name`, on the features the main
    head sees; in training mode the model's outputs gain `auxiliary_logits` (see `AuxiliaryHeadHooks`).

    It is left out of every saved file (`_keys_to_ignore_on_save`), so the saved model stays a plain
    classifier that `pipeline("image-classification")` loads.
    """
    classifier = find_classifier(model, model.config.num_labels)
    width = getattr(classifier, "in_features", None) or classifier.in_channels
    model.add_module(name, nn.Linear(width, num_outputs))
    model._keys_to_ignore_on_save = set(model._keys_to_ignore_on_save or ()) | {
        f"{name}.weight",
        f"{name}.bias",
    }
    setattr(model, AUXILIARY_HEADS, (*getattr(model, AUXILIARY_HEADS, ()), name))
    return AuxiliaryHeadHooks(model, classifier, getattr(model, name))


def parameters_without_gradient(model: nn.Module, image_size: tuple[int, int]) -> list[str]:
    """Trainable parameters that one training-mode forward and backward pass leaves without a gradient
    (e.g. DINOv2's `mask_token`, used only for masked-image pretraining). DDP must be told about them
    (`find_unused_parameters`), or its second step fails. The model's state is left as it was."""
    was_training = model.training
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}  # BatchNorm statistics
    grads = {name: parameter.grad for name, parameter in model.named_parameters()}
    parameter = next(model.parameters())
    # Two images: BatchNorm in training mode needs more than one value per channel.
    pixel_values = torch.zeros(2, 3, *image_size, device=parameter.device, dtype=parameter.dtype)
    try:
        model.train()
        for tensor in model.parameters():
            tensor.grad = None
        with torch.enable_grad():
            outputs = model(pixel_values=pixel_values)
            values = outputs.values() if isinstance(outputs, dict) else outputs
            sum(
                value.float().sum() for value in values if torch.is_tensor(value) and value.requires_grad
            ).backward()
        return [
            name for name, tensor in model.named_parameters() if tensor.requires_grad and tensor.grad is None
        ]
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        for name, tensor in model.named_parameters():
            tensor.grad = grads[name]


@torch.no_grad()
def reset_parameters(model: PreTrainedModel, module: nn.Module) -> None:
    """Re-initialise `module` the way its model initialises a fresh head."""
    # transformers 5 initialisers skip tensors flagged as loaded from the checkpoint.
    for tensor in (*module.parameters(recurse=True), *module.buffers(recurse=True)):
        tensor._is_hf_initialized = False
    init = getattr(model, "_init_weights", None)
    if callable(init):
        init(module)
    else:
        module.reset_parameters()


def load_from_hub(loader: Any, kind: str, name_or_path: str, **kwargs: Any) -> Any:
    """Call a `from_pretrained`, staying on local files (fast, clear failure) when the Hub is unreachable."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    local_only = not is_local_path(name_or_path) and use_local_files_only(name_or_path)
    try:
        return loader(name_or_path, local_files_only=local_only, **kwargs)
    except OSError as error:
        if local_only:
            raise HubUnavailableError(unavailable_message(kind, name_or_path, error)) from error
        raise
