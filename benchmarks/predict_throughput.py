#!/usr/bin/env python
"""Predict throughput: `hf-classifier predict` (batched, decoding in workers, JPEG drafts) against a
per-image `pipeline("image-classification")` loop, side by side, in one run.

    python benchmarks/predict_throughput.py --data_dir ../shared/data/hymenoptera --models vit-s16,convnext-t \\
        --json benchmarks/results/predict_cpu.json

Models are built from configs (`common.MODELS`, 224 px; random weights: speed does not depend on them).
Both sides load the model once; the times cover classifying every image of the folder.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification, pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import MODELS, benchmark_parser, machine, report  # noqa: E402

from hf_classifier.data.images import available_cpus  # noqa: E402
from hf_classifier.data.resolve import image_files_below
from hf_classifier.evaluation.predictions import predict  # noqa: E402


def forward_only(folder: Path, batch_size: int, images: int, precision: str) -> float:
    """Images/s of the model alone on random ready-made batches: what no data path can beat."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForImageClassification.from_pretrained(folder).eval().to(device)
    size = getattr(model.config, "image_size", 224)
    batch = torch.randn(batch_size, 3, size, size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        model(pixel_values=batch)  # warm-up
        synchronize(device)  # the clock starts when the warm-up has run, not when it was queued
        started = time.perf_counter()
        done = 0
        while done < images:
            model(pixel_values=batch)
            done += batch_size
        synchronize(device)  # ...and stops when the last batch has run
    return done / (time.perf_counter() - started)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (GPU kernels run asynchronously to the host)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--models", default="vit-s16,convnext-t", help=f"of {', '.join(MODELS)}")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=available_cpus())
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument(
        "--precisions", default="auto", help="predict's --precision values to measure, e.g. fp32,bf16"
    )
    args = parser.parse_args()

    paths = [str(p.resolve()) for p in image_files_below(Path(args.data_dir))[0]][: args.limit]
    results = {
        "images": len(paths),
        "machine": machine(),
        "command": " ".join(sys.argv),
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="hf_classifier_predict_bench_") as tmp:
        listing = Path(tmp) / "inputs.csv"
        listing.write_text("file_path\n" + "\n".join(paths) + "\n")
        for name in args.models.split(","):
            config_factory, processor_factory = MODELS[name]
            folder = Path(tmp) / name
            config = config_factory()
            config.id2label = {i: f"family{i}" for i in range(200)}
            config.label2id = {v: k for k, v in config.id2label.items()}
            AutoModelForImageClassification.from_config(config).save_pretrained(folder)
            processor_factory().save_pretrained(folder)

            classifier = pipeline(
                "image-classification",
                model=str(folder),
                device="cuda" if torch.cuda.is_available() else "cpu",
            )
            classifier(paths[0])  # warm-up, as the other sides get
            synchronize(classifier.device)
            started = time.perf_counter()
            for path in paths:
                classifier(path)
            synchronize(classifier.device)
            per_image = len(paths) / (time.perf_counter() - started)

            row = {"model": name, "pipeline_loop_img_s": per_image}
            # The ceiling: the model alone on ready batches (no decoding), fp32 then bf16.
            for precision in ("fp32", "bf16"):
                row[f"forward_only_{precision}_img_s"] = forward_only(
                    folder, args.batch_size, len(paths), precision
                )
            for precision in args.precisions.split(","):
                synchronize(classifier.device)
                started = time.perf_counter()
                summary = predict(
                    str(folder),
                    [str(listing)],
                    Path(tmp) / f"{name}-{precision}.csv",
                    batch_size=args.batch_size,
                    num_workers=args.workers,
                    precision=precision,
                )
                synchronize(classifier.device)
                batched = len(paths) / (time.perf_counter() - started)
                if summary.errors:
                    raise SystemExit(
                        f"{summary.errors} images could not be read: the comparison would be meaningless"
                    )
                row[f"predict_{precision}_img_s"] = batched
                row[f"speedup_{precision}"] = batched / per_image
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    report(results, args.json)


if __name__ == "__main__":
    main()
