"""Data quality checks run before training: every image is decoded once, so a bad file stops the
run at the start (or is skipped and recorded) instead of killing it hours in."""

from __future__ import annotations

import logging
from pathlib import Path

from hf_classifier.data.scan import scan_rows
from hf_classifier.data.schema import ImageData
from hf_classifier.io_utils import write_csv

logger = logging.getLogger(__name__)

BAD_IMAGES_FILE = "bad_images.csv"


class BadImagesError(RuntimeError):
    """Some images cannot be read; the message names them and says how to proceed."""


def find_bad_rows(data: ImageData, num_workers: int | None = None) -> list[tuple[str, int, str, str]]:
    """`(split, row, image, reason)` for every unusable image of every split."""
    return [
        (split, row, scan.path, scan.problem)
        for split, row, scan in scan_rows(data, num_workers=num_workers)
        if scan.problem
    ]


def drop_bad_images(
    data: ImageData, *, skip: bool, report_dir: str | Path | None, num_workers: int | None = None
) -> ImageData:
    """Check every image. Without `skip`, any bad image raises `BadImagesError`; with it, bad images
    are removed. Either way they are listed in `report_dir/bad_images.csv` (split, path, reason)."""
    return handle_bad_rows(
        data, find_bad_rows(data, num_workers=num_workers), skip=skip, report_dir=report_dir
    )


def handle_bad_rows(
    data: ImageData, bad: list[tuple[str, int, str, str]], *, skip: bool, report_dir: str | Path | None
) -> ImageData:
    """Record `(split, row, path, reason)` rows in bad_images.csv; raise `BadImagesError`, or (with
    `skip`) remove them from the splits."""
    if not bad:
        return data
    total = sum(len(split) for split in data.splits.values())
    report = Path(report_dir) / BAD_IMAGES_FILE if report_dir else None
    if report is not None:
        write_csv(
            report, ["split", "path", "reason"], [(split, path, reason) for split, _, path, reason in bad]
        )
    where = f" (all listed in {report})" if report else ""
    if not skip:
        listed = "\n".join(f"  {path}: {reason}" for _, _, path, reason in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise BadImagesError(
            f"{len(bad)} of {total} images cannot be used{where}:\n{listed}{more}\n"
            "Fix or remove these files (or their CSV rows), or pass --skip_bad_images to train without them."
        )
    for split_name in data.splits:
        rows = {row for split, row, _, _ in bad if split == split_name}
        if rows:
            keep = [i for i in range(len(data.splits[split_name])) if i not in rows]
            data.splits[split_name] = data.splits[split_name].select(keep)
    data.skipped_images += len(bad)
    logger.warning("Skipped %d unreadable image(s) of %d%s.", len(bad), total, where)
    return data
