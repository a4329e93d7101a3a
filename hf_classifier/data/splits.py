"""Train / validation / test splits: a stratified, seeded validation split when the data has none,
and the splits written out (OUTPUT_DIR/splits/) so that any run can be reproduced with --split_dir."""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import ClassLabel, Dataset, concatenate_datasets

from hf_classifier.data.checks import BAD_IMAGES_FILE
from hf_classifier.data.duplicates import DEFAULT_NEAR_THRESHOLD
from hf_classifier.data.schema import IMAGE, LABEL, SOURCE_IMAGE, SOURCE_INDEX, SOURCE_SPLIT, ImageData
from hf_classifier.data.sources import SOURCE_FILE
from hf_classifier.io_utils import write_csv, write_json

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
        # With --prepare, `image` holds the prepared pixels; the path it came from is kept aside.
        values = [
            _column_as_text(
                split, SOURCE_IMAGE if column == IMAGE and SOURCE_IMAGE in split.column_names else column
            )
            for column in columns
        ]
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


# ---------------------------------------------------------------------------------------------
# Leak-free splits (`hf-classifier split`): copies of one picture never land in two splits


@dataclass
class SplitPlan:
    assignment: list[str]  # the split of every row
    train_only_classes: list[str]  # too few images to spread over the splits
    groups_kept_together: int  # duplicate groups (2+ images) each placed in a single split


def grouped_stratified_split(
    labels: Sequence[str], groups: Sequence[int], *, val_size: float, test_size: float, seed: int
) -> SplitPlan:
    """Assign whole groups to train / validation / test, class by class.

    A group's class is its most common label. Each class aims at `round(n * size)` images in
    validation and test (at least 1 each) and keeps at least one image in train; a class with fewer
    images than the splits it would be spread over (3 with both held-out splits) goes to train
    entirely. Groups are shuffled with `seed` and fill test, then validation, without overshooting.
    """
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    by_class: dict[str, list[int]] = defaultdict(list)
    for group, rows in sorted(members.items(), key=lambda item: item[1][0]):
        counts = Counter(labels[i] for i in rows)
        top = max(counts.values())
        by_class[min(label for label, n in counts.items() if n == top)].append(group)

    held_out = [name for name, size in (("test", test_size), ("validation", val_size)) if size > 0]
    fraction = {"test": test_size, "validation": val_size}
    assignment = ["train"] * len(labels)
    train_only = []
    rng = random.Random(seed)
    for label in sorted(by_class):
        class_groups = by_class[label]
        total = sum(len(members[g]) for g in class_groups)
        if total < len(held_out) + 1:
            train_only.append(label)
            continue
        targets = {name: max(1, round(total * fraction[name])) for name in held_out}
        while sum(targets.values()) > total - 1:  # keep at least one image to learn from
            largest = max(targets, key=targets.get)
            targets[largest] -= 1
        filled = dict.fromkeys(held_out, 0)
        rng.shuffle(class_groups)
        for group in class_groups:
            size = len(members[group])
            target = next((name for name in held_out if filled[name] + size <= targets[name]), "train")
            if target != "train":
                filled[target] += size
            for row in members[group]:
                assignment[row] = target
    if train_only:
        logger.warning(
            "%d class(es) have too few images to split and stay in train only: %s",
            len(train_only),
            ", ".join(train_only[:10]),
        )
    kept = sum(1 for rows in members.values() if len(rows) > 1)
    return SplitPlan(assignment=assignment, train_only_classes=train_only, groups_kept_together=kept)


def check_split_sizes(val_size: float, test_size: float) -> None:
    if not (0 <= val_size < 1 and 0 <= test_size < 1 and val_size + test_size < 1):
        raise ValueError(
            f"--val_size {val_size} and --test_size {test_size} must be in [0, 1) with a sum below 1."
        )


def split_without_leaks(
    data: ImageData,
    output_dir: str | Path,
    *,
    val_size: float = 0.1,
    test_size: float = 0.1,
    seed: int = 42,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    num_workers: int | None = None,
) -> dict:
    """Pool every image of `data`, find duplicate groups, split them stratified and write the CSVs.

    Unreadable images are left out and listed in `bad_images.csv`. Returns the split report.
    """
    from hf_classifier.data.inspection import scan_data

    check_split_sizes(val_size, test_size)
    output_dir = Path(output_dir)
    if len(data.splits) > 1:
        logger.warning(
            "The source is already split (%s); its images are pooled and split again.", ", ".join(data.splits)
        )
    inspected = scan_data(data, near_threshold=near_threshold, num_workers=num_workers)
    bad = [i for i, facts in enumerate(inspected.facts) if not facts.readable]
    if bad:
        write_csv(
            output_dir / BAD_IMAGES_FILE,
            ["path", "reason"],
            [(inspected.paths[i], inspected.facts[i].reason) for i in bad],
        )
        logger.warning(
            "Left out %d unreadable image(s), listed in %s.", len(bad), output_dir / BAD_IMAGES_FILE
        )
    # Plan on the readable images only, so that class targets and train-only classes count what is kept.
    excluded = set(bad)
    readable = [i for i in range(len(inspected.facts)) if i not in excluded]
    plan = grouped_stratified_split(
        [inspected.labels[i] for i in readable],
        [inspected.duplicates.component_of[i] for i in readable],
        val_size=val_size,
        test_size=test_size,
        seed=seed,
    )
    pooled = (
        concatenate_datasets(list(data.splits.values()))
        if len(data.splits) > 1
        else next(iter(data.splits.values()))
    )
    splits = {}
    for name in ("train", "validation", "test"):
        rows = [readable[k] for k, split in enumerate(plan.assignment) if split == name]
        if rows:
            splits[name] = pooled.select(rows)
    data.splits.clear()
    data.splits.update(splits)
    write_splits(data, output_dir)
    counts = {name: Counter(split[LABEL]) for name, split in splits.items()}
    report = {
        "seed": seed,
        "val_size": val_size,
        "test_size": test_size,
        "near_duplicate_threshold": near_threshold,
        "sizes": {name: len(split) for name, split in splits.items()},
        "per_class": {
            label: {name: counts[name][index] for name in splits} for index, label in enumerate(data.labels)
        },
        "duplicate_groups_kept_together": plan.groups_kept_together,
        "train_only_classes": plan.train_only_classes,
        "unreadable_left_out": len(bad),
    }
    write_json(output_dir / "split_report.json", report)
    return report
