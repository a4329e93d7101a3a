"""Every data source becomes the same thing: splits with an `image` column and a ClassLabel `label`."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from helpers import make_image_tree
from PIL import Image as PILImage

from hf_classifier.data.checks import BAD_IMAGES_FILE, BadImagesError, drop_bad_images
from hf_classifier.data.schema import IMAGE, LABEL, DataSourceError
from hf_classifier.data.sources import (
    from_dataset,
    from_image_folder,
    from_metadata_csv,
    load_image_data,
    load_split_dir,
)
from hf_classifier.data.splits import ensure_validation_split, write_splits
from hf_classifier.hub.offline import HubUnavailableError


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def labels_of(split: Dataset) -> list[str]:
    return [split.features[LABEL].int2str(i) for i in split[LABEL]]


# ---------------------------------------------------------------- folders


def test_flat_class_folders(tmp_path):
    make_image_tree(tmp_path, {"cats": 3, "dogs": 2})
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / "cats" / ".DS_Store").write_bytes(b"\0")
    data = from_image_folder(tmp_path)
    assert list(data.splits) == ["train"]
    train = data.splits["train"]
    assert isinstance(train.features[LABEL], ClassLabel) and data.labels == ["cats", "dogs"]
    assert sorted(labels_of(train)) == ["cats"] * 3 + ["dogs"] * 2
    assert all(Path(p).is_file() for p in train[IMAGE])
    assert sorted(train["file_path"])[0] == "cats/img0.jpg"


def test_non_images_are_skipped_with_a_warning(tmp_path, caplog):
    make_image_tree(tmp_path, {"cats": 2, "dogs": 1})
    (tmp_path / "dogs" / "readme.txt").write_text("hello")
    with caplog.at_level("WARNING"):
        data = from_image_folder(tmp_path)
    assert len(data.splits["train"]) == 3
    assert "dogs/readme.txt" in caplog.text


def test_extensionless_images_in_a_folder_are_found(tmp_path):
    make_image_tree(tmp_path, {"cats": 1, "dogs": 1})
    PILImage.new("RGB", (10, 10)).save(tmp_path / "dogs" / "no_extension", format="JPEG")
    data = from_image_folder(tmp_path)
    assert "dogs/no_extension" in data.splits["train"]["file_path"]


def test_presplit_folders_with_val_and_test(tmp_path):
    make_image_tree(tmp_path, {"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1, "test/a": 2, "test/b": 1})
    data = from_image_folder(tmp_path)
    assert list(data.splits) == ["train", "validation", "test"]
    assert [len(s) for s in data.splits.values()] == [6, 2, 3]
    assert data.splits["test"].features[LABEL].names == ["a", "b"]


def test_label_names_are_shared_by_all_splits(tmp_path):
    make_image_tree(
        tmp_path, {"train/a": 2, "train/b": 2, "train/c": 2, "validation/a": 1, "validation/c": 1}
    )
    data = from_image_folder(tmp_path)
    assert data.splits["validation"].features[LABEL].names == ["a", "b", "c"]
    assert labels_of(data.splits["validation"]) == ["a", "c"]


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataSourceError, match="No images found"):
        from_image_folder(tmp_path)
    with pytest.raises(DataSourceError, match="not a folder"):
        from_image_folder(tmp_path / "missing")


def test_rare_species_folder_with_metadata_csv(demo_data):
    # The real layout: phylum_family folders and a metadata.csv with file_path (not file_name).
    by_folder = from_image_folder(demo_data.root)
    assert by_folder.labels[0] == "arthropoda_apidae"  # class = folder name
    by_family = from_image_folder(demo_data.root, label_column="family")
    assert by_family.label_name == "family" and "ardeidae" in by_family.labels
    train = by_family.splits["train"]
    assert {"rare_species_id", "phylum", "kingdom", "file_path"} <= set(train.column_names)
    row = train[0]
    assert Path(row[IMAGE]) == demo_data.root / row["file_path"]
    assert row["family"] == train.features[LABEL].int2str(row[LABEL])


def test_folder_metadata_with_files_not_listed_warns(tmp_path, caplog):
    make_image_tree(tmp_path, {"x_a": 2, "x_b": 2})
    write_csv(
        tmp_path / "metadata.csv",
        [{"file_path": "x_a/img0.jpg", "family": "a"}, {"file_path": "x_b/img0.jpg", "family": "b"}],
    )
    with caplog.at_level("WARNING"):
        data = from_image_folder(tmp_path, label_column="family")
    assert len(data.splits["train"]) == 2
    assert "2 image(s)" in caplog.text and "not listed" in caplog.text


# ---------------------------------------------------------------- CSV


def test_metadata_csv_keeps_every_column_and_sniffs_extensionless_files(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    PILImage.new("RGB", (10, 10)).save(images / "one.jpg")
    PILImage.new("RGB", (10, 10)).save(images / "two", format="PNG")  # no extension
    csv_path = write_csv(
        tmp_path / "meta.csv",
        [
            {
                "rare_species_id": "u1",
                "phylum": "chordata",
                "family": "ardeidae",
                "file_path": "imgs/one.jpg",
            },
            {"rare_species_id": "u2", "phylum": "mollusca", "family": "octopodidae", "file_path": "imgs/two"},
        ],
    )
    data = from_metadata_csv(csv_path, label_column="family")
    train = data.splits["train"]
    assert train["rare_species_id"] == ["u1", "u2"] and train["phylum"] == ["chordata", "mollusca"]
    assert data.image_root == tmp_path.resolve()  # default: the CSV's folder
    assert drop_bad_images(data, skip=False, report_dir=None) is data  # both files decode


def test_csv_image_root_option(tmp_path):
    make_image_tree(tmp_path / "elsewhere", {"a": 1})
    csv_path = write_csv(tmp_path / "m.csv", [{"file_path": "a/img0.jpg", "label": "a"}])
    data = from_metadata_csv(csv_path, image_root=str(tmp_path / "elsewhere"))
    assert Path(data.splits["train"][0][IMAGE]).is_file()


@pytest.mark.parametrize("column,flag", [("family", "--label_column"), ("picture", "--image_column")])
def test_csv_missing_column_is_a_clear_error(tmp_path, column, flag):
    csv_path = write_csv(tmp_path / "m.csv", [{"file_path": "a.jpg", "phylum": "x"}])
    kwargs = (
        {"label_column": "family"}
        if column == "family"
        else {"image_column": "picture", "label_column": "phylum"}
    )
    with pytest.raises(DataSourceError) as error:
        from_metadata_csv(csv_path, **kwargs)
    assert flag in str(error.value) and "file_path" in str(error.value)  # lists the columns there are


def test_csv_without_label_column_asks_for_one(tmp_path):
    csv_path = write_csv(tmp_path / "m.csv", [{"file_path": "a.jpg", "family": "x"}])
    with pytest.raises(DataSourceError, match="--label_column"):
        from_metadata_csv(csv_path)


def test_csv_empty_labels_name_the_lines(tmp_path):
    csv_path = write_csv(
        tmp_path / "m.csv", [{"file_path": "a.jpg", "family": "x"}, {"file_path": "b.jpg", "family": ""}]
    )
    with pytest.raises(DataSourceError, match="line\\(s\\) 3"):
        from_metadata_csv(csv_path, label_column="family")


def test_csv_missing_file_stops_with_its_name_or_is_skipped_and_recorded(tmp_path):
    make_image_tree(tmp_path, {"a": 2})
    csv_path = write_csv(
        tmp_path / "m.csv",
        [
            {"file_path": "a/img0.jpg", "label": "a"},
            {"file_path": "a/img1.jpg", "label": "a"},
            {"file_path": "a/gone.jpg", "label": "a"},
        ],
    )
    with pytest.raises(BadImagesError) as error:
        drop_bad_images(from_metadata_csv(csv_path), skip=False, report_dir=tmp_path / "out")
    message = str(error.value)
    assert "gone.jpg: file not found" in message and "--skip_bad_images" in message
    data = drop_bad_images(from_metadata_csv(csv_path), skip=True, report_dir=tmp_path / "out")
    assert len(data.splits["train"]) == 2 and data.skipped_images == 1
    with (tmp_path / "out" / BAD_IMAGES_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"split": "train", "path": str(tmp_path / "a" / "gone.jpg"), "reason": "file not found"}]


def test_csv_split_column(tmp_path):
    make_image_tree(tmp_path, {"a": 3})
    csv_path = write_csv(
        tmp_path / "m.csv",
        [
            {"file_path": "a/img0.jpg", "label": "a", "split": "train"},
            {"file_path": "a/img1.jpg", "label": "a", "split": "val"},
            {"file_path": "a/img2.jpg", "label": "a", "split": "test"},
        ],
    )
    assert list(from_metadata_csv(csv_path).splits) == ["train", "validation", "test"]


def test_only_one_source(tmp_path):
    with pytest.raises(DataSourceError, match="only one"):
        load_image_data(data_dir="a", metadata_csv="b.csv")
    with pytest.raises(DataSourceError, match="No data given"):
        load_image_data()


# ---------------------------------------------------------------- datasets


def saved_dataset(tmp_path: Path) -> Path:
    def png(color):
        from io import BytesIO

        buffer = BytesIO()
        PILImage.new("RGB", (12, 12), color).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    features = Features({"img": Image(), "species": Value("string")})
    train = Dataset.from_dict(
        {"img": [png("red"), png("blue"), png("red")], "species": ["x", "y", "x"]}, features=features
    )
    test = Dataset.from_dict({"img": [png("blue")], "species": ["y"]}, features=features)
    DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "saved")
    return tmp_path / "saved"


def test_save_to_disk_folder_with_column_mapping(tmp_path):
    data = from_dataset(str(saved_dataset(tmp_path)), image_column="img", label_column="species")
    assert list(data.splits) == ["train", "test"] and data.label_name == "species"
    train = data.splits["train"]
    assert train.features[LABEL].names == ["x", "y"]
    assert isinstance(train[0][IMAGE], dict) and train[0][IMAGE]["bytes"]  # decoded by our own open
    assert drop_bad_images(data, skip=False, report_dir=None) is data


def test_hub_dataset_offline_fails_fast_with_a_clear_message():
    started = time.monotonic()
    with pytest.raises(HubUnavailableError) as error:
        from_dataset("imageomics/rare-species")
    assert time.monotonic() - started < 10
    assert "imageomics/rare-species" in str(error.value) and "local folder" in str(error.value)


def test_hub_unreachable_without_offline_flag_fails_fast(monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    import hf_classifier.hub.offline as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # never resolves
    hub.hub_reachable.cache_clear()
    started = time.monotonic()
    try:
        with pytest.raises(HubUnavailableError, match="cannot be reached"):
            from_dataset("someone/some-dataset")
    finally:
        hub.hub_reachable.cache_clear()
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------- splits


def test_validation_split_is_stratified_seeded_and_keeps_singletons_in_train(tmp_path):
    make_image_tree(tmp_path, {"a": 20, "b": 10, "c": 1})
    data = ensure_validation_split(from_image_folder(tmp_path), ratio=0.2, seed=3)
    validation = labels_of(data.splits["validation"])
    assert sorted(validation) == ["a"] * 4 + ["b"] * 2
    assert "c" in labels_of(data.splits["train"])
    again = ensure_validation_split(from_image_folder(tmp_path), ratio=0.2, seed=3)
    assert again.splits["validation"]["file_path"] == data.splits["validation"]["file_path"]
    assert not set(data.splits["validation"]["file_path"]) & set(data.splits["train"]["file_path"])


def test_existing_validation_and_test_splits_are_kept(tmp_path):
    make_image_tree(tmp_path, {"train/a": 4, "train/b": 4, "test/a": 2, "test/b": 2})
    data = ensure_validation_split(from_image_folder(tmp_path), ratio=0.25, seed=0)
    assert list(data.splits) == ["train", "validation", "test"]
    assert len(data.splits["test"]) == 4 and len(data.splits["validation"]) == 2


def test_written_splits_reproduce_the_same_membership(demo_data, tmp_path):
    data = ensure_validation_split(from_image_folder(demo_data.root, label_column="family"), 0.2, seed=1)
    write_splits(data, tmp_path / "splits")
    header = (tmp_path / "splits" / "train.csv").read_text().splitlines()[0]
    assert header == "rare_species_id,eol_content_id,eol_page_id,kingdom,phylum,family,file_path"
    reloaded = load_split_dir(tmp_path / "splits")  # source.json remembers the folder and columns
    for name in ("train", "validation"):
        assert sorted(reloaded.splits[name]["file_path"]) == sorted(data.splits[name]["file_path"])
        assert sorted(labels_of(reloaded.splits[name])) == sorted(labels_of(data.splits[name]))
    assert reloaded.label_name == "family" and reloaded.labels == data.labels


def test_split_dir_for_a_saved_dataset_uses_row_indices(tmp_path):
    source = saved_dataset(tmp_path)
    data = from_dataset(str(source), image_column="img", label_column="species")
    write_splits(data, tmp_path / "splits")
    assert (tmp_path / "splits" / "train.csv").read_text().splitlines()[0] == "source_split,index,label"
    reloaded = load_image_data(split_dir=str(tmp_path / "splits"))
    assert len(reloaded.splits["train"]) == 3 and len(reloaded.splits["test"]) == 1
    assert labels_of(reloaded.splits["train"]) == ["x", "y", "x"]
