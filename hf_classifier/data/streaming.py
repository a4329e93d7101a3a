"""`train --streaming`: data sets larger than the disk cache, read as a `datasets.IterableDataset`.

Sources: a Hub data set (`--dataset_name`), or a folder of WebDataset `.tar` shards (`--data_dir`)
named by split (`train-00000.tar`, `validation-00000.tar`, or `train/*.tar`, `validation/*.tar`);
each sample holds an image (`.jpg`, `.png`, `.webp`, ...) and a label: an integer `.cls`, a text
`.txt`, or a field of the sample's `.json` (`--label_column family`).

The class list comes from `--class_names` (comma-separated, or a file with one name per line), a
`classes.txt` beside the shards, or the Hub data set's `ClassLabel` feature: a stream cannot be
scanned for its classes up front.

The training stream is shuffled through a buffer (`--shuffle_buffer_size`) after its shard order;
its shards are spread over the processes (Accelerate) and then over each process's DataLoader
workers (datasets), so every image is read by one worker only. Memory holds the buffer and the
batches in flight, whatever the size of the data. The validation split is small by nature: it is
written once to an Arrow file (disk, not memory) so that evaluation counts every image exactly
once across processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hf_classifier.data.images import BadImageError
from hf_classifier.data.resolve import find_shards, load_dataset_splits
from hf_classifier.data.sampling import derived_seed
from hf_classifier.data.scan import check_image
from hf_classifier.data.schema import FILE_PATH, IMAGE, LABEL, DataSourceError, ImageData
from hf_classifier.hub.offline import is_local_path
from hf_classifier.io_utils import write_text
from hf_classifier.transforms.pipeline import transform_source

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")  # sample keys of WebDataset images
IMAGE_KEYS = (*IMAGE_EXTENSIONS, "image", "img")
LABEL_KEYS = ("cls", "label", "txt")
CLASS_FILES = ("classes.txt", "class_names.txt")


def read_class_names(given: str | None, folder: Path | None) -> list[str] | None:
    """`--class_names a,b,c` or a file of names (one per line), else classes.txt beside the shards."""
    if given:
        if os.path.isfile(given):
            return _names_from_file(Path(given))
        return [name.strip() for name in given.split(",") if name.strip()]
    for name in CLASS_FILES:
        if folder is not None and (folder / name).is_file():
            return _names_from_file(folder / name)
    return None


def _names_from_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != len(set(names)):
        raise DataSourceError(f"{path} lists a class name twice.")
    return names


NO_LABEL = -1  # datasets' ClassLabel value for an unlabelled example


class _StandardSample:
    """Stream sample -> {image, label, file_path}: the image left encoded, the label as a class index
    (-1 when the sample has none). Shards that mix formats (.jpg and .png samples) are fine: the
    image is taken from whichever image key the sample has."""

    def __init__(self, image_key: str, label_key: str, json_field: str | None, labels: list[str]):
        self.image_key, self.label_key, self.json_field = image_key, label_key, json_field
        self.labels = labels
        self.index = {name: i for i, name in enumerate(labels)}

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        value = sample[self.label_key]
        if self.json_field is not None:
            value = (value or {}).get(self.json_field)
        where = sample.get("__key__") or ""
        if sample.get("__url__"):
            where = f"{sample['__url__']}:{where}"
        image = sample.get(self.image_key)
        if image is None:
            image = next((sample[key] for key in IMAGE_KEYS if sample.get(key) is not None), None)
        return {IMAGE: image, LABEL: self._label_index(value, where), FILE_PATH: where}

    def _label_index(self, value: Any, where: str) -> int:
        if value is None or value == "" or value == NO_LABEL:
            return NO_LABEL
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, str):
            value = value.strip()
            if value in self.index:
                return self.index[value]
            if value.isdigit():
                value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.labels):
            return value
        raise DataSourceError(
            f"Sample {where or '?'} has label {value!r}, which is not one of the {len(self.labels)} classes "
            f"({', '.join(self.labels[:5])}{', ...' if len(self.labels) > 5 else ''}). Fix the sample or the "
            "class list (--class_names / classes.txt)."
        )


def _choose_columns(features: Any, columns: list[str], image_column: str | None, label_column: str | None):
    """(image key, label key, json field or None) for a stream's columns."""
    from datasets import Image

    if image_column is None:
        typed = [c for c in columns if features is not None and isinstance(features.get(c), Image)]
        image_column = (typed or [c for c in IMAGE_KEYS if c in columns] or [None])[0]
    if image_column not in columns:
        raise DataSourceError(
            f"No image column {image_column!r} in the stream (--image_column). Columns: {', '.join(columns)}."
        )
    if label_column is None:
        label_column = next((c for c in LABEL_KEYS if c in columns), None)
        if label_column is None and "json" in columns:
            return image_column, "json", "label"
    if label_column in columns:
        return image_column, label_column, None
    if "json" in columns:  # a field of each sample's JSON, e.g. family
        return image_column, "json", label_column
    raise DataSourceError(
        f"No label column {label_column!r} in the stream (--label_column). Columns: {', '.join(columns)}."
    )


def _open_stream(data_args: Any, cache_dir: str | None, token: str | None) -> tuple[dict, Path | None, dict]:
    from datasets import Image, load_dataset

    if data_args.data_dir:
        folder = Path(data_args.data_dir)
        shards = find_shards(folder)
        if not shards:
            raise DataSourceError(
                f"--streaming found no WebDataset shards (*.tar) in {folder}. Without --streaming, "
                "image folders load directly."
            )
        streams = load_dataset("webdataset", data_files=shards, streaming=True, cache_dir=cache_dir)
        # datasets infers the columns from the first few samples: a later .png among .jpg samples
        # would lose its image. Declare every usual image key, so each sample keeps whichever it has.
        features = streams["train"].features if "train" in streams else None
        if features is not None:
            features = features.copy()
            for key in IMAGE_EXTENSIONS:
                features.setdefault(key, Image())
            streams = load_dataset(
                "webdataset", data_files=shards, streaming=True, cache_dir=cache_dir, features=features
            )
        source = {
            "kind": "webdataset",
            "data_dir": str(folder),
            "shards": {split: len(files) for split, files in shards.items()},
            "shard_files": shards,
        }
        return dict(streams), folder, source
    name = data_args.dataset_name
    if name is None:
        raise DataSourceError("--streaming needs --data_dir (WebDataset shards) or --dataset_name (Hub).")
    canonical = load_dataset_splits(
        name, data_args.dataset_config_name, streaming=True, cache_dir=cache_dir, token=token
    )
    source = {"kind": "dataset", "dataset_name": name, "dataset_config_name": data_args.dataset_config_name}
    return canonical, Path(name) if is_local_path(name) else None, source


def load_streaming_data(
    data_args: Any, *, seed: int, cache_dir: str | None = None, token: str | None = None
) -> ImageData:
    """Training stream (shuffled, with a ClassLabel `label`) and the validation (and test) splits
    written to Arrow files, as an `ImageData`."""
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from datasets.exceptions import DatasetGenerationError

    streams, folder, source = _open_stream(data_args, cache_dir, token)
    if "train" not in streams:
        raise DataSourceError(f"The stream has no train split (splits: {', '.join(streams) or 'none'}).")
    if "validation" not in streams:
        raise DataSourceError(
            "--streaming needs a validation split of its own (validation-*.tar shards, or a Hub data set "
            "with a validation split): a stream cannot be split without reading it all."
        )
    train = streams["train"]
    columns = list(train.column_names or train.features or [])
    image_key, label_key, json_field = _choose_columns(
        train.features, columns, data_args.image_column, data_args.label_column
    )
    labels = read_class_names(data_args.class_names, folder)
    label_feature = (train.features or {}).get(label_key) if json_field is None else None
    if isinstance(label_feature, ClassLabel):
        if labels is not None and labels != list(label_feature.names):
            # Integer labels would be read against the wrong names: refuse rather than permute them.
            raise DataSourceError(
                f"The class list given differs from the data set's own ClassLabel names for {label_key!r} "
                f"({', '.join(label_feature.names[:5])}, ...). Leave out --class_names, or give the same list "
                "in the same order."
            )
        labels = list(label_feature.names)
    if not labels:
        raise DataSourceError(
            "--streaming needs the class list: pass --class_names (names, comma-separated, or a file with "
            "one per line, in label-index order) or put classes.txt beside the shards."
        )
    features = Features(
        {IMAGE: Image(decode=False), LABEL: ClassLabel(names=labels), FILE_PATH: Value("string")}
    )
    standard = _StandardSample(image_key, label_key, json_field, labels)
    shard_files = source.pop("shard_files", None)

    def standardise(stream: Any) -> Any:
        for column, feature in (stream.features or {}).items():
            if isinstance(feature, Image):  # decoded by us (robustly, with drafts), not by datasets
                stream = stream.cast_column(column, Image(decode=False))
        return stream.map(standard, remove_columns=list(stream.column_names or []), features=features)

    splits: dict[str, Any] = {"train": standardise(train)}
    for name in ("validation", "test"):
        if name in streams:
            what = (shard_files or {}).get(name) or [
                source.get("dataset_name"),
                source.get("dataset_config_name"),
            ]
            try:
                splits[name] = Dataset.from_generator(
                    _samples,
                    gen_kwargs={
                        "stream": standardise(streams[name]),
                        "limit": data_args.max_eval_samples,
                        "skip_bad": data_args.skip_bad_images,
                    },
                    features=features,
                    cache_dir=cache_dir,
                    # Written once, reused by later runs and by the other processes, until the shards change.
                    fingerprint=_fingerprint(
                        what,
                        name,
                        labels,
                        (image_key, label_key, json_field),
                        data_args.max_eval_samples,
                        data_args.skip_bad_images,
                        _hub_revision(source),
                    ),
                )
            except DatasetGenerationError as error:  # datasets wraps what went wrong in a sample
                cause = error.__cause__
                raise (cause if isinstance(cause, DataSourceError) else error) from None
    label_name = json_field or (data_args.label_column or LABEL)
    return ImageData(
        splits=splits,
        label_name=label_name if label_name not in LABEL_KEYS else LABEL,
        source={**source, "streaming": True, "shuffle_buffer_size": data_args.shuffle_buffer_size},
    )


def training_stream(stream: Any, *, seed: int, buffer_size: int, endless: bool = True) -> Any:
    """The stream training reads: shard order shuffled, then samples through a shuffle buffer.

    `endless` repeats the shards before shuffling: every process and worker keeps reading (training is
    counted in steps), none runs dry before the others (which would leave processes with different
    numbers of micro-batches per optimizer step), and the buffer mixes across passes, so each pass is
    in a new order."""
    if endless:
        stream = stream.repeat(None)
    return stream.shuffle(seed=seed, buffer_size=buffer_size)


def _fingerprint(sources: list, *parts: Any) -> str:
    """Shard files (or a local data set folder's files) by size and modification time, plus `parts`."""
    digest = hashlib.sha256(repr(parts).encode())
    for item in sources:
        digest.update(repr(item).encode())
        if not item:
            continue
        files = sorted(Path(item).rglob("*")) if os.path.isdir(item) else [Path(item)]
        for path in files:
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _hub_revision(source: dict) -> str | None:
    """The Hub data set's current commit, so that a new revision makes a new validation copy."""
    name = source.get("dataset_name")
    if not name or is_local_path(name):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name).sha
    except Exception:  # noqa: BLE001 - the stream itself reports what is wrong with the Hub
        return None


def _samples(stream: Any, limit: int | None, skip_bad: bool) -> Iterator[dict[str, Any]]:
    """The validation/test samples to store: each image checked once (decoded in full); unlabelled
    samples are left out (a Hub test split often has label -1), unreadable ones stop the run or, with
    `skip_bad`, are left out with a warning."""
    kept = unlabelled = 0
    for sample in stream:
        if limit is not None and kept >= limit:
            break
        if sample[LABEL] == NO_LABEL:
            unlabelled += 1
            continue
        reason = "the sample has no image" if sample[IMAGE] is None else check_image(sample[IMAGE])
        if reason:
            _stop_or_skip(sample[FILE_PATH], reason, skip_bad)
            continue
        kept += 1
        yield sample
    if unlabelled:
        logger.warning("%d sample(s) without a label were left out of the stored split.", unlabelled)


def _stop_or_skip(where: str, reason: str, skip_bad: bool) -> None:
    """An unusable sample stops the run (naming it and the fix), or with `skip_bad` is skipped, logged."""
    if not skip_bad:
        raise DataSourceError(f"{where}: {reason}. Remove it from the shard, or pass --skip_bad_images.")
    logger.warning("Skipping unreadable image %s: %s", where, reason)


class StreamTransform:
    """Batched `IterableDataset.map` function: decode and transform each image; an unreadable one
    stops the run with its shard and key, or (with `skip_bad=True`) is dropped and recorded in a log
    line and in `record` (appended, one line per image)."""

    def __init__(
        self,
        image_transform: Any,
        skip_bad: bool = False,
        record: str | None = None,
        seed: int | None = None,
        process_index: int = 0,
    ):
        self.image_transform, self.skip_bad, self.record = image_transform, skip_bad, record
        self.recorded: set[str] = set()  # each image once per reader, not once per pass
        self.seed, self.process_index = seed, process_index
        self._reader: tuple[int, int] | None = None  # (pid, worker) that `_rng` was made for
        self._rng: random.Random | None = None

    def _generator(self) -> random.Random | None:
        """The augmentation generator of this reader (process x DataLoader worker), seeded by (seed,
        process, worker) and made inside the reader: not the main process's global `random` (read
        by whatever else draws from it), nor one state copied alike into every worker. A stream has
        no stable sample index, so its inputs are reproducible for a given number of readers."""
        if self.seed is None:
            return None
        worker = torch.utils.data.get_worker_info()
        reader = (os.getpid(), worker.id if worker is not None else -1)
        if reader != self._reader:
            self._reader = reader
            self._rng = random.Random(derived_seed(self.seed, self.process_index, reader[1]))
        return self._rng

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixels, labels = [], []
        for source, label, where in zip(batch[IMAGE], batch[LABEL], batch[FILE_PATH], strict=True):
            try:
                if source is None:
                    raise BadImageError(where, "the sample has no image")
                if label == NO_LABEL:
                    raise BadImageError(where, "the sample has no label")
                pixels.append(transform_source(self.image_transform, source, self._generator()))
            except BadImageError as error:
                if where in self.recorded:
                    continue
                _stop_or_skip(where, error.reason, self.skip_bad)
                self.recorded.add(where)
                if self.record:
                    os.makedirs(os.path.dirname(self.record) or ".", exist_ok=True)
                    with open(self.record, "a", encoding="utf-8") as handle:  # one short append per image
                        handle.write(f"{where}\t{error.reason}\n")
                continue
            labels.append(label)
        return {"pixel_values": pixels, "labels": labels}


def check_shard_spread(stream: Any, args: Any) -> None:
    """Shards are the unit of parallel reading: warn when some processes or workers would get none."""
    readers = max(1, args.world_size) * max(1, args.dataloader_num_workers)
    if stream.n_shards < readers:
        logger.warning(
            "The training stream has %d shard(s) for %d readers (%d process(es) x %d DataLoader workers): "
            "some will sit idle%s. Write at least %d shards.",
            stream.n_shards,
            readers,
            max(1, args.world_size),
            max(1, args.dataloader_num_workers),
            ", and every process reads every shard" if stream.n_shards < max(1, args.world_size) else "",
            readers,
        )
    processes = max(1, args.world_size)
    if stream.n_shards >= processes and stream.n_shards % processes:
        logger.warning(
            "%d shards do not divide among %d processes: the processes with fewer shards go round them "
            "more often, so their images are seen more often. Write a multiple of %d shards.",
            stream.n_shards,
            processes,
            processes,
        )


def tidy_bad_image_record(path: Path) -> int:
    """One line per image in the record the readers appended to (several processes may have met the
    same image); returns how many images were skipped."""
    if not path.is_file():
        return 0
    lines = list(dict.fromkeys(path.read_text(encoding="utf-8").splitlines()))
    write_text(path, "".join(f"{line}\n" for line in lines))
    return len(lines)
