#!/usr/bin/env python
"""End to end, side by side: `hf-classifier train` against the transformers example script's logic
(examples/pytorch/image-classification/run_image_classification.py), same weights, data and settings.

    ../venv-peer/bin/python benchmarks/peer_example.py --data_dir ../shared/data/hymenoptera \\
        --model ../shared/models/vit_tiny_patch16_224 --repeats 2 --json benchmarks/results/peer_example.json

The example's side needs torchvision, which the project does not: run this script with a Python that has
both torchvision and the project installed (e.g. a venv with `torch==2.14.1 torchvision==0.29.1` and
`pip install -e .`), so both sides run on the same torch.

The peer ("example" below) is written from what the example does, not copied:
- `load_dataset("imagefolder")`, images decoded in full by `datasets` on every access;
- training: torchvision `RandomResizedCrop` + `RandomHorizontalFlip` + `ToTensor` + `Normalize`;
  evaluation: `Resize` + `CenterCrop` + `ToTensor` + `Normalize` (torchvision's default bilinear);
- `AutoModelForImageClassification.from_pretrained(..., ignore_mismatched_sizes=True)` with a new head,
  a stacking collate, accuracy as the metric, plain `Trainer`;
- after training: save the model, the state and metrics, a final `evaluate()`, the model card.
One deviation, needed to run at all: the example crops to `size["shortest_edge"]` when the processor has
one (248 for this ViT-Ti), which a 224-px ViT rejects; the peer crops to the processor's `crop_size` (224)
and resizes to the shortest edge (248) before the evaluation crop, as the processor itself does.

Both sides: lr 5e-5 cosine, warmup 0.1, weight decay 0.05, batch 32 (training and evaluation),
`--epochs` epochs, `--workers` loader workers, evaluation and a checkpoint each epoch, best model
loaded at the end, seed 42, CPU. Each run is a fresh process timed from start to exit (imports, data
loading and checks, training, evaluation, writing everything); the sides alternate (ABBA...) so that
load from other work on the machine falls on both. Reported per side: wall seconds (median and each
run), seconds per optimizer step (Trainer's train_runtime / steps, the in-loop evaluations included),
validation accuracy, and the ratio example wall / ours wall (> 1: ours is faster).

`--ours_args` adds flags to our side (e.g. `--prepare false`). Every run of ours gets a prepared cache of
its own, so each one prepares its photos cold, as a first run on new data does (`--prepare auto`, the
default, prepares for 3 epochs); `--ours_variants default,prepare` measures both in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import benchmark_parser

SETTINGS = {
    "learning_rate": 5e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,
    "weight_decay": 0.05,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 32,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "seed": 42,
    "use_cpu": True,
}
# The example's side only: flags its README command line passes (our side runs its own defaults for these).
EXAMPLE_FLAGS = {"remove_unused_columns": False, "load_best_model_at_end": True, "save_total_limit": 3}
VARIANTS = {"default": [], "prepare": ["--prepare"]}


def run_example(data_dir: str, model_path: str, output_dir: str, epochs: float, workers: int) -> dict:
    """The example script's logic (see the module docstring); returns its metrics."""
    import numpy as np
    import torch
    from datasets import load_dataset
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        Normalize,
        RandomHorizontalFlip,
        RandomResizedCrop,
        Resize,
        ToTensor,
    )
    from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

    dataset = load_dataset("imagefolder", data_dir=data_dir)
    labels = dataset["train"].features["label"].names
    label2id = {name: i for i, name in enumerate(labels)}
    processor = AutoImageProcessor.from_pretrained(model_path)
    model = AutoModelForImageClassification.from_pretrained(
        model_path,
        num_labels=len(labels),
        label2id=label2id,
        id2label={i: name for name, i in label2id.items()},
        ignore_mismatched_sizes=True,
    )
    crop = (processor.crop_size["height"], processor.crop_size["width"])
    resize = processor.size.get("shortest_edge") or (processor.size["height"], processor.size["width"])
    normalize = Normalize(mean=processor.image_mean, std=processor.image_std)
    train_transform = Compose([RandomResizedCrop(crop), RandomHorizontalFlip(), ToTensor(), normalize])
    eval_transform = Compose([Resize(resize), CenterCrop(crop), ToTensor(), normalize])

    def transformed(transform):
        def apply(batch):
            batch["pixel_values"] = [transform(image.convert("RGB")) for image in batch["image"]]
            return batch

        return apply

    dataset["train"].set_transform(transformed(train_transform))
    dataset["validation"].set_transform(transformed(eval_transform))

    def collate(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["label"] for e in examples]),
        }

    def accuracy(prediction):
        return {"accuracy": float(np.mean(np.argmax(prediction.predictions, axis=1) == prediction.label_ids))}

    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        dataloader_num_workers=workers,
        report_to="none",
        **EXAMPLE_FLAGS,
        **SETTINGS,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        compute_metrics=accuracy,
        processing_class=processor,
        data_collator=collate,
    )
    result = trainer.train()
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.create_model_card(finetuned_from=Path(model_path).name, tasks="image-classification")
    return {
        "accuracy": metrics["eval_accuracy"],
        "train_runtime": result.metrics["train_runtime"],
        "steps": trainer.state.global_step,
    }


def ours_command(
    data_dir: str, model_path: str, output_dir: str, epochs: float, workers: int, extra: list[str]
) -> list[str]:
    flags = [f"--{key}={value}" for key, value in SETTINGS.items()]
    return [
        sys.executable,
        "-m",
        "hf_classifier",
        "train",
        f"--data_dir={data_dir}",
        f"--model_name_or_path={model_path}",
        f"--output_dir={output_dir}",
        f"--num_train_epochs={epochs}",
        f"--dataloader_num_workers={workers}",
        *flags,
        *extra,
    ]


def ours_metrics(output_dir: Path) -> dict:
    evaluation = json.loads((output_dir / "eval_results.json").read_text())
    training = json.loads((output_dir / "train_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {
        "accuracy": evaluation["eval_accuracy"],
        "train_runtime": training["train_runtime"],
        "steps": state["global_step"],
    }


def timed_run(side: str, args: argparse.Namespace, work: Path, index: int) -> dict:
    """One run of `side` in a fresh process, timed from its start to its exit."""
    output_dir = work / f"{side}-{index}"
    if side == "example":
        command = [sys.executable, __file__, "--run_example", str(output_dir), *_shared_flags(args)]
    else:
        extra = VARIANTS[side.removeprefix("ours-")] + args.ours_args.split()
        command = ours_command(args.data_dir, args.model, str(output_dir), args.epochs, args.workers, extra)
        # A cache of its own for every run: each run prepares its photos cold, as a first run does.
        command.append(f"--prepared_cache_dir={work / f'prepared-{index}'}")
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"{side} run failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
    if side == "example":
        metrics = json.loads((output_dir / "peer_metrics.json").read_text())
    else:
        metrics = ours_metrics(output_dir)
    row = {"side": side, "run": index, "wall_s": wall, **metrics}
    row["s_per_step"] = metrics["train_runtime"] / metrics["steps"]
    print(json.dumps(row), flush=True)
    return row


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return [
        f"--data_dir={args.data_dir}",
        f"--model={args.model}",
        f"--epochs={args.epochs}",
        f"--workers={args.workers}",
    ]


def summarise(rows: list[dict], sides: list[str]) -> dict:
    summary = {}
    for side in sides:
        mine = [r for r in rows if r["side"] == side]
        summary[side] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
            "wall_s_runs": [round(r["wall_s"], 1) for r in mine],
            "s_per_step_median": statistics.median(r["s_per_step"] for r in mine),
            "accuracy_runs": [round(r["accuracy"], 4) for r in mine],
        }
    example = summary["example"]["wall_s_median"]
    for side in sides:
        if side != "example":
            summary[side]["ratio_example_over_ours"] = example / summary[side]["wall_s_median"]
    return summary


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", required=True, help="a pretrained checkpoint folder")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, interleaved")
    parser.add_argument("--ours_variants", default="default", help=f"of {','.join(VARIANTS)}")
    parser.add_argument("--ours_args", default="", help="extra flags for our side")
    parser.add_argument("--run_example", help=argparse.SUPPRESS)  # internal: one example run, in a child
    args = parser.parse_args()

    if args.run_example:
        metrics = run_example(args.data_dir, args.model, args.run_example, args.epochs, args.workers)
        Path(args.run_example, "peer_metrics.json").write_text(json.dumps(metrics))
        return

    import torch
    import torchvision
    import transformers

    sides = ["example"] + [f"ours-{name}" for name in args.ours_variants.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hf_classifier_peer_") as tmp:
        for index in range(args.repeats):
            # ABBA: every side runs first and last equally often.
            order = sides if index % 2 == 0 else list(reversed(sides))
            rows.extend(timed_run(side, args, Path(tmp), index) for side in order)
    results = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, transformers {transformers.__version__}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {**SETTINGS, "epochs": args.epochs, "workers": args.workers},
        "rows": rows,
        "summary": summarise(rows, sides),
    }
    print(json.dumps(results["summary"], indent=2))
    if args.json:
        from hf_classifier.io_utils import write_json

        write_json(args.json, results)


if __name__ == "__main__":
    main()
