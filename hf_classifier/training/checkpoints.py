"""Checkpoints that survive a crash: a `checkpoint-N` folder counts only once it is marked complete
(after every process wrote its part), resuming picks the last complete one, and rotation deletes
older complete ones only after a newer one is marked, so a crash while saving always leaves one."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_classifier.data.schema import DataSourceError
from hf_classifier.io_utils import write_json

logger = logging.getLogger(__name__)

CHECKPOINT_COMPLETE = "checkpoint_complete.json"


def checkpoint_folder(output_dir: str | os.PathLike, step: int) -> Path:
    """Where Trainer writes the checkpoint of optimizer step `step`."""
    return Path(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")


def checkpoint_is_complete(folder: str | os.PathLike) -> bool:
    return Path(folder, CHECKPOINT_COMPLETE).is_file()


def mark_incomplete(folder: str | os.PathLike) -> None:
    """Before a folder is written again: it is not complete until marked anew."""
    Path(folder, CHECKPOINT_COMPLETE).unlink(missing_ok=True)


def mark_complete(folder: str | os.PathLike, step: int, epoch: float | None) -> None:
    write_json(Path(folder, CHECKPOINT_COMPLETE), {"global_step": step, "epoch": epoch})


def numbered_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, complete or not, oldest (smallest N) first."""
    folder = Path(output_dir)
    steps = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else ():
        suffix = path.name.rpartition("-")[2]
        if path.is_dir() and suffix.isdigit():
            steps.append((int(suffix), path))
    return [path for _, path in sorted(steps)]


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir` that were written to the end, oldest first."""
    return [path for path in numbered_checkpoints(output_dir) if checkpoint_is_complete(path)]


def rotate_complete_checkpoints(output_dir: str | os.PathLike, limit: int | None, best: str | None) -> None:
    """Keep the newest `limit` complete checkpoints (and the best one); delete older complete ones."""
    if not limit:
        return
    complete = complete_checkpoints(output_dir)
    keep = set(complete[-limit:])
    if best:
        keep.add(Path(best))
    for path in complete:
        if path not in keep:
            logger.info("Deleting older checkpoint %s (--save_total_limit %d).", path, limit)
            shutil.rmtree(path, ignore_errors=True)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that was written to the end; the ones a crash cut
    short are skipped, with a warning."""
    for path in reversed(numbered_checkpoints(output_dir)):
        if checkpoint_is_complete(path):
            return str(path)
        logger.warning("Skipping %s: it was not written to the end (the run stopped while saving it).", path)
    return None


def checkpoint_step(checkpoint: str) -> int:
    """The optimizer step a checkpoint was saved at."""
    state = Path(checkpoint, "trainer_state.json")
    if state.is_file():
        return int(json.loads(state.read_text(encoding="utf-8")).get("global_step", 0))
    suffix = Path(checkpoint).name.rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else 0


def checkpoint_to_resume(requested: str | None, output_dir: Path) -> str | None:
    """`--resume_from_checkpoint PATH`, or `true`/`last` for the output folder's last complete one,
    or `false`/`never` to start afresh; without the flag, the last complete checkpoint in the output
    folder (as the transformers example scripts do), so rerunning the same command after a crash
    continues the run."""
    if requested is not None and requested.lower() in ("false", "no", "never", "none"):
        if complete_checkpoints(output_dir):
            logger.warning(
                "Starting afresh: the checkpoints in %s are not used and will be replaced.", output_dir
            )
        return None
    if requested is None or requested.lower() in ("true", "last"):
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint:
            # Saved optimizer and schedule states win over changed flags: say so loudly.
            logger.warning(
                "Resuming from %s, the last complete checkpoint in %s (pass --resume_from_checkpoint false "
                "to start afresh instead).",
                checkpoint,
                output_dir,
            )
        elif requested is not None:
            raise DataSourceError(
                f"--resume_from_checkpoint {requested}: {output_dir} holds no complete checkpoint."
            )
        return checkpoint
    folder = Path(requested)
    if not folder.is_dir():
        raise DataSourceError(f"--resume_from_checkpoint {requested}: no such folder.")
    if not checkpoint_is_complete(folder):
        if last := last_complete_checkpoint(folder):  # a run folder: take its last complete checkpoint
            return last
        logger.warning(
            "%s is not marked complete (a run cut short while saving it, or another tool's checkpoint); "
            "resuming from it anyway.",
            folder,
        )
    return str(folder)
