"""A small, procedurally drawn stand-in for the Rare Species data (no download needed).

It reproduces the real data's problems: `phylum_family` class folders with a `metadata.csv`
(`file_path`, not `file_name`), mixed sizes and aspect ratios, grayscale / CMYK / RGBA / palette /
16-bit / WebP / extensionless files, class imbalance, and (optionally) broken files.
Each family has a visual signature (shape, colours, texture) so that a small model can learn it.
"""

from __future__ import annotations

import csv
import math
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True)
class Family:
    phylum: str
    family: str
    shape: str
    colors: tuple[tuple[int, int, int], ...]

    @property
    def folder(self) -> str:
        return f"{self.phylum}_{self.family}"


FAMILIES = (
    Family("chordata", "ardeidae", "tall_ellipse", ((96, 120, 150), (210, 210, 220))),
    Family("chordata", "felidae", "stripes", ((230, 140, 40), (30, 25, 20))),
    Family("arthropoda", "formicidae", "chain", ((120, 30, 20), (20, 15, 15))),
    Family("arthropoda", "apidae", "bands", ((240, 200, 40), (25, 20, 10))),
    Family("mollusca", "octopodidae", "radial", ((140, 60, 150), (230, 180, 230))),
    Family("cnidaria", "acroporidae", "dots", ((250, 120, 110), (255, 220, 200))),
)

# Images per family for the training pool: imbalanced like the real data (ratio 4.5 : 1).
DEFAULT_COUNTS = (150, 115, 90, 70, 50, 34)
METADATA_COLUMNS = (
    "rare_species_id",
    "eol_content_id",
    "eol_page_id",
    "kingdom",
    "phylum",
    "family",
    "file_path",
)


@dataclass
class DemoDataset:
    root: Path
    metadata_csv: Path
    families: tuple[Family, ...]
    broken_files: list[str]

    @property
    def labels(self) -> list[str]:
        return [f.family for f in self.families]


def draw_animal(family: Family, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """An RGB picture of `family`'s signature on a random natural-looking background."""
    width, height = size
    background = tuple(
        int(c) for c in rng.choice(((60, 110, 60), (70, 100, 140), (150, 130, 100), (90, 90, 80)))
    )
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for _ in range(6):  # background clutter
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randint(5, max(6, min(width, height) // 5))
        shade = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in background)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=shade)

    main, accent = (_jitter(c, rng) for c in family.colors)
    scale = rng.uniform(0.45, 0.8) * min(width, height)
    cx = width / 2 + rng.uniform(-0.15, 0.15) * width
    cy = height / 2 + rng.uniform(-0.15, 0.15) * height
    shape = family.shape
    if shape == "tall_ellipse":
        draw.ellipse((cx - scale * 0.18, cy - scale / 2, cx + scale * 0.18, cy + scale / 2), fill=main)
        draw.line(
            (cx, cy - scale / 2, cx + scale * 0.3, cy - scale * 0.6),
            fill=accent,
            width=max(2, int(scale / 25)),
        )
    elif shape == "stripes":
        draw.rectangle((cx - scale / 2, cy - scale / 3, cx + scale / 2, cy + scale / 3), fill=main)
        step = max(4, int(scale / 8))
        for x in range(int(cx - scale / 2), int(cx + scale / 2), step * 2):
            draw.rectangle((x, cy - scale / 3, x + step // 2, cy + scale / 3), fill=accent)
    elif shape == "chain":
        r = scale / 7
        for i in (-2, 0, 2):
            draw.ellipse((cx + i * r - r, cy - r, cx + i * r + r, cy + r), fill=main, outline=accent, width=2)
    elif shape == "bands":
        draw.ellipse((cx - scale / 2, cy - scale / 4, cx + scale / 2, cy + scale / 4), fill=main)
        for i in range(-2, 3, 2):
            x = cx + i * scale / 8
            draw.rectangle((x - scale / 24, cy - scale / 4.5, x + scale / 24, cy + scale / 4.5), fill=accent)
    elif shape == "radial":
        r = scale / 5
        for k in range(8):
            angle = k * math.pi / 4 + rng.uniform(-0.2, 0.2)
            draw.line(
                (cx, cy, cx + math.cos(angle) * scale / 2, cy + math.sin(angle) * scale / 2),
                fill=accent,
                width=max(2, int(scale / 18)),
            )
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=main)
    elif shape == "dots":
        for _ in range(25):
            x = cx + rng.uniform(-0.5, 0.5) * scale
            y = cy + rng.uniform(-0.5, 0.5) * scale
            r = rng.uniform(0.02, 0.06) * scale
            draw.ellipse((x - r, y - r, x + r, y + r), fill=rng.choice((main, accent)))
    else:
        raise ValueError(f"unknown shape {shape}")
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 10, (height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 1.0)))


def _jitter(color: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in color)  # type: ignore[return-value]


def save_in_odd_format(image: Image.Image, path_without_suffix: Path, kind: str) -> Path:
    """Save `image` as one of the awkward formats found in scraped photo collections."""
    if kind == "grayscale":
        path = path_without_suffix.with_suffix(".jpg")
        image.convert("L").save(path, quality=90)
    elif kind == "cmyk":
        path = path_without_suffix.with_suffix(".jpg")
        image.convert("CMYK").save(path, quality=90)
    elif kind == "rgba":
        path = path_without_suffix.with_suffix(".png")
        rgba = image.convert("RGBA")
        alpha = Image.new("L", image.size, 255)
        ImageDraw.Draw(alpha).rectangle((0, 0, image.width // 6, image.height), fill=0)  # transparent strip
        rgba.putalpha(alpha)
        rgba.save(path)
    elif kind == "palette":
        path = path_without_suffix.with_suffix(".gif")
        image.quantize(colors=64).save(path)
    elif kind == "16bit":
        path = path_without_suffix.with_suffix(".png")
        gray16 = (np.asarray(image.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(gray16).save(path)  # mode I;16
    elif kind == "webp":
        path = path_without_suffix.with_suffix(".webp")
        image.save(path, quality=85)
    elif kind == "no_extension":
        path = path_without_suffix
        image.save(path, format="JPEG", quality=90)
    else:
        path = path_without_suffix.with_suffix(".jpg")
        image.save(path, quality=90)
    return path


ODD_KINDS = ("grayscale", "cmyk", "rgba", "palette", "16bit", "webp", "no_extension")


def make_demo_dataset(
    root: str | Path,
    *,
    counts: tuple[int, ...] = DEFAULT_COUNTS,
    families: tuple[Family, ...] = FAMILIES,
    size_range: tuple[int, int] = (96, 384),
    odd_share: float = 0.15,
    broken_files: bool = True,
    seed: int = 0,
    folders: bool = True,
) -> DemoDataset:
    """Write the demo data set: `root/<phylum>_<family>/<id>.<ext>` and `root/metadata.csv`.

    `folders=False` writes the images flat into `root/images/` (a CSV-only layout).
    """
    root = Path(root)
    rng = random.Random(seed)
    rows = []
    broken: list[str] = []
    for family, count in zip(families, counts, strict=True):
        folder = root / (family.folder if folders else "images")
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            size = (rng.randint(*size_range), rng.randint(*size_range))
            image = draw_animal(family, size, rng)
            kind = rng.choice(ODD_KINDS) if rng.random() < odd_share else "jpeg"
            content_id = 10_000_000 + rng.randrange(90_000_000)
            page_id = 1_000_000 + rng.randrange(9_000_000)
            stem = folder / f"{content_id}_{page_id}_eol-full-size-copy"
            path = save_in_odd_format(image, stem, kind)
            rows.append(_metadata_row(rng, family, content_id, page_id, path.relative_to(root).as_posix()))
        if broken_files and family is families[0]:
            empty = folder / "00000000_0_eol-full-size-copy.jpg"
            empty.write_bytes(b"")
            truncated = folder / "00000001_0_eol-full-size-copy.jpg"
            buffer = draw_animal(family, (200, 150), rng)
            buffer.save(truncated, quality=90)
            truncated.write_bytes(truncated.read_bytes()[:1500])
            for path in (empty, truncated):
                rows.append(_metadata_row(rng, family, 0, 0, path.relative_to(root).as_posix()))
                broken.append(path.relative_to(root).as_posix())
    metadata = root / "metadata.csv"
    with metadata.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(METADATA_COLUMNS)
        writer.writerows(rows)
    return DemoDataset(root=root, metadata_csv=metadata, families=families, broken_files=broken)


def _metadata_row(rng: random.Random, family: Family, content_id: int, page_id: int, file_path: str) -> list:
    return [
        str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        content_id,
        page_id,
        "animalia",
        family.phylum,
        family.family,
        file_path,
    ]
