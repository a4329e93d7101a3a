#!/usr/bin/env python
"""Larger stand-ins for full-size photos when only small ones are at hand: every photo below
--data_dir scaled by --factor per side (bicubic), saved as JPEG quality 90 in the same layout.

    python benchmarks/upscaled_photos.py --data_dir ../shared/data/hymenoptera --factor 1.5 --output /tmp/bench/hym_x1.5

Upscaled photos are smoother than real ones of the same size (they decode a little faster), so the
naive path looks a little better on them than on real full-size photos.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_classifier.sources import image_files_below  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--factor", type=float, required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    root = Path(args.data_dir)
    photos = image_files_below(root)[0]
    for path in photos:
        target = Path(args.output) / path.relative_to(root).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image = image.convert("RGB")
            size = (round(image.width * args.factor), round(image.height * args.factor))
            image.resize(size, Image.Resampling.BICUBIC).save(target, quality=90)
    print(f"Wrote {len(photos)} photos to {args.output}")


if __name__ == "__main__":
    main()
