"""One `build_model` for every architecture: a pretrained checkpoint with its head replaced for our
labels (or a random initialisation from its config), plus the checkpoint's image processor."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

from .hub import HubUnavailableError, is_local_path, unavailable_message, use_local_files_only

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


AUXILIARY_HEAD = "phylum_head"


class FeatureTap:
    """Keeps the input of the classification layer (the pooled features) from the latest forward pass."""

    def __init__(self, classifier: nn.Module):
        self.features: torch.Tensor | None = None
        self.handle = classifier.register_forward_pre_hook(self._keep)

    def _keep(self, _module: nn.Module, inputs: tuple) -> None:
        self.features = inputs[0]


def attach_phylum_head(model: PreTrainedModel, num_phyla: int) -> FeatureTap:
    """Add an auxiliary phylum classifier on the features the family head sees (`--hierarchy multitask`).

    It is left out of every saved file (`_keys_to_ignore_on_save`), so the saved model stays a plain
    family classifier that `pipeline("image-classification")` loads.
    """
    classifier = find_classifier(model, model.config.num_labels)
    width = getattr(classifier, "in_features", None) or classifier.in_channels
    model.add_module(AUXILIARY_HEAD, nn.Linear(width, num_phyla))
    model._keys_to_ignore_on_save = set(model._keys_to_ignore_on_save or ()) | {
        f"{AUXILIARY_HEAD}.weight",
        f"{AUXILIARY_HEAD}.bias",
    }
    return FeatureTap(classifier)


def find_classifier(model: nn.Module, num_labels: int) -> nn.Module:
    """The output layer: the last Linear (or 1x1 Conv) module with `num_labels` outputs."""
    candidates = [
        module
        for module in model.modules()
        if (isinstance(module, nn.Linear) and module.out_features == num_labels)
        or (
            isinstance(module, nn.Conv2d)
            and module.out_channels == num_labels
            and module.kernel_size == (1, 1)
        )
    ]
    if not candidates:
        raise ValueError(
            f"Cannot find the classification layer of {type(model).__name__} (no Linear with {num_labels} outputs)."
        )
    return candidates[-1]


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
