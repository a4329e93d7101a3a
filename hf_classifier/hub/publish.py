"""Publishing a trained model folder to the Hub: only what a user of the model needs.

Uploaded: weights (safetensors), config.json, preprocessor_config.json, the model card and its
pictures, metrics files. Never: optimizer / scheduler / RNG states, intermediate checkpoints,
training arguments (they can hold tokens), splits or logs.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError

from hf_classifier.evaluation.inference import EXPERTS_FILE
from hf_classifier.hub.card import CARD_FILE, render_model_card
from hf_classifier.hub.offline import HubUnavailableError, hub_reachable, offline_mode_requested

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
OTHER_PATTERNS = ("eval_results.json", "test_results.json", "train_results.json", "all_results.json")
# From each evaluation_<split>/ folder: the card's picture and the figures behind it. Not the
# misclassified images (they are the data set's photos) nor the per-image predictions.
EVALUATION_FILES = ("confusion_matrix.png", "metrics.json", "classification_report.csv", "summary.md")


class PublishError(RuntimeError):
    """The folder cannot be published as it is, or the Hub refused it; the message says why."""


def collect_upload_set(model_dir: str | Path) -> list[str]:
    """The files of `model_dir` that are uploaded (relative paths, sorted)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PublishError(f"{model_dir} is not a folder.")
    if (model_dir / EXPERTS_FILE).is_file():
        raise PublishError(
            f"{model_dir} is an experts folder (a router and one model per parent label), not one model: push "
            "its router/ and family_<parent>/ folders one by one, or publish a flat or multitask model."
        )
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file())
    missing = [name for name in REQUIRED_FILES if name not in names]
    weights = [n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in WEIGHT_PATTERNS)]
    if missing or not weights:
        absent = missing + ([] if weights else ["model.safetensors"])
        raise PublishError(
            f"{model_dir} is not a trained model folder: {', '.join(absent)} missing. "
            "Pass the OUTPUT_DIR of `hf-classifier train`."
        )
    top = [
        n
        for n in names
        if n in REQUIRED_FILES
        or n in weights
        or any(fnmatch.fnmatch(n, pattern) for pattern in OTHER_PATTERNS)
    ]
    evaluations = sorted(
        path.relative_to(model_dir).as_posix()
        for folder in model_dir.glob("evaluation_*")
        if folder.is_dir()
        for path in folder.iterdir()
        if path.name in EVALUATION_FILES
    )
    return sorted(set(top) | {CARD_FILE} | set(evaluations))  # the card is rendered while staging


def stage_upload(model_dir: str | Path, destination: str | Path, repo_id: str | None = None) -> list[str]:
    """Copy the upload set into `destination` (made atomically), with the card rendered for `repo_id`."""
    model_dir, destination = Path(model_dir), Path(destination)
    files = collect_upload_set(model_dir)
    if destination.exists() and any(destination.iterdir()):
        raise PublishError(f"{destination} exists and is not empty; choose a new folder for --dry_run.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        for name in files:
            if name == CARD_FILE:
                continue
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(model_dir / name, staging / name)
        # The card as a user of `repo_id` reads it: examples with the repo id, every evaluation so far.
        (staging / CARD_FILE).write_text(str(render_model_card(model_dir, repo_id)), encoding="utf-8")
        if destination.exists():
            destination.rmdir()
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


def check_can_push(repo_id: str) -> None:
    """Raise at once (no retries) when the Hub is out of reach."""
    if offline_mode_requested() or not hub_reachable():
        why = (
            "HF_HUB_OFFLINE is set" if offline_mode_requested() else "the Hub cannot be reached (no network?)"
        )
        raise HubUnavailableError(
            f"Cannot push to {repo_id}: {why}. Use --dry_run OUT to see the upload set."
        )


def push_model_folder(
    model_dir: str | Path,
    *,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: str | Path | None = None,
) -> str:
    """Upload the model folder's upload set to `repo_id`; with `dry_run`, write it there instead.

    Returns the URL of the commit (or the dry-run folder). The token comes from `token`, HF_TOKEN or
    the saved login and is never written anywhere.
    """
    if not repo_id:
        raise PublishError("Pass --repo_id USER/NAME (or --hub_model_id when training).")
    if dry_run is not None:
        files = stage_upload(model_dir, dry_run, repo_id)
        logger.info("Dry run: %d files written to %s: %s", len(files), dry_run, ", ".join(files))
        return str(dry_run)
    check_can_push(repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="hf_classifier_upload_") as tmp:
        staged = Path(tmp) / "upload"
        files = stage_upload(model_dir, staged, repo_id)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=staged,
                revision=revision,
                commit_message=commit_message or f"Upload {Path(model_dir).name} with hf_classifier",
            )
        except HFValidationError as error:
            raise PublishError(f"Invalid --repo_id {repo_id!r}: {error}") from error
        except HfHubHTTPError as error:
            status = getattr(getattr(error, "response", None), "status_code", None)
            if status in (401, 403):
                raise PublishError(
                    f"Not allowed to write to {repo_id} (HTTP {status}): log in with `hf auth login` or set "
                    "HF_TOKEN to a token with write access to that namespace."
                ) from error
            raise PublishError(
                f"The Hub refused the upload to {repo_id}: {str(error).splitlines()[0]}"
            ) from error
    logger.info("Pushed %d files to https://huggingface.co/%s", len(files), repo_id)
    return str(getattr(commit, "commit_url", f"https://huggingface.co/{repo_id}"))
