"""Shared fixtures: tiny checkpoints built from configs (no Hub), small generated data sets, and the
real hymenoptera photos when `../shared/data/hymenoptera` is present."""

from __future__ import annotations

import os

# Nothing in the tests may reach the network; set before transformers/datasets are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import SMALL_COUNTS, save_checkpoint  # noqa: E402

warnings.filterwarnings("ignore", message=".*requires torchvision.*")
torch.set_num_threads(2)

HYMENOPTERA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera"


@pytest.fixture(scope="session")
def vit_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("vit-1000"), "vit")


@pytest.fixture(scope="session")
def convnext_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("convnext-1000"), "convnext")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small Rare-Species-like folder: phylum_family folders, metadata.csv, odd formats, 2 broken files."""
    from hf_classifier.synthetic import make_demo_dataset

    return make_demo_dataset(
        tmp_path_factory.mktemp("demo") / "rare_species",
        counts=SMALL_COUNTS,
        size_range=(40, 120),
        odd_share=0.3,
        seed=1,
    )


@pytest.fixture(scope="session")
def clean_demo_data(tmp_path_factory):
    """Like demo_data but without broken files."""
    from hf_classifier.synthetic import make_demo_dataset

    return make_demo_dataset(
        tmp_path_factory.mktemp("clean") / "rare_species",
        counts=SMALL_COUNTS,
        size_range=(40, 120),
        odd_share=0.3,
        broken_files=False,
        seed=2,
    )


@pytest.fixture
def hymenoptera() -> Path:
    if not (HYMENOPTERA / "train").is_dir():
        pytest.skip(f"real photos not available at {HYMENOPTERA}")
    return HYMENOPTERA
