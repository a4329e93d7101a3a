"""Fine-tuning strategies, epoch by epoch: which parameters train, at which learning rate."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from helpers import TINY_VIT, make_image_tree, save_checkpoint, train_run
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageClassification,
    BeitConfig,
    ConvNextConfig,
    DeiTConfig,
    Dinov2Config,
    EfficientNetConfig,
    ResNetConfig,
    SwinConfig,
    TrainerCallback,
    ViTConfig,
)

from hf_classifier.models.depth import UnsupportedArchitectureError, map_depths
from hf_classifier.models.finetuning import FinetunePlan, skips_weight_decay
from hf_classifier.training.trainer import NonFiniteLossError

LR, HEAD_LR = 1e-3, 4e-3


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    # 3 classes x 16 images: 43 for training after the 10 % validation split -> 6 steps per epoch of 8
    return make_image_tree(tmp_path_factory.mktemp("ft") / "data", {"a": 16, "b": 16, "c": 16})


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("resnet"), "resnet")


class Recorder(TrainerCallback):
    """At every optimizer step: the epoch, the parameters that received a gradient, the group rates."""

    def __init__(self):
        self.steps = []
        self.initial: dict[str, torch.Tensor] = {}  # the weights training started from (new head included)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.initial = {n: p.detach().clone() for n, p in model.state_dict().items()}

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.steps.append(
            {
                "epoch": int(state.epoch + 1e-9),
                "trained": {n for n, p in model.named_parameters() if p.grad is not None},
                "requires_grad": {n for n, p in model.named_parameters() if p.requires_grad},
                "groups": [
                    (g["depth"], g["is_head"], g["weight_decay"], g["lr"]) for g in optimizer.param_groups
                ],
            }
        )

    def by_epoch(self) -> dict[int, list[dict]]:
        epochs = defaultdict(list)
        for step in self.steps:
            epochs[step["epoch"]].append(step)
        return dict(epochs)


@pytest.fixture
def run(tmp_path: Path, data_root: Path):
    """`run(checkpoint, **flags)`: a recorded training run on data_root; its outcome, the Recorder and the
    checkpoint's depth map."""

    def run(checkpoint: Path, **flags):
        recorder = Recorder()
        flags = {"learning_rate": LR, "per_device_train_batch_size": 8, **flags}
        outcome = train_run(
            tmp_path / "run", data_dir=data_root, model_name_or_path=checkpoint, callbacks=[recorder], **flags
        )
        depth_map = map_depths(AutoModelForImageClassification.from_pretrained(checkpoint))
        return outcome, recorder, depth_map

    return run


@pytest.fixture
def checkpoint(request) -> Path:
    """The checkpoint fixture named by an indirect parameter (vit_checkpoint, convnext_checkpoint)."""
    return request.getfixturevalue(request.param)


def rate(step: dict, depth: int, head: bool = False) -> float:
    rates = {r for d, h, _, r in step["groups"] if d == depth and h == head}
    assert len(rates) == 1, rates  # decay and no-decay groups of one depth share the rate
    return rates.pop()


# ---------------------------------------------------------------- the depth map


THREE_BLOCK_VIT = {**TINY_VIT, "num_hidden_layers": 3}
ARCHITECTURES = {
    "vit": (ViTConfig(**THREE_BLOCK_VIT), 3),
    "deit": (DeiTConfig(**THREE_BLOCK_VIT), 3),
    "beit": (BeitConfig(**THREE_BLOCK_VIT), 3),
    "dinov2": (Dinov2Config(**THREE_BLOCK_VIT), 3),
    "swin": (
        SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 2], num_heads=[1, 1], window_size=4),
        3,
    ),
    "convnext": (ConvNextConfig(depths=[1, 2, 1, 1], hidden_sizes=[8, 16, 24, 32]), 5),
    "resnet": (ResNetConfig(depths=[1, 2, 1, 1], hidden_sizes=[8, 16, 24, 32], embedding_size=8), 5),
    "efficientnet": (
        EfficientNetConfig(image_size=32, hidden_dim=64, width_coefficient=0.1, depth_coefficient=0.2),
        7,
    ),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_parameter_gets_a_depth_in_forward_order(name):
    config, blocks = ARCHITECTURES[name]
    config.num_labels = 5
    config.architectures = []
    model = AutoModelForImageClassification.from_config(config)
    depth_map = map_depths(model)
    assert depth_map.num_blocks == blocks
    names = [n for n, _ in model.named_parameters()]
    assert set(depth_map.depth) == set(names)
    depths = [depth_map.depth[n] for n in names]
    assert depths == sorted(depths)  # embeddings first, the head last
    assert depths[0] == 0 and set(range(blocks + 2)) == set(depths)
    assert depth_map.head == {n for n in names if n.startswith("classifier")}
    assert all(depth_map.depth[n] == depth_map.top for n in depth_map.head)


def test_stages_are_flattened_and_downsampling_joins_the_next_block():
    config, _ = ARCHITECTURES["convnext"]
    model = AutoModelForImageClassification.from_config(config)
    depth = map_depths(model).depth
    assert depth["convnext.encoder.stages.0.layers.0.pwconv1.weight"] == 1
    assert depth["convnext.encoder.stages.1.downsampling_layer.1.weight"] == 2
    assert depth["convnext.encoder.stages.1.layers.1.pwconv1.weight"] == 3
    assert depth["convnext.layernorm.weight"] == 6  # final norm: the top


def test_timm_models_use_timm_grouping():
    timm = pytest.importorskip("timm", reason="timm is an optional extra (pip install 'hf-classifier[timm]')")
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    config = TimmWrapperConfig(architecture="resnet18", num_labels=4)
    model = TimmWrapperForImageClassification(config)
    depth_map = map_depths(model)
    assert depth_map.num_blocks >= 4 and timm is not None
    assert all(depth_map.depth[n] == depth_map.top for n in depth_map.head)


def test_an_architecture_without_blocks_gets_a_clear_message():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"num_labels": 3})()
            self.features = torch.nn.Linear(8, 8)
            self.classifier = torch.nn.Linear(8, 3)

    with pytest.raises(UnsupportedArchitectureError, match="--finetune_strategy full"):
        map_depths(Flat())


def test_weight_decay_skips_norms_biases_and_tokens():
    model = AutoModelForImageClassification.from_config(ARCHITECTURES["vit"][0])
    skipped = {n for n, p in model.named_parameters() if skips_weight_decay(n, p)}
    assert "vit.embeddings.cls_token" in skipped and "vit.embeddings.position_embeddings" in skipped
    assert "vit.layers.0.layernorm_before.weight" in skipped and "classifier.bias" in skipped
    assert "vit.layers.0.attention.q_proj.weight" not in skipped and "classifier.weight" not in skipped


# ---------------------------------------------------------------- strategies, epoch by epoch


@pytest.mark.parametrize("checkpoint", ["vit_checkpoint", "convnext_checkpoint"], indirect=True)
def test_linear_probe_trains_only_the_head(checkpoint, run):
    _, recorder, depth_map = run(checkpoint, finetune_strategy="linear_probe", num_train_epochs=2)
    assert len(recorder.by_epoch()) == 2
    for step in recorder.steps:
        assert step["trained"] == step["requires_grad"] == depth_map.head
        assert all(lr == 0 for depth, head, _, lr in step["groups"] if not head)
        assert rate(step, depth_map.top, head=True) > 0


@pytest.mark.parametrize("checkpoint", ["vit_checkpoint", "convnext_checkpoint"], indirect=True)
def test_freeze_then_unfreeze_with_layer_decay(checkpoint, run):
    _, recorder, depth_map = run(
        checkpoint,
        finetune_strategy="freeze_then_unfreeze",
        freeze_epochs=1,
        num_train_epochs=3,
        layer_decay=0.5,
        head_learning_rate=HEAD_LR,
    )
    epochs = recorder.by_epoch()
    everything = set(depth_map.depth)
    for step in epochs[0]:
        assert step["trained"] == depth_map.head
        assert all(lr == 0 for depth, head, _, lr in step["groups"] if not head)
    for epoch in (1, 2):
        for step in epochs[epoch]:
            assert step["trained"] == everything
    top = depth_map.top
    step = epochs[2][0]  # all backbone groups started together: the ratios are the layer decay
    for depth in range(top):
        assert rate(step, depth) == pytest.approx(rate(step, top) * 0.5 ** (top - depth), rel=1e-6)
    first_of_epoch_1 = epochs[1][0]
    assert rate(first_of_epoch_1, top) < LR  # the backbone warms up again after the unfreeze
    # The head warmed up at step 0 with its own rate and is decaying by now.
    assert 0 < rate(first_of_epoch_1, top, head=True) <= HEAD_LR


@pytest.mark.parametrize(
    "checkpoint,accumulation",
    [("vit_checkpoint", 1), ("convnext_checkpoint", 1), ("vit_checkpoint", 2)],
    indirect=["checkpoint"],
)
def test_gradual_unfreeze_thaws_from_the_top_down(checkpoint, accumulation, run):
    # With accumulation, an epoch is fewer optimizer steps (6 batches -> 3 steps): the schedule must count
    # optimizer steps, or each depth would thaw an epoch late.
    _, recorder, depth_map = run(
        checkpoint,
        finetune_strategy="gradual_unfreeze",
        freeze_epochs=1,
        unfreeze_blocks_per_epoch=2,
        num_train_epochs=4,
        gradient_accumulation_steps=accumulation,
    )
    top = depth_map.top
    epochs = recorder.by_epoch()
    assert sorted(epochs) == [0, 1, 2, 3]
    assert all(len(steps) == 6 // accumulation for steps in epochs.values())
    for epoch, steps in epochs.items():
        lowest_trained = (
            top - 2 * epoch + 1 if epoch else None
        )  # epoch 1: top and top-1; epoch 2: down to top-3
        expected = set(depth_map.head) | {
            n for n, d in depth_map.depth.items() if lowest_trained is not None and d >= lowest_trained
        }
        for step in steps:
            assert step["trained"] == expected, f"epoch {epoch}"
            for depth, head, _, lr in step["groups"]:
                assert (lr > 0) == (head or (lowest_trained is not None and depth >= lowest_trained))


def test_full_strategy_trains_everything_with_layer_decay_and_a_head_rate(vit_checkpoint, run):
    _, recorder, depth_map = run(
        vit_checkpoint, layer_decay=0.75, head_learning_rate=HEAD_LR, num_train_epochs=1, warmup_steps=0
    )
    step = recorder.steps[0]
    assert step["trained"] == set(depth_map.depth)
    top = depth_map.top
    assert rate(step, top, head=True) == pytest.approx(HEAD_LR)
    assert rate(step, top) == pytest.approx(LR)
    assert rate(step, 1) == pytest.approx(LR * 0.75 ** (top - 1))
    assert rate(step, 0) == pytest.approx(LR * 0.75**top)
    assert {wd for _, _, wd, _ in step["groups"]} == {
        0.0,
        0.05,
    }  # each depth: a decayed and an undecayed group


def test_frozen_batch_norm_statistics_do_not_move(resnet_checkpoint, run):
    before = AutoModelForImageClassification.from_pretrained(resnet_checkpoint).state_dict()
    outcome, recorder, _ = run(resnet_checkpoint, finetune_strategy="linear_probe", num_train_epochs=1)
    after = load_file(outcome.output_dir / "model.safetensors")
    stats = [k for k in before if k.endswith("running_mean")]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    head = "classifier.1.weight"
    assert recorder.initial[head].shape == after[head].shape == (3, 32)
    assert not torch.equal(recorder.initial[head], after[head])  # the new head learned


def test_plan_validation():
    depth_map = map_depths(AutoModelForImageClassification.from_config(ARCHITECTURES["vit"][0]))
    with pytest.raises(ValueError, match="--freeze_epochs"):
        FinetunePlan(depth_map, strategy="freeze_then_unfreeze", freeze_epochs=3, num_train_epochs=3)
    with pytest.raises(ValueError, match="--layer_decay"):
        FinetunePlan(depth_map, layer_decay=1.5)
    plan = FinetunePlan(depth_map, strategy="gradual_unfreeze", freeze_epochs=1, num_train_epochs=5)
    assert plan.unfreeze_blocks_per_epoch == math.ceil((depth_map.top + 1) / 2)  # all thawed by epoch 3


# ---------------------------------------------------------------- gradients and failures


def test_gradient_norms_by_depth_are_logged(vit_checkpoint, run):
    outcome, _, _ = run(vit_checkpoint, num_train_epochs=1, logging_steps=2, layer_decay=0.8)
    logs = json.loads((outcome.output_dir / "trainer_state.json").read_text())["log_history"]
    training_logs = [entry for entry in logs if "loss" in entry]
    assert training_logs
    for key in (
        "grad_norm",
        "grad_norm/embeddings",
        "grad_norm/first_block",
        "grad_norm/last_block",
        "grad_norm/head",
        "learning_rate/embeddings",
        "learning_rate/last_block",
    ):
        assert key in training_logs[0], key
    assert training_logs[0]["learning_rate/embeddings"] < training_logs[0]["learning_rate/last_block"]


class PoisonWeights(TrainerCallback):
    """Set the head to NaN after `step` optimizer steps: the next loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.classifier.weight.fill_(float("nan"))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(vit_checkpoint, data_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as error:
        train_run(
            out,
            data_dir=data_root,
            model_name_or_path=vit_checkpoint,
            callbacks=[PoisonWeights(step=4)],
            num_train_epochs=3,
            per_device_train_batch_size=8,
            save_strategy="steps",
            save_steps=3,
            eval_strategy="steps",
            eval_steps=3,
            logging_steps=1,
        )
    assert "checkpoint-3" in str(error.value) and "--learning_rate" in str(error.value)
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3"]  # nothing was saved after the NaN
    weights = load_file(out / "checkpoint-3" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "model.safetensors").exists()


def test_drop_path_rate_is_set_where_it_exists(convnext_checkpoint, vit_checkpoint):
    from hf_classifier.models.build import build_model

    model = build_model(str(convnext_checkpoint), ["a", "b"], drop_path_rate=0.2)
    assert model.config.drop_path_rate == 0.2
    with pytest.raises(ValueError, match="no stochastic depth"):
        build_model(str(vit_checkpoint), ["a", "b"], drop_path_rate=0.1)


def test_early_stopping_on_macro_f1(vit_checkpoint, run):
    outcome, _, _ = run(
        vit_checkpoint,
        num_train_epochs=6,
        learning_rate=0.0,
        head_learning_rate=0.0,
        early_stopping_patience=1,
    )
    state = json.loads((outcome.output_dir / "trainer_state.json").read_text())
    assert state["epoch"] == 2  # no improvement after the first evaluation: stopped one evaluation later


def test_ema_weights_are_evaluated_checkpointed_and_saved(vit_checkpoint, run):
    outcome, _, _ = run(vit_checkpoint, num_train_epochs=2, ema_decay=0.5, load_best_model_at_end="false")
    out = outcome.output_dir
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    raw, ema = load_file(last / "model.safetensors"), load_file(last / "ema.safetensors")
    final = load_file(out / "model.safetensors")
    key = "classifier.weight"
    assert not torch.equal(raw[key], ema[key])
    assert torch.equal(final[key], ema[key])  # the saved model is the average
