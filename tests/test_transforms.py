"""Transforms come from the checkpoint's processor: eval gives the processor's own tensor."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BeitImageProcessor,
    BitImageProcessor,
    ConvNextImageProcessor,
    DeiTImageProcessor,
    EfficientNetImageProcessor,
    ViTImageProcessor,
)

from hf_classifier.transforms import (
    AUGMENTATION_PRESETS,
    ExampleTransform,
    ImageTransform,
    ProcessorTransform,
    collate_examples,
    create_normalizer,
    create_transform,
    random_resized_crop_box,
    spec_from_processor,
)

PROCESSORS = {
    "vit": lambda: ViTImageProcessor(),
    "convnext-224": lambda: ConvNextImageProcessor(size={"shortest_edge": 224}),
    "convnext-384": lambda: ConvNextImageProcessor(size={"shortest_edge": 384}),
    "bit-dinov2": lambda: BitImageProcessor(),
    "deit": lambda: DeiTImageProcessor(),
    "beit": lambda: BeitImageProcessor(),
}


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [
        (300, 400),
        (517, 233),
        (90, 100),
        (224, 224),
        (60, 700),
    ]  # (height, width), one smaller than the crop
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def processor_tensor(processor, image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0]))


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_eval_transform_matches_the_processor(name):
    processor = PROCESSORS[name]()
    transform, normalize = create_transform(processor), create_normalizer(processor)
    assert isinstance(transform, ImageTransform), "geometry should be mirrored, not delegated"
    for image in photos():
        ours = transform(image)
        assert ours.dtype == torch.uint8  # decoded in workers as uint8, normalised on the device
        expected = processor_tensor(processor, image)
        assert ours.shape == expected.shape
        torch.testing.assert_close(normalize(ours[None])[0], expected, atol=1e-5, rtol=0)


def test_processors_with_their_own_geometry_are_called_directly():
    processor = EfficientNetImageProcessor()  # rescale offset and its own resize: not mirrored
    assert spec_from_processor(processor) is None
    transform = create_transform(processor)
    assert isinstance(transform, ProcessorTransform)
    image = photos()[0]
    output = transform(image)
    assert output.dtype == torch.float32
    torch.testing.assert_close(
        create_normalizer(processor)(output[None])[0], processor_tensor(processor, image)
    )


@pytest.mark.parametrize("preset", list(AUGMENTATION_PRESETS))
def test_training_transform_gives_the_model_input_size_and_is_seeded(preset):
    processor = ConvNextImageProcessor(size={"shortest_edge": 64})
    image = photos()[1]
    first = create_transform(processor, training=True, augmentation=preset, rng=random.Random(7))(image)
    again = create_transform(processor, training=True, augmentation=preset, rng=random.Random(7))(image)
    assert first.shape == (3, 64, 64) and first.dtype == torch.uint8
    assert torch.equal(first, again)
    if preset != "none":
        other = create_transform(processor, training=True, augmentation=preset, rng=random.Random(8))(image)
        assert not torch.equal(first, other)


def test_unknown_augmentation_is_rejected():
    with pytest.raises(ValueError, match="light"):
        create_transform(ViTImageProcessor(), training=True, augmentation="extreme")


def test_random_resized_crop_box_respects_scale_and_bounds():
    rng = random.Random(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(400, 300, (0.5, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300
        assert (right - left) * (bottom - top) >= 0.5 * 400 * 300 * 0.97


def test_example_transform_and_collate_build_a_batch(tmp_path):
    paths = []
    for i, mode in enumerate(["RGB", "L", "RGBA"]):
        path = tmp_path / f"{i}.png"
        Image.new(mode, (50 + 10 * i, 40)).save(path)
        paths.append(str(path))
    transform = ExampleTransform(create_transform(ViTImageProcessor(size={"height": 32, "width": 32})))
    examples = transform({"image": paths, "label": [0, 1, 2]})
    batch = collate_examples(
        [
            {"pixel_values": p, "labels": label}
            for p, label in zip(examples["pixel_values"], examples["labels"], strict=True)
        ]
    )
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["pixel_values"].dtype == torch.uint8
    assert batch["labels"].tolist() == [0, 1, 2]


def test_augment_preview_grid(clean_demo_data, tmp_path):
    import numpy as np

    from hf_classifier.cli import main

    def preview(output):
        assert (
            main(
                [
                    "augment-preview",
                    "--data_dir",
                    str(clean_demo_data.root),
                    "--label_column",
                    "family",
                    "--augmentation",
                    "medium",
                    "--output",
                    str(output),
                    "--num_images",
                    "4",
                    "--num_versions",
                    "3",
                    "--image_size",
                    "96",
                ]
            )
            == 0
        )
        return np.asarray(Image.open(output).convert("RGB"))

    grid = preview(tmp_path / "grid.png")
    height, width, _ = grid.shape
    assert width > 5 * 96 and height > 4 * 96  # 4 rows: the photo, the plain input, 3 augmented versions
    assert len(np.unique(grid.reshape(-1, 3), axis=0)) > 100
    assert np.array_equal(preview(tmp_path / "again.png"), grid)  # seeded
