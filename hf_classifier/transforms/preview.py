"""`hf-classifier augment-preview`: originals beside augmented versions, so a person can see when an
augmentation preset starts destroying the patterns the model needs."""

from __future__ import annotations

import random
from typing import Any

from PIL import Image

from hf_classifier.data.images import open_image
from hf_classifier.data.schema import IMAGE, LABEL, ImageData
from hf_classifier.evaluation.plots import image_grid
from hf_classifier.transforms.pipeline import (
    ImageTransform,
    PreprocessSpec,
    describe_preset,
    get_preset,
    spec_from_processor,
)


def default_spec(image_size: int) -> PreprocessSpec:
    """A plain square input (ViT-style) when no checkpoint is given."""
    return PreprocessSpec(
        resample=int(Image.Resampling.BILINEAR),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        resize_to=(image_size, image_size),
    )


def augmentation_preview(
    data: ImageData,
    augmentation: str,
    *,
    processor: Any | None = None,
    image_size: int = 224,
    num_images: int = 6,
    num_versions: int = 5,
    seed: int = 0,
) -> Image.Image:
    """A grid: one row per sampled training image (spread over the classes): the photo, the model's
    input without augmentation, then `num_versions` augmented inputs. Seeded."""
    spec = (spec_from_processor(processor) if processor is not None else None) or default_spec(image_size)
    rng = random.Random(seed)
    split = data.splits["train"]
    names = split.features[LABEL].names
    rows_by_label: dict[int, list[int]] = {}
    for row, label in enumerate(split[LABEL]):
        rows_by_label.setdefault(label, []).append(row)
    labels = sorted(rows_by_label)
    # Rows spread evenly over the classes; a class shown twice shows two different photos.
    picks = [labels[i * len(labels) // num_images] for i in range(num_images)]
    chosen = {label: rng.sample(rows_by_label[label], len(rows_by_label[label])) for label in set(picks)}
    plain = ImageTransform(spec)
    augmented = ImageTransform(spec, get_preset(augmentation), rng=random.Random(seed))
    rows = []
    for label in picks:
        if not chosen[label]:
            continue
        photo = open_image(split[chosen[label].pop()][IMAGE])
        cells = [(photo, f"photo {photo.width}x{photo.height}"), (_to_pil(plain(photo)), "no augmentation")]
        cells += [(_to_pil(augmented(photo)), f"{augmentation} #{k + 1}") for k in range(num_versions)]
        rows.append((names[label], cells))
    height, width = spec.output_size
    thumb = max(96, min(192, max(height, width)))
    return image_grid(
        rows,
        thumb=thumb,
        title=f"Augmentation '{augmentation}' at {width}x{height}\n{describe_preset(augmentation)}",
    )


def _to_pil(tensor: Any) -> Image.Image:
    return Image.fromarray(tensor.permute(1, 2, 0).numpy())
