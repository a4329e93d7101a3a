"""Evidence on real ImageNet-pretrained weights (`../shared/models`) and real photos (hymenoptera): the
weights are loaded, pretraining is used, frozen tensors stay frozen, evaluation matches the real
processors, and `pipeline()` agrees with `predict`. Skipped when either folder is absent.

One fine-tune per model and strategy, shared by the tests of this module (module-scoped fixtures), on
small subsets of the photos: the suite's time budget.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
import torch
from helpers import train_run
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification, TrainerCallback, pipeline

from hf_classifier.cli.commands import main
from hf_classifier.models.build import build_model
from hf_classifier.transforms.pipeline import ImageTransform, create_normalizer, create_transform

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "models"
VIT = MODELS / "vit_tiny_patch16_224"
MOBILENET = MODELS / "mobilenet_v2_1.0_224"
HYMENOPTERA = SHARED / "data" / "hymenoptera"
LABELS = ["ants", "bees"]
HEAD_PREFIX = "classifier."  # both models' classification layer

pytestmark = pytest.mark.skipif(
    not (VIT.is_dir() and MOBILENET.is_dir() and (HYMENOPTERA / "val").is_dir()),
    reason=f"real checkpoints ({MODELS}) or photos ({HYMENOPTERA}) not available",
)

# transformers 5 renamed ViT's modules; the checkpoint keeps the names it was saved with. Written out
# here, independently of transformers' own conversion, so that a tensor loaded under a wrong name fails.
VIT_LEGACY_NAMES = [
    (r"^vit\.encoder\.layer\.(\d+)\.", r"vit.layers.\1."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]


def checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors on disk, under the in-memory names of transformers 5, head left out."""
    tensors = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        for pattern, replacement in VIT_LEGACY_NAMES:
            name = re.sub(pattern, replacement, name)
        if not name.startswith(HEAD_PREFIX):
            tensors[name] = tensor
    return tensors


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (batch-norm statistics too) but the head's, detached copies."""
    return {
        name: tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if not name.startswith(HEAD_PREFIX)
    }


def differing(reference: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    return sorted(name for name, tensor in reference.items() if not torch.equal(tensor, state[name]))


def subset_folder(root: Path, per_class: dict[str, int]) -> Path:
    """hymenoptera's first `n` JPEGs per class of each split, linked into `root/<split>/<class>`."""
    for split, count in per_class.items():
        source = "val" if split == "validation" else split
        for label in LABELS:
            target = root / split / label
            target.mkdir(parents=True)
            for photo in sorted((HYMENOPTERA / source / label).glob("*.jpg"))[:count]:
                os.symlink(photo, target / photo.name)
    return root


class FrozenTensorRecorder(TrainerCallback):
    """At each epoch's end: the values of the parameters that are frozen then, and the statistics of
    the batch norms whose parameters are all frozen then."""

    def __init__(self) -> None:
        self.frozen_at_epoch_end: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer's API
        frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
        for module_name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()
            ):
                for buffer_name, buffer in module.named_buffers():
                    frozen[f"{module_name}.{buffer_name}"] = buffer.detach().clone()
        self.frozen_at_epoch_end.append(frozen)


# ---------------------------------------------------------------------------------------------
# Shared runs


@pytest.fixture(scope="module")
def photos_subset(tmp_path_factory) -> Path:
    return subset_folder(tmp_path_factory.mktemp("hymenoptera_subset"), {"train": 16, "validation": 20})


@pytest.fixture(scope="module")
def vit_runs(photos_subset, tmp_path_factory) -> dict:
    """ViT-Ti, freeze_then_unfreeze (1 head-only epoch, then all), from the pretrained weights and
    from its config with random weights: the same flags otherwise."""
    folder = tmp_path_factory.mktemp("vit_runs")
    flags = dict(
        data_dir=photos_subset,
        model_name_or_path=VIT,
        finetune_strategy="freeze_then_unfreeze",
        learning_rate=5e-5,
        head_learning_rate=3e-3,
        augmentation="light",
    )
    recorder = FrozenTensorRecorder()
    pretrained = train_run(folder / "pretrained", callbacks=[recorder], **flags)
    from_config = train_run(folder / "from_config", from_config=True, **flags)
    return {"pretrained": pretrained, "from_config": from_config, "recorder": recorder}


@pytest.fixture(scope="module")
def mobilenet_initial() -> dict[str, torch.Tensor]:
    return backbone_state(build_model(str(MOBILENET), LABELS))


def mobilenet_run(folder: Path, photos: Path, strategy: str, epochs: int, **flags) -> tuple[Path, list]:
    recorder = FrozenTensorRecorder()
    train_run(
        folder,
        data_dir=photos,
        model_name_or_path=MOBILENET,
        finetune_strategy=strategy,
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        callbacks=[recorder],
        **flags,
    )
    return folder, recorder.frozen_at_epoch_end


@pytest.fixture(scope="module")
def tiny_photos(tmp_path_factory) -> Path:
    return subset_folder(tmp_path_factory.mktemp("hymenoptera_tiny"), {"train": 8, "validation": 4})


# ---------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("checkpoint", [VIT, MOBILENET], ids=["vit_tiny", "mobilenet_v2"])
def test_every_backbone_tensor_is_the_checkpoints_after_the_head_swap(checkpoint):
    on_disk = checkpoint_tensors(checkpoint)
    model = build_model(str(checkpoint), LABELS)
    loaded = backbone_state(model)
    assert sorted(loaded) == sorted(on_disk), "a tensor was renamed, added or left out"
    assert differing(on_disk, loaded) == []
    assert model.config.id2label == dict(enumerate(LABELS))
    head = [name for name in model.state_dict() if name.startswith(HEAD_PREFIX)]
    assert model.state_dict()[head[0]].shape[0] == len(LABELS)


# ---------------------------------------------------------------------------------------------
# Pretraining is used, and frozen tensors stay frozen


def test_pretrained_weights_beat_random_weights_by_far(vit_runs):
    pretrained = vit_runs["pretrained"].metrics["eval_accuracy"]
    from_config = vit_runs["from_config"].metrics["eval_accuracy"]
    # Measured on these 40 validation photos (seed 0): 0.925 pretrained (0.825 after the head-only
    # epoch), 0.525 from the config (chance: 0.5).
    assert pretrained >= 0.8, (pretrained, from_config)
    assert pretrained - from_config >= 0.25, (pretrained, from_config)


def test_freeze_then_unfreeze_keeps_the_backbone_bit_identical_while_frozen(vit_runs):
    initial = backbone_state(build_model(str(VIT), LABELS))
    head_only_epoch, full_epoch = vit_runs["recorder"].frozen_at_epoch_end
    assert sorted(head_only_epoch) == sorted(initial)  # every backbone tensor was frozen in epoch 1
    assert differing(head_only_epoch, initial) == []
    assert full_epoch == {}  # then everything trained
    trained = backbone_state(
        AutoModelForImageClassification.from_pretrained(vit_runs["pretrained"].output_dir)
    )
    assert differing(initial, trained), "the backbone never trained after the head-only epoch"


def test_linear_probe_leaves_every_backbone_tensor_and_batch_norm_statistic_unchanged(
    tiny_photos, mobilenet_initial, tmp_path
):
    folder, _ = mobilenet_run(tmp_path / "probe", tiny_photos, "linear_probe", 1, learning_rate=1e-2)
    trained = AutoModelForImageClassification.from_pretrained(folder)
    assert differing(mobilenet_initial, backbone_state(trained)) == []
    assert any("running_mean" in name for name in mobilenet_initial)  # the statistics were compared
    new_head = build_model(str(MOBILENET), LABELS).classifier.weight
    assert not torch.equal(trained.classifier.weight, new_head), "the head did not train"


def test_gradual_unfreeze_keeps_each_frozen_tensor_and_batch_norm_statistic_while_frozen(
    tiny_photos, mobilenet_initial, tmp_path
):
    _, frozen_per_epoch = mobilenet_run(
        tmp_path / "gradual", tiny_photos, "gradual_unfreeze", 3, unfreeze_blocks_per_epoch=6
    )
    assert len(frozen_per_epoch) == 3
    sizes = [len(frozen) for frozen in frozen_per_epoch]
    assert sorted(frozen_per_epoch[0]) == sorted(mobilenet_initial)  # head only in epoch 1
    assert sizes[0] > sizes[1] > sizes[2] > 0, f"not thawed gradually: {sizes}"
    for epoch, frozen in enumerate(frozen_per_epoch, start=1):
        assert differing(frozen, mobilenet_initial) == [], f"a frozen tensor changed in epoch {epoch}"


# ---------------------------------------------------------------------------------------------
# Evaluation parity with the real processors, and pipeline() against predict


@pytest.mark.parametrize("checkpoint", [VIT, MOBILENET], ids=["vit_tiny_crop_pct", "mobilenet_v2"])
def test_eval_transform_matches_the_real_processor_on_real_photos(checkpoint):
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    transform, normalize = create_transform(processor), create_normalizer(processor)
    assert isinstance(transform, ImageTransform), "the processor's geometry should be mirrored (fast path)"
    photos = sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[:6]
    sizes = set()
    for path in photos:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        sizes.add(image.size)
        expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
        ours = normalize(transform(image)[None])[0]
        assert ours.shape == expected.shape == (3, 224, 224)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert len(sizes) > 1  # photos of several sizes and aspect ratios


def test_pipeline_and_predict_agree_on_every_validation_photo(vit_runs, tmp_path):
    model_dir = vit_runs["pretrained"].output_dir
    val = HYMENOPTERA / "val"
    output = tmp_path / "predictions.csv"
    argv = [
        "predict",
        "--model",
        str(model_dir),
        "--input",
        str(val),
        "--output",
        str(output),
        "--num_workers",
        "0",
    ]
    assert main(argv) == 0
    with output.open(encoding="utf-8") as handle:
        ours = {row["id"]: row["label"] for row in csv.DictReader(handle)}
    paths = sorted(val.glob("*/*.jpg"))
    assert len(ours) == len(paths) == 153
    classifier = pipeline("image-classification", model=str(model_dir), device="cpu")
    results = classifier([str(path) for path in paths], top_k=1, batch_size=32)
    theirs = {
        path.relative_to(val).as_posix(): result[0]["label"]
        for path, result in zip(paths, results, strict=True)
    }
    assert theirs == ours
    assert len(set(ours.values())) == 2  # both classes predicted: agreement is not a constant
