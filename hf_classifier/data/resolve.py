"""From what the user names to image references: a CSV/TSV listing images, a folder searched for
images, image files, a folder of WebDataset shards, or a Hub data set. Training sources (`sources`),
streams (`streaming`) and the images `predict` classifies all resolve their inputs here, so a path in
a CSV, an image root, a folder of photos or a data set id means the same thing everywhere."""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_classifier.data.images import image_extensions, is_heif, is_image_file, relative_or_absolute
from hf_classifier.data.schema import SPLIT_NAMES, DataSourceError
from hf_classifier.hub.offline import (
    HubUnavailableError,
    cache_only,
    is_local_path,
    unavailable_message,
    use_local_files_only,
)

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".tsv")
SHARD_SUFFIX = ".tar"
IMAGE_COLUMN_CANDIDATES = ("file_path", "file_name", "filepath", "filename", "image", "path", "image_path")
ID_COLUMN_CANDIDATES = ("rare_species_id", "id", "image_id")


# ---------------------------------------------------------------------------------------------
# CSV listings


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


def find_id_column(columns: Iterable[str]) -> str | None:
    columns = list(columns)
    return next((c for c in ID_COLUMN_CANDIDATES if c in columns), None)


def resolve_path(root: Path, value: str) -> Path:
    """A path written in a listing: absolute as it is, relative below `root`."""
    path = Path(value)
    return path if path.is_absolute() else root / path


@dataclass
class ImageTable:
    """A CSV that lists images: its columns (strings), the one holding the image paths, and the folder
    its relative paths start from."""

    where: Path
    columns: dict[str, list[str]]
    image_column: str
    root: Path

    def paths(self) -> list[str]:
        """Where each row's image is, in row order."""
        return [str(resolve_path(self.root, value)) for value in self.columns[self.image_column]]


def read_image_table(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    image_column: str | None = None,
) -> ImageTable:
    """Read a listing; relative paths are below `image_root` (default: the CSV's folder)."""
    path = Path(path)
    columns = read_csv_table(path)
    image_column = resolve_image_column(columns, image_column, path)
    root = Path(image_root) if image_root else path.parent
    if not root.is_dir():
        raise DataSourceError(f"--image_root {root} is not a folder.")
    return ImageTable(path, columns, image_column, root)


# ---------------------------------------------------------------------------------------------
# Folders


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


def warn_ignored(folder: Path, ignored: Sequence[str | os.PathLike]) -> None:
    """One warning for the files below `folder` that are not images and are left out."""
    if ignored:
        logger.warning(
            "Ignored %d file(s) in %s that are not images: %s%s",
            len(ignored),
            folder,
            ", ".join(map(str, ignored[:5])),
            " ..." if len(ignored) > 5 else "",
        )


def find_shards(folder: Path) -> dict[str, list[str]]:
    """WebDataset shards by split: `SPLIT-*.tar`, `SPLIT_*.tar`, `SPLIT.tar` or `SPLIT/*.tar`."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob(f"*{SHARD_SUFFIX}")):
        relative = path.relative_to(folder)
        name = relative.parts[0] if len(relative.parts) > 1 else path.stem
        for separator in ("-", "_", "."):
            name = name.split(separator)[0]
        split = SPLIT_NAMES.get(name.lower())
        if split is None:
            raise DataSourceError(
                f"{path}: cannot tell which split this shard belongs to. Name shards train-00000.tar, "
                "validation-00000.tar (and test-...), or put them in train/ and validation/ folders."
            )
        found.setdefault(split, []).append(str(path))
    return found


def load_dataset_splits(
    name: str,
    config_name: str | None = None,
    *,
    streaming: bool = False,
    cache_dir: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """A Hub data set id, a `save_to_disk` folder or a local folder of data files -> its splits, named
    train / validation / test (`val`, `dev`, `testing`, ... renamed; other splits left out, with a
    warning). Offline, a Hub data set comes from the local cache; a stream, which reads from the Hub as
    it goes, is refused then."""
    from datasets import Dataset, load_dataset, load_from_disk

    path = Path(name)
    saved = path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())
    if saved and not streaming:
        loaded = load_from_disk(str(path))
    else:
        remote = not is_local_path(name)
        local_only = remote and use_local_files_only(name)
        if local_only and streaming:
            raise HubUnavailableError(
                unavailable_message("dataset", name) + " Streaming reads from the Hub as it goes."
            )
        try:
            with cache_only(local_only):
                loaded = load_dataset(
                    name, config_name, streaming=streaming, cache_dir=cache_dir, token=token
                )
        except ConnectionError as error:
            if remote:
                raise HubUnavailableError(unavailable_message("dataset", name, error)) from error
            raise
    if isinstance(loaded, Dataset):
        loaded = {"train": loaded}
    splits = {}
    for split_name, split in loaded.items():
        canonical = SPLIT_NAMES.get(split_name.lower())
        if canonical is None:
            logger.warning("Split %r of %s is not train/validation/test and is not used.", split_name, name)
            continue
        splits[canonical] = split
    return splits


# ---------------------------------------------------------------------------------------------
# Any mix of the above


@dataclass(frozen=True)
class ImageReference:
    id: str  # how the user names the image: its id column, its path in the listing or below the folder
    source: str  # the path to open


def resolve_images(
    inputs: Sequence[str],
    *,
    image_root: str | None = None,
    image_column: str | None = None,
    id_column: str | None = None,
) -> list[ImageReference]:
    """Folders (searched recursively), CSV/TSV listings and image files -> one reference per image, in
    the order given (a folder's images sorted by path). A file that does not exist is kept: opening it
    reports what is wrong, like for any unreadable image."""
    found: list[ImageReference] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images, skipped = image_files_below(path)
            warn_ignored(path, [p.relative_to(path) for p in skipped])
            found.extend(ImageReference(p.relative_to(path).as_posix(), str(p)) for p in images)
        elif path.suffix.lower() in CSV_SUFFIXES and path.is_file():
            found.extend(_listed_images(path, image_root, image_column, id_column))
        else:
            found.append(ImageReference(relative_or_absolute(path, image_root) if image_root else item, item))
    if not found:
        raise DataSourceError(f"No images found in {', '.join(inputs)}.")
    return found


def _listed_images(
    path: Path, image_root: str | None, image_column: str | None, id_column: str | None
) -> list[ImageReference]:
    table = read_image_table(path, image_root=image_root, image_column=image_column)
    if id_column and id_column not in table.columns:
        raise no_such_column(path, id_column, "--id_column", table.columns)
    id_column = id_column or find_id_column(table.columns) or table.image_column
    return [
        ImageReference(identifier, source)
        for identifier, source in zip(table.columns[id_column], table.paths(), strict=True)
    ]
