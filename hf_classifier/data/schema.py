"""What every stage agrees on: an `ImageData` (splits whose `label` column is a `ClassLabel`, the same
names in every split) and the column and split names it uses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from datasets import DatasetDict

IMAGE = "image"  # a path, or a `{"bytes", "path"}` record for Hub data, opened by the transform
LABEL = "label"
FILE_PATH = "file_path"
SOURCE_IMAGE = "source_image"  # with --prepare: the path the prepared image came from
# Hub / save_to_disk rows are identified by their position in their source split.
SOURCE_SPLIT = "source_split"
SOURCE_INDEX = "source_index"
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
SPLIT_ORDER = ("train", "validation", "test")


class DataSourceError(ValueError):
    """The data source is missing, malformed or ambiguous; the message says how to fix it."""


@dataclass
class ImageData:
    """A classification data set: its splits, what the labels are called, and where files live."""

    splits: DatasetDict
    label_name: str = LABEL
    image_root: Path | None = None
    # The source's own columns, in order: what split CSVs are written with.
    source_columns: list[str] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    skipped_images: int = 0  # unreadable images left out (listed in bad_images.csv)

    @property
    def labels(self) -> list[str]:
        first = next(iter(self.splits.values()))
        return list(first.features[LABEL].names)

    def only(self, split: str) -> ImageData:
        """The same data set with one of its splits."""
        return dataclasses.replace(self, splits=type(self.splits)({split: self.splits[split]}))

    def describe(self) -> str:
        sizes = ", ".join(
            f"{name}={len(split) if hasattr(split, '__len__') else 'streamed'}"
            for name, split in self.splits.items()
        )
        return f"{len(self.labels)} classes ({self.label_name}); {sizes}"
