#!/usr/bin/env python
"""The GPU check: one command, one JSON, under 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py --json benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --smoke --json /tmp/gpu_check_smoke.json   # CPU, tiny sizes (CI)

Sections (each recorded as ok / failed / skipped with the reason; one failure does not stop the others;
the exit status is 1 when any section failed):
- `environment`: nproc, CPUs available, /dev/shm size, versions, the device, the command;
- `parity`: 50 steps of ViT-Ti (../shared/models) on the GPU in bf16 and on the CPU in fp32, from the
  same weights and the same batches (real photos, in order), through our Trainer; the loss curves must
  agree within PARITY_TOLERANCE;
- `combinations`: the combinations only a GPU can show, each a short `hf-classifier train` that saves,
  reloads and evaluates: multitask on a ResNet in bf16, EMA in bf16, FSDP2 with one process (EMA +
  multitask), DeepSpeed ZeRO-2 with one process (EMA; skipped when deepspeed is not installed);
- `syncs`: host synchronisations per training step, counted with
  `torch.cuda.set_sync_debug_mode("warn")` over steps after the warm-up (our data path, our Trainer);
- `throughput`: ViT-B/16 and ConvNeXt-T from configs at 224 px in bf16: images/s on a synthetic
  in-memory batch and through the real data path (prepared copies and raw photos; light, medium, strong),
  the loader overhead (1 - real / synthetic) and MFU against a bf16 matmul rate measured in this run;
- `predict`: `predict` images/s against a `pipeline("image-classification")` loop.

`--smoke` runs the same code on the CPU with tiny sizes and few steps (the "GPU" side of the parity is
CPU bf16 autocast; the GPU-only combinations and the sync count are skipped with the reason), so that
CI proves the check itself works.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import training_throughput  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_classifier.data.images import available_cpus  # noqa: E402
from hf_classifier.io_utils import write_json  # noqa: E402

# bf16 autocast against fp32 over 50 steps of the same batches: the per-step losses drift apart as the
# weights do. Measured on the CPU (bf16 autocast vs fp32, the same 50 steps of ViT-Ti): see RESULTS.md.
PARITY_TOLERANCE = {"max_abs_difference": 0.1, "mean_abs_difference": 0.03}
FULL = {
    "parity_steps": 50,
    "parity_batch": 32,
    "parity_lr": 5e-5,
    "models": ["vit-b16", "convnext-t"],
    "modes": [
        "synthetic",
        "prepared-light",
        "prepared-medium",
        "prepared-strong",
        "raw-light",
        "raw-medium",
        "raw-strong",
    ],
    "throughput_steps": 20,
    "throughput_batch": 256,
    "sync_steps": 10,
    "combination_steps": 6,
    "predict_model": "vit-b16",
    "predict_images": 400,
    "matmul_size": 8192,
}
SMOKE = {
    "parity_steps": 4,
    "parity_batch": 4,
    "parity_lr": 1e-3,
    "models": ["vit-test"],
    "modes": ["synthetic", "prepared-light", "raw-strong"],
    "throughput_steps": 2,
    "throughput_batch": 4,
    "sync_steps": 2,
    "combination_steps": 2,
    "predict_model": "vit-test",
    "predict_images": 8,
    "matmul_size": 256,
}


def section(results: dict, name: str, function: Callable[[], Any]) -> None:
    """Run one section; record its result, or its failure (with the traceback's last lines)."""
    started = time.perf_counter()
    try:
        outcome = function()
        results[name] = {"status": "ok", **outcome} if isinstance(outcome, dict) else {"status": "ok"}
    except Skipped as reason:
        results[name] = {"status": "skipped", "reason": str(reason)}
    except Exception as error:  # noqa: BLE001 - the check reports every failure and goes on
        results[name] = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}"[:2000],
            "traceback": traceback.format_exc()[-3000:],
        }
    results[name]["seconds"] = round(time.perf_counter() - started, 1)
    print(f"[gpu_check] {name}: {results[name]['status']} ({results[name]['seconds']} s)", flush=True)


class Skipped(Exception):
    """A section that cannot run here (no GPU, no deepspeed, no data): recorded with the reason."""


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---- environment ------------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict:
    import accelerate
    import datasets
    import PIL
    import transformers

    shm = shutil.disk_usage("/dev/shm") if os.path.isdir("/dev/shm") else None
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "pillow": PIL.__version__,
    }
    try:
        import deepspeed

        versions["deepspeed"] = deepspeed.__version__
    except ImportError:
        versions["deepspeed"] = None
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "nproc": os.cpu_count(),
        "cpus_available": available_cpus(),
        "dev_shm_bytes": shm.total if shm else None,
        "dev_shm_free_bytes": shm.free if shm else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "versions": versions,
        "smoke": args.smoke,
    }


# ---- parity: bf16 on the GPU against fp32 on the CPU --------------------------------------------


def parity_batches(args: argparse.Namespace, processor: Any, count: int) -> tuple[list[dict], list[str]]:
    """`count` examples (uint8 pixels + label) from the real photos, through the evaluation transform:
    deterministic, so both sides see the same pixels."""
    from hf_classifier.data.sources import from_image_folder
    from hf_classifier.transforms.pipeline import ExampleTransform, create_transform

    data = from_image_folder(args.data_dir)
    train = data.splits["train"].shuffle(seed=0)
    train = train.select([i % len(train) for i in range(count)]).with_transform(
        ExampleTransform(create_transform(processor))
    )
    examples = [{"pixel_values": row["pixel_values"], "labels": row["labels"]} for row in train]
    return examples, data.labels


class _InOrder(torch.utils.data.Dataset):
    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


def train_losses(
    model: torch.nn.Module, processor: Any, examples: list[dict], device_side: bool, work: Path, config: dict
) -> list[float]:
    """Per-step training losses of `model` on `examples`, in order, through our Trainer: on the GPU in
    bf16 (`device_side`; CPU bf16 autocast when there is no GPU), or on the CPU in fp32."""
    from hf_classifier.cli.arguments import ClassifierTrainingArguments
    from hf_classifier.training.run import finetune_plan
    from hf_classifier.training.trainer import ImageClassificationTrainer
    from hf_classifier.transforms.pipeline import collate_examples, create_normalizer

    class InOrderTrainer(ImageClassificationTrainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return torch.utils.data.SequentialSampler(self.train_dataset)

    use_cpu = not (device_side and torch.cuda.is_available())
    training_args = ClassifierTrainingArguments(
        output_dir=str(work / f"parity-{'device' if device_side else 'cpu'}"),
        max_steps=config["parity_steps"],
        per_device_train_batch_size=config["parity_batch"],
        learning_rate=config["parity_lr"],
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=use_cpu,
        bf16=device_side,
        tf32=False,  # fp32 matmuls on the GPU side too: bf16 autocast is the only difference
        seed=0,
    )
    trainer = InOrderTrainer(
        model=model,
        args=training_args,
        train_dataset=_InOrder(examples),
        data_collator=collate_examples,
        normalizer=create_normalizer(processor),
        plan=finetune_plan(model, training_args),
    )
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def parity(args: argparse.Namespace, config: dict, work: Path) -> dict:
    from hf_classifier.models.build import build_model, load_image_processor

    if args.smoke:
        checkpoint = _tiny_checkpoint(work, "vit-test")
    else:
        checkpoint = args.vit_ti
        if not Path(checkpoint).is_dir():
            raise Skipped(f"{checkpoint} not found (the pretrained ViT-Ti)")
    processor = load_image_processor(checkpoint)
    examples, labels = parity_batches(args, processor, config["parity_steps"] * config["parity_batch"])
    torch.manual_seed(0)
    reference = build_model(checkpoint, labels, from_config=args.smoke)
    curves = {}
    for side in ("device", "cpu"):
        curves[side] = train_losses(
            copy.deepcopy(reference), processor, examples, side == "device", work, config
        )
    differences = [abs(a - b) for a, b in zip(curves["device"], curves["cpu"], strict=True)]
    result = {
        "device_side": "cuda bf16" if torch.cuda.is_available() else "cpu bf16 autocast (no GPU)",
        "steps": len(differences),
        "loss_device": curves["device"],
        "loss_cpu_fp32": curves["cpu"],
        "max_abs_difference": max(differences),
        "mean_abs_difference": statistics.fmean(differences),
        "tolerance": PARITY_TOLERANCE,
    }
    within = all(result[key] <= limit for key, limit in PARITY_TOLERANCE.items())
    if len(differences) != config["parity_steps"] or not within:
        raise AssertionError(f"loss curves differ beyond the tolerance: {json.dumps(result)}")
    return result


# ---- combinations only a GPU shows --------------------------------------------------------------


def _tiny_checkpoint(work: Path, kind: str) -> str:
    """A small checkpoint folder (config + processor; `--from_config` builds random weights)."""
    from transformers import ConvNextConfig, ConvNextImageProcessor, ResNetConfig

    folder = work / f"checkpoint-{kind}"
    if folder.is_dir():
        return str(folder)
    if kind in training_throughput.MODELS:
        config_factory, processor_factory = training_throughput.MODELS[kind]
        config, processor = config_factory(), processor_factory()
    elif kind == "resnet":
        config = ResNetConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], embedding_size=16)
        processor = ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875)
    elif kind == "convnext":
        config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64])
        processor = ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875)
    else:
        raise ValueError(kind)
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def _demo_data(work: Path) -> Path:
    """A small Rare-Species-like folder with phyla (`phylum_family` folders), for the multitask runs."""
    from hf_classifier.quickstart.synthetic import make_demo_dataset

    root = work / "demo"
    if not root.is_dir():
        make_demo_dataset(root, counts=(10, 10, 10, 10, 10, 10), size_range=(64, 128), broken_files=False)
    return root


def combination_runs(args: argparse.Namespace, config: dict, work: Path) -> dict:
    """Each combination: a short `hf-classifier train` (in this process; under `accelerate launch` for
    FSDP2 / ZeRO-2) that saves and reloads a checkpoint (extra states included) and evaluates at the end.
    Without a GPU: multitask + EMA under CPU bf16 autocast, in one run."""
    gpu = torch.cuda.is_available()
    steps = config["combination_steps"]
    common = [
        f"--data_dir={_demo_data(work)}",
        "--from_config=true",
        f"--max_steps={steps}",
        "--per_device_train_batch_size=8",
        "--per_device_eval_batch_size=16",
        "--eval_strategy=steps",
        "--save_strategy=steps",
        f"--eval_steps={max(1, steps // 2)}",
        f"--save_steps={max(1, steps // 2)}",
        "--dataloader_num_workers=0",
        "--report_to=none",
        "--disable_tqdm=true",
        "--bf16=true",
        *([] if gpu else ["--use_cpu=true"]),
    ]
    runs = {
        "multitask_resnet_bf16": ([], ["resnet", "--hierarchy=multitask"]),
        "ema_convnext_bf16": ([], ["convnext", "--ema_decay=0.99"]),
    }
    if not gpu:  # what CPU bf16 autocast can show, in one run (a process start costs seconds)
        runs = {"multitask_ema_resnet_bf16": ([], ["resnet", "--hierarchy=multitask", "--ema_decay=0.99"])}
    runs |= {
        "fsdp2_vit_ema_multitask": (
            ["--config_file", str(ROOT / "configs/accelerate/fsdp.yaml")],
            ["vit-test", "--ema_decay=0.99", "--hierarchy=multitask"],
        ),
        "deepspeed_zero2_convnext_ema": (
            ["--config_file", str(ROOT / "configs/accelerate/deepspeed_zero2.yaml")],
            ["convnext", "--ema_decay=0.99"],
        ),
    }
    results = {}
    for name, (launch, (kind, *flags)) in runs.items():
        if launch and not gpu:
            results[name] = {"status": "skipped", "reason": "needs a CUDA GPU (FSDP2 / DeepSpeed)"}
            continue
        if "deepspeed" in name and not _importable("deepspeed"):
            results[name] = {
                "status": "skipped",
                "reason": "deepspeed is not installed (pip install deepspeed)",
            }
            continue
        output_dir = work / f"combination-{name}"
        argv = [f"--model_name_or_path={_tiny_checkpoint(work, kind)}", f"--output_dir={output_dir}"]
        argv += [*common, *flags]
        started = time.perf_counter()
        if launch:  # a launcher of its own: a process of its own
            command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", "1"]
            command += ["-m", "hf_classifier", "train", *argv]
            finished = subprocess.run(
                command, capture_output=True, text=True, timeout=args.combination_timeout
            )
            problem = (
                None if finished.returncode == 0 else f"exit {finished.returncode}: {finished.stderr[-2500:]}"
            )
        else:  # in this process: no second start-up (seconds of imports) per run
            problem = _train_in_process(argv)
        seconds = round(time.perf_counter() - started, 1)
        if problem is None and not (output_dir / "eval_results.json").is_file():
            problem = "the run ended without eval_results.json"
        results[name] = {"status": "ok" if problem is None else "failed", "seconds": seconds}
        if problem is not None:
            results[name]["error"] = problem
        print(f"[gpu_check]   {name}: {results[name]['status']} ({seconds} s)", flush=True)
    failed = [name for name, r in results.items() if r["status"] == "failed"]
    if failed:
        raise AssertionError(f"failed: {', '.join(failed)}; details: {json.dumps(results)}")
    return {"runs": results}


def _train_in_process(argv: list[str]) -> str | None:
    """`hf-classifier train ARGV` in this process; the failure with its traceback's end, or None."""
    from hf_classifier.cli.arguments import (
        ClassifierTrainingArguments,
        DataArguments,
        ModelArguments,
        parse_args,
    )
    from hf_classifier.training.run import train

    try:
        train(*parse_args((DataArguments, ModelArguments, ClassifierTrainingArguments), argv))
    except Exception:  # noqa: BLE001 - recorded in the report
        return traceback.format_exc()[-2500:]
    return None


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---- host synchronisations per step ---------------------------------------------------------------


class SyncCounter(TrainerCallback):
    """Turns CUDA's sync debug mode to "warn" for the steps in [start, start + count)."""

    def __init__(self, start: int, count: int):
        self.start, self.count = start, count

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's callback API
        if state.global_step == self.start:
            synchronize()
            torch.cuda.set_sync_debug_mode("warn")

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == self.start + self.count:
            torch.cuda.set_sync_debug_mode(0)


def syncs_per_step(args: argparse.Namespace, config: dict, work: Path) -> dict:
    if not torch.cuda.is_available():
        raise Skipped("needs a CUDA GPU (torch.cuda.set_sync_debug_mode)")
    steps, warmup = config["sync_steps"], 3
    options = argparse.Namespace(
        steps=warmup + steps, batch_size=config["throughput_batch"], workers=available_cpus()
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            training_throughput.run(
                "prepared-light",
                config["models"][0],
                args.data_dir,
                options,
                work,
                [SyncCounter(warmup, steps)],
            )
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    return {
        "model": config["models"][0],
        "steps_counted": steps,
        "syncs_per_step": len(syncs) / steps,
        "distinct_messages": sorted(set(syncs))[:10],
        "note": "our Trainer with the default logging_steps: a step that logs syncs once (the loss)",
    }


# ---- throughput and MFU --------------------------------------------------------------------------


def matmul_flops(size: int) -> tuple[float, str]:
    """The best measured dense matmul rate: bf16 on the GPU, fp32 on the CPU (indicative only)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize()
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        for _ in range(5):
            a @ b
        synchronize()
        best = min(best, (time.perf_counter() - started) / 5)
    return (
        2 * size**3 / best,
        f"best measured {str(dtype).removeprefix('torch.')} {size}x{size} matmul on {device}",
    )


def throughput(args: argparse.Namespace, config: dict, work: Path) -> dict:
    from transformers import AutoModelForImageClassification

    peak, peak_source = matmul_flops(config["matmul_size"])
    options = argparse.Namespace(
        steps=config["throughput_steps"], batch_size=config["throughput_batch"], workers=available_cpus()
    )
    rows = []
    for name in config["models"]:
        model_config = training_throughput.MODELS[name][0]()
        flops = 3 * training_throughput.forward_flops(
            AutoModelForImageClassification.from_config(model_config),
            getattr(model_config, "image_size", 224),
        )
        synthetic = None
        for mode in config["modes"]:
            images_per_second = training_throughput.run(mode, name, args.data_dir, options, work)
            synthetic = images_per_second if mode == "synthetic" else synthetic
            row = {
                "model": name,
                "mode": mode,
                "images_per_second": images_per_second,
                "mfu": images_per_second * flops / peak,
            }
            if synthetic and mode != "synthetic":
                row["loader_overhead"] = 1 - images_per_second / synthetic
            rows.append(row)
            print(f"[gpu_check]   {json.dumps(row)}", flush=True)
    return {
        "peak_flops": peak,
        "peak_source": peak_source,
        "batch_size": options.batch_size,
        "steps": options.steps,
        "workers": options.workers,
        "precision": "bf16" if torch.cuda.is_available() else "fp32 (CPU)",
        "rows": rows,
    }


# ---- predict against a pipeline loop -----------------------------------------------------------


def predict_speed(args: argparse.Namespace, config: dict, work: Path) -> dict:
    from transformers import AutoModelForImageClassification, pipeline

    from hf_classifier.data.resolve import image_files_below
    from hf_classifier.evaluation.predictions import predict

    name = config["predict_model"]
    paths = [str(p.resolve()) for p in image_files_below(Path(args.data_dir))[0]][: config["predict_images"]]
    folder = work / f"predict-{name}"
    config_factory, processor_factory = training_throughput.MODELS[name]
    model_config = config_factory()
    model_config.id2label = {i: f"family{i}" for i in range(200)}
    model_config.label2id = {v: k for k, v in model_config.id2label.items()}
    AutoModelForImageClassification.from_config(model_config).save_pretrained(folder)
    processor_factory().save_pretrained(folder)
    listing = work / "predict-inputs.csv"
    listing.write_text("file_path\n" + "\n".join(paths) + "\n")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    classifier = pipeline("image-classification", model=str(folder), device=device)
    classifier(paths[0])  # warm-up
    synchronize()
    started = time.perf_counter()
    for path in paths:
        classifier(path)
    synchronize()
    loop = len(paths) / (time.perf_counter() - started)
    started = time.perf_counter()
    summary = predict(
        str(folder), [str(listing)], work / "predictions.csv", batch_size=64, num_workers=available_cpus()
    )
    synchronize()
    batched = len(paths) / (time.perf_counter() - started)
    if summary.errors:
        raise AssertionError(f"{summary.errors} images could not be read")
    return {
        "model": name,
        "images": len(paths),
        "pipeline_loop_img_s": loop,
        "predict_img_s": batched,
        "speedup": batched / loop,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, few steps (CI)")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared/data/hymenoptera"))
    parser.add_argument("--vit_ti", default=str(ROOT.parent / "shared/models/vit_tiny_patch16_224"))
    parser.add_argument("--sections", default="parity,combinations,syncs,throughput,predict")
    parser.add_argument("--combination_timeout", type=int, default=240, help="seconds per combination run")
    args = parser.parse_args()
    config = SMOKE if args.smoke else FULL
    if not args.smoke and not torch.cuda.is_available():
        print("[gpu_check] no CUDA GPU: the figures are CPU figures (use --smoke for the quick check)")
    if not Path(args.data_dir).is_dir():
        raise SystemExit(f"error: --data_dir {args.data_dir}: no such folder (photos in class folders)")

    started = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(args), "config": config}
    sections = {
        "parity": parity,
        "combinations": combination_runs,
        "syncs": syncs_per_step,
        "throughput": throughput,
        "predict": predict_speed,
    }
    with tempfile.TemporaryDirectory(prefix="hf_classifier_gpu_check_") as tmp:
        for name in args.sections.split(","):
            section(results, name, lambda function=sections[name]: function(args, config, Path(tmp)))
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["ok"] = all(
        isinstance(value, dict) and value.get("status") != "failed"
        for key, value in results.items()
        if key in sections
    )
    write_json(args.json, results)
    print(f"[gpu_check] {'all ok' if results['ok'] else 'FAILED'} in {results['seconds']} s: {args.json}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
