"""train --prepare auto: the photos are prepared when they are read more than once, are not streamed
and fit the cache's disk; the choice and its reason are logged. Decided in `load_training_data`, so
these tests stop there (no training)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from helpers import SHARD_CLASSES, TRAIN_ARGS, make_image_tree, train_argv, write_shards

import hf_classifier.data.prepared as prepared
from hf_classifier.cli.arguments import OptionError, parse_args
from hf_classifier.data.schema import IMAGE, SOURCE_IMAGE
from hf_classifier.data.sources import from_image_folder
from hf_classifier.training.run import load_training_data

LOGGER = "hf_classifier.training.run"
IMAGES = 16  # 6 + 6 training, 2 + 2 validation


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    return make_image_tree(root, {"train/a": 6, "train/b": 6, "val/a": 2, "val/b": 2})


def decisions(caplog) -> list[str]:
    """The lines about preparing that `load_training_data` logged."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "prepar" in r.getMessage().lower()]


def load(photos: Path, tmp_path: Path, checkpoint: Path, caplog, *extra: str, **flags):
    """Parse a train command as the CLI does, load its data; returns (prepared?, the decision's log)."""
    flags = {
        "data_dir": photos,
        "model_name_or_path": checkpoint,
        "prepared_cache_dir": tmp_path / "cache",
    } | flags
    arguments = parse_args(TRAIN_ARGS, [*train_argv(tmp_path / "run", **flags), *extra])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        data = load_training_data(*arguments)
    lines = decisions(caplog)
    return SOURCE_IMAGE in data.splits["train"].column_names, lines


@pytest.mark.parametrize(
    ("flags", "expected", "reason"),
    [
        ({"num_train_epochs": 2}, True, "Preparing the photos once (2 epochs, ~"),
        (
            {"num_train_epochs": 1},
            False,
            "Not preparing the photos: training reads them once at most (1 epoch)",
        ),
        # 6 steps x 4 images = 2 passes over 12 training images; 2 steps read a third of them.
        ({"num_train_epochs": 1, "max_steps": 6, "per_device_train_batch_size": 4}, True, "(2 epochs, ~"),
        ({"num_train_epochs": 3, "max_steps": 2, "per_device_train_batch_size": 4}, False, "(0.667 epoch)"),
    ],
    ids=["2-epochs", "1-epoch", "max-steps-2-epochs", "max-steps-under-1-epoch"],
)
def test_auto_prepares_when_the_photos_are_read_more_than_once(
    photos, tmp_path, vit_checkpoint, caplog, flags, expected, reason
):
    was_prepared, lines = load(photos, tmp_path, vit_checkpoint, caplog, **flags)
    assert was_prepared is expected
    assert len(lines) == 1 and reason in lines[0], lines
    assert ("--prepare false" if expected else "--prepare true") in lines[0]


def pretend_free_space(monkeypatch, free: int) -> None:
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=free))


def test_auto_does_not_prepare_when_the_copies_would_not_fit_twice(
    photos, tmp_path, vit_checkpoint, caplog, monkeypatch
):
    needed = prepared.estimated_prepared_bytes(IMAGES, 37)  # the tiny ViT's 32 px plus the margin
    pretend_free_space(monkeypatch, 2 * needed - 1)
    was_prepared, (line,) = load(photos, tmp_path / "short", vit_checkpoint, caplog)
    assert not was_prepared
    assert line.startswith("Not preparing the photos: their copies (~0.1 MB) need twice that free in ")
    assert line.endswith("--prepared_cache_dir on a larger disk prepares them there.")
    pretend_free_space(monkeypatch, 2 * needed)
    caplog.clear()
    assert load(photos, tmp_path / "enough", vit_checkpoint, caplog)[0]


def test_explicit_choices_override_auto(photos, tmp_path, vit_checkpoint, caplog, monkeypatch):
    pretend_free_space(monkeypatch, 0)
    assert load(photos, tmp_path / "a", vit_checkpoint, caplog, "--prepare", num_train_epochs=1) == (True, [])
    assert load(photos, tmp_path / "b", vit_checkpoint, caplog, num_train_epochs=3, prepare=False) == (
        False,
        [],
    )


def test_cached_copies_are_used_whatever_the_epochs_or_the_space(
    photos, tmp_path, vit_checkpoint, caplog, monkeypatch
):
    assert load(photos, tmp_path, vit_checkpoint, caplog, prepare=True)[0]
    pretend_free_space(monkeypatch, 0)
    caplog.clear()
    was_prepared, lines = load(photos, tmp_path, vit_checkpoint, caplog, num_train_epochs=1)
    assert was_prepared
    assert lines == [
        f"Using the prepared copies of the photos in {tmp_path / 'cache'}: --prepare false reads the photos."
    ]


def test_streamed_data_is_not_prepared(tmp_path, vit_checkpoint, caplog):
    shards = tmp_path / "shards"
    write_shards(shards, "train", 8, 8)
    write_shards(shards, "validation", 3, 3)
    (shards / "classes.txt").write_text("\n".join(SHARD_CLASSES) + "\n")
    arguments = parse_args(
        TRAIN_ARGS,
        train_argv(
            tmp_path / "run", data_dir=shards, streaming=True, model_name_or_path=vit_checkpoint, max_steps=4
        ),
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        load_training_data(*arguments)
    assert decisions(caplog) == [
        "Not preparing the photos: they are streamed, each read as training reaches it."
    ]
    with pytest.raises(OptionError, match="does not combine with --prepare"):
        parse_args(TRAIN_ARGS, train_argv(tmp_path / "run", data_dir=shards, streaming=True, prepare=True))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], "auto"),
        (["--prepare"], True),
        (["--prepare", "--seed", "1"], True),
        (["--prepare", "true"], True),
        (["--prepare", "yes"], True),
        (["--prepare", "True"], True),  # a YAML config's `prepare: true`
        (["--prepare", "false"], False),
        (["--prepare", "no"], False),
        (["--prepare", "auto"], "auto"),
    ],
)
def test_prepare_flag_spellings(tmp_path, given, expected):
    data_args, *_ = parse_args(TRAIN_ARGS, ["--data_dir", "x", "--output_dir", str(tmp_path), *given])
    assert data_args.prepare == expected and type(data_args.prepare) is type(expected)


def test_a_bad_prepare_value_names_the_flag(tmp_path):
    with pytest.raises(OptionError, match=r"--prepare takes auto, true or false, got 'sometimes'"):
        parse_args(TRAIN_ARGS, ["--data_dir", "x", "--output_dir", str(tmp_path), "--prepare", "sometimes"])


def test_reused_copies_ignore_the_cache_files_datasets_writes_beside_them(photos, tmp_path):
    """A run that splits the prepared copies leaves `datasets`' own cache files in the shard folder;
    the next run must read the copies alone (it read those too: "Number of rows must match")."""
    split = from_image_folder(photos).splits["train"]
    first, _ = prepared.prepare_split(split, 40, tmp_path / "cache", num_proc=1)
    first.train_test_split(test_size=0.25, seed=0)
    assert list((tmp_path / "cache").rglob("cache-*.arrow"))
    again, _ = prepared.prepare_split(split, 40, tmp_path / "cache", num_proc=1)
    assert again[IMAGE] == first[IMAGE]
