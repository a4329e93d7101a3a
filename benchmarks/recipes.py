#!/usr/bin/env python
"""Which fine-tuning recipe keeps what a pretrained checkpoint knows: every strategy and augmentation
preset, the same epoch budget, several seeds, measured on a data folder or CSV.

    python benchmarks/recipes.py --model_name_or_path ../shared/models/vit_tiny_patch16_224 \\
        --data_dir ../shared/data/hymenoptera --epochs 3 --seeds 0,1,2 \\
        --json benchmarks/results/recipes_vit_tiny.json

Each row is one recipe, run once per seed through `hf_classifier.training.run.train` (one process; `--prepare`
decodes every photo once for all runs). Reported per row: validation macro-F1 and accuracy (mean ± sd over
the seeds) of the model the run keeps, and the wall and CPU time per run (CPU time stays comparable
between rows on a shared machine). Rows:

- `full`, `linear_probe`, `freeze_then_unfreeze`, `gradual_unfreeze`, `full + layer_decay`: the strategies,
  with the `light` augmentation;
- `full` with the head at the backbone's rate (`head at 1x`), to see whether a faster head helps;
- `full` with each augmentation preset (`none`, `medium`, `strong`; `light` is the `full` row);
- `full` at other learning rates (`--learning_rates`), to see whether a low rate helps;
- `reference`: transformers' image-classification example's recipe, i.e. plain `TrainingArguments` defaults
  (learning rate 5e-5, linear schedule, no warmup, no weight decay), full fine-tuning, torchvision's
  `RandomResizedCrop` default (8-100 % of the area, aspect 3:4-4:3) + horizontal flip, and the last epoch
  kept (no best-epoch selection).

Every row shares `--epochs`, `--batch_size` and `--head_learning_rate_factor` (the new head's rate is
`factor x lr`, except in the reference row, which has no separate head rate).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_classifier.cli.arguments import (  # noqa: E402
    ClassifierTrainingArguments,
    DataArguments,
    ModelArguments,
    parse_args,
)
from hf_classifier.io_utils import write_json, write_text  # noqa: E402
from hf_classifier.training import run as training  # noqa: E402
from hf_classifier.transforms.pipeline import AUGMENTATION_PRESETS, AugmentationPreset  # noqa: E402

# torchvision's RandomResizedCrop defaults + RandomHorizontalFlip: the example script's training transform.
EXAMPLE_AUGMENTATION = "example_script"
AUGMENTATION_PRESETS.setdefault(
    EXAMPLE_AUGMENTATION, AugmentationPreset(crop_scale=(0.08, 1.0), horizontal_flip=True)
)
# Plain TrainingArguments defaults, which the example script does not change.
EXAMPLE_HYPERPARAMETERS = {
    "learning_rate": "5e-5",
    "lr_scheduler_type": "linear",
    "warmup_steps": "0",
    "weight_decay": "0",
    "load_best_model_at_end": "false",
}


def recipe_rows(args: argparse.Namespace) -> list[tuple[str, dict[str, str], str]]:
    """(name, flags, augmentation) for every row."""
    lr = args.learning_rate

    def base(rate: float = lr) -> dict[str, str]:
        return {"learning_rate": str(rate), "head_learning_rate": str(rate * args.head_learning_rate_factor)}

    rows = [
        ("full", {**base(), "finetune_strategy": "full"}, "light"),
        ("linear_probe", {**base(), "finetune_strategy": "linear_probe"}, "light"),
        ("freeze_then_unfreeze", {**base(), "finetune_strategy": "freeze_then_unfreeze"}, "light"),
        ("gradual_unfreeze", {**base(), "finetune_strategy": "gradual_unfreeze"}, "light"),
        (
            f"full + layer_decay {args.layer_decay:g}",
            {**base(), "finetune_strategy": "full", "layer_decay": str(args.layer_decay)},
            "light",
        ),
    ]
    rows.append(("full, head at 1x", {**base(), "head_learning_rate": str(lr)}, "light"))
    rows += [(f"full, augmentation {name}", {**base()}, name) for name in ("none", "medium", "strong")]
    rows += [(f"full, lr {rate:g}", {**base(rate)}, "light") for rate in args.learning_rates]
    rows.append(("reference: example script", dict(EXAMPLE_HYPERPARAMETERS), EXAMPLE_AUGMENTATION))
    if args.rows:
        wanted = set(args.rows.split(","))
        rows = [row for row in rows if row[0].split(",")[0].split(" ")[0] in wanted or row[0] in wanted]
    return rows


def common_flags(args: argparse.Namespace, output_dir: Path, seed: int) -> list[str]:
    flags = {
        "model_name_or_path": args.model_name_or_path,
        "output_dir": str(output_dir),
        "num_train_epochs": str(args.epochs),
        "per_device_train_batch_size": str(args.batch_size),
        "per_device_eval_batch_size": "64",
        "dataloader_num_workers": str(args.workers),
        "seed": str(seed),
        "report_to": "none",
        "disable_tqdm": "true",
        "logging_steps": "5",
        "save_total_limit": "1",
        "prepare": "true",
        "prepared_cache_dir": str(args.cache_dir),
        "skip_bad_images": "true",
    }
    if args.max_train_samples:
        flags["max_train_samples"] = str(args.max_train_samples)
    if args.max_eval_samples:
        flags["max_eval_samples"] = str(args.max_eval_samples)
    source = (
        ["--metadata_csv", args.metadata_csv, "--label_column", args.label_column]
        if args.metadata_csv
        else []
    )
    if args.data_dir:
        source = ["--data_dir", args.data_dir]
    return source + [token for key, value in flags.items() for token in (f"--{key}", value)]


def _no_report(*args, **kwargs) -> None:
    """Stands in for the per-run evaluation folder and model card, which these figures do not use."""


def run_once(args: argparse.Namespace, flags: dict[str, str], augmentation: str, seed: int, data) -> dict:
    with tempfile.TemporaryDirectory(prefix="recipes_") as folder:
        argv = common_flags(args, Path(folder), seed)
        argv += [token for key, value in flags.items() for token in (f"--{key}", value)]
        data_args, model_args, training_args = parse_args(
            (DataArguments, ModelArguments, ClassifierTrainingArguments), argv
        )
        data_args.augmentation = augmentation  # the reference preset is not one of the CLI choices
        started, cpu_started = time.perf_counter(), time.process_time()
        with mock.patch.object(training, "describe_run", _no_report):
            outcome = training.train(data_args, model_args, training_args, concise_logs=True, data=data)
        seconds = time.perf_counter() - started
        # CPU time of this process (all its threads; workers are 0 by default): comparable between rows
        # even when the machine is shared, where wall time is not.
        cpu_seconds = time.process_time() - cpu_started
        history = json.loads((Path(folder) / "trainer_state.json").read_text())["log_history"]
        per_epoch = [round(entry["eval_f1_macro"], 4) for entry in history if "eval_f1_macro" in entry]
    return {
        "seed": seed,
        "f1_macro": outcome.metrics["eval_f1_macro"],
        "accuracy": outcome.metrics["eval_accuracy"],
        "f1_macro_per_epoch": per_epoch,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
    }


def summarise(runs: list[dict]) -> dict:
    def mean_sd(key: str) -> tuple[float, float]:
        values = [run[key] for run in runs]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    f1, f1_sd = mean_sd("f1_macro")
    accuracy, accuracy_sd = mean_sd("accuracy")
    seconds, _ = mean_sd("seconds")
    cpu_seconds = statistics.mean(run.get("cpu_seconds", float("nan")) for run in runs)
    return {
        "f1_macro_mean": round(f1, 4),
        "f1_macro_sd": round(f1_sd, 4),
        "accuracy_mean": round(accuracy, 4),
        "accuracy_sd": round(accuracy_sd, 4),
        "seconds_per_run": round(seconds, 1),
        "cpu_seconds_per_run": round(cpu_seconds, 1),
    }


def merge_stored_runs(rows: list[dict], path: str | Path) -> None:
    """Add to `rows` the runs that `path` holds and they lack (matched by row name and seed), and the
    stored rows this process does not run (`--rows`), in the file's order: nothing stored is dropped."""
    if not Path(path).is_file():
        return
    stored = json.loads(Path(path).read_text(encoding="utf-8"))["rows"]
    ours = {row["name"]: row for row in rows}
    for stored_row in stored:
        row = ours.get(stored_row["name"])
        if row is None:
            continue
        seeds = {run["seed"] for run in row["runs"]}
        row["runs"] += [run for run in stored_row["runs"] if run["seed"] not in seeds]
        row["runs"].sort(key=lambda run: run["seed"])
        if row["runs"]:
            row["summary"] = summarise(row["runs"])
    stored_names = {row["name"] for row in stored}
    rows[:] = [ours.get(row["name"], row) for row in stored] + [
        row for row in rows if row["name"] not in stored_names
    ]


def markdown_table(rows: list[dict]) -> str:
    """One line per row that has runs; `seeds` says how many (a benchmark cut short has fewer)."""
    lines = [
        "| recipe | augmentation | seeds | macro-F1 (mean ± sd) | accuracy (mean ± sd) | s / run | CPU s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row["runs"]:
            continue
        s = summarise(row["runs"])
        single = len(row["runs"]) == 1  # one run has no spread: do not print a zero sd
        f1, accuracy = (
            f"{s[key + '_mean']:.3f}" + ("" if single else f" ± {s[key + '_sd']:.3f}")
            for key in ("f1_macro", "accuracy")
        )
        lines.append(
            f"| {row['name']} | {row['augmentation']} | {len(row['runs'])} "
            f"| {f1} | {accuracy} | {s['seconds_per_run']:.0f} "
            f"| {s['cpu_seconds_per_run']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def table_from_json(path: str | Path) -> str:
    """The markdown table of a results file, also of one still being written."""
    return markdown_table(json.loads(Path(path).read_text(encoding="utf-8"))["rows"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--data_dir")
    parser.add_argument("--metadata_csv")
    parser.add_argument("--label_column", default="family")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--head_learning_rate_factor", type=float, default=10.0)
    parser.add_argument("--layer_decay", type=float, default=0.75)
    parser.add_argument(
        "--learning_rates", default="", help="Extra `full` rows at these rates (comma-separated)."
    )
    parser.add_argument("--max_train_samples", type=int, default=None, help="A fixed random subset.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="A fixed random subset.")
    parser.add_argument(
        "--rows", default="", help="Only these rows (first word of the name, comma-separated)."
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers (prepared copies are cheap)."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    parser.add_argument("--cache_dir", default=str(Path(tempfile.gettempdir()) / "recipes_prepared"))
    parser.add_argument("--json", required=True, help="Results file (rewritten after every row).")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Keep the runs already in --json and run only the missing (row, seed) pairs; the file is "
        "re-read before every write, so processes with different --seeds can share it.",
    )
    args = parser.parse_args(argv)
    if bool(args.data_dir) == bool(args.metadata_csv):
        parser.error("give exactly one of --data_dir and --metadata_csv")
    args.learning_rates = [float(rate) for rate in args.learning_rates.split(",") if rate]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)

    # Load, check, prepare and split once; every run then reads the prepared copies.
    with tempfile.TemporaryDirectory(prefix="recipes_data_") as folder:
        data_args, model_args, training_args = parse_args(
            (DataArguments, ModelArguments, ClassifierTrainingArguments), common_flags(args, Path(folder), 0)
        )
        data = training.load_training_data(data_args, model_args, training_args)

    started = time.perf_counter()
    results: dict = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "model": Path(args.model_name_or_path).name,
        "data": {name: len(split) for name, split in data.splits.items()},
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seeds": seeds,
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
        "rows": [],
    }
    rows = [
        {"name": name, "flags": flags, "augmentation": augmentation, "runs": []}
        for name, flags, augmentation in recipe_rows(args)
    ]
    results["rows"] = rows
    to_run = list(rows)  # merging may add rows that other processes run
    if args.resume:
        merge_stored_runs(rows, args.json)
    # Seed by seed over all rows, so that a run cut short still compares every row.
    for seed in seeds:
        for row in to_run:
            if any(run["seed"] == seed for run in row["runs"]):
                continue
            row["runs"].append(run_once(args, row["flags"], row["augmentation"], seed, data))
            if args.resume:
                merge_stored_runs(rows, args.json)
            row["summary"] = summarise(row["runs"])
            results["seeds"] = sorted({run["seed"] for row in rows for run in row["runs"]})
            results["total_seconds"] = round(time.perf_counter() - started, 1)
            write_json(args.json, results)
            print(f"seed {seed}, {row['name']}: {row['runs'][-1]}", flush=True)
    table = markdown_table(results["rows"])
    write_text(Path(args.json).with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
