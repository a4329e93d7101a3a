"""Image transforms derived from the checkpoint's own image processor; no torchvision needed.

Eval: the processor's geometry (resize, shortest edge + crop_pct, centre crop, resample) done in PIL,
giving the same tensor as the processor itself. Train: the same output size through a random resized
crop plus the augmentation preset, drawn in training from a generator of the sample's own
(`KeyedTrainingImages`, `sampling`). Transforms return uint8 CHW tensors (4x less to move between
processes); `Normalize` turns a batch into float on the device that runs the model.

Processors whose geometry we do not mirror (EfficientNet, LeViT, ...) are called directly
(`ProcessorTransform`), with augmentation applied before them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from hf_classifier.data.images import DecodedImage, ImageSource, decode_image
from hf_classifier.data.sampling import SampleKey, as_sample_key, sample_rng
from hf_classifier.data.schema import IMAGE, LABEL

# JPEG drafts decode at least this much larger than the target, so that PIL's antialiased resize, not the
# DCT scaling alone, does the last step (measured: 49-52 dB PSNR against a full decode).
DRAFT_MARGIN = 1.25
# Mean colour of natural photos (ImageNet mean): normalises to about zero, so fills look like "nothing".
FILL_RGB = (124, 116, 104)


# ---------------------------------------------------------------------------------------------
# What the checkpoint expects


@dataclass(frozen=True)
class PreprocessSpec:
    """The eval geometry and normalisation of an image processor."""

    resample: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    resize_to: tuple[int, int] | None = None  # (height, width), aspect not kept
    shortest_edge: int | None = None  # or: shorter side to this, aspect kept
    crop_to: tuple[int, int] | None = None  # then a centre crop (height, width)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.crop_to or self.resize_to  # type: ignore[return-value]


# Processors that override resize/_preprocess but whose image geometry we reproduce exactly.
_CONVNEXT_STYLE = {"ConvNextImageProcessor", "ConvNextImageProcessorPil"}
_STANDARD_GEOMETRY_OVERRIDES = {
    "BeitImageProcessor",
    "BeitImageProcessorPil",
    # `_preprocess` adds only `reduce_label`, which images never get (segmentation labels do); then the
    # standard resize, centre crop, rescale, normalise (verified on real photos in test_pretrained.py).
    "MobileNetV2ImageProcessor",
    "MobileNetV2ImageProcessorPil",
}  # overrides concern segmentation maps


def spec_from_processor(processor: Any) -> PreprocessSpec | None:
    """Read the processor's geometry; None when it does something we do not reproduce exactly."""
    if not getattr(processor, "do_resize", False) or not _geometry_is_mirrored(processor):
        return None
    if getattr(processor, "do_pad", None) or getattr(processor, "rescale_offset", False):
        return None
    size = _size(processor.size)
    crop = _size(processor.crop_size) if getattr(processor, "do_center_crop", False) else {}
    crop_to = (crop["height"], crop["width"]) if crop.get("height") and crop.get("width") else None
    resize_to = shortest_edge = None
    if type(processor).__name__ in _CONVNEXT_STYLE:
        edge = size.get("shortest_edge")
        if not edge or crop_to:
            return None
        if edge < 384:  # resize to edge / crop_pct, then crop edge x edge (ConvNeXt's eval recipe)
            shortest_edge, crop_to = int(edge / processor.crop_pct), (edge, edge)
        else:
            resize_to = (edge, edge)
    elif size.get("height") and size.get("width"):
        resize_to = (size["height"], size["width"])
    elif size.get("shortest_edge") and not size.get("longest_edge"):
        shortest_edge = size["shortest_edge"]
    else:
        return None
    if crop_to is None and resize_to is None:
        return None  # output size would vary per image
    rescale = processor.rescale_factor if processor.do_rescale else 1.0
    mean = tuple(float(v) for v in _triple(processor.image_mean))
    std = tuple(float(v) for v in _triple(processor.image_std))
    return PreprocessSpec(
        resample=int(processor.resample if processor.resample is not None else Image.Resampling.BILINEAR),
        mean=mean,
        std=std,
        rescale_factor=float(rescale),
        do_normalize=bool(processor.do_normalize),
        resize_to=resize_to,
        shortest_edge=shortest_edge,
        crop_to=crop_to,
    )


def _geometry_is_mirrored(processor: Any) -> bool:
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend

    cls = type(processor)
    if cls.__name__ in _CONVNEXT_STYLE | _STANDARD_GEOMETRY_OVERRIDES:
        return True
    base = PilBackend if isinstance(processor, PilBackend) else TorchvisionBackend
    if not isinstance(processor, base):
        return False
    return all(getattr(cls, name) is getattr(base, name) for name in ("resize", "_preprocess", "center_crop"))


def _size(value: Any) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return {k: getattr(value, k, None) for k in ("height", "width", "shortest_edge", "longest_edge")}


def _triple(value: float | Sequence[float]) -> Sequence[float]:
    return [value] * 3 if isinstance(value, (int, float)) else value


# ---------------------------------------------------------------------------------------------
# Geometry


def resize_for_eval(image: Image.Image | DecodedImage, spec: PreprocessSpec) -> Image.Image:
    """The processor's resize + centre crop. Sizes come from the original photo, so a draft-decoded
    (smaller) image gives the same output geometry as the full decode."""
    decoded = as_decoded(image)
    original_width, original_height = decoded.original_size
    if spec.resize_to is not None:
        height, width = spec.resize_to
    else:
        # Same rounding as transformers' get_resize_output_image_size(default_to_square=False).
        short, long = sorted(decoded.original_size)
        new_short, new_long = spec.shortest_edge, int(spec.shortest_edge * long / short)
        width, height = (new_short, new_long) if original_width <= original_height else (new_long, new_short)
    picture = decoded.image
    if picture.size != (width, height) or decoded.scale != 1:
        picture = picture.resize((width, height), resample=spec.resample, box=(0, 0, *decoded.extent))
    if spec.crop_to is not None:
        picture = center_crop(picture, spec.crop_to)
    return picture


def as_decoded(image: Image.Image | DecodedImage) -> DecodedImage:
    if isinstance(image, DecodedImage):
        return image
    return DecodedImage(image)


def center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre crop to (height, width); pads with zeros when the image is smaller, as processors do."""
    crop_h, crop_w = size
    top, left = (image.height - crop_h) // 2, (image.width - crop_w) // 2
    if (top, left) == (0, 0) and image.size == (crop_w, crop_h):
        return image
    return image.crop((left, top, left + crop_w, top + crop_h))


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """A random box covering `scale` of the area with aspect ratio in `ratio` (torchvision's rule)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    # Fallback: the largest centred box within the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


# ---------------------------------------------------------------------------------------------
# Augmentation presets


@dataclass(frozen=True)
class AugmentationPreset:
    """Strength of each random operation; all zero/False = the eval transform."""

    crop_scale: tuple[float, float] | None = None  # random resized crop: share of the area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: bool = False
    max_rotation: float = 0.0  # degrees, either way
    brightness: float = 0.0  # factor drawn from [1 - b, 1 + b]: darker or brighter
    contrast: float = 0.0
    saturation: float = 0.0
    color_jitter_probability: float = 0.0
    trivial_augment: bool = False  # one TrivialAugment-style operation of random strength


Augmentation = Literal["none", "light", "medium", "strong"]
# One preset per name in `Augmentation`, the --augmentation choices (tests/test_arguments.py checks it).
AUGMENTATION_PRESETS: dict[str, AugmentationPreset] = {
    "none": AugmentationPreset(),
    "light": AugmentationPreset(crop_scale=(0.5, 1.0), horizontal_flip=True),
    "medium": AugmentationPreset(
        crop_scale=(0.35, 1.0),
        horizontal_flip=True,
        max_rotation=10.0,
        brightness=0.25,
        contrast=0.2,
        saturation=0.2,
        color_jitter_probability=0.8,
    ),
    "strong": AugmentationPreset(
        crop_scale=(0.2, 1.0),
        horizontal_flip=True,
        max_rotation=15.0,
        brightness=0.3,
        contrast=0.3,
        saturation=0.3,
        color_jitter_probability=0.8,
        trivial_augment=True,
    ),
}


def get_preset(name: str) -> AugmentationPreset:
    try:
        return AUGMENTATION_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"Unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATION_PRESETS)}"
        ) from None


def describe_preset(name: str) -> str:
    """The preset in words (model cards, previews)."""
    preset = get_preset(name)
    if preset.crop_scale is None:
        return "none (training images are prepared like evaluation images)."
    parts = [f"random resized crop keeping {preset.crop_scale[0]:.0%}-{preset.crop_scale[1]:.0%} of the area"]
    if preset.horizontal_flip:
        parts.append("horizontal flip")
    if preset.max_rotation:
        parts.append(f"rotation up to ±{preset.max_rotation:g}°")
    if preset.color_jitter_probability:
        parts.append(
            f"brightness ±{preset.brightness:.0%}, contrast ±{preset.contrast:.0%}, saturation ±{preset.saturation:.0%}"
        )
    if preset.trivial_augment:
        parts.append("one TrivialAugment-style operation of random strength")
    return ", ".join(parts) + "."


def _color_jitter(image: Image.Image, preset: AugmentationPreset, rng: random.Random) -> Image.Image:
    if rng.random() >= preset.color_jitter_probability:
        return image
    operations = [
        (ImageEnhance.Brightness, preset.brightness),
        (ImageEnhance.Contrast, preset.contrast),
        (ImageEnhance.Color, preset.saturation),
    ]
    rng.shuffle(operations)
    for enhancer, strength in operations:
        if strength > 0:
            image = enhancer(image).enhance(rng.uniform(1 - strength, 1 + strength))
    return image


def _trivial_augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """TrivialAugment (Müller & Hutter, 2021): one operation, uniformly random strength. Operations that
    wipe out colour or texture cues (invert, heavy posterize) are left out on purpose."""
    magnitude = rng.random()
    sign = rng.choice((-1, 1))
    op = rng.randrange(9)
    if op == 0:
        return image
    if op == 1:
        return image.rotate(sign * 30 * magnitude, resample=Image.Resampling.BILINEAR, fillcolor=FILL_RGB)
    if op in (2, 3):  # shear x / y
        shear = sign * 0.3 * magnitude
        matrix = (1, shear, 0, 0, 1, 0) if op == 2 else (1, 0, 0, shear, 1, 0)
        return image.transform(
            image.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR, fillcolor=FILL_RGB
        )
    if op in (4, 5):  # translate x / y by up to a third of the side
        dx = sign * magnitude * image.width / 3 if op == 4 else 0
        dy = sign * magnitude * image.height / 3 if op == 5 else 0
        return image.transform(
            image.size,
            Image.Transform.AFFINE,
            (1, 0, dx, 0, 1, dy),
            resample=Image.Resampling.BILINEAR,
            fillcolor=FILL_RGB,
        )
    if op == 6:
        return ImageEnhance.Sharpness(image).enhance(1 + sign * 0.9 * magnitude)
    if op == 7:
        return ImageOps.autocontrast(image)
    return ImageOps.equalize(image)


def augment_pixels(image: Image.Image, preset: AugmentationPreset, rng: random.Random) -> Image.Image:
    """Flip, rotation and colour operations: everything but the crop."""
    if preset.horizontal_flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if preset.max_rotation:
        angle = rng.uniform(-preset.max_rotation, preset.max_rotation)
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=FILL_RGB)
    image = _color_jitter(image, preset, rng)
    if preset.trivial_augment:
        image = _trivial_augment(image, rng)
    return image


# ---------------------------------------------------------------------------------------------
# Transforms: PIL RGB image -> tensor


def pil_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _rng(rng: random.Random | None, default: random.Random | None) -> Any:
    # Training passes a generator per sample (`KeyedTrainingImages`). Otherwise the transform's own,
    # else the `random` module itself: DataLoader seeds it differently in every worker (a Random
    # instance stored here would be copied into each worker with the same state).
    if rng is not None:
        return rng
    return default if default is not None else random


def _crop_and_flip_only(preset: AugmentationPreset) -> bool:
    return not (preset.max_rotation or preset.color_jitter_probability or preset.trivial_augment)


def crop_resize_tensor(
    pixels: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int], flip: bool = False
) -> torch.Tensor:
    """Crop `box` (left, top, right, bottom; rounded to whole pixels) out of HxWx3 uint8 `pixels`,
    resize it to `size` (height, width) with antialiased bilinear, mirror it if `flip`: a uint8 CHW
    tensor. torch's uint8 channels-last kernel does this about 5x faster than PIL's resize, with the
    same filter (values within 1-2 levels of PIL's)."""
    height, width = pixels.shape[:2]
    left = min(max(0, round(box[0])), width - 1)
    top = min(max(0, round(box[1])), height - 1)
    right = max(left + 1, min(width, round(box[2])))
    bottom = max(top + 1, min(height, round(box[3])))
    crop = torch.from_numpy(np.array(pixels[top:bottom, left:right]))  # a writable, contiguous copy
    batch = crop.permute(2, 0, 1).unsqueeze(0)  # NCHW view with channels-last strides: the fast kernel
    resized = torch.nn.functional.interpolate(
        batch, size=size, mode="bilinear", antialias=True, align_corners=False
    )[0]
    if flip:
        resized = resized.flip(-1)
    return resized.contiguous()


class ImageTransform:
    """PIL RGB image (or a draft-decoded one) -> uint8 CHW tensor of the checkpoint's input size."""

    def __init__(
        self, spec: PreprocessSpec, preset: AugmentationPreset | None = None, rng: random.Random | None = None
    ):
        self.spec = spec
        self.preset = preset if preset is not None else AUGMENTATION_PRESETS["none"]
        self.rng = rng

    @property
    def draft_size(self) -> tuple[int, int]:
        """The smallest decode (width, height) that loses nothing: the eval resize, or for training the
        output size over the square root of the smallest crop share (zoomed crops keep their detail)."""
        if self.preset.crop_scale is None:
            if self.spec.resize_to is not None:
                height, width = self.spec.resize_to
            else:
                height = width = self.spec.shortest_edge
            factor = DRAFT_MARGIN
        else:
            height, width = self.spec.output_size
            factor = DRAFT_MARGIN / math.sqrt(self.preset.crop_scale[0])
        return math.ceil(width * factor), math.ceil(height * factor)

    def __call__(self, image: Image.Image | DecodedImage, rng: random.Random | None = None) -> torch.Tensor:
        rng = _rng(rng, self.rng)
        if self.preset.crop_scale is None:
            picture = resize_for_eval(image, self.spec)
        else:
            decoded = as_decoded(image)
            height, width = self.spec.output_size
            # The box is drawn on the original photo and mapped onto the decode: same crop either way.
            left, top, right, bottom = random_resized_crop_box(
                *decoded.original_size, self.preset.crop_scale, self.preset.crop_ratio, rng
            )
            sx = decoded.extent[0] / decoded.original_size[0]
            sy = decoded.extent[1] / decoded.original_size[1]
            box = (left * sx, top * sy, right * sx, bottom * sy)
            if _crop_and_flip_only(self.preset):
                flip = self.preset.horizontal_flip and rng.random() < 0.5
                return crop_resize_tensor(decoded.pixels, box, (height, width), flip=flip)
            # Bilinear for augmented crops whatever the checkpoint's kernel (as timm does): bicubic costs
            # half as much again and an augmented crop gains nothing from it. Eval keeps the processor's.
            picture = decoded.image.resize((width, height), resample=Image.Resampling.BILINEAR, box=box)
        return pil_to_uint8_tensor(augment_pixels(picture, self.preset, rng))


class ProcessorTransform:
    """For processors with geometry of their own: augment (zoom keeps the aspect ratio), then call the
    processor. Returns normalised float tensors."""

    def __init__(
        self, processor: Any, preset: AugmentationPreset | None = None, rng: random.Random | None = None
    ):
        self.processor = processor
        self.preset = preset if preset is not None else AUGMENTATION_PRESETS["none"]
        self.rng = rng

    draft_size = None  # the processor's geometry is its own: decode in full

    def __call__(self, image: Image.Image | DecodedImage, rng: random.Random | None = None) -> torch.Tensor:
        rng = _rng(rng, self.rng)
        image = as_decoded(image).image
        if self.preset.crop_scale is not None:
            aspect = image.width / image.height
            box = random_resized_crop_box(
                image.width, image.height, self.preset.crop_scale, (aspect, aspect), rng
            )
            image = image.crop(box)
        image = augment_pixels(image, self.preset, rng)
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def create_transform(
    processor: Any, *, training: bool = False, augmentation: str = "none", rng: random.Random | None = None
) -> Callable[[Image.Image], torch.Tensor]:
    """The transform for `processor`: eval geometry, or a random resized crop + `augmentation`."""
    preset = get_preset(augmentation) if training else AUGMENTATION_PRESETS["none"]
    spec = spec_from_processor(processor)
    if spec is None:
        return ProcessorTransform(processor, preset, rng)
    return ImageTransform(spec, preset, rng)


class Normalize:
    """uint8 batch -> float, `(x * rescale - mean) / std` fused into one multiply-add. Float input
    (from `ProcessorTransform`) is already normalised and passes through."""

    def __init__(self, spec: PreprocessSpec | None):
        self.spec = spec
        if spec is not None:
            std = torch.tensor(spec.std if spec.do_normalize else (1.0, 1.0, 1.0)).view(1, 3, 1, 1)
            mean = torch.tensor(spec.mean if spec.do_normalize else (0.0, 0.0, 0.0)).view(1, 3, 1, 1)
            self._scale = spec.rescale_factor / std
            self._shift = -mean / std
        # (scale, shift) per (device, dtype): copied to the device once, not with every batch (a
        # blocking host-to-device copy per step).
        self._on_device: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, pixel_values: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Normalise a uint8 batch into `dtype` (the model's parameter dtype when the model itself was
        cast, e.g. bf16 under DeepSpeed; fp32 under autocast)."""
        if pixel_values.dtype != torch.uint8 or self.spec is None:
            return pixel_values
        key = (pixel_values.device, dtype)
        if key not in self._on_device:
            # Computed in fp32, then rounded once to `dtype`.
            self._on_device[key] = (
                self._scale.to(pixel_values.device, dtype),
                self._shift.to(pixel_values.device, dtype),
            )
        scale, shift = self._on_device[key]
        return torch.addcmul(shift, pixel_values.to(dtype), scale)


def create_normalizer(processor: Any) -> Normalize:
    return Normalize(spec_from_processor(processor))


# ---------------------------------------------------------------------------------------------
# Datasets and batches


def transform_source(
    transform: Callable[..., torch.Tensor], source: ImageSource, rng: random.Random | None = None
) -> torch.Tensor:
    """Decode `source` (a JPEG at the reduced scale `transform.draft_size` still covers, when it says
    one) and apply `transform`, drawing its augmentation from `rng` when given."""
    image = decode_image(source, getattr(transform, "draft_size", None))
    return transform(image) if rng is None else transform(image, rng=rng)


class ExampleTransform:
    """`Dataset.set_transform` callable: opens each image robustly and applies `image_transform`."""

    def __init__(self, image_transform: Callable[[Image.Image], torch.Tensor]):
        self.image_transform = image_transform

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        output = {"pixel_values": [transform_source(self.image_transform, source) for source in batch[IMAGE]]}
        if LABEL in batch:
            output["labels"] = batch[LABEL]
        return output


class KeyedTrainingImages(torch.utils.data.Dataset):
    """The training split as the Trainer reads it: indexed by `SampleKey`s (from the trainer's
    `EpochKeySampler`), each image augmented with its own generator seeded by (seed, epoch, position,
    row), so every training input is a pure function of those, whatever the number of workers and
    across a resume (see `sampling`)."""

    accepts_sample_keys = True  # the trainer then wraps its sampler in an EpochKeySampler

    def __init__(self, rows: Any, image_transform: Callable[..., torch.Tensor], seed: int):
        self.rows = rows  # a datasets.Dataset with the image and label columns, no transform set
        self.image_transform = image_transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[SampleKey | int]) -> list[dict[str, Any]]:
        """A whole batch: one read of the rows (DataLoader calls this when it exists)."""
        keys = [as_sample_key(key) for key in keys]
        batch = self.rows[[key.index for key in keys]]
        examples = []
        for position, key in enumerate(keys):
            rng = sample_rng(self.seed, key)
            example = {"pixel_values": transform_source(self.image_transform, batch[IMAGE][position], rng)}
            if LABEL in batch:
                example["labels"] = batch[LABEL][position]
            examples.append(example)
        return examples


def collate_examples(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([example["labels"] for example in examples], dtype=torch.long)
    return batch
