"""`hf-classifier prepare` / `train --prepare`: decode every photo once, RGB-converted and pre-resized
(shorter side a margin above the training size), into a `datasets` Arrow dataset that later epochs
and later runs read instead of the full-size photos.

- Fast first pass: JPEGs decode at a reduced DCT scale (draft), parallel processes (`num_proc`).
- Resumable: images are processed in shards, each saved under a temporary name and renamed when
  complete; an interrupted pass restarts at the first missing shard.
- Cached by content: the cache key covers the images (path, size, modification time, or the Hub
  data set's fingerprint), the prepared size and the format version; any change makes a new entry.
- Safe to share: shards appear by atomic rename, so two runs on the same cache never see a
  half-written shard (one of them simply does the work twice).
- Stored as PPM (raw RGB with a tiny header) in a binary `image` column: decoding costs about a memory
  copy, and the rest of the pipeline reads it like any image (the original path stays in `file_path`).
- Unreadable images are recorded (path, reason) and handled like in the foundation: stop, or skip and
  list them in bad_images.csv.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Value, concatenate_datasets
from PIL import Image

from hf_classifier.data.images import available_cpus
from hf_classifier.data.scan import scan_image
from hf_classifier.data.schema import IMAGE, SOURCE_IMAGE, ImageData
from hf_classifier.io_utils import write_json

logger = logging.getLogger(__name__)

# 2: images only (other columns come from the source); 3: images over the aspect-ratio limit are
# recorded as unusable (a v2 entry stored them).
FORMAT_VERSION = 3
SHARD_SIZE = 1000
IMAGES_PER_PROCESS = 32  # the fewest images a preparing process is started for
MARGIN = 8 / 7  # 224 -> 256: the usual resize-then-crop ratio
REASON = "_prepare_error"
# A shard's files: data.arrow, or data_00000_of_00002.arrow, ... from parallel processes. Only these:
# `datasets` writes its own cache files (cache-*.arrow: a split's indices, ...) beside the files a
# dataset was read from, here by the runs that use the copies.
SHARD_FILE_STEM = "data"


def default_cache_dir() -> Path:
    return Path(os.environ.get("HF_CLASSIFIER_CACHE", Path.home() / ".cache" / "hf_classifier")) / "prepared"


def prepared_size(image_size: int) -> int:
    """The shorter side stored for a training size: a margin above it, so crops and resizes stay sharp."""
    return math.ceil(image_size * MARGIN)


def stored_size_for(processor: Any) -> int:
    """The shorter side to store for a checkpoint: a margin above its input size, and at least the size
    its evaluation resize needs (ConvNeXt: 256 for 224, ViT: 256 for 224)."""
    from hf_classifier.transforms.pipeline import spec_from_processor

    spec = spec_from_processor(processor)
    if spec is None:
        pixels = processor(images=Image.new("RGB", (512, 512)), return_tensors="pt")["pixel_values"]
        return prepared_size(max(pixels.shape[-2:]))
    eval_need = spec.shortest_edge or max(spec.resize_to or (0, 0))
    return max(prepared_size(max(spec.output_size)), eval_need)


def resize_shorter_side(image: Image.Image, size: int, tolerance: float = 1.15) -> Image.Image:
    """Shorter side to `size` (never enlarged), aspect kept. An image already within `tolerance` of it
    (a JPEG draft often is) is kept as it is: the resize would cost as much as the decode."""
    width, height = image.size
    if min(width, height) <= size * tolerance:
        return image
    scale = size / min(width, height)
    target = (max(size, round(width * scale)), max(size, round(height * scale)))
    # PIL's bilinear is antialiased (its support grows with the reduction): sharp enough for a stored
    # copy that is cropped and resized again, and 1.8x faster than bicubic.
    return image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)


def encode_ppm(image: Image.Image) -> bytes:
    """Binary PPM: a 15-byte header and the raw RGB bytes."""
    return b"P6\n%d %d\n255\n" % image.size + image.tobytes()


class _PrepareBatch:
    """`Dataset.map` function: photo -> shorter side `size`, as PPM bytes (or the reason it failed).

    A JPEG is decoded at the smallest DCT scale that still covers the training size (`size / MARGIN`),
    not `size`: a 0.4-megapixel photo (shorter side 450-510) then decodes at half scale and needs no
    resize, which makes the pass 1.4x faster; its copy is stored a little under `size` (never under the
    training size)."""

    def __init__(self, size: int):
        self.size = size
        self.draft_size = (math.floor(size / MARGIN),) * 2

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images, reasons = [], []
        for source in batch[IMAGE]:
            scan = scan_image(source, draft_size=self.draft_size, keep_image=True)
            if scan.problem:
                images.append(None)
                reasons.append(f"{scan.path}\t{scan.problem}")
            else:
                images.append(encode_ppm(resize_shorter_side(scan.image, self.size)))
                reasons.append("")
        return {IMAGE: images, REASON: reasons}


def split_fingerprint(split: Dataset) -> str:
    """What the prepared copy depends on: every image's path, size and modification time (local files),
    or the data set's own fingerprint (images held as bytes)."""
    digest = hashlib.sha256()
    if split.features[IMAGE] == Value("string"):
        for path in split[IMAGE]:
            try:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())
    else:
        digest.update(split._fingerprint.encode())
        digest.update(str(len(split)).encode())
    return digest.hexdigest()


def cache_entry(split: Dataset, size: int, cache_dir: Path) -> Path:
    """The cache folder of `split` prepared at `size`; it holds info.json once complete."""
    key = hashlib.sha256(f"{split_fingerprint(split)}|{size}|v{FORMAT_VERSION}".encode()).hexdigest()[:24]
    return cache_dir / key


def prepare_split(
    split: Dataset,
    size: int,
    cache_dir: Path,
    *,
    num_proc: int | None = None,
    shard_size: int = SHARD_SIZE,
    description: str = "Preparing images",
) -> tuple[Dataset, list[tuple[int, str, str]]]:
    """The prepared copy of `split` (from the cache when complete) and its unreadable rows
    `(row, path, reason)`. Rows keep their order and every other column.

    The cache holds the images only: labels and the other columns always come from `split` itself, so
    a run with another label column (or corrected labels) on the same photos reuses the cache safely.
    Paths given in the `image` column stay available in `SOURCE_IMAGE`."""
    entry = cache_entry(split, size, cache_dir)
    entry.mkdir(parents=True, exist_ok=True)
    shards = math.ceil(len(split) / shard_size) or 1
    num_proc = num_proc or available_cpus()
    features = Features({IMAGE: Value("binary"), REASON: Value("string")})
    done = sum((entry / f"shard-{i:05d}").is_dir() for i in range(shards))
    if done < shards:
        logger.info(
            "Preparing %d images at shorter side %d px in %s (%d of %d shards already done).",
            len(split),
            size,
            entry,
            done,
            shards,
        )
    for index in range(shards):
        final = entry / f"shard-{index:05d}"
        if final.is_dir():
            continue
        rows = range(index * shard_size, min(len(split), (index + 1) * shard_size))
        part = split.select_columns([IMAGE]).select(rows)
        # Starting a process costs about as much as decoding a few dozen photos.
        processes = min(num_proc, len(part) // IMAGES_PER_PROCESS)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=entry))
        try:
            # map writes its Arrow files straight into the staging folder, which then appears whole.
            part.map(
                _PrepareBatch(size),
                batched=True,
                batch_size=16,
                features=features,
                num_proc=processes if processes > 1 else None,
                cache_file_name=str(staging / f"{SHARD_FILE_STEM}.arrow"),
                load_from_cache_file=False,
                desc=f"{description} ({index + 1}/{shards})",
            )
            os.rename(staging, final)
        except OSError as error:
            # Another run finished this shard first, or the disk is full.
            shutil.rmtree(staging, ignore_errors=True)
            if not final.is_dir():
                if error.errno in (errno.ENOSPC, errno.EDQUOT):
                    # Name the cache: the finished shards stay there and a rerun continues after them.
                    raise OSError(error.errno, os.strerror(error.errno), str(entry)) from error
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    write_json(entry / "info.json", {"size": size, "rows": len(split), "version": FORMAT_VERSION})
    files = [
        str(path)
        for i in range(shards)
        for path in sorted((entry / f"shard-{i:05d}").glob(f"{SHARD_FILE_STEM}*.arrow"))
    ]
    stored = concatenate_datasets([Dataset.from_file(path) for path in files])
    bad = []
    for row, reason in enumerate(stored[REASON]):
        if reason:
            path, _, why = reason.partition("\t")
            bad.append((row, path, why))
    if split.features[IMAGE] == Value("string"):
        others = split.rename_column(IMAGE, SOURCE_IMAGE)
    else:
        others = split.remove_columns(IMAGE)
    if not others.column_names:
        return stored.select_columns([IMAGE]), bad
    return concatenate_datasets([others, stored.select_columns([IMAGE])], axis=1), bad


def prepare_data(
    data: ImageData, size: int, *, cache_dir: str | Path | None = None, num_proc: int | None = None
) -> tuple[ImageData, list[tuple[str, int, str, str]]]:
    """Prepare every split at shorter side `size`; return the prepared data and `(split, row, path,
    reason)` for the images that could not be read."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    bad = []
    for name in list(data.splits):
        prepared, failures = prepare_split(
            data.splits[name], size, cache_dir, num_proc=num_proc, description=f"Preparing {name} images"
        )
        data.splits[name] = prepared
        bad.extend((name, row, path, reason) for row, path, reason in failures)
    data.source = {**data.source, "prepared_size": size}
    return data, bad


# `train --prepare auto`: prepare when the photos are read more than once (every later pass then reads
# the small copies instead of decoding the photos again) and the copies fit the cache's disk with room
# to spare.
FREE_SPACE_FACTOR = 2
PHOTO_ASPECT = 4 / 3  # a 4:3 photo's copy holds size x 4/3 size pixels


def estimated_prepared_bytes(num_images: int, size: int) -> int:
    """What the prepared copies of `num_images` photos at shorter side `size` take on disk (raw RGB)."""
    return math.ceil(num_images * size * size * PHOTO_ASPECT * 3)


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds `folder`, or will hold it (its nearest existing parent)."""
    existing = next((path for path in (folder, *folder.parents) if path.exists()), Path.cwd())
    return shutil.disk_usage(existing).free


def _readable_size(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{max(count / 1e6, 0.1):.1f} MB"


def auto_prepare_choice(
    data: ImageData, size: int, epochs: float, cache_dir: str | Path | None
) -> tuple[bool, str]:
    """Whether `--prepare auto` prepares the photos at `size`, and the log line that says why.

    `epochs` is how many times training reads the training images (from --num_train_epochs, or from
    --max_steps). Copies already in the cache are always used: reading them costs less than the check,
    and every process of a distributed run then decides alike (the first one prepares, the others
    find its copies, whatever space is left)."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    if all((cache_entry(split, size, folder) / "info.json").is_file() for split in data.splits.values()):
        return True, f"Using the prepared copies of the photos in {folder}: --prepare false reads the photos."
    if epochs <= 1:
        return False, (
            f"Not preparing the photos: training reads them once at most ({epochs:.3g} epoch); --prepare "
            "true prepares them anyway."
        )
    num_images = sum(len(split) for split in data.splits.values())  # every split is prepared
    needed, free = estimated_prepared_bytes(num_images, size), free_bytes(folder)
    if free < FREE_SPACE_FACTOR * needed:
        return False, (
            f"Not preparing the photos: their copies (~{_readable_size(needed)}) need twice that free in "
            f"{folder}, which has {_readable_size(free)}; --prepared_cache_dir on a larger disk prepares "
            "them there."
        )
    return True, (
        f"Preparing the photos once ({epochs:.3g} epochs, ~{_readable_size(needed)} of "
        f"{_readable_size(free)} free in {folder}): --prepare false reads them each epoch instead."
    )
