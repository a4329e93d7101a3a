"""split: stratified, seeded, duplicate groups kept together, small classes in train, usable by train."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from helpers import fast_training_flags, make_textured_tree
from PIL import Image

from hf_classifier.cli.commands import main
from hf_classifier.data.sources import from_image_folder
from hf_classifier.data.splits import grouped_stratified_split, split_without_leaks


def read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def split_of(out: Path) -> dict[str, str]:
    return {
        row["file_path"]: name
        for name in ("train", "validation", "test")
        if (out / f"{name}.csv").exists()
        for row in read(out / f"{name}.csv")
    }


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("split") / "data"
    files = make_textured_tree(root, {"a": 30, "b": 20, "c": 10, "tiny": 2}, seed=7)
    for i in range(4):  # four photos of class a, each with a resized copy: near-duplicate groups
        photo = Image.open(files["a"][i])
        photo.resize((100, 75)).save(root / "a" / f"copy{i}.jpg", quality=60)
    shutil.copy(files["b"][0], root / "b" / "exact0.jpg")
    shutil.copy(files["a"][5], root / "b" / "misfiled.jpg")  # the same picture under two labels
    (root / "c" / "broken.jpg").write_bytes(b"")
    return root


def test_duplicate_groups_never_cross_splits(data_root, tmp_path):
    report = split_without_leaks(from_image_folder(data_root), tmp_path, val_size=0.2, test_size=0.2, seed=1)
    where = split_of(tmp_path)
    for i in range(4):
        assert where[f"a/photo{i:03d}.jpg"] == where[f"a/copy{i}.jpg"]
    assert where["b/photo000.jpg"] == where["b/exact0.jpg"]
    assert where["a/photo005.jpg"] == where["b/misfiled.jpg"]
    assert report["duplicate_groups_kept_together"] == 6


def test_stratified_by_class_with_small_classes_in_train(data_root, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        report = split_without_leaks(
            from_image_folder(data_root), tmp_path, val_size=0.2, test_size=0.2, seed=1
        )
    per_class = report["per_class"]
    assert per_class["tiny"] == {"train": 2, "validation": 0, "test": 0}
    assert report["train_only_classes"] == ["tiny"] and "tiny" in caplog.text
    for label, total in (("b", 22), ("c", 10)):
        counts = per_class[label]
        assert sum(counts.values()) == total
        for split in ("test", "validation"):  # 20 % of 22 and of 10: 4.4 and 2 images, rounded either way
            assert counts[split] >= 1 and abs(counts[split] - 0.2 * total) < 1, (label, counts)
    assert report["unreadable_left_out"] == 1
    assert read(tmp_path / "bad_images.csv") == [{"path": "c/broken.jpg", "reason": "empty file (0 bytes)"}]
    assert "c/broken.jpg" not in split_of(tmp_path)


def test_same_seed_same_split_other_seed_other_split(data_root, tmp_path):
    data = from_image_folder(data_root)
    split_without_leaks(data, tmp_path / "one", seed=3)
    split_without_leaks(from_image_folder(data_root), tmp_path / "two", seed=3)
    split_without_leaks(from_image_folder(data_root), tmp_path / "three", seed=4)
    for name in ("train.csv", "validation.csv", "test.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    assert split_of(tmp_path / "one") != split_of(tmp_path / "three")


def test_rare_species_csv_columns_are_kept(clean_demo_data, tmp_path):
    from hf_classifier.data.sources import from_metadata_csv

    split_without_leaks(
        from_metadata_csv(clean_demo_data.metadata_csv, label_column="family"), tmp_path, seed=0
    )
    rows = read(tmp_path / "train.csv")
    assert list(rows[0]) == [
        "rare_species_id",
        "eol_content_id",
        "eol_page_id",
        "kingdom",
        "phylum",
        "family",
        "file_path",
    ]
    source = {row["file_path"]: row for row in read(clean_demo_data.metadata_csv)}
    assert all(source[row["file_path"]] == row for row in rows)  # the same relative paths and values


def test_grouped_split_keeps_groups_and_respects_sizes():
    labels = ["x"] * 50 + ["y"] * 50
    groups = list(range(100))
    groups[1] = groups[0]  # a pair
    plan = grouped_stratified_split(labels, groups, val_size=0.1, test_size=0.2, seed=0)
    assert plan.assignment[0] == plan.assignment[1]
    for label in ("x", "y"):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        assert sum(plan.assignment[i] == "test" for i in rows) == 10
        assert sum(plan.assignment[i] == "validation" for i in rows) == 5


def test_invalid_sizes_are_rejected(data_root, tmp_path):
    with pytest.raises(ValueError, match="--val_size"):
        split_without_leaks(from_image_folder(data_root), tmp_path, val_size=0.6, test_size=0.5)


def test_train_on_the_split_and_test_only_at_the_end(data_root, vit_checkpoint, tmp_path, capsys):
    out = tmp_path / "splits"
    assert main(["split", "--data_dir", str(data_root), "--output_dir", str(out), "--seed", "5"]) == 0
    assert "Train on it with: hf-classifier train --split_dir" in capsys.readouterr().out
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--split_dir",
            str(out),
            "--model_name_or_path",
            str(vit_checkpoint),
            *fast_training_flags(run, num_train_epochs=1),
        ]
    )
    assert code == 0
    assert (run / "splits" / "train.csv").read_text() == (out / "train.csv").read_text()
    # The test figures are computed on test.csv (not on the validation split): same size, same macro-F1.
    test_results = json.loads((run / "test_results.json").read_text())
    test_metrics = json.loads((run / "evaluation_test" / "metrics.json").read_text())
    assert test_results["test_num_images"] == test_metrics["num_images"] == len(read(out / "test.csv"))
    assert test_results["test_f1_macro"] == pytest.approx(test_metrics["f1_macro"], abs=1e-6)
