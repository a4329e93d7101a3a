#!/usr/bin/env python
"""What a finished training costs the code that runs after it, in one process: a short training
through our Trainer, then freeing it (`gc.collect()`), with the training loader's persistent workers
stopped when training ends (ours) or left to the garbage collector (as before: torch then waits 5 s
for each worker). The two sides alternate (ABAB), in one run.

    python benchmarks/trainer_teardown.py --data_dir ../shared/data/hymenoptera --workers 2 --repeats 3 \\
        --json benchmarks/results/trainer_teardown.json
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import training_throughput  # noqa: E402
from common import benchmark_parser, machine, report  # noqa: E402

import hf_classifier.training.trainer as trainer_module  # noqa: E402

SIDES = {
    "workers stopped at train end": lambda: mock.patch.object(
        trainer_module, "stop_persistent_workers", trainer_module.stop_persistent_workers
    ),
    "workers left to the garbage collector": lambda: mock.patch.object(
        trainer_module, "stop_persistent_workers", lambda loader: None
    ),
}


def timed_run(side: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Seconds of the training, and of freeing it afterwards."""
    options = argparse.Namespace(steps=args.steps, batch_size=args.batch_size, workers=args.workers)
    gc.collect()
    with SIDES[side]():
        started = time.perf_counter()
        training_throughput.run(args.mode, args.model, args.data_dir, options, work)
        trained = time.perf_counter()
        gc.collect()
        freed = time.perf_counter()
    return {"train_s": trained - started, "free_s": freed - trained}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", default="vit-test", help="of common.MODELS")
    parser.add_argument("--mode", default="prepared-light", help="a training_throughput.py mode")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="hf_classifier_teardown_") as tmp:
        timed_run(next(iter(SIDES)), args, Path(tmp))  # warm-up: the prepared cache, lazy imports
        for _ in range(args.repeats):
            for side in SIDES:
                runs[side].append(timed_run(side, args, Path(tmp)))
    medians = {
        side: statistics.median(r["train_s"] + r["free_s"] for r in rows) for side, rows in runs.items()
    }
    ours, before = medians.values()
    report(
        {
            "machine": machine(),
            "command": " ".join(sys.argv),
            "runs": runs,
            "median_train_plus_free_s": medians,
            "before_over_ours": before / ours,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
