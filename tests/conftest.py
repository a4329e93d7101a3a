"""Shared fixtures: tiny checkpoints built from configs (no Hub), small generated data sets, and the
real hymenoptera photos when `../shared/data/hymenoptera` is present."""

from __future__ import annotations

import os

# Nothing in the tests may reach the network, whatever the calling environment says (HF_HUB_OFFLINE=0
# in a shell must not send the suite online): forced, before transformers/datasets are imported.
OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(OFFLINE_VARIABLES)
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import PLANTED_SECRETS, save_checkpoint, small_demo_dataset, train_run  # noqa: E402

warnings.filterwarnings("ignore", message=".*requires torchvision.*")
torch.set_num_threads(2)

HYMENOPTERA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera"


@pytest.fixture(scope="session", autouse=True)
def prepared_cache(tmp_path_factory):
    """The suite's prepared images (train prepares by itself) go to a temporary folder, never the
    user's ~/.cache/hf_classifier; set in the environment, so CLI subprocesses use it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_CLASSIFIER_CACHE", str(tmp_path_factory.mktemp("hf_classifier_cache")))
        yield


@pytest.fixture(scope="session")
def vit_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("vit-1000"), "vit")


@pytest.fixture(scope="session")
def convnext_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("convnext-1000"), "convnext")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small Rare-Species-like folder: phylum_family folders, metadata.csv, odd formats, 2 broken files."""
    return small_demo_dataset(tmp_path_factory.mktemp("demo") / "rare_species", seed=1)


@pytest.fixture(scope="session")
def clean_demo_data(tmp_path_factory):
    """Like demo_data but without broken files."""
    return small_demo_dataset(tmp_path_factory.mktemp("clean") / "rare_species", broken_files=False, seed=2)


@pytest.fixture
def hymenoptera() -> Path:
    if not (HYMENOPTERA / "train").is_dir():
        pytest.skip(f"real photos not available at {HYMENOPTERA}")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def trained_model(clean_demo_data, vit_checkpoint, tmp_path_factory) -> Path:
    """One fine-tuned model shared by the evaluation and publishing tests (training once saves suite time):
    clean_demo_data's families with their phylum map, train/validation/test splits of different sizes from
    a `split` column, a licence, and two planted tokens that no written file may contain."""
    import csv

    folder = tmp_path_factory.mktemp("trained")
    with clean_demo_data.metadata_csv.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    seen: dict[str, int] = {}
    for row in rows:  # per family: 1st, 6th, ... image -> test; 2nd, 7th, ... -> validation
        index = seen[row["family"]] = seen.get(row["family"], -1) + 1
        row["split"] = {0: "test", 1: "validation"}.get(index % 5, "train")
    listing = folder / "metadata_with_splits.csv"
    with listing.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = folder / "run"
    train_run(
        out,
        metadata_csv=listing,
        image_root=clean_demo_data.root,
        label_column="family",
        model_name_or_path=vit_checkpoint,
        license="cc-by-4.0",
        hub_token=PLANTED_SECRETS[0],
        token=PLANTED_SECRETS[1],
    )
    return out
