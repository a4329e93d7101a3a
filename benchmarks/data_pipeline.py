#!/usr/bin/env python
"""Data path throughput: the naive path against ours, side by side, in one run.

    python benchmarks/data_pipeline.py --data_dir ../shared/data/hymenoptera --image_size 224 --epochs 2 \\
        --json benchmarks/results/data_hymenoptera.json

- naive: PIL open -> RGB -> resize to image_size x image_size -> uint8 array (what the transformers
  example script does per image, every epoch);
- epoch 1 (ours, first pass): `prepare`: JPEG draft decoding, shorter side to the stored size,
  stored in the Arrow cache (a fresh cache: nothing reused);
- epoch 2.. (ours, later epochs): training inputs from the prepared copies: decode the stored copy,
  random resized crop to image_size, flip -> uint8 tensor;
- presets (`--presets`): each augmentation preset's training transform, from the photos (raw: draft
  decode every epoch) and from the prepared copies (`presets.<name>.raw_img_s` / `prepared_img_s`).

Both sides use the same number of processes (`--processes`, default 1: images/s per core). Writes
JSON with `naive_img_s`, `epoch1_img_s`, `epoch2_img_s` (and each later epoch), the ratios to naive,
and the images' size statistics.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset as ArrowDataset
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import benchmark_parser, machine, report  # noqa: E402

from hf_classifier.data.prepared import prepare_split, prepared_size  # noqa: E402
from hf_classifier.data.resolve import image_files_below
from hf_classifier.data.schema import IMAGE
from hf_classifier.transforms.pipeline import ExampleTransform, ImageTransform, get_preset  # noqa: E402
from hf_classifier.transforms.preview import default_spec  # noqa: E402


class NaiveImages(Dataset):
    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        try:
            image = (
                Image.open(self.paths[index])
                .convert("RGB")
                .resize((self.size, self.size), Image.Resampling.BILINEAR)
            )
        except OSError:
            return np.zeros((self.size, self.size, 3), np.uint8)  # unreadable: skipped, as ours does
        return np.asarray(image)


def stack(batch: list[dict]) -> torch.Tensor:
    return torch.stack([item["pixel_values"] for item in batch])


def run_loader(dataset: Dataset, processes: int, collate=None) -> float:
    """Seconds to go through `dataset` once with `processes` worker processes (1 = the main process)."""
    loader = DataLoader(
        dataset,
        batch_size=32,
        num_workers=processes if processes > 1 else 0,
        collate_fn=collate or (lambda batch: batch),
    )
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = benchmark_parser(__doc__, data_help="class folders (or train/ val/ folders) of photos")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs of ours (the first is the prepare pass)"
    )
    parser.add_argument("--processes", type=int, default=1, help="processes for both sides")
    parser.add_argument("--augmentation", default="light")
    parser.add_argument(
        "--presets",
        default="none,light,medium,strong",
        help="also time each preset's training transform, from the photos (raw) and from prepared copies; "
        "'' to skip",
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    # Every image below the folder, whatever its layout (class folders or not).
    paths = [str(path) for path in image_files_below(Path(args.data_dir))[0]]
    if not paths:
        raise SystemExit(f"No images below {args.data_dir}")
    split = ArrowDataset.from_dict({IMAGE: paths})
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except OSError:
            pass  # counted as unreadable by both sides below
    megapixels = [w * h / 1e6 for w, h in sizes]

    results: dict = {
        "images": len(paths),
        "megapixels": {"median": statistics.median(megapixels), "max": max(megapixels)},
        "image_size": args.image_size,
        "stored_size": prepared_size(args.image_size),
        "processes": args.processes,
        "machine": machine(),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
    }
    # Warm the page cache so that both sides read from memory, not disk.
    for path in paths:
        Path(path).read_bytes()

    naive_seconds = run_loader(NaiveImages(paths, args.image_size), args.processes)
    results["naive_img_s"] = len(paths) / naive_seconds

    transform = ExampleTransform(ImageTransform(default_spec(args.image_size), get_preset(args.augmentation)))
    with tempfile.TemporaryDirectory(prefix="hf_classifier_bench_") as cache:
        started = time.perf_counter()
        prepared, bad = prepare_split(
            split, prepared_size(args.image_size), Path(cache), num_proc=args.processes
        )
        results["epoch1_img_s"] = len(paths) / (time.perf_counter() - started)
        results["unreadable"] = len(bad)
        unreadable = {row for row, _, _ in bad}
        if bad:
            prepared = prepared.select([row for row in range(len(prepared)) if row not in unreadable])
        for epoch in range(2, args.epochs + 1):
            seconds = run_loader(prepared.with_transform(transform), args.processes, collate=stack)
            results[f"epoch{epoch}_img_s"] = len(prepared) / seconds
        # The cost per image of each augmentation preset, per process: from the photos themselves
        # (draft decode every epoch) and from the prepared copies.
        readable = split.select([row for row in range(len(split)) if row not in unreadable]) if bad else split
        for preset in filter(None, args.presets.split(",")):
            preset_transform = ExampleTransform(
                ImageTransform(default_spec(args.image_size), get_preset(preset))
            )
            for source, images in (("raw", readable), ("prepared", prepared)):
                seconds = run_loader(images.with_transform(preset_transform), args.processes, collate=stack)
                results.setdefault("presets", {}).setdefault(preset, {})[f"{source}_img_s"] = (
                    len(images) / seconds
                )

    for key in [k for k in results if k.startswith("epoch")]:
        results[key.replace("_img_s", "_vs_naive")] = results[key] / results["naive_img_s"]
    report(results, args.json)


if __name__ == "__main__":
    main()
