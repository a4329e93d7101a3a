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

from hf_classifier.transforms.pipeline import (
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

    from hf_classifier.cli.commands import main

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


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_augmentation_none_trains_on_exactly_the_evaluation_input(name):
    """README: `--augmentation none` gives the training images the evaluation geometry, pixel for pixel."""
    processor = PROCESSORS[name]()
    training = create_transform(processor, training=True, augmentation="none", rng=random.Random(3))
    evaluation = create_transform(processor, training=False)
    for image in photos():
        trained_on, evaluated_on = training(image), evaluation(image)
        assert trained_on.dtype == evaluated_on.dtype == torch.uint8
        assert torch.equal(trained_on, evaluated_on)


def test_torch_uint8_crop_resize_matches_pil():
    """README: the fast training crop (torch's uint8 antialiased bilinear) gives PIL's resize within one grey
    level per value, on photo-like pictures and the random resized crops training draws (scale 0.08-1,
    aspect 3/4-4/3, to the 224 x 224 input). Mean difference: under 0.01 levels for most crops, up to 0.25
    when a side is close to the output size; 0.044 over these 12 crops."""
    from helpers import textured_photo

    from hf_classifier.transforms.pipeline import crop_resize_tensor

    rng = random.Random(0)
    differences = []
    for seed, size in enumerate([(640, 480), (500, 375), (1024, 768), (300, 400)]):
        picture = textured_photo(seed, size)
        pixels = np.asarray(picture)
        for _ in range(3):
            box = random_resized_crop_box(*size, (0.08, 1.0), (3 / 4, 4 / 3), rng)
            fast = crop_resize_tensor(pixels, box, (224, 224)).numpy().astype(np.int16)
            pil = np.asarray(picture.crop(box).resize((224, 224), Image.Resampling.BILINEAR))
            difference = np.abs(fast - pil.transpose(2, 0, 1).astype(np.int16))
            assert difference.max() <= 1, (size, box)
            assert difference.mean() <= 0.3, (size, box)
            differences.append(difference.mean())
    assert np.mean(differences) <= 0.05
