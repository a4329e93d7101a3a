"""First contact: the mistakes a new user makes in the first minutes each give one line naming the flag
or file and the fix, a non-zero exit and no traceback, before any data is read."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomllib
from helpers import TRAIN_ARGS, make_image_tree, train_run
from huggingface_hub import constants

from hf_classifier.cli.arguments import (
    DataSourceArguments,
    OptionError,
    PredictArguments,
    SplitArguments,
    parse_args,
)
from hf_classifier.cli.commands import main

ROOT = Path(__file__).resolve().parents[1]
MISSING_DATA = "no_such_folder_anywhere"  # read before the option checks, it would give another error


def one_line_error(capsys, command: str) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith(f"hf-classifier {command}: error: ") and "Traceback" not in error
    return error


@pytest.mark.parametrize(
    ("integration", "check"), [("tensorboard", "is_tensorboard_available"), ("wandb", "is_wandb_available")]
)
def test_report_to_without_the_package_stops_before_the_data_is_read(
    integration, check, monkeypatch, capsys, tmp_path
):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, check, lambda: False)
    argv = [
        "train",
        "--data_dir",
        MISSING_DATA,
        "--output_dir",
        str(tmp_path / "o"),
        "--report_to",
        integration,
    ]
    assert main(argv) == 1
    error = one_line_error(capsys, "train")
    assert f"--report_to {integration}" in error
    assert f"pip install {integration}" in error and f"hf-classifier[{integration}]" in error
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras[integration] == [integration]  # the extra the message names exists


def test_an_installed_integration_is_accepted(monkeypatch, tmp_path):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    _, _, args = parse_args(
        TRAIN_ARGS, ["--data_dir", "d", "--output_dir", str(tmp_path), "--report_to", "tensorboard"]
    )
    assert args.report_to == ["tensorboard"]


def test_mistyped_label_column_with_data_dir_names_the_closest_column(tmp_path, capsys):
    data = make_image_tree(tmp_path / "rare", {"arthropoda_apidae": 2, "arthropoda_formicidae": 2})
    rows = [
        f"{p.relative_to(data).as_posix()},{p.parent.name.split('_')[1]},arthropoda"
        for p in sorted(data.rglob("*.jpg"))
    ]
    (data / "metadata.csv").write_text("file_path,family,phylum\n" + "\n".join(rows) + "\n")
    errors = {}
    for source in (["--data_dir", str(data)], ["--metadata_csv", str(data / "metadata.csv")]):
        assert (
            main(["inspect", *source, "--label_column", "familyy", "--output_dir", str(tmp_path / "i")]) == 1
        )
        errors[source[0]] = one_line_error(capsys, "inspect")
    for error in errors.values():
        assert "no column 'familyy' (--label_column)" in error
        assert (
            "Did you mean --label_column family?" in error and "Columns: file_path, family, phylum" in error
        )
    # The same message from both sources (only the CSV's path differs).
    assert (
        errors["--data_dir"].split(" has no column")[1] == errors["--metadata_csv"].split(" has no column")[1]
    )


def test_label_column_in_another_case_is_suggested(tmp_path):
    from hf_classifier.data.schema import DataSourceError
    from hf_classifier.data.sources import from_metadata_csv

    (tmp_path / "m.csv").write_text("file_path,Family\na.jpg,x\n")
    with pytest.raises(DataSourceError, match="Did you mean --label_column Family"):
        from_metadata_csv(tmp_path / "m.csv", label_column="family")


def test_push_takes_a_config_file_first_like_the_other_commands(tmp_path, capsys):
    (tmp_path / "push.yaml").write_text(f"model_dir: {tmp_path / 'no_model'}\nrepo_id: me/m\n")
    for given in ([str(tmp_path / "push.yaml")], ["--config", str(tmp_path / "push.yaml")]):
        assert main(["push", *given]) == 1
        assert f"{tmp_path / 'no_model'} is not a folder" in one_line_error(capsys, "push")


CONFIG_COMMANDS = [
    (TRAIN_ARGS, {"learning_rate": 0.001, "data_dir": "d", "output_dir": "o"}, 2, "learning_rate", 0.001),
    (
        (DataSourceArguments, SplitArguments),
        {"data_dir": "d", "output_dir": "o", "val_size": 0.2},
        1,
        "val_size",
        0.2,
    ),
    ((PredictArguments,), {"model": "m", "input": ["a.jpg", "b.jpg"], "top_k": 3}, 0, "top_k", 3),
]


@pytest.mark.parametrize(("types", "config", "index", "name", "value"), CONFIG_COMMANDS)
@pytest.mark.parametrize("form", ["positional", "flag", "flag="])
def test_config_file_positional_or_as_config_flag(types, config, index, name, value, form, tmp_path):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    given = {"positional": [str(path)], "flag": ["--config", str(path)], "flag=": [f"--config={path}"]}[form]
    parsed = parse_args(types, given)
    assert getattr(parsed[index], name) == value
    # Flags given beside the config override it, wherever --config stands.
    override = ["--seed", "7"] if types is TRAIN_ARGS else []
    if override:
        parsed = parse_args(types, [*override, *given] if form != "positional" else [*given, *override])
        assert parsed[2].seed == 7 and parsed[2].learning_rate == 0.001


def test_readme_config_command_parses(tmp_path):
    _, model_args, args = parse_args(
        TRAIN_ARGS,
        [
            "--config",
            str(ROOT / "configs" / "vit_base_in21k.yaml"),
            "--data_dir",
            "d",
            "--output_dir",
            str(tmp_path),
        ],
    )
    # As the README writes it, on a machine without a GPU too (bf16 is automatic, not forced on).
    assert model_args.model_name_or_path == "google/vit-base-patch16-224-in21k"
    assert not args.bf16
    assert args.output_dir == str(tmp_path)


def test_missing_config_file_is_one_line(capsys):
    assert main(["train", "--config", "no_such.yaml", "--output_dir", "o"]) == 1
    assert "Config file no_such.yaml does not exist" in one_line_error(capsys, "train")


def _schedule(args):
    return (
        str(args.save_strategy.value),
        args.save_steps,
        str(args.eval_strategy.value),
        args.eval_steps,
        args.load_best_model_at_end,
    )


def test_changing_only_the_save_strategy_makes_evaluation_follow(tmp_path, caplog):
    argv = [
        "--data_dir",
        "d",
        "--output_dir",
        str(tmp_path),
        "--save_strategy",
        "steps",
        "--save_steps",
        "50",
    ]
    with caplog.at_level(logging.INFO, logger="hf_classifier"):
        _, _, args = parse_args(TRAIN_ARGS, argv)
    assert _schedule(args) == ("steps", 50, "steps", 50, True)
    assert "--eval_strategy steps --eval_steps 50" in caplog.text


def test_save_strategy_from_a_config_file_counts_as_given(tmp_path):
    (tmp_path / "c.yaml").write_text("save_strategy: steps\nsave_steps: 30\n")
    _, _, args = parse_args(
        TRAIN_ARGS, [str(tmp_path / "c.yaml"), "--data_dir", "d", "--output_dir", str(tmp_path)]
    )
    assert _schedule(args) == ("steps", 30, "steps", 30, True)


def test_changing_only_the_eval_strategy_makes_saving_follow(tmp_path):
    argv = [
        "--data_dir",
        "d",
        "--output_dir",
        str(tmp_path),
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "10",
    ]
    assert _schedule(parse_args(TRAIN_ARGS, argv)[2]) == ("steps", 10, "steps", 10, True)


def test_no_saving_keeps_the_last_model_instead_of_failing(tmp_path):
    argv = ["--data_dir", "d", "--output_dir", str(tmp_path), "--save_strategy", "no"]
    assert _schedule(parse_args(TRAIN_ARGS, argv)[2])[::2] == ("no", "epoch", False)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (
            ["--save_strategy", "steps", "--eval_strategy", "epoch"],
            ("--save_strategy steps", "--eval_strategy epoch"),
        ),
        (
            [
                "--save_strategy",
                "steps",
                "--save_steps",
                "50",
                "--eval_strategy",
                "steps",
                "--eval_steps",
                "20",
            ],
            ("--save_steps 50", "--eval_steps 20"),
        ),
    ],
)
def test_clashing_save_and_eval_flags_name_both(flags, named, tmp_path, capsys):
    assert main(["train", "--data_dir", MISSING_DATA, "--output_dir", str(tmp_path), *flags]) == 1
    error = one_line_error(capsys, "train")
    assert all(flag in error for flag in named) and "--load_best_model_at_end false" in error


@pytest.mark.parametrize("script", ["train.py", "predict.py"])
@pytest.mark.parametrize("bad", [["--no_such_flag", "1"], ["--model"], ["--top_k", "many"]])
def test_scripts_print_one_line_for_a_bad_option(script, bad, monkeypatch, capsys):
    """The scripts run in this process (as `python scripts/x.py` would): same code, no interpreter start."""
    import runpy

    monkeypatch.setattr(sys, "argv", [script, "--model", "m", "--input", "x", "--output_dir", "o", *bad])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    assert exit_.value.code == 1
    assert bad[0] in one_line_error(capsys, script.removesuffix(".py"))


def test_hub_strategy_other_than_end_is_refused_with_the_alternative(capsys, tmp_path):
    argv = [
        "train",
        "--data_dir",
        MISSING_DATA,
        "--output_dir",
        str(tmp_path),
        "--push_to_hub",
        "--hub_strategy",
        "every_save",
    ]
    assert main(argv) == 1
    error = one_line_error(capsys, "train")
    assert "--hub_strategy every_save" in error and "--hub_strategy end" in error


def test_hub_strategy_end_pushes_the_finished_model_once(tmp_path, vit_checkpoint, monkeypatch):
    """At the network boundary: Trainer's own per-save pushes would call upload_folder once per checkpoint."""
    import hf_classifier.hub.publish as publish

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(publish, "hub_reachable", lambda: True)
    uploads = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploads.append(sorted(p.name for p in Path(folder_path).iterdir()))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", upload_folder)
    for name in ("upload_file", "create_commit"):
        monkeypatch.setattr(
            f"huggingface_hub.HfApi.{name}", lambda self, *a, name=name, **k: pytest.fail(f"{name} called")
        )
    data = make_image_tree(tmp_path / "data", {"a": 6, "b": 6})
    train_run(
        tmp_path / "run",
        data_dir=data,
        model_name_or_path=vit_checkpoint,
        push_to_hub=True,
        hub_model_id="me/model",
        num_train_epochs=2,
        validation_split_ratio=0.34,
    )
    assert len(uploads) == 1  # two epochs saved two checkpoints; one push, at the end
    assert "model.safetensors" in uploads[0] and "README.md" in uploads[0]
    assert not any(name.startswith("checkpoint-") for name in uploads[0])


@pytest.mark.parametrize("flag", ["--output_dir", "--dry_run"])
def test_output_folder_that_is_a_file_is_refused_up_front(flag, tmp_path, capsys):
    taken = tmp_path / "results"
    taken.write_text("my notes")
    if flag == "--output_dir":
        argv = ["train", "--data_dir", MISSING_DATA, "--output_dir", str(taken)]
    else:
        argv = ["push", str(tmp_path), "--repo_id", "me/m", "--dry_run", str(taken / "sub")]
    assert main(argv) == 1
    error = one_line_error(capsys, argv[0])
    assert f"{flag} {taken}" in error and "is a file, not a folder" in error
    assert taken.read_text() == "my notes"


def test_bad_option_value_in_a_dataclass_check_is_an_option_error(tmp_path):
    with pytest.raises(OptionError, match="--validation_split_ratio"):
        parse_args(
            TRAIN_ARGS, ["--data_dir", "d", "--output_dir", str(tmp_path), "--validation_split_ratio", "2"]
        )
