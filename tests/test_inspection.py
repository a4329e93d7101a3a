"""inspect: counts, sizes, modes, odd and broken files, planted duplicates, pictures."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import make_textured_tree, textured_photo
from PIL import Image

from hf_classifier.cli.commands import main
from hf_classifier.data.inspection import inspect
from hf_classifier.data.sources import from_image_folder, from_metadata_csv


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """phylum_family folders of distinct photos, then one of every problem."""
    root = tmp_path_factory.mktemp("planted") / "rare_species"
    files = make_textured_tree(
        root, {"chordata_ardeidae": 12, "arthropoda_formicidae": 8, "mollusca_octopodidae": 3}
    )
    ardeidae, formicidae = files["chordata_ardeidae"], files["arthropoda_formicidae"]
    shutil.copy(ardeidae[0], root / "chordata_ardeidae" / "exact_copy.jpg")  # exact duplicate
    photo = Image.open(ardeidae[1])
    photo.resize((100, 75)).save(root / "chordata_ardeidae" / "small_copy.jpg", quality=55)  # near duplicate
    shutil.copy(formicidae[0], root / "chordata_ardeidae" / "misfiled.jpg")  # same picture, other label
    (root / "arthropoda_formicidae" / "empty.jpg").write_bytes(b"")
    truncated = root / "arthropoda_formicidae" / "truncated.jpg"
    truncated.write_bytes(ardeidae[2].read_bytes()[:2000])
    (root / "arthropoda_formicidae" / "notes.jpg").write_text("not a picture")
    textured_photo(900).save(
        root / "mollusca_octopodidae" / "really_png.jpg", format="PNG"
    )  # lying extension
    textured_photo(901).save(root / "mollusca_octopodidae" / "no_extension", format="JPEG")
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(root / "mollusca_octopodidae" / "tiny.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    textured_photo(902, (120, 80)).save(root / "mollusca_octopodidae" / "rotated.jpg", exif=exif)
    textured_photo(903).convert("L").save(root / "mollusca_octopodidae" / "gray.jpg")
    textured_photo(904).convert("CMYK").save(root / "mollusca_octopodidae" / "cmyk.jpg")
    return root


@pytest.fixture(scope="module")
def report(planted, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("inspect")
    return inspect(from_image_folder(planted), out, num_workers=2), out


def test_counts_phyla_and_small_classes(report):
    report, _ = report
    counts = report["classes"]["counts"]
    # Files are counted as listed; the 3 unreadable ones are reported separately.
    assert counts == {"chordata_ardeidae": 15, "arthropoda_formicidae": 11, "mollusca_octopodidae": 9}
    assert report["classes"]["imbalance_ratio"] == pytest.approx(15 / 9, abs=0.01)
    assert report["classes"]["too_small_to_learn"] == ["mollusca_octopodidae"]  # fewer than 10
    assert report["classes"]["too_small_to_stratify"] == []
    assert report["phyla"]["images"] == {"arthropoda": 11, "chordata": 15, "mollusca": 9}
    assert report["phyla"]["label_to_phylum"]["chordata_ardeidae"] == "chordata"


def test_unreadable_files_with_reasons(report):
    report, _ = report
    reasons = {Path(entry["path"]).name: entry["reason"] for entry in report["unreadable"]}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "notes.jpg"}
    assert "empty" in reasons["empty.jpg"] and "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.jpg"]


def test_planted_duplicates_and_label_conflicts(report):
    report, _ = report
    duplicates = report["duplicates"]
    exact = sorted(sorted(Path(p).name for p in group) for group in duplicates["exact"])
    assert exact == [["exact_copy.jpg", "photo000.jpg"], ["misfiled.jpg", "photo000.jpg"]]
    near = [sorted(Path(p).name for p in group) for group in duplicates["near"]]
    assert near == [["photo001.jpg", "small_copy.jpg"]]
    (conflict,) = duplicates["label_conflicts"]
    assert conflict["labels"] == ["arthropoda_formicidae", "chordata_ardeidae"]
    assert sorted(conflict["paths"]) == [
        "arthropoda_formicidae/photo000.jpg",
        "chordata_ardeidae/misfiled.jpg",
    ]


def test_sizes_modes_formats_and_odd_files(report):
    report, _ = report
    assert report["modes"]["L"] == 1 and report["modes"]["CMYK"] == 1
    assert report["formats"]["PNG"] == 2 and report["formats"]["JPEG"] >= 28
    problems = {Path(e["path"]).name: e["problem"] for e in report["extension_mismatch"]}
    assert problems == {"really_png.jpg": ".jpg file holds PNG", "no_extension": "no extension"}
    assert [Path(e["path"]).name for e in report["tiny_images"]] == ["tiny.png"]
    (rotated,) = report["exif_rotated"]
    assert rotated["path"].endswith("rotated.jpg") and rotated["orientation"] == 6
    sizes = report["sizes"]
    assert sizes["width"]["min"] == 30 and sizes["width"]["max"] == 200
    assert sizes["height"]["max"] == 150
    assert sum(sizes["shorter_side_histogram"].values()) == report["num_images"] - 3


def test_report_json_and_pictures_are_written(report):
    report, out = report
    assert json.loads((out / "report.json").read_text()) == report
    for name in ("class_distribution.png", "size_distribution.png", "contact_sheet_1.png"):
        picture = Image.open(out / name)
        assert picture.width > 300 and picture.height > 100
        colours = np.asarray(picture.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(colours, axis=0)) > 20  # something was drawn, not a blank canvas
    assert report["pictures"] == ["class_distribution.png", "size_distribution.png", "contact_sheet_1.png"]


def test_phylum_column_of_a_csv(tmp_path):
    files = make_textured_tree(tmp_path, {"imgs": 4}, seed=3)["imgs"]
    with (tmp_path / "meta.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_path", "family", "phylum"])
        for i, path in enumerate(files):
            writer.writerow(
                [
                    f"imgs/{path.name}",
                    "ardeidae" if i < 2 else "apidae",
                    "chordata" if i < 2 else "arthropoda",
                ]
            )
    result = inspect(from_metadata_csv(tmp_path / "meta.csv", label_column="family"), tmp_path / "out")
    assert result["phyla"]["label_to_phylum"] == {"apidae": "arthropoda", "ardeidae": "chordata"}


def test_cli_inspect_prints_a_summary(planted, tmp_path, capsys):
    assert main(["inspect", "--data_dir", str(planted), "--output_dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "Inspected 35 images in 3 classes" in out and "unreadable: 3" in out
    assert "2 exact groups, 1 near-duplicate groups, 1 with conflicting labels" in out
