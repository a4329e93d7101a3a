"""Helpers shared by the tests: tiny checkpoints built from configs and quick training flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hf_classifier.cli.arguments import ClassifierTrainingArguments, DataArguments, ModelArguments, parse_args

if TYPE_CHECKING:
    from hf_classifier.quickstart.synthetic import DemoDataset

TINY_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
)
TINY_CONVNEXT = dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_channels=3)
SMALL_COUNTS = (14, 12, 10, 8, 7, 6)

# Tokens given to the shared trained model's run (conftest `trained_model`): never written or printed.
PLANTED_SECRETS = ("hf_TrainingHubSecret0123456789", "hf_ModelDownloadSecret987654321")

# What `hf-classifier train` parses.
TRAIN_ARGS = (DataArguments, ModelArguments, ClassifierTrainingArguments)


def save_checkpoint(folder: Path, kind: str = "vit", num_labels: int = 1000) -> Path:
    """A tiny pretrained-style checkpoint with a `num_labels` head, saved like a Hub download."""
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ConvNextImageProcessor,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    labels = {i: f"imagenet_class_{i}" for i in range(num_labels)}
    if kind == "vit":
        config = ViTConfig(**TINY_VIT, id2label=labels, label2id={v: k for k, v in labels.items()})
        model, processor = (
            ViTForImageClassification(config),
            ViTImageProcessor(size={"height": 32, "width": 32}),
        )
    elif kind == "convnext":
        config = ConvNextConfig(**TINY_CONVNEXT, id2label=labels, label2id={v: k for k, v in labels.items()})
        model = ConvNextForImageClassification(config)
        processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    elif kind == "resnet":
        from transformers import ResNetConfig, ResNetForImageClassification

        config = ResNetConfig(
            depths=[1, 1, 1, 1],
            hidden_sizes=[8, 16, 24, 32],
            embedding_size=8,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
        model = ResNetForImageClassification(config)
        processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def small_demo_dataset(root: Path, **options) -> DemoDataset:
    """The quickstart's drawn Rare-Species-like data at test size (SMALL_COUNTS images per family,
    40-120 px, 30 % odd formats); `options` go to `make_demo_dataset` (seed, broken_files, ...)."""
    from hf_classifier.quickstart.synthetic import make_demo_dataset

    return make_demo_dataset(root, counts=SMALL_COUNTS, size_range=(40, 120), odd_share=0.3, **options)


def make_image_tree(root: Path, layout: dict[str, int], size: tuple[int, int] = (24, 20)) -> Path:
    """Small JPEGs: layout maps a relative folder (e.g. "train/cats") to a number of images."""
    from PIL import Image

    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shade = (i * 37 + 11 * len(folder)) % 255
            Image.new("RGB", size, (shade, 80, 255 - shade)).save(root / folder / f"img{i}.jpg")
    return root


def flag_value(value) -> str | None:
    """A Python value as a command-line value: booleans as true/false, None stays None (flag dropped)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def fast_training_flags(output_dir: Path, **overrides) -> list[str]:
    """Flags for a quick CPU run; `overrides` replace or add flags (value None drops one)."""
    flags = {
        "output_dir": str(output_dir),
        "num_train_epochs": "2",
        "per_device_train_batch_size": "16",
        "per_device_eval_batch_size": "32",
        "learning_rate": "1e-3",
        "dataloader_num_workers": "0",
        "logging_steps": "5",
        "report_to": "none",
        "disable_tqdm": "true",
        "save_total_limit": "3",
        "seed": "0",
    }
    flags.update({k: flag_value(v) for k, v in overrides.items()})
    argv: list[str] = []
    for key, value in flags.items():
        if value is not None:
            argv += [f"--{key}", value]
    return argv


def train_argv(output_dir: Path, *leading: str | Path, **flags) -> list[str]:
    """The argument list of a quick training run: `leading` tokens first (a config file), then the fast
    flags with `flags` (data_dir=..., model_name_or_path=..., label_column=...) added or replacing them."""
    return [*map(str, leading), *fast_training_flags(output_dir, **flags)]


def train_run(output_dir: Path, *leading: str | Path, callbacks=None, **flags):
    """Parse `train_argv(...)` as `hf-classifier train` does and run the training; returns its outcome."""
    from hf_classifier.hierarchy.experts import train_model

    return train_model(
        *parse_args(TRAIN_ARGS, train_argv(output_dir, *leading, **flags)), callbacks=callbacks
    )


def textured_photo(seed: int, size: tuple[int, int] = (200, 150)):
    """A photo-like RGB image: random low-frequency structure plus fine noise. Different seeds give
    perceptually different pictures (like real photos, unlike flat drawings)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def make_textured_tree(root: Path, layout: dict[str, int], seed: int = 0) -> dict[str, list[Path]]:
    """Folders of distinct textured JPEGs; returns the written paths per folder."""
    written: dict[str, list[Path]] = {}
    index = seed * 10_000
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        written[folder] = []
        for i in range(count):
            index += 1
            path = root / folder / f"photo{i:03d}.jpg"
            textured_photo(index).save(path, quality=90)
            written[folder].append(path)
    return written


SHARD_CLASSES = ["apidae", "formicidae", "vespidae"]


def make_tinted_tree(root: Path, per_class: int, tint: float = 100) -> Path:
    """Class folders apidae, formicidae, vespidae of textured photos tinted red, green, blue."""
    for label, name in enumerate(SHARD_CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"photo{i:03d}.jpg").write_bytes(tinted_jpeg(label, 1000 * label + i, tint=tint))
    return root


def tinted_jpeg(label: int, seed: int, image_format: str = "JPEG", tint: float = 100) -> bytes:
    """A textured photo tinted by its class (red, green, blue): learnable in a few steps (a weak `tint`
    makes it learnable over several epochs)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(textured_photo(seed, (48, 40)), dtype=np.float32) * 0.6
    pixels[..., label] += tint
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, image_format)
    return buffer.getvalue()


def write_shards(
    folder: Path,
    split: str,
    samples: int,
    per_shard: int,
    bad: tuple[int, ...] = (),
    png: tuple[int, ...] = (),
    unlabelled: tuple[int, ...] = (),
    bmp: tuple[int, ...] = (),
) -> None:
    """`split-00000.tar`, ...: each sample has .jpg (.png / .bmp for the `png` / `bmp` ones), .cls (index)
    and .json ({"family": name}); `bad` samples hold bytes that are no image, `unlabelled` ones have no
    label."""
    import io
    import json
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, samples, per_shard)):
        with tarfile.open(folder / f"{split}-{shard:05d}.tar", "w") as tar:
            for i in range(start, min(samples, start + per_shard)):
                label = i % len(SHARD_CLASSES)
                seed = 1000 * (split == "train") + i
                extension = "png" if i in png else "bmp" if i in bmp else "jpg"
                image = tinted_jpeg(label, seed, {"png": "PNG", "bmp": "BMP"}.get(extension, "JPEG"))
                files = {extension: b"not a jpeg" if i in bad else image}
                if i in unlabelled:
                    files["json"] = json.dumps({"phylum": "arthropoda"}).encode()
                else:
                    files["cls"] = str(label).encode()
                    files["json"] = json.dumps(
                        {"family": SHARD_CLASSES[label], "phylum": "arthropoda"}
                    ).encode()
                for name, payload in files.items():
                    info = tarfile.TarInfo(f"{split}_{i:05d}.{name}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def accelerate_launch(script: Path | str, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    # --multi_gpu selects Accelerate's torchrun launcher; on a machine without GPUs the training
    # arguments switch to the CPU and Accelerate forms a gloo group (`--cpu` would start one process).
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *(["-m", script] if isinstance(script, str) else [str(script)]),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
