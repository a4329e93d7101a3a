"""The label hierarchy with any coarser column (`--parent_column`), not only phylum."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import make_image_tree, train_run
from safetensors.torch import load_file

from hf_classifier.cli.commands import main
from hf_classifier.data.schema import DataSourceError
from hf_classifier.data.sources import from_image_folder
from hf_classifier.hierarchy.levels import parent_labels

ORDER_OF = {"apis": "hymenoptera", "bombus": "hymenoptera", "ardea": "pelecaniformes"}


def read(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_order_listing(tmp_path):
    """Photos of three species in two orders, listed in a CSV with `species` and `order` columns."""
    photos = make_image_tree(tmp_path / "photos", {species: 6 for species in ORDER_OF})
    listing = tmp_path / "metadata.csv"
    with listing.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_path", "species", "order"])
        for path in sorted(photos.rglob("*.jpg")):
            writer.writerow(
                [path.relative_to(tmp_path).as_posix(), path.parent.name, ORDER_OF[path.parent.name]]
            )
    return listing


def test_inspect_counts_images_per_order(tmp_path):
    listing = write_order_listing(tmp_path)
    out = tmp_path / "inspect"
    argv = ["inspect", "--metadata_csv", str(listing), "--label_column", "species", "--output_dir", str(out)]
    assert main([*argv, "--parent_column", "order", "--num_workers", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["orders"] == {
        "images": {"hymenoptera": 12, "pelecaniformes": 6},
        "classes": {"hymenoptera": 2, "pelecaniformes": 1},
        "label_to_order": ORDER_OF,
    }


def test_a_named_parent_column_the_data_lacks_is_a_clear_error(tmp_path):
    data = from_image_folder(make_image_tree(tmp_path, {"cats": 2, "dogs": 2}))
    assert parent_labels(data, None) is None  # the default (phylum) only when the data has it
    with pytest.raises(
        DataSourceError, match="--parent_column order needs each label's order, but there is no 'order'"
    ):
        parent_labels(data, "order")


def test_multitask_with_an_order_column_names_every_output_after_it(tmp_path, vit_checkpoint):
    listing = write_order_listing(tmp_path)
    out = tmp_path / "run"
    train_run(
        out,
        metadata_csv=listing,
        label_column="species",
        parent_column="order",
        model_name_or_path=vit_checkpoint,
        hierarchy="multitask",
        num_train_epochs=1,
        validation_split_ratio=0.34,
    )

    config = json.loads((out / "config.json").read_text())["hf_classifier"]
    assert config["parent_column"] == "order" and config["order_of"] == ORDER_OF
    assert "phylum_of" not in config
    (checkpoint,) = out.glob("checkpoint-*")
    assert load_file(checkpoint / "order_head.safetensors")["weight"].shape == (2, 32)  # 2 orders

    metrics = json.loads((out / "evaluation_validation" / "metrics.json").read_text())
    assert set(metrics["order"]) == {"accuracy", "f1_macro"} and "cross_order_errors" in metrics
    assert metrics["per_class"]["apis"]["order"] == "hymenoptera"
    assert list(read(out / "evaluation_validation" / "predictions.csv")[0])[-2:] == [
        "true_order",
        "predicted_order",
    ]
    assert "| order macro-F1 |" in (out / "evaluation_validation" / "summary.md").read_text()
    card = (out / "README.md").read_text()
    assert 'hf_classifier["order_of"]' in card and "| species | order | training images |" in card
    assert "**Order level**" in card and "put the image in another order" in card

    assert (
        main(["predict", "--model", str(out), "--input", str(listing), "--output", str(tmp_path / "p.csv")])
        == 0
    )
    rows = read(tmp_path / "p.csv")
    assert list(rows[0])[:4] == ["id", "species", "order", "score"]
    assert all(row["order"] == ORDER_OF[row["species"]] for row in rows)
