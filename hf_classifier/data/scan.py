"""The one pass that reads every image: each file is read and decoded once, and the caller takes what
it needs from that read. The up-front check takes the verdict (can the image be used?), `inspect` and
`split` the facts (format, mode, size, EXIF orientation, content and perceptual hashes), `prepare` the
decoded picture it stores, and the streamed validation split the verdict of each sample.

JPEGs decode at a reduced DCT scale (every byte is still read, so a truncated file shows); the pass
runs in threads, since Pillow releases the GIL while decoding.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from hf_classifier.data.duplicates import content_hash, perceptual_hash
from hf_classifier.data.images import (
    BadImageError,
    ImageSource,
    available_cpus,
    decode_image,
    describe_source,
    image_errors,
    read_source_bytes,
)
from hf_classifier.data.schema import IMAGE, ImageData

MAX_ASPECT_RATIO = 20  # longer side / shorter side beyond which an image is refused by the check
CHECK_DRAFT = (1, 1)  # the smallest DCT scale: enough to see that every byte decodes
HASH_DRAFT = (64, 64)  # enough for the perceptual hash's 32 x 32 thumbnail
_CHUNK = 1024  # images held in memory at once (Hub data sets carry the bytes)


@dataclass
class ImageScan:
    """What one read of one image finds out."""

    path: str
    reason: str | None = None  # why it cannot be read; None when it decodes
    format: str | None = None
    mode: str | None = None
    width: int | None = None  # as displayed, after the EXIF orientation
    height: int | None = None
    orientation: int = 1
    content_hash: str | None = None  # with `hashes`
    perceptual_hash: int | None = None  # with `hashes`
    image: Image.Image | None = field(default=None, repr=False)  # with `keep_image`: the decoded picture

    @property
    def readable(self) -> bool:
        return self.reason is None

    @property
    def problem(self) -> str | None:
        """Why the image cannot be used for training (unreadable, or no photo's shape), or None."""
        return self.reason or shape_problem(self.width, self.height)


def scan_image(
    source: ImageSource,
    *,
    draft_size: tuple[int, int] | None = None,
    hashes: bool = False,
    keep_image: bool = False,
) -> ImageScan:
    """Read and decode `source` once (a JPEG at the DCT scale that covers `draft_size`; by default the
    smallest, or the one the perceptual hash needs). A file that cannot be used gives its `reason`;
    a decoder's odd failure on one file must not end the pass, so it is a reason too."""
    scan = ImageScan(describe_source(source))
    try:
        if hashes:
            with image_errors(source):
                source = read_source_bytes(source)
            scan.content_hash = content_hash(source)
        decoded = decode_image(
            source, draft_size or (HASH_DRAFT if hashes else CHECK_DRAFT), exact_extent=False
        )
    except BadImageError as error:
        scan.reason = error.reason
        return scan
    except Exception as error:  # noqa: BLE001
        scan.reason = f"cannot be decoded ({error})"
        return scan
    scan.format, scan.mode, scan.orientation = decoded.header
    scan.width, scan.height = decoded.original_size
    if hashes:
        scan.perceptual_hash = perceptual_hash(decoded.image)
    if keep_image:
        scan.image = decoded.image
    return scan


def check_image(source: ImageSource) -> str | None:
    """Why `source` cannot be used (fully decoded, JPEG at the smallest DCT scale), or None."""
    return scan_image(source).problem


def shape_problem(width: int, height: int) -> str | None:
    """Why an image of this size cannot be used for training, or None.

    A 30,000 x 20 px strip takes seconds per image to resize to the model's square input, which
    squashes it to a smear (or crops 1/1500 of it): a banner or a scan error, not a photo. Tiny images
    (even 1 x 1) are accepted; `inspect` lists them."""
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        return (
            f"aspect ratio {ratio:.0f}:1 (limit {MAX_ASPECT_RATIO}:1): too elongated for a square model "
            "input; crop it into photos or remove it"
        )
    return None


def _scan_chunks(
    chunks: Iterable[Sequence[ImageSource]],
    total: int,
    *,
    hashes: bool,
    num_workers: int | None,
    progress: bool,
    description: str,
) -> Iterator[ImageScan]:
    from tqdm.auto import tqdm

    read = functools.partial(scan_image, hashes=hashes)
    with (
        ThreadPoolExecutor(max_workers=num_workers or available_cpus()) as pool,
        tqdm(total=total, desc=description, unit="img", leave=False, disable=not progress) as bar,
    ):
        for chunk in chunks:
            for scan in pool.map(read, chunk):
                bar.update()
                yield scan


def scan_rows(
    data: ImageData,
    *,
    hashes: bool = False,
    num_workers: int | None = None,
    progress: bool = True,
    description: str = "Checking images",
) -> Iterator[tuple[str, int, ImageScan]]:
    """`(split, row, scan)` for every image of every split, in order, `_CHUNK` rows in memory at once."""
    chunks = (
        split.select_columns([IMAGE])[start : start + _CHUNK][IMAGE]
        for split in data.splits.values()
        for start in range(0, len(split), _CHUNK)
    )
    rows = ((name, row) for name, split in data.splits.items() for row in range(len(split)))
    total = sum(len(split) for split in data.splits.values())
    scans = _scan_chunks(
        chunks, total, hashes=hashes, num_workers=num_workers, progress=progress, description=description
    )
    for (name, row), scan in zip(rows, scans, strict=True):
        yield name, row, scan


def find_bad_images(
    sources: Sequence[ImageSource],
    *,
    num_workers: int | None = None,
    progress: bool = True,
    description: str = "Checking images",
) -> list[tuple[int, str]]:
    """`(index, reason)` for each unusable image, in input order."""
    chunks = (sources[start : start + _CHUNK] for start in range(0, len(sources), _CHUNK))
    scans = _scan_chunks(
        chunks,
        len(sources),
        hashes=False,
        num_workers=num_workers,
        progress=progress,
        description=description,
    )
    return [(index, scan.problem) for index, scan in enumerate(scans) if scan.problem]
