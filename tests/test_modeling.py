"""build_model: one function for every architecture, heads replaced, real label names, offline errors."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import save_checkpoint
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, pipeline

from hf_classifier.hub.offline import HubUnavailableError
from hf_classifier.models.build import build_model, find_classifier, load_image_processor, load_saved_weights

FAMILIES = ["ardeidae", "felidae", "formicidae"]


@pytest.mark.parametrize("fixture", ["vit_checkpoint", "convnext_checkpoint"])
def test_1000_class_head_is_replaced_and_the_backbone_kept(fixture, request, tmp_path):
    checkpoint = request.getfixturevalue(fixture)
    model = build_model(str(checkpoint), FAMILIES)
    assert model.config.id2label == {0: "ardeidae", 1: "felidae", 2: "formicidae"}
    assert model.config.label2id == {"ardeidae": 0, "felidae": 1, "formicidae": 2}
    assert find_classifier(model, 3).out_features == 3
    # Every tensor, file against file: the built model saved as training saves it (transformers maps its
    # in-memory names back to the checkpoint's) against the pretrained checkpoint on disk.
    model.save_pretrained(tmp_path / "built")
    built, pretrained = (
        load_file(folder / "model.safetensors") for folder in (tmp_path / "built", checkpoint)
    )
    assert built.keys() == pretrained.keys()
    head = {"classifier.weight", "classifier.bias"}
    assert built["classifier.weight"].shape[0] == 3 and pretrained["classifier.weight"].shape[0] == 1000
    changed = [name for name in built.keys() - head if not torch.equal(built[name], pretrained[name])]
    assert not changed, changed
    assert len(built) > 30  # the whole backbone (38 ViT / 54 ConvNeXt tensors), not a sample


def test_head_of_equal_size_but_other_labels_is_reinitialised(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "three", "vit", num_labels=3)  # labels imagenet_class_0..2
    original = AutoModelForImageClassification.from_pretrained(checkpoint)
    model = build_model(str(checkpoint), FAMILIES)
    assert not torch.equal(model.classifier.weight, original.classifier.weight)
    # Same labels in the same order: the head is the trained one and is kept.
    same = build_model(str(checkpoint), ["imagenet_class_0", "imagenet_class_1", "imagenet_class_2"])
    assert torch.equal(same.classifier.weight, original.classifier.weight)


def test_from_config_builds_random_weights(vit_checkpoint):
    torch.manual_seed(1)
    random_model = build_model(str(vit_checkpoint), FAMILIES, from_config=True)
    pretrained = AutoModelForImageClassification.from_pretrained(vit_checkpoint)
    name = "vit.embeddings.patch_embeddings.projection.weight"
    assert not torch.equal(random_model.state_dict()[name], pretrained.state_dict()[name])
    assert random_model.config.id2label[2] == "formicidae"


def test_extra_config_is_saved_in_config_json(vit_checkpoint, tmp_path):
    model = build_model(str(vit_checkpoint), FAMILIES, extra_config={"label_name": "family"})
    model.save_pretrained(tmp_path)
    load_image_processor(str(vit_checkpoint)).save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert reloaded.config.hf_classifier == {"label_name": "family"}
    classifier = pipeline("image-classification", model=str(tmp_path))
    from PIL import Image

    labels = {row["label"] for row in classifier(Image.new("RGB", (40, 30)), top_k=3)}
    assert labels == set(FAMILIES)  # real names, not LABEL_0


@pytest.mark.parametrize("kind", ["vit", "convnext"])
def test_load_saved_weights_restores_a_checkpoint(kind, tmp_path):
    # transformers 5 saves ViT under legacy key names; a plain load_state_dict would load nothing.
    checkpoint = save_checkpoint(tmp_path / "ckpt", kind, num_labels=3)
    saved = AutoModelForImageClassification.from_pretrained(checkpoint)
    model = build_model(str(checkpoint), FAMILIES, from_config=True)
    assert not all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), saved.state_dict().values(), strict=True)
    )
    load_saved_weights(model, str(checkpoint))
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_hub_checkpoint_offline_fails_fast_with_a_clear_message():
    started = time.monotonic()
    with pytest.raises(HubUnavailableError) as error:
        build_model("google/vit-base-patch16-224-in21k", FAMILIES)
    assert time.monotonic() - started < 10
    assert "google/vit-base-patch16-224-in21k" in str(error.value) and "local folder" in str(error.value)


def test_missing_image_processor_names_the_fix(tmp_path):
    from transformers import ViTConfig

    ViTConfig().save_pretrained(tmp_path)
    with pytest.raises(OSError, match="--image_processor_name"):
        load_image_processor(str(tmp_path))
