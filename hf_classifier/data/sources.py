"""Data sources -> `ImageData`: a `datasets.DatasetDict` whose label column is a `ClassLabel`.

Every split has an `image` column (a path, or a `{"bytes", "path"}` record for Hub data) that the
on-the-fly transform opens, a `label` column (`ClassLabel`, the same names in every split) and the
source's own columns (rare_species_id, file_path, a coarser label, ...), kept for splits, reports and predict.

Local folders are scanned here rather than with `load_dataset("imagefolder")`: imagefolder drops
files without an image extension silently and rejects a metadata.csv that has `file_path` instead
of `file_name` (the Rare Species layout).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, concatenate_datasets

from hf_classifier.data.resolve import (
    image_files_below,
    load_dataset_splits,
    no_such_column,
    read_csv_table,
    read_image_table,
    resolve_image_column,
    resolve_path,
    warn_ignored,
)
from hf_classifier.data.schema import (
    FILE_PATH,
    IMAGE,
    LABEL,
    SOURCE_INDEX,
    SOURCE_SPLIT,
    SPLIT_NAMES,
    SPLIT_ORDER,
    DataSourceError,
    ImageData,
)

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.csv"
SOURCE_FILE = "source.json"


# ---------------------------------------------------------------------------------------------
# Entry point


def load_image_data(
    *,
    data_dir: str | None = None,
    metadata_csv: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    image_root: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    split_dir: str | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
) -> ImageData:
    """Load whichever source is given. With `split_dir`, the split CSVs decide which image goes where."""
    given = [
        name
        for name, value in (
            ("--data_dir", data_dir),
            ("--metadata_csv", metadata_csv),
            ("--dataset_name", dataset_name),
        )
        if value
    ]
    if len(given) > 1:
        raise DataSourceError(f"Pass only one data source, got {' and '.join(given)}.")
    if split_dir:
        return load_split_dir(
            split_dir,
            image_root=image_root or data_dir or (str(Path(metadata_csv).parent) if metadata_csv else None),
            dataset_name=dataset_name,
            dataset_config_name=dataset_config_name,
            image_column=image_column,
            label_column=label_column,
            cache_dir=cache_dir,
            token=token,
        )
    if data_dir:
        return from_image_folder(data_dir, image_column=image_column, label_column=label_column)
    if metadata_csv:
        return from_metadata_csv(
            metadata_csv, image_root=image_root, image_column=image_column, label_column=label_column
        )
    if dataset_name:
        return from_dataset(
            dataset_name,
            config_name=dataset_config_name,
            image_column=image_column,
            label_column=label_column,
            image_root=image_root,
            cache_dir=cache_dir,
            token=token,
        )
    raise DataSourceError(
        "No data given: pass --data_dir FOLDER (one subfolder per class), --metadata_csv CSV "
        "--label_column COLUMN, --dataset_name NAME_OR_PATH, or --split_dir DIR."
    )


# ---------------------------------------------------------------------------------------------
# Image folders


def from_image_folder(
    data_dir: str | os.PathLike, *, image_column: str | None = None, label_column: str | None = None
) -> ImageData:
    """One subfolder per class, optionally inside train/ validation/ test/. A `metadata.csv` at the
    root (Rare Species layout) is read: its columns are kept and `label_column` may name one of them."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataSourceError(f"--data_dir {root} is not a folder.")
    metadata = root / METADATA_FILE
    if metadata.is_file():
        return _from_folder_with_metadata(
            root, metadata, image_column=image_column, label_column=label_column
        )
    if label_column:
        raise DataSourceError(
            f"--label_column {label_column} needs a {METADATA_FILE} in {root}; without one the class is the folder name."
        )

    files_by_split, ignored = scan_image_folder(root)
    warn_ignored(root, ignored)
    splits = {}
    all_labels = sorted({label for files in files_by_split.values() for _, label in files})
    if not all_labels:
        raise DataSourceError(
            f"No images found in class subfolders of {root}. Expected {root}/<class>/<image> "
            f"(or {root}/train/<class>/<image>)."
        )
    for split, files in files_by_split.items():
        columns = {
            IMAGE: [str(root / rel) for rel, _ in files],
            FILE_PATH: [rel for rel, _ in files],
            LABEL: [label for _, label in files],
        }
        splits[split] = _make_dataset(columns, LABEL, all_labels)
    return ImageData(
        splits=_ordered(splits),
        label_name=LABEL,
        image_root=root.resolve(),
        source_columns=[FILE_PATH, LABEL],
        source={
            "kind": "data_dir",
            "image_root": str(root.resolve()),
            "image_column": FILE_PATH,
            "label_column": LABEL,
        },
    )


def scan_image_folder(root: Path) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """Return `{split: [(relative path, class), ...]}` and the relative paths of ignored files.

    Files are images by extension, or by content when the extension is missing or unknown.
    """
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    ignored = [
        p.name
        for p in sorted(root.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name != METADATA_FILE
    ]
    presplit = bool(subdirs) and all(p.name.lower() in SPLIT_NAMES for p in subdirs)
    split_dirs = [(SPLIT_NAMES[p.name.lower()], p) for p in subdirs] if presplit else [("train", root)]

    result: dict[str, list[tuple[str, str]]] = {}
    for split, split_root in split_dirs:
        if split in result:
            raise DataSourceError(f"{root} has two folders for the {split} split; keep one.")
        files: list[tuple[str, str]] = []
        for class_dir in sorted(p for p in split_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images, skipped = image_files_below(class_dir)
            if not images:
                logger.warning("Class folder %s holds no images; the class is left out.", class_dir)
            files.extend((path.relative_to(root).as_posix(), class_dir.name) for path in images)
            ignored.extend(path.relative_to(root).as_posix() for path in skipped)
        if presplit:
            ignored.extend(
                p.relative_to(root).as_posix()
                for p in split_root.iterdir()
                if p.is_file() and not p.name.startswith(".")
            )
        result[split] = files
    return result, ignored


def _from_folder_with_metadata(
    root: Path, metadata: Path, *, image_column: str | None, label_column: str | None
) -> ImageData:
    listing = read_image_table(metadata, image_column=image_column)
    table, image_column = listing.columns, listing.image_column
    if label_column is None:
        # The class is the folder each listed file sits in (chordata_ardeidae/xyz.jpg -> chordata_ardeidae).
        label_column = LABEL
        table[LABEL] = [
            _class_folder_of(path, metadata, row) for row, path in enumerate(table[image_column], 2)
        ]
        hint = [c for c in table if c not in (LABEL, image_column)]
        logger.info(
            "Classes are the folder names in %s; pass --label_column (one of %s) to use a CSV column.",
            root,
            ", ".join(hint),
        )
        source_columns = [c for c in table if c != LABEL] + [LABEL]
    else:
        label_column = _resolve_label_column(table, label_column, metadata)
        source_columns = list(table)
    listed = {Path(p).as_posix() for p in table[image_column]}
    on_disk, _ = scan_image_folder(root)
    unlisted = [rel for files in on_disk.values() for rel, _ in files if rel not in listed]
    if unlisted:
        logger.warning(
            "%d image(s) under %s are not listed in %s and are not used, e.g. %s",
            len(unlisted),
            root,
            metadata.name,
            ", ".join(unlisted[:3]),
        )
    data = _from_table(table, metadata, root, image_column, label_column, source_columns)
    data.source["kind"] = "data_dir"
    return data


def _class_folder_of(path: str, metadata: Path, row: int) -> str:
    parts = Path(path).parts
    if len(parts) >= 3 and parts[0].lower() in SPLIT_NAMES:
        parts = parts[1:]
    if len(parts) < 2:
        raise DataSourceError(
            f"{metadata}, line {row}: {path!r} is not inside a class folder; pass --label_column to take "
            f"the class from a column of {metadata.name}."
        )
    return parts[0]


# ---------------------------------------------------------------------------------------------
# Metadata CSVs


def from_metadata_csv(
    csv_path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> ImageData:
    """A CSV listing image paths (relative to `image_root`, default the CSV's folder) and labels.

    Every other column is kept. A `split` column (train/validation/test) or paths that start with a
    split folder pre-split the data.
    """
    listing = read_image_table(csv_path, image_root=image_root, image_column=image_column)
    table, where = listing.columns, listing.where
    label_column = _resolve_label_column(table, label_column, where)
    return _from_table(table, where, listing.root, listing.image_column, label_column, list(table))


def _resolve_label_column(table: dict[str, list[str]], label_column: str | None, where: Path) -> str:
    if label_column is None:
        if LABEL in table:
            return LABEL
        raise DataSourceError(
            f"Which column holds the class? Pass --label_column (e.g. --label_column family). "
            f"Columns of {where}: {', '.join(table)}."
        )
    if label_column not in table:
        raise no_such_column(where, label_column, "--label_column", table)
    return label_column


def _from_table(
    table: dict[str, list[str]],
    where: Path,
    root: Path,
    image_column: str,
    label_column: str,
    source_columns: list[str],
) -> ImageData:
    for reserved in (IMAGE, LABEL):
        if reserved in table and reserved not in (image_column, label_column):
            raise DataSourceError(
                f"{where} has a column {reserved!r} that is neither the image nor the label column; "
                f"rename it (hf_classifier uses {IMAGE!r} and {LABEL!r} internally)."
            )
    empty = [row for row, value in enumerate(table[image_column], 2) if not value]
    if empty:
        raise DataSourceError(
            f"{where}: empty {image_column!r} on line(s) {_lines(empty)}; fill in or remove them."
        )
    unlabelled = [row for row, value in enumerate(table[label_column], 2) if not value]
    if unlabelled:
        raise DataSourceError(
            f"{where}: empty {label_column!r} on line(s) {_lines(unlabelled)}; label or remove those rows."
        )
    _check_paths_inside_root(table[image_column], where, image_column)
    table = _without_repeated_rows(table, where, image_column, label_column)
    _check_label_variants(table[label_column], where, label_column)

    split_of_row = _split_assignment(table, image_column, where)
    all_labels = sorted(set(table[label_column]))
    splits = {}
    for split in SPLIT_ORDER:
        rows = [i for i, s in enumerate(split_of_row) if s == split]
        if not rows:
            continue
        columns = {name: [values[i] for i in rows] for name, values in table.items()}
        columns[IMAGE] = [str(resolve_path(root, table[image_column][i])) for i in rows]
        columns[LABEL] = [table[label_column][i] for i in rows]
        splits[split] = _make_dataset(columns, LABEL, all_labels)
    return ImageData(
        splits=_ordered(splits),
        label_name=label_column,
        image_root=root.resolve(),
        source_columns=source_columns,
        source={
            "kind": "metadata_csv",
            "image_root": str(root.resolve()),
            "image_column": image_column,
            "label_column": label_column,
        },
    )


def _check_paths_inside_root(paths: list[str], where: Path, image_column: str) -> None:
    """Relative paths must stay below the image root: `../../etc/passwd` is a typo or worse, and a
    data set that reaches outside its folder cannot be moved or shared. Absolute paths are explicit."""
    escaping = [
        row
        for row, value in enumerate(paths, 2)
        if not Path(value).is_absolute() and os.path.normpath(value).split(os.sep)[0] == os.pardir
    ]
    if escaping:
        raise DataSourceError(
            f"{where}: {image_column!r} on line(s) {_lines(escaping)} points outside the image folder "
            f"(e.g. {paths[escaping[0] - 2]!r}). Write paths relative to --image_root (default: the CSV's "
            "folder) without '..', pass an --image_root that contains the images, or use absolute paths."
        )


def _without_repeated_rows(
    table: dict[str, list[str]], where: Path, image_column: str, label_column: str
) -> dict[str, list[str]]:
    """A file listed twice with the same label (and split) is kept once, with a warning; listed with
    different labels or in different splits, it is an error (which row is right is the user's call)."""
    lines_of: dict[str, list[int]] = {}
    for row, value in enumerate(table[image_column]):
        lines_of.setdefault(os.path.normpath(value), []).append(row)
    repeated = {path: rows for path, rows in lines_of.items() if len(rows) > 1}
    if not repeated:
        return table
    for column in (label_column, "split"):
        if column not in table:
            continue
        for path, rows in repeated.items():
            values = sorted({table[column][row] for row in rows})
            if len(values) > 1:
                raise DataSourceError(
                    f"{where}: {path!r} is listed on lines {_lines([r + 2 for r in rows])} with different "
                    f"{column!r} values ({', '.join(map(repr, values))}); keep one row per image."
                )
    dropped = sorted(row for rows in repeated.values() for row in rows[1:])
    logger.warning(
        "%s: %d repeated row(s) for an image already listed (same %s) left out: line(s) %s.",
        where,
        len(dropped),
        label_column,
        _lines([row + 2 for row in dropped]),
    )
    keep = sorted(set(range(len(table[image_column]))) - set(dropped))
    return {name: [values[row] for row in keep] for name, values in table.items()}


def _check_label_variants(labels: list[str], where: Path, label_column: str) -> None:
    """'Apidae', 'apidae' and 'Apidae  ' would train as three classes: refuse, naming them."""
    variants: dict[str, set[str]] = {}
    for label in labels:
        variants.setdefault(" ".join(label.split()).casefold(), set()).add(label)
    clashes = [sorted(names) for names in variants.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(" / ".join(map(repr, names)) for names in clashes[:5])
        raise DataSourceError(
            f"{where}: {label_column!r} has labels that differ only by case or spaces ({listed}); they "
            "would be separate classes. Write each class the same way everywhere."
        )


def _split_assignment(table: dict[str, list[str]], image_column: str, where: Path) -> list[str]:
    if "split" in table:
        unknown = sorted({s for s in table["split"] if s.lower() not in SPLIT_NAMES})
        if unknown:
            raise DataSourceError(
                f"{where}: column 'split' has values {unknown}; use train, validation or test."
            )
        return [SPLIT_NAMES[s.lower()] for s in table["split"]]
    return [
        SPLIT_NAMES[parts[0].lower()] if len(parts) >= 2 and parts[0].lower() in SPLIT_NAMES else "train"
        for parts in (Path(p).parts for p in table[image_column])
    ]


def _lines(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")


# ---------------------------------------------------------------------------------------------
# Hub data sets and save_to_disk folders


def from_dataset(
    name: str,
    *,
    config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    image_root: str | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
) -> ImageData:
    """A Hub data set id, a `save_to_disk` folder, or a local folder of data files."""
    splits = load_dataset_splits(name, config_name, cache_dir=cache_dir, token=token)
    if "train" not in splits:
        raise DataSourceError(f"{name} has no train split (splits: {', '.join(splits) or 'none'}).")

    features = splits["train"].features
    image_column = image_column or (
        IMAGE if IMAGE in features else _first_column(features, Image, name, "image", "--image_column")
    )
    label_column = label_column or (
        LABEL if LABEL in features else _first_column(features, ClassLabel, name, "'label'", "--label_column")
    )
    for column, flag in ((image_column, "--image_column"), (label_column, "--label_column")):
        if column not in features:
            raise no_such_column(name, column, flag, features)
    all_labels = _label_names(splits, label_column)
    normalised = {}
    for split_name, split in splits.items():
        split = _normalise_dataset(split, image_column, label_column, all_labels, image_root)
        split = split.add_column(SOURCE_SPLIT, [split_name] * len(split))
        normalised[split_name] = split.add_column(SOURCE_INDEX, list(range(len(split))))
    return ImageData(
        splits=_ordered(normalised),
        label_name=label_column,
        image_root=Path(image_root).resolve() if image_root else None,
        source_columns=[],
        source={
            "kind": "dataset",
            "dataset_name": name,
            "dataset_config_name": config_name,
            "image_column": image_column,
            "label_column": label_column,
        },
    )


def _first_column(features: Features, kind: type, name: str, what: str, flag: str) -> str:
    """The first column whose feature is a `kind` (the images, the class labels), or the error."""
    found = next((column for column, feature in features.items() if isinstance(feature, kind)), None)
    if found is None:
        raise DataSourceError(
            f"{name} has no {what} column; name it with {flag}. Columns: {', '.join(features)}."
        )
    return found


def _label_names(splits: dict[str, Dataset], label_column: str) -> list[str]:
    feature = splits["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values: set = set()
    for split in splits.values():
        values.update(split.unique(label_column))
    values.discard(None)
    values.discard("")
    return [str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]


def _normalise_dataset(
    split: Dataset, image_column: str, label_column: str, all_labels: list[str], image_root: str | None
) -> Dataset:
    feature = split.features[image_column]
    if isinstance(feature, Image):
        # Decode with our own robust open, not datasets' plain PIL decode.
        split = split.cast_column(image_column, Image(decode=False))
    elif image_root:
        split = split.map(
            lambda value: {image_column: str(resolve_path(Path(image_root), value))},
            input_columns=image_column,
        )
    label_feature = split.features[label_column]
    if isinstance(label_feature, ClassLabel):
        if list(label_feature.names) != all_labels:
            raise DataSourceError(
                f"Split label names differ from the train split's in column {label_column!r}."
            )
    else:
        split = split.map(lambda value: {label_column: str(value)}, input_columns=label_column)
        split = split.cast_column(label_column, ClassLabel(names=all_labels))
    for old, new in ((image_column, IMAGE), (label_column, LABEL)):
        if old != new:
            if new in split.column_names:
                split = split.remove_columns(new)
            split = split.rename_column(old, new)
    return split


# ---------------------------------------------------------------------------------------------
# Split folders (written by `train` into OUTPUT_DIR/splits and by `hf-classifier split`)


def load_split_dir(
    split_dir: str | os.PathLike,
    *,
    image_root: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
) -> ImageData:
    split_dir = Path(split_dir)
    files = {
        split: split_dir / f"{split}.csv" for split in SPLIT_ORDER if (split_dir / f"{split}.csv").is_file()
    }
    if "train" not in files:
        raise DataSourceError(
            f"--split_dir {split_dir} has no train.csv (expected train.csv, validation.csv, test.csv)."
        )
    recorded = (
        json.loads((split_dir / SOURCE_FILE).read_text()) if (split_dir / SOURCE_FILE).is_file() else {}
    )
    image_column = image_column or recorded.get("image_column")
    label_column = label_column or recorded.get("label_column")

    if recorded.get("kind") == "dataset" or dataset_name:
        return _select_dataset_rows(
            split_dir,
            files,
            dataset_name or recorded.get("dataset_name"),
            dataset_config_name or recorded.get("dataset_config_name"),
            image_column,
            label_column,
            cache_dir,
            token,
        )

    root = Path(image_root or recorded.get("image_root") or split_dir)
    if not root.is_dir():
        raise DataSourceError(
            f"Image folder {root} for --split_dir {split_dir} does not exist; pass --image_root."
        )
    tables = {split: read_csv_table(path) for split, path in files.items()}
    header = list(tables["train"])
    for split, table in tables.items():
        if list(table) != header:
            raise DataSourceError(f"{files[split]} has different columns from {files['train']}.")
    combined = {name: [v for split in tables for v in tables[split][name]] for name in header}
    combined["split"] = [split for split, table in tables.items() for _ in next(iter(table.values()))]
    image_column = resolve_image_column(combined, image_column, split_dir)
    label_column = _resolve_label_column(combined, label_column, split_dir)
    data = _from_table(combined, split_dir, root, image_column, label_column, header)
    for split in data.splits:
        data.splits[split] = data.splits[split].remove_columns("split")
    data.source["kind"] = recorded.get("kind", "metadata_csv")
    data.source["split_dir"] = str(split_dir.resolve())
    return data


def _select_dataset_rows(
    split_dir, files, dataset_name, config_name, image_column, label_column, cache_dir, token
):
    if not dataset_name:
        raise DataSourceError(f"{split_dir} indexes a data set; pass --dataset_name to say which.")
    data = from_dataset(
        dataset_name,
        config_name=config_name,
        image_column=image_column,
        label_column=label_column,
        cache_dir=cache_dir,
        token=token,
    )
    splits = {}
    for split, path in files.items():
        table = read_csv_table(path)
        if "index" not in table or SOURCE_SPLIT not in table:
            raise DataSourceError(
                f"{path} needs 'index' and {SOURCE_SPLIT!r} columns to select rows of {dataset_name}."
            )
        parts = []
        for source_split in dict.fromkeys(table[SOURCE_SPLIT]):
            indices = [
                int(i) for i, s in zip(table["index"], table[SOURCE_SPLIT], strict=True) if s == source_split
            ]
            parts.append(data.splits[source_split].select(indices))
        splits[split] = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    data.splits = _ordered(splits)
    return data


# ---------------------------------------------------------------------------------------------
# Helpers


def _make_dataset(columns: dict[str, list], label_column: str, label_names: list[str]) -> Dataset:
    features = Features({name: Value("string") for name in columns})
    features[label_column] = ClassLabel(names=label_names)
    return Dataset.from_dict(columns, features=features)


def _ordered(splits: dict[str, Dataset]) -> DatasetDict:
    return DatasetDict({name: splits[name] for name in SPLIT_ORDER if name in splits})
