"""Train / validation / test splits: a stratified, seeded validation split when the data has none,
and the splits written out (OUTPUT_DIR/splits/) so that any run can be reproduced with --split_dir."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from datasets import ClassLabel, Dataset, concatenate_datasets

from .io_utils import write_csv, write_json
from .sources import LABEL, SOURCE_FILE, SOURCE_INDEX, SOURCE_SPLIT, ImageData

logger = logging.getLogger(__name__)


def ensure_validation_split(data: ImageData, ratio: float, seed: int) -> ImageData:
    """Hold out `ratio` of train as validation (stratified by label) unless there is a validation split.

    Classes with a single image cannot be in both splits: they stay in train, with a warning.
    The test split is never touched.
    """
    if "validation" in data.splits:
        return data
    train, validation = stratified_holdout(data.splits["train"], ratio, seed)
    splits = {"train": train, "validation": validation}
    if "test" in data.splits:
        splits["test"] = data.splits["test"]
    data.splits.clear()
    data.splits.update(splits)
    logger.info(
        "Held out %d of %d training images for validation (stratified, seed %d).",
        len(validation),
        len(train) + len(validation),
        seed,
    )
    return data


def stratified_holdout(dataset: Dataset, ratio: float, seed: int) -> tuple[Dataset, Dataset]:
    labels = dataset[LABEL]
    counts = Counter(labels)
    singletons = {label for label, count in counts.items() if count < 2}
    if singletons:
        names = dataset.features[LABEL].names
        logger.warning(
            "%d class(es) have a single image and stay in train only: %s",
            len(singletons),
            ", ".join(sorted(names[i] for i in singletons)[:10]),
        )
    eligible = [i for i, label in enumerate(labels) if label not in singletons]
    kept_in_train = [i for i, label in enumerate(labels) if label in singletons]
    if len(eligible) < 2:
        raise ValueError(f"Only {len(dataset)} training images: too few to hold out a validation split.")
    subset = dataset.select(eligible)
    try:
        parts = subset.train_test_split(test_size=ratio, stratify_by_column=LABEL, seed=seed)
    except ValueError as error:
        # E.g. fewer validation images than classes: a plain seeded split is the best that can be done.
        logger.warning("Cannot stratify the validation split (%s); splitting at random instead.", error)
        parts = subset.train_test_split(test_size=ratio, seed=seed)
    train = parts["train"]
    if kept_in_train:
        train = concatenate_datasets([train, dataset.select(kept_in_train)])
    return train, parts["test"]


def write_splits(data: ImageData, directory: str | Path) -> Path:
    """Write `train.csv` / `validation.csv` / `test.csv` with the source's columns, plus `source.json`
    describing the source, so `--split_dir DIRECTORY` reproduces the same splits."""
    directory = Path(directory)
    for split_name, split in data.splits.items():
        if data.source_columns:
            columns = data.source_columns
        else:  # Hub / save_to_disk data: rows are referred to by position in their source split
            columns = [SOURCE_SPLIT, SOURCE_INDEX, LABEL]
        values = [_column_as_text(split, column) for column in columns]
        header = ["index" if c == SOURCE_INDEX else c for c in columns]
        write_csv(directory / f"{split_name}.csv", header, zip(*values, strict=True))
    write_json(directory / SOURCE_FILE, {**data.source, "label_name": data.label_name, "labels": data.labels})
    return directory


def _column_as_text(split: Dataset, column: str) -> list:
    values = split[column]
    feature = split.features[column]
    if isinstance(feature, ClassLabel):
        return [feature.int2str(v) for v in values]
    return list(values)
