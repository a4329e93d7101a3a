"""Under `accelerate launch` with 2 CPU processes (gloo): freezing and unfreezing stay in sync."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import accelerate_launch, make_image_tree, tinted_jpeg, train_argv, write_shards
from safetensors.torch import load_file

from hf_classifier.cli.commands import main

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["freeze_then_unfreeze", "gradual_unfreeze"])
def test_freezing_strategies_under_two_processes(strategy, vit_checkpoint, tmp_path):
    data = make_image_tree(tmp_path / "data", {"a": 12, "b": 12, "c": 12})
    out = tmp_path / "ranks"
    out.mkdir()
    result = accelerate_launch(
        SCRIPTS / "ddp_freezing.py",
        str(out),
        *train_argv(
            tmp_path / "run",
            data_dir=data,
            model_name_or_path=vit_checkpoint,
            num_train_epochs=3,
            per_device_train_batch_size=4,
            finetune_strategy=strategy,
            freeze_epochs=1,
            unfreeze_blocks_per_epoch=1 if strategy == "gradual_unfreeze" else None,
            learning_rate=5e-3,
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # identical weights on both processes after every epoch
    epochs = ranks[0]
    assert epochs.pop("exit_release_registered") is True  # train() arranged a clean exit
    trainable = [epochs[str(epoch)]["trainable"] for epoch in (1, 2, 3)]
    assert trainable[0] == 2  # the head only
    if strategy == "freeze_then_unfreeze":
        assert trainable[1] == trainable[2] > 2  # everything at once
    else:
        assert 2 < trainable[1] < trainable[2]  # one more depth each epoch
    assert epochs["2"]["backbone_sum"] != epochs["1"]["backbone_sum"]  # unfrozen gradients flowed and synced
    assert epochs["3"]["backbone_sum"] != epochs["2"]["backbone_sum"]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def make_tinted_tree(root: Path, layout: dict[str, int]) -> Path:
    """Class folders a, b, c of photos tinted by class: learnable, so the losses move."""
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True)
        label = "abc".index(folder[-1])
        for i in range(count):
            (root / folder / f"img{i}.jpg").write_bytes(
                tinted_jpeg(label, 100 * folder.startswith("train") + i)
            )
    return root


@pytest.mark.slow
def test_two_process_train_evaluate_predict_match_one_process(vit_checkpoint, tmp_path):
    """The same commands under `accelerate launch` (2 gloo processes, 4 images each per step) give
    what one process gives with 8 images per step: same batches, gradients averaged across the
    processes. The 13 validation images do not divide into the processes' batches, and every one is
    counted exactly once."""
    data = make_tinted_tree(
        tmp_path / "data",
        {"train/a": 8, "train/b": 8, "train/c": 8, "validation/a": 5, "validation/b": 4, "validation/c": 4},
    )

    def train_flags(output_dir: Path, per_device_batch: int) -> list[str]:
        return train_argv(
            output_dir,
            data_dir=data,
            model_name_or_path=vit_checkpoint,
            augmentation="none",  # random augmentation draws differ between processes
            num_train_epochs=3,
            per_device_train_batch_size=per_device_batch,
            per_device_eval_batch_size=4,
            learning_rate=5e-3,
        )

    one, two = tmp_path / "one", tmp_path / "two"
    # The one-process side runs the same command in this process: a fresh interpreter would only add
    # the start-up (about 10 s of imports on 2 cores) three times over.
    assert main(["train", *train_flags(one, 8)]) == 0
    double = accelerate_launch("hf_classifier", "train", *train_flags(two, 4))
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("Model written to") == 1  # only the main process reports

    a, b = (json.loads((folder / "all_results.json").read_text()) for folder in (one, two))
    assert a["eval_num_images"] == b["eval_num_images"] == 13
    assert a["eval_accuracy"] == b["eval_accuracy"] and a["eval_f1_macro"] == b["eval_f1_macro"]
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)  # stated tolerance: 1e-4 relative
    steps = [json.loads((folder / "trainer_state.json").read_text())["global_step"] for folder in (one, two)]
    assert steps == [9, 9]
    weights_one, weights_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    for key in weights_one:
        torch.testing.assert_close(weights_one[key], weights_two[key], atol=1e-5, rtol=1e-4, msg=key)

    # evaluate and predict: the processes share the images, the main process writes the same files.
    evaluated = {}
    validation, model_flags = data / "validation", (f"--model={one}", "--batch_size=3", "--num_workers=0")
    for name in ("one", "two"):
        report, predictions = tmp_path / f"eval-{name}", tmp_path / f"predictions-{name}.csv"
        evaluate_argv = ["evaluate", f"--data_dir={validation}", f"--output_dir={report}", *model_flags]
        predict_argv = ["predict", f"--input={validation}", f"--output={predictions}", *model_flags]
        if name == "one":
            assert main(evaluate_argv) == 0 and main(predict_argv) == 0
        else:
            for argv in (evaluate_argv, predict_argv):
                result = accelerate_launch("hf_classifier", *argv)
                assert result.returncode == 0, result.stderr[-3000:]
            assert result.stdout.count("Wrote 13 predictions") == 1  # only the main process reports
        evaluated[name] = json.loads((report / "metrics.json").read_text())
    assert evaluated["one"]["num_images"] == evaluated["two"]["num_images"] == 13
    for key in ("accuracy", "f1_macro", "per_class"):
        assert evaluated["one"][key] == evaluated["two"][key], key
    rows = [(tmp_path / f"predictions-{name}.csv").read_text().splitlines() for name in ("one", "two")]
    assert len(rows[0]) == 14
    for row_one, row_two in zip(*rows, strict=True):
        first, second = row_one.split(","), row_two.split(",")
        assert first[:2] == second[:2]  # same image, same label, same order
        if first[2] != "score":
            assert float(first[2]) == pytest.approx(float(second[2]), abs=1e-5)


@pytest.mark.slow
def test_two_process_streaming_reads_each_shard_once(vit_checkpoint, tmp_path):
    shards = tmp_path / "shards"
    write_shards(shards, "train", 32, 8)  # 4 shards: 2 per process
    write_shards(shards, "validation", 9, 9)
    (shards / "classes.txt").write_text("apidae\nformicidae\nvespidae\n")
    out, reads = tmp_path / "run", tmp_path / "reads"
    reads.mkdir()
    result = accelerate_launch(
        SCRIPTS / "record_shard_reads.py",
        str(reads),
        *train_argv(
            out,
            data_dir=shards,
            streaming=True,
            label_column="family",
            model_name_or_path=vit_checkpoint,
            max_steps=6,
            per_device_train_batch_size=4,
            learning_rate=5e-3,
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "some will sit idle" not in result.stderr
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_num_images"] == 9
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    # Which training shards each process opened (the stream repeats, so a shard may be opened again by
    # the same process): every shard by exactly one process, and each process has its own two.
    opened = [
        {name for name in (reads / f"rank{rank}.txt").read_text().split() if name.startswith("train-")}
        for rank in (0, 1)
    ]
    assert len(opened[0]) == len(opened[1]) == 2 and not opened[0] & opened[1]
    assert opened[0] | opened[1] == {f"train-{i:05d}.tar" for i in range(4)}


def test_release_at_exit_destroys_the_group_once_registered(monkeypatch, tmp_path):
    """Several processes: the exit handler is registered once and destroys the process group (left
    to the interpreter's teardown, gloo's threads abort a process that succeeded)."""
    import torch.distributed as dist

    from hf_classifier.training import distributed

    handlers = []
    monkeypatch.setattr(distributed.atexit, "register", handlers.append)
    monkeypatch.setattr(distributed, "_release_registered", False)
    monkeypatch.setattr(distributed, "_THREAD_GRACE_SECONDS", 0.0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.release_process_group_at_exit()
    assert handlers == []  # one process: nothing to release
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.release_process_group_at_exit()
    distributed.release_process_group_at_exit()
    assert len(handlers) == 1
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        dist.all_reduce(torch.ones(3))
        handlers[0]()
        assert not dist.is_initialized()
        handlers[0]()  # a second call (the caller destroyed the group already) is harmless
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_example_accelerate_configs_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    kinds = {path.name: load_config_from_file(str(path)) for path in folder.glob("*.yaml")}
    assert {name: config.distributed_type for name, config in kinds.items()} == {
        "ddp.yaml": DistributedType.MULTI_GPU,
        "multi_node.yaml": DistributedType.MULTI_GPU,
        "fsdp.yaml": DistributedType.FSDP,
        "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    }
    assert kinds["fsdp.yaml"].fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # one safetensors file
    assert kinds["multi_node.yaml"].num_machines == 2
