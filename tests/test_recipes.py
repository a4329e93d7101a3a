"""The configs/ recipes parse, fit their architectures, and run end to end on tiny stand-ins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import TINY_VIT, TRAIN_ARGS, train_run
from transformers import (
    AutoModelForImageClassification,
    BitImageProcessor,
    ConvNextConfig,
    Dinov2Config,
    ResNetConfig,
    SwinConfig,
    ViTConfig,
)

from hf_classifier.cli.arguments import parse_args
from hf_classifier.training.run import finetune_plan

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml"))
FOUR_BLOCK_VIT = {**TINY_VIT, "num_hidden_layers": 4}
TINY = {  # a small model of each recipe's architecture, built from a config
    "google/vit-base-patch16-224-in21k": lambda: ViTConfig(**FOUR_BLOCK_VIT),
    "facebook/convnext-tiny-224": lambda: ConvNextConfig(depths=[1, 1, 2, 1], hidden_sizes=[8, 16, 24, 32]),
    "microsoft/resnet-50": lambda: ResNetConfig(
        depths=[1, 1, 2, 1], hidden_sizes=[8, 16, 24, 32], embedding_size=8
    ),
    "facebook/dinov2-small": lambda: Dinov2Config(**FOUR_BLOCK_VIT),
    "microsoft/swin-tiny-patch4-window7-224": lambda: SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 2], num_heads=[1, 1], window_size=4
    ),
}


def test_there_is_a_recipe_for_each_model_family():
    checkpoints = {yaml.safe_load((CONFIGS / name).read_text())["model_name_or_path"] for name in RECIPES}
    assert checkpoints == set(TINY) | {"timm/vgg16.tv_in1k"}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses_and_its_plan_fits_the_architecture(name, tmp_path):
    # bf16 is for the GPUs the recipes are meant for; this machine has none.
    _, model_args, training_args = parse_args(
        TRAIN_ARGS, [str(CONFIGS / name), "--output_dir", str(tmp_path), "--bf16", "false"]
    )
    assert "#" in (CONFIGS / name).read_text()  # the reasoning is in comments
    if model_args.model_name_or_path.startswith("timm/"):
        pytest.importorskip("timm", reason="timm is an optional extra")
        return
    config = TINY[model_args.model_name_or_path]()
    config.num_labels = 202
    if model_args.drop_path_rate is not None:
        assert hasattr(config, "drop_path_rate")
    model = AutoModelForImageClassification.from_config(config)
    plan = finetune_plan(model, training_args)
    assert plan.strategy == training_args.finetune_strategy
    assert plan.rate_at_depth(0) < plan.rate_at_depth(plan.depth_map.top) or training_args.layer_decay == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,checkpoint_id",
    [("resnet50.yaml", "microsoft/resnet-50"), ("dinov2_small.yaml", "facebook/dinov2-small")],
)
def test_recipe_runs_end_to_end(name, checkpoint_id, clean_demo_data, tmp_path):
    checkpoint = tmp_path / "tiny"
    AutoModelForImageClassification.from_config(TINY[checkpoint_id]()).save_pretrained(checkpoint)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(
        checkpoint
    )
    out = tmp_path / "run"
    # The recipe as written (Rare Species layout, label_column family), on a tiny stand-in model.
    train_run(
        out,
        CONFIGS / name,
        data_dir=clean_demo_data.root,
        model_name_or_path=checkpoint,
        num_train_epochs=3,
        freeze_epochs=1,
        bf16=False,
        per_device_train_batch_size=8,
        # the recipe's own values, not the quick-run ones
        learning_rate=None,
        per_device_eval_batch_size=None,
        logging_steps=None,
        save_total_limit=None,
        seed=None,
    )
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "trainer_state.json").read_text())["epoch"] == 3
