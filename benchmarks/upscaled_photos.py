#!/usr/bin/env python
"""Larger stand-ins for full-size photos when only small ones are at hand, in the same layout as
--data_dir, saved as JPEG.

    # every photo scaled by 1.5 per side (bicubic), quality 90
    python benchmarks/upscaled_photos.py --data_dir ../shared/data/hymenoptera --factor 1.5 --output /tmp/bench/hym_x1.5
    # every photo as a 2x2 mosaic with three other photos, scaled down to 0.42 megapixels,
    # quality 95 without chroma subsampling
    python benchmarks/upscaled_photos.py --data_dir ../shared/data/hymenoptera --mosaic_megapixels 0.42 \\
        --quality 95 --subsampling 4:4:4 --output /tmp/bench/mosaic_0.42

Upscaled photos are smoother than real ones of the same size (they decode faster). Mosaics scaled down
keep (and concentrate) the detail of real photos, and quality 95 with 4:4:4 chroma makes them the
hardest to decode: together the two bracket real full-size photos.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_classifier.data.resolve import image_files_below

TILE = (500, 375)


def mosaic(paths: list[Path], megapixels: float) -> Image.Image:
    """The photos as 2x2 tiles, scaled down (Lanczos) to `megapixels`."""
    canvas = Image.new("RGB", (2 * TILE[0], 2 * TILE[1]))
    for index, path in enumerate(paths):
        with Image.open(path) as tile:
            canvas.paste(tile.convert("RGB").resize(TILE), ((index % 2) * TILE[0], (index // 2) * TILE[1]))
    scale = min(1.0, (megapixels * 1e6 / (canvas.width * canvas.height)) ** 0.5)
    size = (round(canvas.width * scale), round(canvas.height * scale))
    return canvas.resize(size, Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output", required=True)
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--factor", type=float, help="scale each photo by this factor per side")
    size.add_argument("--mosaic_megapixels", type=float, help="2x2 mosaics scaled down to this size")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--subsampling", default="4:2:0", choices=["4:4:4", "4:2:2", "4:2:0"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = Path(args.data_dir)
    photos = image_files_below(root)[0]
    rng = random.Random(args.seed)
    for path in photos:
        target = Path(args.output) / path.relative_to(root).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        if args.mosaic_megapixels:
            image = mosaic([path, *rng.sample(photos, 3)], args.mosaic_megapixels)
        else:
            with Image.open(path) as photo:
                photo = photo.convert("RGB")
                size = (round(photo.width * args.factor), round(photo.height * args.factor))
                image = photo.resize(size, Image.Resampling.BICUBIC)
        image.save(target, quality=args.quality, subsampling=args.subsampling)
    print(f"Wrote {len(photos)} photos to {args.output}")


if __name__ == "__main__":
    main()
