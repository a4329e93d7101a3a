"""Data sources -> `ImageData`: a `datasets.DatasetDict` whose label column is a `ClassLabel`.

Every split has an `image` column (a path, or a `{"bytes", "path"}` record for Hub data) that the
on-the-fly transform opens, a `label` column (`ClassLabel`, the same names in every split) and the
source's own columns (phylum, rare_species_id, file_path, ...), kept for splits, reports and predict.

Local folders are scanned here rather than with `load_dataset("imagefolder")`: imagefolder drops
files without an image extension silently and rejects a metadata.csv that has `file_path` instead
of `file_name` (the Rare Species layout).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import difflib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from hf_classifier.data.images import image_extensions, is_heif, is_image_file
from hf_classifier.hub.offline import (
    HubUnavailableError,
    cache_only,
    is_local_path,
    unavailable_message,
    use_local_files_only,
)

logger = logging.getLogger(__name__)

IMAGE = "image"
LABEL = "label"
FILE_PATH = "file_path"
SOURCE_IMAGE = "source_image"  # with --prepare: the path the prepared image came from
ID_COLUMN_CANDIDATES = ("rare_species_id", "id", "image_id")
IMAGE_COLUMN_CANDIDATES = ("file_path", "file_name", "filepath", "filename", "image", "path", "image_path")
METADATA_FILE = "metadata.csv"
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
SOURCE_FILE = "source.json"
# Hub / save_to_disk rows are identified by their position in their source split.
SOURCE_SPLIT = "source_split"
SOURCE_INDEX = "source_index"


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
    _warn_ignored(root, ignored)
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


def image_files_below(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) below `folder`, recursively, sorted by path; hidden entries skipped."""
    extensions = image_extensions()
    images, skipped = [], []
    visited = {os.path.realpath(folder)}

    def unreadable(error: OSError) -> None:
        # os.walk would pass over a folder it cannot list without a word.
        raise DataSourceError(f"Cannot list {error.filename}: {error.strerror}; check its permissions.")

    # Linked folders are followed (data often lives elsewhere), each real folder once: a link back up
    # the tree would otherwise loop until the path is too long.
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        kept = []
        for name in dirnames:
            real = os.path.realpath(os.path.join(dirpath, name))
            if name.startswith("."):
                continue
            if real in visited:
                logger.warning(
                    "%s links to a folder already read (%s); not read twice.", Path(dirpath, name), real
                )
                continue
            visited.add(real)
            kept.append(name)
        dirnames[:] = kept
        for filename in filenames:
            if filename.startswith("."):
                continue
            path = Path(dirpath) / filename
            # HEIC photos count as images even without pillow-heif: the check then names the fix.
            if path.suffix.lower() in extensions or is_image_file(path) or is_heif(path):
                images.append(path)
            else:
                skipped.append(path)
    return sorted(images), sorted(skipped)


def _warn_ignored(root: Path, ignored: list[str]) -> None:
    if ignored:
        examples = ", ".join(ignored[:5])
        logger.warning(
            "Ignored %d file(s) in %s that are not images: %s%s",
            len(ignored),
            root,
            examples,
            " ..." if len(ignored) > 5 else "",
        )


def _from_folder_with_metadata(
    root: Path, metadata: Path, *, image_column: str | None, label_column: str | None
) -> ImageData:
    table = read_csv_table(metadata)
    image_column = resolve_image_column(table, image_column, metadata)
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
    csv_path = Path(csv_path)
    table = read_csv_table(csv_path)
    image_column = resolve_image_column(table, image_column, csv_path)
    label_column = _resolve_label_column(table, label_column, csv_path)
    root = Path(image_root) if image_root else csv_path.parent
    if not root.is_dir():
        raise DataSourceError(f"--image_root {root} is not a folder.")
    return _from_table(table, csv_path, root, image_column, label_column, list(table))


def read_csv_table(path: Path) -> dict[str, list[str]]:
    """Read a CSV/TSV as columns of strings (ids keep their exact text)."""
    if not path.is_file():
        raise DataSourceError(f"{path} does not exist.")
    try:
        raw = path.read_bytes()
    except PermissionError as error:
        raise DataSourceError(f"{path} cannot be read (permission denied); check its permissions.") from error
    with io.StringIO(_decode_csv(raw, path), newline="") as handle:
        sample = handle.read(8192)
        handle.seek(0)
        delimiter = "\t" if path.suffix.lower() == ".tsv" else _sniff_delimiter(sample)
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataSourceError(f"{path} is empty: expected a header row and one row per image.")
        header = [name.strip() for name in reader.fieldnames]
        duplicates = [name for name, count in Counter(header).items() if count > 1]
        if duplicates:
            raise DataSourceError(f"{path} has duplicate column names: {', '.join(duplicates)}")
        table: dict[str, list[str]] = {name: [] for name in header}
        for row in reader:
            for raw_name, name in zip(reader.fieldnames, header, strict=True):
                table[name].append((row.get(raw_name) or "").strip())
    if not next(iter(table.values())):
        raise DataSourceError(f"{path} has a header but no rows.")
    return table


def _decode_csv(raw: bytes, path: Path) -> str:
    """UTF-8 (with or without a BOM) or UTF-16 with its BOM (Excel's "Unicode text"); anything else
    is refused with the line of the first bad byte rather than guessed (a wrong guess changes labels)."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataSourceError(
            f"{path} is not UTF-8 text (byte 0x{raw[error.start]:02x} on line {line}). Save it as UTF-8 "
            f"(Excel: 'CSV UTF-8'), or convert it, e.g. iconv -f latin1 -t utf-8 {path.name} > utf8.csv."
        ) from error


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample.splitlines()[0] if sample else "", delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def no_such_column(where: object, column: str, flag: str, columns: Iterable[str]) -> DataSourceError:
    """The error for a column name that is not there: the columns that are, and the closest one."""
    columns = list(columns)
    by_case = {name.casefold(): name for name in columns}
    closest = [by_case[column.casefold()]] if column.casefold() in by_case else []
    closest = closest or difflib.get_close_matches(column, columns, n=1, cutoff=0.6)
    hint = f" Did you mean {flag} {closest[0]}?" if closest else ""
    return DataSourceError(f"{where} has no column {column!r} ({flag}).{hint} Columns: {', '.join(columns)}.")


def resolve_image_column(table: dict[str, list[str]], image_column: str | None, where: Path) -> str:
    if image_column:
        if image_column not in table:
            raise no_such_column(where, image_column, "--image_column", table)
        return image_column
    for candidate in IMAGE_COLUMN_CANDIDATES:
        if candidate in table:
            return candidate
    raise DataSourceError(
        f"{where} has no image path column (looked for {', '.join(IMAGE_COLUMN_CANDIDATES)}). "
        f"Columns: {', '.join(table)}. Name it with --image_column."
    )


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
        columns[IMAGE] = [str(_resolve_path(root, table[image_column][i])) for i in rows]
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


def _resolve_path(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


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
    from datasets import load_dataset, load_from_disk

    path = Path(name)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = load_from_disk(str(path))
    else:
        remote = not is_local_path(name)
        local_only = remote and use_local_files_only(name)
        try:
            with cache_only(local_only):
                loaded = load_dataset(name, config_name, cache_dir=cache_dir, token=token)
        except ConnectionError as error:
            if remote:
                raise HubUnavailableError(unavailable_message("dataset", name, error)) from error
            raise
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    splits = {}
    for split_name, split in loaded.items():
        canonical = SPLIT_NAMES.get(split_name.lower())
        if canonical is None:
            logger.warning("Split %r of %s is not train/validation/test and is not used.", split_name, name)
            continue
        splits[canonical] = split
    if "train" not in splits:
        raise DataSourceError(f"{name} has no train split (splits: {', '.join(loaded)}).")

    features = splits["train"].features
    image_column = image_column or (IMAGE if IMAGE in features else _first_image_column(features, name))
    label_column = label_column or (LABEL if LABEL in features else _first_class_label_column(features, name))
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


def _first_image_column(features: Features, name: str) -> str:
    from datasets import Image

    for column, feature in features.items():
        if isinstance(feature, Image):
            return column
    raise DataSourceError(
        f"{name} has no image column; name it with --image_column. Columns: {', '.join(features)}."
    )


def _first_class_label_column(features: Features, name: str) -> str:
    for column, feature in features.items():
        if isinstance(feature, ClassLabel):
            return column
    raise DataSourceError(
        f"{name} has no 'label' column; name it with --label_column. Columns: {', '.join(features)}."
    )


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
    from datasets import Image

    feature = split.features[image_column]
    if isinstance(feature, Image):
        # Decode with our own robust open, not datasets' plain PIL decode.
        split = split.cast_column(image_column, Image(decode=False))
    elif image_root:
        split = split.map(
            lambda value: {image_column: str(_resolve_path(Path(image_root), value))},
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
        from datasets import concatenate_datasets

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


def class_counts(dataset: Dataset) -> Counter:
    names = dataset.features[LABEL].names
    return Counter(names[i] for i in dataset[LABEL])


def find_id_column(columns: Iterable[str]) -> str | None:
    columns = list(columns)
    return next((c for c in ID_COLUMN_CANDIDATES if c in columns), None)
