"""Runs that survive faults: SIGKILL mid-epoch then resume, crash-safe outputs, safe weight loading."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import train_argv
from safetensors.torch import load_file

SCRIPTS = Path(__file__).parent / "scripts"


def run_python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS.parent), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_reaches_the_uninterrupted_result(
    clean_demo_data, vit_checkpoint, tmp_path
):
    def flags(output_dir: Path) -> list[str]:
        return train_argv(
            output_dir,
            data_dir=clean_demo_data.root,
            label_column="family",
            model_name_or_path=vit_checkpoint,
            num_train_epochs=3,
            per_device_train_batch_size=8,
            eval_strategy="steps",
            save_strategy="steps",
            eval_steps=4,
            save_steps=4,
            save_total_limit=None,
        )

    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    result = run_python("-m", "hf_classifier", "train", *flags(straight))
    assert result.returncode == 0, result.stderr[-3000:]
    steps_per_epoch = json.loads((straight / "trainer_state.json").read_text())["max_steps"] // 3
    kill_at = steps_per_epoch + 2  # inside the second epoch, after the checkpoint at step 4 or 8
    assert kill_at % 4 and kill_at > 4

    killed = run_python(str(SCRIPTS / "kill_at_step.py"), str(kill_at), *flags(crashed))
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (crashed / "model.safetensors").exists()  # nothing final was written
    last = max(int(p.name.split("-")[1]) for p in crashed.glob("checkpoint-*"))
    assert (
        last == kill_at // 4 * 4 and (crashed / f"checkpoint-{last}" / "checkpoint_complete.json").is_file()
    )
    # A checkpoint cut short while being written, newer than the last good one: it must be skipped.
    torn = crashed / f"checkpoint-{kill_at}"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\x00" * 100)

    # The same command again: it picks up the last complete checkpoint by itself.
    resumed = run_python("-m", "hf_classifier", "train", *flags(crashed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Skipping {torn}" in resumed.stderr
    assert f"checkpoint-{last}" in resumed.stderr  # "Resuming from ..."

    done, again = (json.loads((d / "all_results.json").read_text()) for d in (straight, crashed))
    for key in ("eval_accuracy", "eval_f1_macro"):
        assert done[key] == again[key], key
    assert again["eval_loss"] == pytest.approx(done["eval_loss"], rel=1e-4)
    a, b = load_file(straight / "model.safetensors"), load_file(crashed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)


def test_resume_flag_accepts_a_run_folder_and_rejects_a_missing_one(tmp_path):
    from hf_classifier.data.schema import DataSourceError
    from hf_classifier.training.checkpoints import checkpoint_to_resume

    run = tmp_path / "run"
    for step, complete in ((3, True), (6, True), (9, False)):
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "checkpoint_complete.json").write_text("{}")
    assert checkpoint_to_resume(None, run) == str(run / "checkpoint-6")
    assert checkpoint_to_resume("last", run) == str(run / "checkpoint-6")
    assert checkpoint_to_resume(str(run), tmp_path / "elsewhere") == str(run / "checkpoint-6")
    assert checkpoint_to_resume(str(run / "checkpoint-3"), run) == str(run / "checkpoint-3")
    assert checkpoint_to_resume(None, tmp_path / "new") is None
    assert checkpoint_to_resume("false", run) is None  # start afresh on purpose
    with pytest.raises(DataSourceError, match="no such folder"):
        checkpoint_to_resume(str(tmp_path / "missing"), run)
    with pytest.raises(DataSourceError, match="no complete checkpoint"):
        checkpoint_to_resume("true", tmp_path / "new")


# ---- atomic outputs ----------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def test_an_interrupted_write_leaves_no_final_file_and_keeps_the_old_one(tmp_path):
    from hf_classifier.io_utils import atomic_open, atomic_path, staging_folder, write_csv

    target = tmp_path / "predictions.csv"
    with pytest.raises(Interrupted):
        with atomic_open(target) as handle:
            handle.write("id,label\n1,")
            raise Interrupted
    assert list(tmp_path.iterdir()) == []

    def rows():
        yield ["1", "apidae"]
        raise Interrupted

    write_csv(target, ["id", "family"], [["0", "formicidae"]])
    with pytest.raises(Interrupted):
        write_csv(target, ["id", "family"], rows())
    assert target.read_text() == "id,family\n0,formicidae\n"  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]

    with pytest.raises(Interrupted):
        with atomic_path(tmp_path / "weights.safetensors") as temporary:
            temporary.write_bytes(b"half")
            raise Interrupted
    with pytest.raises(Interrupted):
        with staging_folder(tmp_path / "model") as staging:
            (staging / "config.json").write_text("{}")
            raise Interrupted
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model", "predictions.csv"]


def test_an_interrupted_model_save_leaves_no_model_file(
    clean_demo_data, vit_checkpoint, tmp_path, monkeypatch
):
    from transformers import PreTrainedModel

    from hf_classifier.cli.arguments import ClassifierTrainingArguments
    from hf_classifier.models.build import build_model, load_image_processor
    from hf_classifier.training.run import finetune_plan
    from hf_classifier.training.trainer import ImageClassificationTrainer
    from hf_classifier.transforms.pipeline import create_normalizer

    model = build_model(str(vit_checkpoint), ["a", "b"])
    args = ClassifierTrainingArguments(
        output_dir=str(tmp_path / "run"), report_to="none", eval_strategy="no", load_best_model_at_end=False
    )
    trainer = ImageClassificationTrainer(
        model=model,
        args=args,
        normalizer=create_normalizer(load_image_processor(str(vit_checkpoint))),
        plan=finetune_plan(model, args),
    )
    real_save = PreTrainedModel.save_pretrained

    def save_then_crash(self, folder, **kwargs):
        real_save(self, folder, **kwargs)  # the weights file is complete in the staging folder...
        raise Interrupted  # ...but the save does not finish

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_crash)
    with pytest.raises(Interrupted):
        trainer.save_model()
    assert list((tmp_path / "run").iterdir()) == []
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    trainer.save_model()
    assert {"model.safetensors", "config.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


# ---- weights and code from elsewhere --------------------------------------------------------------


class _RunsCode:
    """Unpickling it writes a file: what a malicious .bin would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_pickled_bin_weights_cannot_run_code(vit_checkpoint, tmp_path):
    from hf_classifier.models.build import build_model

    folder = tmp_path / "bin-checkpoint"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((vit_checkpoint / name).read_bytes())
    state = load_file(vit_checkpoint / "model.safetensors")
    torch.save({**state, "payload": _RunsCode(tmp_path / "pwned")}, folder / "pytorch_model.bin")
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError, match="(?i)weights_only|weights only|unsupported global"):
        build_model(str(folder), ["a", "b"])
    assert not marker.exists()


def test_remote_code_stays_off_unless_asked(vit_checkpoint, tmp_path):
    from hf_classifier.cli.arguments import ModelArguments
    from hf_classifier.models.build import build_model

    assert ModelArguments(model_name_or_path="x").trust_remote_code is False
    marker = tmp_path / "code-ran"
    config = json.loads((vit_checkpoint / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "custom_code.CustomConfig",
        "AutoModelForImageClassification": "custom_code.CustomModel",
    }
    for model_type in ("vit", "my-custom-vit"):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
        (folder / "custom_code.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
        (folder / "model.safetensors").write_bytes((vit_checkpoint / "model.safetensors").read_bytes())
    # A known architecture loads with the library's own code; an unknown one is refused.
    assert type(build_model(str(tmp_path / "vit"), ["a", "b"])).__name__ == "ViTForImageClassification"
    with pytest.raises(ValueError, match="(?i)trust_remote_code"):
        build_model(str(tmp_path / "my-custom-vit"), ["a", "b"])
    assert not marker.exists()


def test_old_checkpoints_go_only_after_the_new_one_is_complete(tmp_path):
    from hf_classifier.training.checkpoints import complete_checkpoints, rotate_complete_checkpoints

    run = tmp_path / "run"
    for step, complete in ((2, True), (4, True), (6, True), (8, False)):
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "checkpoint_complete.json").write_text("{}")
    rotate_complete_checkpoints(run, 1, best=str(run / "checkpoint-2"))
    # The newest complete one and the best stay; the one being written (no mark yet) is not counted.
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2", "checkpoint-6", "checkpoint-8"]
    assert [p.name for p in complete_checkpoints(run)] == ["checkpoint-2", "checkpoint-6"]
    rotate_complete_checkpoints(run, None, best=None)  # no limit: nothing deleted
    assert len(list(run.iterdir())) == 3
