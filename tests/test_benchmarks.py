"""The benchmarks themselves: the GPU check's CPU smoke mode, a batch larger than an epoch, the
side-by-side script's settings, and timing that waits for the device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TRAIN_ARGS

from hf_classifier.cli.arguments import parse_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_gpu_check_smoke_runs_every_section_on_the_cpu(hymenoptera, tmp_path):
    """One command, one JSON; the parity curves agree, the GPU-only parts say why they did not run."""
    output = tmp_path / "gpu_check.json"
    finished = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--smoke", f"--data_dir={hymenoptera}"]
        + [f"--json={output}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = json.loads(output.read_text())
    assert finished.returncode == 0, json.dumps(results, indent=1)[-4000:]
    assert results["ok"] is True

    environment = results["environment"]
    assert environment["nproc"] >= 1 and environment["cpus_available"] >= 1
    assert environment["versions"]["torch"] == torch.__version__
    assert "--smoke" in environment["command"]

    parity = results["parity"]
    steps = results["config"]["parity_steps"]
    assert parity["status"] == "ok" and parity["steps"] == steps
    assert len(parity["loss_device"]) == len(parity["loss_cpu_fp32"]) == steps
    assert parity["loss_device"] != parity["loss_cpu_fp32"]  # bf16 really ran on one side
    assert parity["max_abs_difference"] <= parity["tolerance"]["max_abs_difference"]

    runs = results["combinations"]["runs"]
    assert runs["multitask_ema_resnet_bf16"]["status"] == "ok"
    assert runs["fsdp2_vit_ema_multitask"]["status"] == "skipped"
    assert "GPU" in runs["fsdp2_vit_ema_multitask"]["reason"]
    assert results["syncs"]["status"] == "skipped" and "GPU" in results["syncs"]["reason"]

    rows = {row["mode"]: row for row in results["throughput"]["rows"]}
    assert set(rows) == set(results["config"]["modes"])
    assert all(row["images_per_second"] > 0 for row in rows.values())
    assert "loader_overhead" in rows["raw-strong"] and "loader_overhead" not in rows["synthetic"]

    predict = results["predict"]
    assert predict["images"] == results["config"]["predict_images"]
    assert predict["speedup"] == pytest.approx(predict["predict_img_s"] / predict["pipeline_loop_img_s"])


def test_training_throughput_batch_larger_than_an_epoch():
    """6 images and a batch of 8 for 3 steps: the data repeat into one epoch of full batches (without
    it the benchmark made no step, then failed with a TypeError)."""
    import training_throughput
    from datasets import Dataset

    images = Dataset.from_dict({"image": [f"img{i}.jpg" for i in range(6)], "label": [0, 1] * 3})
    repeated = training_throughput.repeated_to(images, 8 * 3)
    assert len(repeated) >= 8 * 3 and len(repeated) % 6 == 0
    assert repeated["image"][6:12] == images["image"]
    assert training_throughput.repeated_to(images, 4) is images  # already enough: left alone


def test_training_throughput_names_too_few_steps():
    import training_throughput

    timer = training_throughput.StepTimer(warmup=2, batch=8)
    with pytest.raises(SystemExit, match="raise --steps"):
        timer.images_per_second()


def test_peer_example_gives_our_side_the_same_settings(tmp_path):
    """The side-by-side comparison is fair only if our side really runs the example's settings."""
    import peer_example

    command = peer_example.ours_command("data", "model", str(tmp_path / "out"), 3, 2, ["--prepare"])
    assert command[1:4] == ["-m", "hf_classifier", "train"]
    data_args, _, training_args = parse_args(TRAIN_ARGS, command[4:])
    assert training_args.learning_rate == 5e-5
    assert str(training_args.lr_scheduler_type.value) == "cosine"
    assert training_args.warmup_steps == 0.1
    assert training_args.weight_decay == 0.05
    assert training_args.per_device_train_batch_size == training_args.per_device_eval_batch_size == 32
    assert training_args.num_train_epochs == 3 and training_args.dataloader_num_workers == 2
    assert str(training_args.eval_strategy.value) == "epoch" and training_args.use_cpu
    assert data_args.prepare is True


def test_forward_only_times_after_the_device_finished(monkeypatch, tmp_path):
    """The clock starts after the warm-up has run on the device and stops after the last batch has:
    with GPU kernels queued asynchronously, timing without a sync measures the queueing."""
    import predict_throughput
    from transformers import ViTConfig, ViTForImageClassification

    folder = tmp_path / "vit"
    ViTForImageClassification(
        ViTConfig(image_size=224, patch_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(folder)
    events: list[str] = []
    real_clock = predict_throughput.time.perf_counter

    def clock() -> float:
        events.append("clock")
        return real_clock()

    monkeypatch.setattr(predict_throughput, "synchronize", lambda device: events.append("sync"))
    monkeypatch.setattr(predict_throughput.time, "perf_counter", clock)
    predict_throughput.forward_only(folder, batch_size=2, images=4, precision="fp32")
    # warm-up, sync, start the clock, ..., sync, stop the clock
    assert events == ["sync", "clock", "sync", "clock"]


def test_forward_only_feeds_each_model_its_own_image_size(tmp_path):
    """The benchmarks share one table of models (`common.MODELS`): the 32-px smoke model must run in the
    predict benchmark's forward-only ceiling too, not only the 224-px ones."""
    import predict_throughput
    from common import MODELS
    from transformers import AutoModelForImageClassification

    config_factory, _ = MODELS["vit-test"]
    AutoModelForImageClassification.from_config(config_factory()).save_pretrained(tmp_path / "vit-test")
    assert (
        predict_throughput.forward_only(tmp_path / "vit-test", batch_size=2, images=2, precision="fp32") > 0
    )


def test_recipes_resume_adds_the_stored_runs_a_row_lacks(tmp_path):
    """A grid continued later, or split over processes by seed, must neither lose nor double a run."""
    import recipes

    def run(seed: int, f1: float = 0.9) -> dict:
        return {"seed": seed, "f1_macro": f1, "accuracy": f1, "seconds": 1.0, "cpu_seconds": 1.0}

    path = tmp_path / "results.json"
    stored = [
        {"name": "full", "runs": [run(2, 0.8), run(0, 1.0)]},
        {"name": "linear_probe", "runs": [run(1)]},
    ]
    path.write_text(json.dumps({"rows": stored}))
    rows = [
        {"name": "full", "runs": [run(1, 0.9)]},
        {"name": "linear_probe", "runs": [run(1, 0.5)]},
        {"name": "gradual_unfreeze", "runs": []},
    ]
    recipes.merge_stored_runs(rows, path)
    assert [r["seed"] for r in rows[0]["runs"]] == [0, 1, 2]
    assert rows[0]["summary"]["f1_macro_mean"] == 0.9
    assert rows[1]["runs"] == [run(1, 0.5)]  # this process's own run of a seed is kept, not doubled
    assert rows[2]["runs"] == [] and "summary" not in rows[2]

    # A process running fewer rows (--rows) keeps the stored rows it does not run, in the file's order.
    path.write_text(json.dumps({"rows": stored + [{"name": "gradual_unfreeze", "runs": [run(0)]}]}))
    rows = [{"name": "linear_probe", "runs": []}, {"name": "reference", "runs": []}]
    recipes.merge_stored_runs(rows, path)
    assert [row["name"] for row in rows] == ["full", "linear_probe", "gradual_unfreeze", "reference"]
    assert [len(row["runs"]) for row in rows] == [2, 1, 1, 0]


def test_recipes_table_shows_a_spread_only_where_there_are_several_runs():
    import recipes

    def run(seed: int, f1: float) -> dict:
        return {"seed": seed, "f1_macro": f1, "accuracy": f1, "seconds": 2.0, "cpu_seconds": 1.0}

    rows = [
        {"name": "full", "augmentation": "light", "runs": [run(0, 0.9), run(1, 0.95)]},
        {"name": "linear_probe", "augmentation": "light", "runs": [run(0, 0.8)]},
        {"name": "gradual_unfreeze", "augmentation": "light", "runs": []},
    ]
    lines = recipes.markdown_table(rows).splitlines()
    assert len(lines) == 4  # header, rule, and the two rows that have runs
    assert "| full | light | 2 | 0.925 ± 0.035 | 0.925 ± 0.035 | 2 | 1 |" == lines[2]
    assert "| linear_probe | light | 1 | 0.800 | 0.800 | 2 | 1 |" == lines[3]  # no "± 0.000"
