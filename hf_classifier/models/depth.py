"""One mapping from parameters to depth, for every architecture: 0 = embeddings / stem, 1..N = the
blocks in forward order, N + 1 = the top (final norm, pooler, head). The new classification head is
marked separately (it gets its own learning rate and is the only part a linear probe trains).

Transformers models: the trunk is the largest `ModuleList`/`Sequential` with two or more
parameterised children; when those children are stages that each hold a list of composite blocks
(ConvNeXt, ResNet, Swin, RegNet), the stages are flattened into their blocks. Parameters before the
trunk are the embeddings, parameters between blocks belong to the next block (downsampling), and
parameters after the trunk are the top. timm models loaded through `TimmWrapper` use timm's own
`group_matcher`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SEQUENCE_CONTAINERS = (nn.ModuleList, nn.Sequential)


# The attribute of a model that names its extra heads (e.g. --hierarchy multitask): they train with the head.
AUXILIARY_HEADS = "auxiliary_heads"


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


class UnsupportedArchitectureError(ValueError):
    """The parameters of this model cannot be mapped to depths."""


@dataclass(frozen=True)
class DepthMap:
    depth: dict[str, int]  # parameter name -> depth
    head: frozenset[str]  # the classification head's parameters (at depth `top`)
    num_blocks: int

    @property
    def top(self) -> int:
        return self.num_blocks + 1

    def describe(self) -> str:
        counts = [sum(1 for d in self.depth.values() if d == level) for level in range(self.top + 1)]
        return (
            f"{self.num_blocks} blocks; embeddings: {counts[0]} tensors, top: {counts[-1] - len(self.head)} "
            f"tensors + head: {len(self.head)}"
        )


def num_labels_of(model: nn.Module) -> int:
    return int(model.config.num_labels)


def head_parameter_names(model: nn.Module) -> frozenset[str]:
    return frozenset(
        f"{prefix}.{name}" for prefix, module in _head_modules(model) for name, _ in module.named_parameters()
    )


def flat_depth_map(model: nn.Module) -> DepthMap:
    """Every parameter one level below the head: enough for plain full fine-tuning of any model."""
    return DepthMap(
        {name: 1 for name, _ in model.named_parameters()}, head_parameter_names(model), num_blocks=0
    )


def map_depths(model: nn.Module) -> DepthMap:
    """The depth of every parameter of `model` (see the module docstring)."""
    names = [name for name, _ in model.named_parameters()]
    head_modules = _head_modules(model)
    head = head_parameter_names(model)
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        return _timm_depths(model, timm_model, names, head)
    blocks = _blocks(model, {id(m) for _, m in head_modules})
    if len(blocks) < 2:
        raise UnsupportedArchitectureError(
            f"Cannot map the parameters of {type(model).__name__} to depths: no list of repeated blocks found. "
            "Use --finetune_strategy full without --layer_decay for this architecture."
        )
    block_of = {}
    for index, (prefix, block) in enumerate(blocks, start=1):
        for name, _ in block.named_parameters():
            block_of[f"{prefix}.{name}"] = index
    depth, current, seen_block = {}, 0, False
    for name in names:
        if name in head:
            depth[name] = len(blocks) + 1
        elif name in block_of:
            current, seen_block = block_of[name], True
            depth[name] = current
        elif not seen_block:
            depth[name] = 0
        else:
            depth[name] = -1  # between blocks or after the last one: resolved below
    # Between blocks k and k+1 (downsampling): the next block. After the last block: the top.
    pending = len(blocks) + 1
    for name in reversed(names):
        if depth[name] == -1:
            depth[name] = pending
        elif depth[name] > 0 and name not in head:
            pending = depth[name]
    return DepthMap(depth=depth, head=head, num_blocks=len(blocks))


def _head_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The output layers (Linear or 1x1 Conv with num_labels outputs) with their qualified names."""
    num_labels = num_labels_of(model)
    last = find_classifier(model, num_labels)
    heads = [
        (name, module)
        for name, module in model.named_modules()
        if module is last
        or (
            isinstance(module, nn.Linear)
            and module.out_features == num_labels
            and name.split(".")[-1].endswith("classifier")
        )
        or name in getattr(model, AUXILIARY_HEADS, ())  # e.g. --hierarchy multitask: trains with the head
    ]
    return heads


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _parameterised_children(container: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, child) for name, child in container.named_children() if _parameter_count(child) > 0]


def _blocks(model: nn.Module, head_ids: set[int]) -> list[tuple[str, nn.Module]]:
    """The trunk's blocks with their qualified names, in forward (registration) order."""
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, SEQUENCE_CONTAINERS) or any(id(m) in head_ids for m in module.modules()):
            continue
        children = _parameterised_children(module)
        if len(children) >= 2:
            candidates.append((_parameter_count(module), name, children))
    if not candidates:
        return []
    _, trunk_name, children = max(candidates, key=lambda c: c[0])
    blocks = []
    for child_name, child in children:
        prefix = f"{trunk_name}.{child_name}"
        inner = _inner_blocks(child)
        if inner is None:
            blocks.append((prefix, child))
        else:
            inner_name, inner_children = inner
            blocks.extend((f"{prefix}.{inner_name}.{name}", block) for name, block in inner_children)
    return blocks


def _inner_blocks(stage: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]] | None:
    """A stage's own list of composite blocks: a direct child container holding most of the stage's
    parameters whose parameterised children have children of their own (not a Linear/Conv pair)."""
    total = _parameter_count(stage)
    for name, child in stage.named_children():
        if not isinstance(child, SEQUENCE_CONTAINERS) or 2 * _parameter_count(child) < total:
            continue
        children = _parameterised_children(child)
        if children and all(any(True for _ in block.children()) for _, block in children):
            return name, children
    return None


def _timm_depths(model: nn.Module, timm_model: nn.Module, names: list[str], head: frozenset[str]) -> DepthMap:
    """timm models know their own layer grouping (`group_matcher`), the one timm's layer decay uses."""
    try:
        from timm.models import group_parameters
    except ImportError as error:  # pragma: no cover - TimmWrapper cannot load without timm
        raise UnsupportedArchitectureError(
            "timm models need timm installed: pip install 'hf-classifier[timm]'"
        ) from error
    if not hasattr(timm_model, "group_matcher"):
        raise UnsupportedArchitectureError(
            f"The timm model {type(timm_model).__name__} has no group_matcher(); its layers cannot be mapped to depths."
        )
    prefix = next(name for name, module in model.named_children() if module is timm_model)
    layer_of = group_parameters(timm_model, timm_model.group_matcher(coarse=False), reverse=True)
    top = max(layer_of.values())  # unmatched parameters (neck, head) get the last group
    depth = {}
    for name in names:
        inner = name[len(prefix) + 1 :] if name.startswith(prefix + ".") else name
        depth[name] = top if name in head else layer_of.get(inner, top)
    if top < 2:
        raise UnsupportedArchitectureError(
            f"timm's grouping of {type(timm_model).__name__} has fewer than 2 blocks."
        )
    return DepthMap(depth=depth, head=head, num_blocks=top - 1)


@torch.no_grad()
def gradient_norms_by_depth(model: nn.Module, depth_map: DepthMap) -> dict[str, float]:
    """L2 norms of the current gradients: embeddings, first block, last block, head (unset: skipped)."""
    parts = {"embeddings": [], "first_block": [], "last_block": [], "head": []}
    for name, parameter in model.named_parameters():
        if parameter.grad is None:
            continue
        name = name.removeprefix("module.")  # DDP
        depth = depth_map.depth.get(name)
        if name in depth_map.head:
            parts["head"].append(parameter.grad)
        elif depth == 0:
            parts["embeddings"].append(parameter.grad)
        elif depth == 1:
            parts["first_block"].append(parameter.grad)
        elif depth == depth_map.num_blocks:
            parts["last_block"].append(parameter.grad)
    return {
        key: float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        )
        for key, grads in parts.items()
        if grads
    }
