"""Atomic file output: write to a temporary name beside the target, then rename.

A crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()  # what open() would give; mkstemp files are private (0600)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (`save_file`, `to_json`);
    it becomes `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to `path`; it replaces `path` only if the block finishes."""
    with atomic_path(path) as tmp_path, open(tmp_path, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def staging_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """A hidden folder inside `folder`; when the block finishes, each file in it replaces the file of
    the same name in `folder` (one rename each), so no final name ever holds a half-written file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        yield staging
        for item in sorted(staging.rglob("*")):
            if item.is_file():
                target = folder / item.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, sort_keys=False)
        handle.write("\n")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_png(path: str | os.PathLike, image: Any) -> None:
    """A PIL image as a PNG."""
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG", optimize=True)
