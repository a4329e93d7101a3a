"""The console command and the embedded quickstart, as a new user runs them."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_classifier.cli.commands import main
from hf_classifier.quickstart.run import QuickstartArguments, run_quickstart, summary


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("train", "predict", "quickstart"))


def test_unknown_command_exits_2(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_console_script_and_module_entry_points():
    result = subprocess.run(
        [sys.executable, "-m", "hf_classifier", "predict", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "--top_k" in result.stdout and "--input" in result.stdout


@pytest.mark.slow
def test_quickstart_learns_the_embedded_data_well_above_chance(tmp_path):
    result = run_quickstart(QuickstartArguments(output_dir=str(tmp_path / "qs")))
    assert result.chance == 1 / 6
    assert result.metrics["eval_f1_macro"] > 0.6  # chance is about 0.17
    assert result.new_photo_accuracy > 0.6
    model = result.model_dir
    for name in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "eval_results.json",
    ):
        assert (model / name).is_file()
    with (model / "bad_images.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2  # the planted empty and truncated files
    assert json.loads((model / "config.json").read_text())["hf_classifier"]["label_name"] == "family"
    # Prepared copies of the drawn data stay beside it, not in the user's cache (redrawn on every run).
    assert any((tmp_path / "qs" / "prepared").rglob("data*.arrow"))
    with result.predictions.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48 and list(rows[0])[:4] == ["id", "family", "phylum", "score"]
    text = summary(result)
    assert str(result.predictions) in text and "macro-F1" in text
    # The figures the README states are the ones this run measures (a fresh machine, 2 CPU cores).
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    stated = re.search(
        r"It reaches about ([0-9.]+) validation accuracy and ([0-9.]+) on the new photos", readme
    )
    assert stated, "the README's quickstart sentence changed; keep its figures checked here"
    assert abs(result.metrics["eval_accuracy"] - float(stated[1])) <= 0.03
    assert abs(result.new_photo_accuracy - float(stated[2])) <= 0.03
