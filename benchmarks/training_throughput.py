#!/usr/bin/env python
"""Training throughput and MFU: our data path against a synthetic in-memory batch (what the loader
costs) and against an example-script-style loop, in one run, through the same Trainer.

    python benchmarks/training_throughput.py --data_dir ../shared/data/hymenoptera --models vit-b16,convnext-t \\
        --steps 8 --batch_size 8 --json benchmarks/results/training_cpu.json

Models are built from configs (`common.MODELS`, 224 px; random weights, nothing downloaded):
- ours: prepared copies (`--prepare`), our train transform in `--workers` DataLoader workers, uint8
  batches normalised on the device, bf16 / TF32 / channels_last / fused AdamW by their automatic defaults;
  `prepared-<preset>` / `raw-<preset>` (e.g. `raw-strong`): another augmentation preset, from prepared
  copies or from the photos themselves (draft-decoded every epoch); `ours` = `prepared-light`;
- synthetic: the same Trainer fed one in-memory uint8 batch, repeated (no decoding at all);
- example-script: the image processor on fully decoded photos in the main process (0 workers), as
  transformers' run_image_classification.py does by default.

MFU = (3 x forward FLOPs per image x images/s) / peak FLOP/s: the device's bf16 dense peak on a GPU
(table below), the measured float32 matmul rate on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageClassification, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import MODELS, benchmark_parser, machine, report  # noqa: E402

from hf_classifier.cli.arguments import ClassifierTrainingArguments  # noqa: E402
from hf_classifier.data.images import available_cpus  # noqa: E402

GPU_PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_flops() -> tuple[float, str]:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, tflops in GPU_PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{name} bf16 dense peak"
        return float("nan"), f"{name} (peak unknown)"
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):  # the best of several runs: the closest to what the cores can do
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * 4096**3 / best, "best measured float32 4096x4096 matmul rate of this CPU (indicative only)"


def forward_flops(model: torch.nn.Module, image_size: int = 224) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(pixel_values=torch.randn(1, 3, image_size, image_size, device=next(model.parameters()).device))
    return float(counter.get_total_flops())


class StepTimer(TrainerCallback):
    """Images per second over the steps after `warmup` (compilation, workers starting, caches)."""

    def __init__(self, warmup: int, batch: int):
        self.warmup, self.batch, self.started, self.steps = warmup, batch, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step == self.warmup:
            self.started = time.perf_counter()
        elif state.global_step > self.warmup:
            self.steps += 1

    def images_per_second(self) -> float:
        if self.started is None or self.steps == 0:
            raise SystemExit(
                f"No step was timed (warm-up {self.warmup} steps): the run made too few steps; raise --steps."
            )
        return self.steps * self.batch / (time.perf_counter() - self.started)


def repeated_to(dataset: Any, rows: int) -> Any:
    """`dataset` repeated until it holds `rows` rows. The timed run is then one epoch: with
    `dataloader_drop_last`, a data set smaller than the batch would give no step at all, and an epoch
    boundary every few steps would charge the loader's restart to every step."""
    if len(dataset) >= rows:
        return dataset
    from datasets import concatenate_datasets

    return concatenate_datasets([dataset] * math.ceil(rows / len(dataset)))


def run(
    mode: str,
    model_name: str,
    data_dir: str,
    args: argparse.Namespace,
    work: Path,
    callbacks: list[TrainerCallback] | None = None,
) -> float:
    """Images/s of `mode` for `model_name`, through our Trainer, after two warm-up steps.

    `args` needs `steps`, `batch_size` and `workers`; `callbacks` are added to the Trainer's."""
    from PIL import Image
    from torch.utils.data import Dataset

    from hf_classifier.data.prepared import prepare_data, stored_size_for
    from hf_classifier.data.schema import IMAGE, LABEL
    from hf_classifier.data.sources import from_image_folder
    from hf_classifier.models.build import build_model, is_conv_net
    from hf_classifier.training.run import finetune_plan
    from hf_classifier.training.trainer import ImageClassificationTrainer
    from hf_classifier.transforms.pipeline import (
        ExampleTransform,
        Normalize,
        collate_examples,
        create_normalizer,
        create_transform,
        spec_from_processor,
    )

    config_factory, processor_factory = MODELS[model_name]
    checkpoint = work / model_name
    if not checkpoint.is_dir():
        config_factory().save_pretrained(checkpoint)
        processor_factory().save_pretrained(checkpoint)
    processor = processor_factory()
    data = from_image_folder(data_dir)
    model = build_model(str(checkpoint), data.labels, from_config=True)
    channels_last = torch.cuda.is_available() and is_conv_net(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    training_args = ClassifierTrainingArguments(
        output_dir=str(work / f"run-{model_name}-{mode}"),
        max_steps=args.steps + 2,
        per_device_train_batch_size=args.batch_size,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        dataloader_drop_last=True,
        dataloader_num_workers=0 if mode == "example-script" else args.workers,
    )
    normalizer, collate = create_normalizer(processor), collate_examples
    if mode == "synthetic":  # one in-memory uint8 batch, repeated: free data
        height, width = spec_from_processor(processor).output_size
        example = {"pixel_values": torch.randint(0, 255, (3, height, width), dtype=torch.uint8), "labels": 1}

        class Repeated(Dataset):
            def __len__(self):
                return 10**6

            def __getitem__(self, index):
                return example

        dataset = Repeated()
    elif mode != "example-script":  # ours: [prepared|raw]-<preset>; plain "ours" is prepared-light
        source, _, preset = (mode if mode != "ours" else "prepared-light").partition("-")
        if source == "prepared":
            data, _ = prepare_data(data, stored_size_for(processor), cache_dir=work / "cache")
        dataset = repeated_to(data.splits["train"], args.batch_size * (args.steps + 2)).with_transform(
            ExampleTransform(create_transform(processor, training=True, augmentation=preset))
        )
    else:  # example-script: the processor on fully decoded PIL images, in the main process

        def transform(batch):
            images = [Image.open(path).convert("RGB") for path in batch[IMAGE]]
            return {
                "pixel_values": list(processor(images=images, return_tensors="pt")["pixel_values"]),
                "labels": batch[LABEL],
            }

        dataset = repeated_to(data.splits["train"], args.batch_size * (args.steps + 2)).with_transform(
            transform
        )
        normalizer = Normalize(None)  # the processor already normalised
    timer = StepTimer(warmup=2, batch=args.batch_size)
    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collate,
        normalizer=normalizer,
        plan=finetune_plan(model, training_args),
        channels_last=channels_last,
        callbacks=[timer, *(callbacks or [])],
    )
    trainer.train()
    return timer.images_per_second()


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--models", default="vit-b16,convnext-t", help=f"of {', '.join(MODELS)}")
    parser.add_argument("--modes", default="synthetic,ours,example-script")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=available_cpus())
    args = parser.parse_args()

    peak, peak_source = peak_flops()
    results = {
        "machine": machine(),
        "peak_flops": peak,
        "peak_source": peak_source,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "workers": args.workers,
        "command": " ".join(sys.argv),
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="hf_classifier_train_bench_") as tmp:
        work = Path(tmp)
        for model_name in args.models.split(","):
            model = MODELS[model_name][0]()
            flops = 3 * forward_flops(
                AutoModelForImageClassification.from_config(model), getattr(model, "image_size", 224)
            )
            for mode in args.modes.split(","):
                images_per_second = run(mode, model_name, args.data_dir, args, work)
                results["rows"].append(
                    {
                        "model": model_name,
                        "mode": mode,
                        "images_per_second": images_per_second,
                        "train_flops_per_image": flops,
                        "mfu": images_per_second * flops / peak,
                    }
                )
                print(json.dumps(results["rows"][-1]), flush=True)
    by = {(r["model"], r["mode"]): r["images_per_second"] for r in results["rows"]}
    for row in results["rows"]:  # what the data path costs against free data, per mode
        if row["mode"] != "synthetic" and (row["model"], "synthetic") in by:
            row["loader_overhead"] = 1 - row["images_per_second"] / by[(row["model"], "synthetic")]
    for model_name in args.models.split(","):
        if (model_name, "synthetic") in by and (model_name, "ours") in by:
            results[f"{model_name}_loader_gap"] = 1 - by[(model_name, "ours")] / by[(model_name, "synthetic")]
        if (model_name, "example-script") in by and (model_name, "ours") in by:
            results[f"{model_name}_ours_vs_example_script"] = (
                by[(model_name, "ours")] / by[(model_name, "example-script")]
            )
    report(results, args.json)


if __name__ == "__main__":
    main()
