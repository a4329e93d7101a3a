"""`train --streaming` from WebDataset shards written here (no network)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import SHARD_CLASSES as CLASSES
from helpers import TRAIN_ARGS, train_argv, write_shards
from transformers import TrainerCallback

from hf_classifier.cli.arguments import DataArguments, parse_args
from hf_classifier.data.schema import FILE_PATH, LABEL, DataSourceError
from hf_classifier.training.run import train


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, "train", 48, 12)
    write_shards(folder, "validation", 9, 9)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return folder


def streaming_args(shards: Path, output_dir: Path, checkpoint: Path, *extra: str, **overrides):
    argv = train_argv(
        output_dir,
        data_dir=shards,
        streaming=True,
        model_name_or_path=checkpoint,
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        **overrides,
    )
    return parse_args(TRAIN_ARGS, [*argv, *extra])


def test_training_streams_shards_with_steps_based_evaluation(shards, vit_checkpoint, tmp_path):
    out = tmp_path / "run"
    outcome = train(*streaming_args(shards, out, vit_checkpoint, "--label_column", "family"))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    evaluations = [entry["step"] for entry in state["log_history"] if "eval_accuracy" in entry]
    assert evaluations[:3] == [1, 2, 3]  # every tenth of the run, not per (unknown) epoch
    assert outcome.metrics["eval_num_images"] == 9
    assert outcome.metrics["eval_accuracy"] > 0.5  # tinted classes are learnable in 12 steps
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(3)] == CLASSES
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["data"]["streamed"] and summary["data"]["splits"] == {"train": 96, "validation": 9}
    assert "Streamed from WebDataset shards" in (out / "README.md").read_text()
    assert json.loads((out / "evaluation_validation" / "metrics.json").read_text())["num_images"] == 9


def test_stream_is_shuffled_endless_and_shared_without_overlap(shards):
    import itertools

    from datasets.distributed import split_dataset_by_node
    from torch.utils.data import DataLoader

    from hf_classifier.data.streaming import load_streaming_data, training_stream

    args = parse_args((DataArguments,), ["--data_dir", str(shards), "--streaming", "true"])[0]
    source = load_streaming_data(args, seed=0).splits["train"]
    in_order = [sample[FILE_PATH] for sample in source]
    assert len(in_order) == len(set(in_order)) == 48

    def one_pass(seed: int) -> list[str]:
        return [s[FILE_PATH] for s in training_stream(source, seed=seed, buffer_size=16, endless=False)]

    first = one_pass(0)
    assert sorted(first) == sorted(in_order) and first != in_order  # shard order and buffer shuffled
    assert one_pass(0) == first and one_pass(1) != first  # reproducible; a resumed run draws a new order

    # Endless for training: never runs dry, and the next pass comes in another order.
    endless = [s[FILE_PATH] for s in itertools.islice(training_stream(source, seed=0, buffer_size=16), 144)]
    assert endless[:48] != endless[48:96] and set(endless) == set(in_order)

    # Two processes (shards split as Accelerate does), each with two DataLoader workers: every image once.
    seen = []
    for rank in range(2):
        share = split_dataset_by_node(source, rank=rank, world_size=2)
        loader = DataLoader(share.select_columns([FILE_PATH, LABEL]), batch_size=None, num_workers=2)
        seen.append([sample[FILE_PATH] for sample in loader])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(in_order)


def test_class_list_and_labels_must_agree(shards, tmp_path):
    from hf_classifier.data.streaming import load_streaming_data

    def load(folder: Path, *flags: str):
        args = parse_args((DataArguments,), ["--data_dir", str(folder), "--streaming", "true", *flags])[0]
        return load_streaming_data(args, seed=0)

    without = tmp_path / "no-classes"
    without.mkdir()
    for shard in shards.glob("*.tar"):
        (without / shard.name).symlink_to(shard)
    with pytest.raises(DataSourceError, match="--class_names"):
        load(without)
    assert load(without, "--class_names", ",".join(CLASSES)).labels == CLASSES
    # The validation split is read at once, the training stream as training goes: both name the sample.
    with pytest.raises(
        DataSourceError, match=r"validation-00000.tar:validation_00001 has label 'formicidae'"
    ):
        load(without, "--class_names", "apidae,vespidae", "--label_column", "family")
    write_shards(tmp_path / "two", "train", 6, 6)
    write_shards(tmp_path / "two", "validation", 1, 1)
    stream = load(tmp_path / "two", "--class_names", "apidae,vespidae", "--label_column", "family").splits[
        "train"
    ]
    with pytest.raises(DataSourceError, match=r"train-00000.tar:train_00001 has label 'formicidae'"):
        list(stream)

    no_validation = tmp_path / "train-only"
    no_validation.mkdir()
    (no_validation / "train-00000.tar").symlink_to(shards / "train-00000.tar")
    with pytest.raises(DataSourceError, match="validation split of its own"):
        load(no_validation, "--class_names", ",".join(CLASSES))


def test_unreadable_images_stop_or_are_skipped_and_recorded(vit_checkpoint, tmp_path):
    folder = tmp_path / "shards"
    write_shards(folder, "train", 24, 12, bad=(5,))
    write_shards(folder, "validation", 6, 6)
    (folder / "classes.txt").write_text("\n".join(CLASSES))
    flags = {"dataloader_num_workers": 0}
    with pytest.raises(DataSourceError, match=r"train-00000.tar:train_00005: .*--skip_bad_images"):
        train(*streaming_args(folder, tmp_path / "stop", vit_checkpoint, **flags))
    out = tmp_path / "skip"
    train(*streaming_args(folder, out, vit_checkpoint, "--skip_bad_images", "true", **flags))
    (line,) = (out / "bad_images_streamed.tsv").read_text().splitlines()
    assert line.startswith(f"{folder / 'train-00000.tar'}:train_00005\t")


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"max_steps": "-1"}, "needs --max_steps"),
        ({"finetune_strategy": "freeze_then_unfreeze"}, "counts epochs"),
        ({"class_weighting": "balanced"}, "class counts up front"),
    ],
)
def test_what_a_stream_cannot_do_is_refused_up_front(shards, vit_checkpoint, tmp_path, flags, message):
    data_args, model_args, training_args = streaming_args(shards, tmp_path / "run", vit_checkpoint)
    for key, value in flags.items():
        setattr(training_args, key, type(getattr(training_args, key))(value))
    with pytest.raises(DataSourceError, match=message):
        train(data_args, model_args, training_args)


def test_hub_streaming_offline_fails_fast_with_a_clear_message():
    from hf_classifier.data.streaming import load_streaming_data
    from hf_classifier.hub.offline import HubUnavailableError

    args = parse_args((DataArguments,), ["--dataset_name", "imageomics/rare-species", "--streaming", "true"])[
        0
    ]
    started = time.monotonic()
    with pytest.raises(HubUnavailableError, match="imageomics/rare-species.*Streaming reads from the Hub"):
        load_streaming_data(args, seed=0)
    assert time.monotonic() - started < 10


def test_mixed_formats_unlabelled_samples_and_bad_validation_images(vit_checkpoint, tmp_path):
    from hf_classifier.data.streaming import load_streaming_data

    folder = tmp_path / "shards"
    # datasets infers the columns from the first 5 samples: the odd ones come later.
    write_shards(folder, "train", 24, 12, png=(7, 11, 20), bmp=(15,))
    write_shards(folder, "validation", 9, 9, png=(5,), unlabelled=(6,), bad=(8,))
    (folder / "classes.txt").write_text("\n".join(CLASSES))

    def load(*flags: str):
        argv = ["--data_dir", str(folder), "--streaming", "true", "--label_column", "family", *flags]
        return load_streaming_data(parse_args((DataArguments,), argv)[0], seed=0)

    # The validation split is checked as it is stored: a bad image stops, or is skipped with a warning.
    with pytest.raises(DataSourceError, match=r"validation-00000.tar:validation_00008: .*--skip_bad_images"):
        load()
    data = load("--skip_bad_images", "true")
    kept = data.splits["validation"][FILE_PATH]
    assert len(kept) == 7 and not any(key.endswith(("_00006", "_00008")) for key in kept)  # no label, bad
    # PNG and BMP samples among JPEG ones are read from their own key.
    assert sum(1 for sample in data.splits["train"] if sample["image"] is not None) == 24
    out = tmp_path / "run"
    train(
        *streaming_args(folder, out, vit_checkpoint, "--label_column", "family", "--skip_bad_images", "true")
    )
    assert not (out / "bad_images_streamed.tsv").exists()  # every training sample was readable


class StepRecorder(TrainerCallback):
    """The optimizer steps this run took (their global numbers)."""

    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_a_streamed_run_resumes_at_once_from_its_last_checkpoint(shards, vit_checkpoint, tmp_path):
    out = tmp_path / "run"
    train(*streaming_args(shards, out, vit_checkpoint))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 12
    data_args, model_args, training_args = streaming_args(shards, out, vit_checkpoint)
    training_args.max_steps = 18  # the same command, asked to go further
    steps_taken = StepRecorder()
    train(data_args, model_args, training_args, callbacks=[steps_taken])
    assert steps_taken.steps == list(range(13, 19))  # from checkpoint-12 on, not again from step 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 18
    assert training_args.ignore_data_skip  # no replay of the 12 steps already done
    steps = [entry["step"] for entry in state["log_history"] if "eval_accuracy" in entry]
    assert steps[-1] == 18 and 12 in steps


def test_class_names_must_match_a_class_label_column(tmp_path):
    from helpers import make_image_tree

    from hf_classifier.data.streaming import load_streaming_data

    root = make_image_tree(
        tmp_path / "folder", {"train/ants": 3, "train/bees": 3, "validation/ants": 2, "validation/bees": 2}
    )

    def load(*flags: str):
        argv = ["--dataset_name", str(root), "--streaming", "true", *flags]
        return load_streaming_data(parse_args((DataArguments,), argv)[0], seed=0)

    assert load().labels == ["ants", "bees"]
    assert load("--class_names", "ants,bees").labels == ["ants", "bees"]
    with pytest.raises(DataSourceError, match="differs from the data set's own ClassLabel"):
        load("--class_names", "bees,ants")
