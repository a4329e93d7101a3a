"""What the benchmark scripts share: the start of their command line, the machine they ran on, the models
they build from configs, and how they report."""

from __future__ import annotations

import argparse
import json
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import ConvNextConfig, ConvNextImageProcessor, ViTConfig, ViTImageProcessor

# transformers and torch are imported where used: the side-by-side script times a child process that
# imports this module, and its start-up must not pay for imports the other side does not make.


def vit_config(
    hidden_size: int, blocks: int, heads: int, image_size: int = 224, patch_size: int = 16, mlp_ratio: int = 4
) -> ViTConfig:
    from transformers import ViTConfig

    return ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=blocks,
        num_attention_heads=heads,
        intermediate_size=mlp_ratio * hidden_size,
    )


def vit_processor(size: int = 224) -> ViTImageProcessor:
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": size, "width": size})


def convnext_tiny() -> ConvNextConfig:
    from transformers import ConvNextConfig

    return ConvNextConfig(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768])


def convnext_processor() -> ConvNextImageProcessor:
    from transformers import ConvNextImageProcessor

    return ConvNextImageProcessor(size={"shortest_edge": 224})


# name -> (config factory, image processor factory): random weights, nothing downloaded.
MODELS = {
    "vit-ti16": (lambda: vit_config(192, 12, 3), vit_processor),
    "vit-s16": (lambda: vit_config(384, 12, 6), vit_processor),
    "vit-b16": (lambda: vit_config(768, 12, 12), vit_processor),
    "convnext-t": (convnext_tiny, convnext_processor),
    # A 32-px two-block ViT: for smoke runs of the benchmarks themselves (tests), not for figures.
    "vit-test": (
        lambda: vit_config(32, 2, 2, image_size=32, patch_size=8, mlp_ratio=2),
        lambda: vit_processor(32),
    ),
}


def benchmark_parser(description: str, data_help: str | None = None) -> argparse.ArgumentParser:
    """The flags every benchmark takes (`--data_dir`, `--json`), the module docstring as the help."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", required=True, help=data_help)
    parser.add_argument("--json", help="write the results here")
    return parser


def machine() -> str:
    """What the figures depend on: the architecture, the CPUs this process may use, torch, the GPU."""
    import torch

    from hf_classifier.data.images import available_cpus

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {available_cpus()} CPUs, torch {torch.__version__}, {gpu}"


def report(results: dict, json_path: str | None) -> None:
    """Print the results, and write them to `json_path` when one is given."""
    from hf_classifier.io_utils import write_json

    print(json.dumps(results, indent=2))
    if json_path:
        write_json(json_path, results)
