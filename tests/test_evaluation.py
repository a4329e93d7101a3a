"""evaluate: metrics against hand-computed cases, the hierarchy, pictures, TTA; multitask, experts, compare."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fast_training_flags, make_image_tree, train_run
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, pipeline

from hf_classifier.cli.commands import main
from hf_classifier.data.schema import DataSourceError
from hf_classifier.data.sources import from_image_folder, from_metadata_csv
from hf_classifier.evaluation.inference import ExpertsPredictor, ModelPredictor, classify, load_predictor
from hf_classifier.evaluation.metrics import macro_f1
from hf_classifier.evaluation.reports import classification_report, evaluate_model
from hf_classifier.hierarchy import ParentLabels
from hf_classifier.hierarchy.compare import paired_bootstrap
from hf_classifier.hierarchy.levels import label_to_parent as label_to_phylum
from hf_classifier.hierarchy.levels import phylum_of_folder_name

LABELS = ["ardeidae", "felidae", "apidae", "formicidae", "octopodidae"]
PHYLUM_OF = {
    "ardeidae": "chordata",
    "felidae": "chordata",
    "apidae": "arthropoda",
    "formicidae": "arthropoda",
    "octopodidae": "mollusca",
}


def read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def recomputed_macro_f1(rows: list[dict]) -> float:
    """Macro-F1 of `true` / `predicted` rows (over the classes present in either), by hand."""
    names = sorted({r["true"] for r in rows} | {r["predicted"] for r in rows})
    truth = np.array([names.index(r["true"]) for r in rows])
    guess = np.array([names.index(r["predicted"]) for r in rows])
    return float(macro_f1(truth, guess, len(names))[0])


# ---------------------------------------------------------------- metrics by hand


def test_classification_report_by_hand():
    # true:      ard ard fel api api for oct
    # predicted: ard fel fel api for for api   (3 errors: ard->fel stays in chordata; api->for stays;
    #                                            oct->api crosses into arthropoda)
    y_true = np.array([0, 0, 1, 2, 2, 3, 4])
    y_pred = np.array([0, 1, 1, 2, 3, 3, 2])
    probabilities = np.full((7, 5), 0.05)
    probabilities[np.arange(7), y_pred] = 0.8
    report = classification_report(y_true, probabilities, LABELS, ParentLabels("phylum", PHYLUM_OF))
    assert report["accuracy"] == pytest.approx(4 / 7)
    # per class (tp, predicted, support): ard (1,1,2) fel (1,2,1) api (1,2,2) for (1,2,1) oct (0,0,1)
    f1 = [2 / 3, 2 / 3, 1 / 2, 2 / 3, 0.0]
    precision = [1.0, 0.5, 0.5, 0.5, 0.0]
    recall = [0.5, 1.0, 0.5, 1.0, 0.0]
    assert report["f1_macro"] == pytest.approx(sum(f1) / 5)
    assert report["f1_weighted"] == pytest.approx(
        sum(f * s for f, s in zip(f1, [2, 1, 2, 1, 1], strict=True)) / 7
    )
    assert report["precision_macro"] == pytest.approx(sum(precision) / 5)
    assert report["recall_macro"] == pytest.approx(sum(recall) / 5)
    assert report["top5_accuracy"] == 1.0
    assert report["per_class"]["apidae"] == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "support": 2,
        "phylum": "arthropoda",
    }
    # phylum level: true C C C A A A M, predicted C C C A A A A -> 6/7; F1 per phylum: A 6/7, C 1, M 0
    assert report["phylum"]["accuracy"] == pytest.approx(6 / 7)
    assert report["phylum"]["f1_macro"] == pytest.approx((2 * 3 / (4 + 3) + 1 + 0) / 3)
    assert report["cross_phylum_errors"] == {
        "count": 1,
        "share_of_errors": pytest.approx(1 / 3),
        "rate": pytest.approx(1 / 7),
    }
    confusions = {(c["true"], c["predicted"]): c for c in report["top_confusions"]}
    assert confusions[("ardeidae", "felidae")]["share_of_true_class"] == 0.5
    assert len(confusions) == 3


def test_bootstrap_macro_f1_agrees_with_the_metric_module():
    from hf_classifier.evaluation.metrics import load_metric

    rng = np.random.default_rng(0)
    truth, guess = rng.integers(0, 6, 200), rng.integers(0, 6, 200)
    expected = load_metric("f1").compute(predictions=guess, references=truth, average="macro")["f1"]
    assert macro_f1(truth, guess, 6)[0] == pytest.approx(expected)
    difference, low, high = paired_bootstrap(truth, guess, guess, 6, samples=200)
    assert (difference, low, high) == (0.0, 0.0, 0.0)
    better = np.where(rng.random(200) < 0.5, truth, guess)
    difference, low, high = paired_bootstrap(truth, guess, better, 6, samples=200)
    assert difference > 0 and low > 0  # clearly better predictions: the whole interval above 0


# ---------------------------------------------------------------- the hierarchy from the data


def test_phylum_from_folder_names_and_from_a_column(clean_demo_data, tmp_path):
    assert phylum_of_folder_name("chordata_ardeidae") == "chordata"
    assert phylum_of_folder_name("golden_retriever") is None
    by_folders = label_to_phylum(from_image_folder(clean_demo_data.root))  # labels: phylum_family folders
    assert by_folders["chordata_ardeidae"] == "chordata" and len(by_folders) == 6
    by_column = label_to_phylum(from_metadata_csv(clean_demo_data.metadata_csv, label_column="family"))
    assert by_column == {f.family: f.phylum for f in clean_demo_data.families}
    make_image_tree(tmp_path, {"cats": 2, "dogs": 2})
    assert label_to_phylum(from_image_folder(tmp_path)) is None


# ---------------------------------------------------------------- a trained model, evaluated


@pytest.fixture
def family_model(trained_model) -> Path:
    """The session's shared model (conftest `trained_model`): clean_demo_data's families."""
    return trained_model


def test_phylum_map_is_saved_and_predict_writes_a_phylum_column(family_model, clean_demo_data, tmp_path):
    config = json.loads((family_model / "config.json").read_text())
    assert config["hf_classifier"]["phylum_of"] == {f.family: f.phylum for f in clean_demo_data.families}
    assert (
        main(
            [
                "predict",
                "--model",
                str(family_model),
                "--input",
                str(clean_demo_data.metadata_csv),
                "--output",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    rows = read(tmp_path / "p.csv")
    phylum_of = config["hf_classifier"]["phylum_of"]
    assert all(row["phylum"] == phylum_of[row["family"]] for row in rows)


def test_evaluate_writes_metrics_reports_and_pictures(family_model, clean_demo_data, tmp_path):
    out = tmp_path / "evaluation"
    # No --label_column: the model knows it learned `family`, and the CSV has that column.
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(family_model),
                "--metadata_csv",
                str(clean_demo_data.metadata_csv),
                "--output_dir",
                str(out),
                "--num_workers",
                "0",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "f1_macro",
        "f1_weighted",
        "precision_macro",
        "recall_macro",
        "top5_accuracy",
        "per_class",
        "phylum",
        "cross_phylum_errors",
        "top_confusions",
    ):
        assert key in metrics, key
    assert metrics["num_images"] == len(read(clean_demo_data.metadata_csv))
    assert set(metrics["per_class"]) == set(clean_demo_data.labels)
    report = read(out / "classification_report.csv")
    assert [row["label"] for row in report][:2] == [
        "apidae",
        "formicidae",
    ]  # ordered by phylum (arthropoda first)
    predictions = read(out / "predictions.csv")
    assert sum(int(row["correct"]) for row in predictions) / len(predictions) == pytest.approx(
        metrics["accuracy"]
    )
    for name in ("confusion_matrix.png", "misclassified.png"):
        picture = np.asarray(Image.open(out / name).convert("RGB"))
        assert picture.shape[0] > 100 and picture.shape[1] > 300
        assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 50, name
    summary = (out / "summary.md").read_text()
    assert "ten weakest classes" in summary and "macro-F1" in summary and "phylum macro-F1" in summary


def test_unreadable_and_unknown_labels_are_counted_not_scored(family_model, clean_demo_data, tmp_path):
    rows = read(clean_demo_data.metadata_csv)[:6]
    rows[0]["file_path"] = "missing.jpg"
    rows[1]["family"] = "never_seen_idae"
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    data = from_metadata_csv(listing, image_root=str(clean_demo_data.root), label_column="family")
    metrics = evaluate_model(family_model, data, tmp_path / "out", progress=False)
    assert metrics["images_listed"] == 6 and metrics["num_images"] == 4
    assert metrics["unreadable"] == 1 and metrics["unknown_labels"] == {"never_seen_idae": 1}
    assert read(tmp_path / "out" / "bad_images.csv")[0]["reason"] == "file not found"


def test_flip_tta_averages_the_image_and_its_mirror(family_model, tmp_path):
    predictor = ModelPredictor.load(family_model)
    photo = np.zeros((40, 60, 3), np.uint8)
    photo[:, :20] = (250, 200, 20)  # yellow on the left only: flipping changes the picture
    Image.fromarray(photo).save(tmp_path / "a.png")
    Image.fromarray(photo[:, ::-1].copy()).save(tmp_path / "mirror.png")
    sources = [str(tmp_path / "a.png"), str(tmp_path / "mirror.png"), str(tmp_path / "missing.png")]
    plain, errors = classify(predictor, sources, batch_size=2)
    flipped, _ = classify(predictor, sources, batch_size=2, tta="flip")
    assert plain.shape == flipped.shape == (3, len(predictor.labels))
    assert errors[2] == "file not found" and np.isnan(flipped[2]).all()
    np.testing.assert_allclose(flipped[0], (plain[0] + plain[1]) / 2, atol=1e-5)
    np.testing.assert_allclose(flipped[0], flipped[1], atol=1e-5)
    with pytest.raises(ValueError, match="--tta"):
        classify(predictor, sources, tta="rotate")


# ---------------------------------------------------------------- multitask, experts, compare


def train_on_families(out: Path, demo_data, checkpoint: Path, **flags) -> None:
    """A quick training run on the demo data's families (their phyla give the hierarchy)."""
    train_run(out, data_dir=demo_data.root, label_column="family", model_name_or_path=checkpoint, **flags)


@pytest.mark.slow
def test_multitask_trains_a_phylum_head_but_saves_a_plain_family_model(
    clean_demo_data, vit_checkpoint, tmp_path
):
    out = tmp_path / "multitask"
    train_on_families(out, clean_demo_data, vit_checkpoint, hierarchy="multitask")
    weights = load_file(out / "model.safetensors")
    assert not any(key.startswith("phylum_head") for key in weights)
    first, second = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    head, later = load_file(first / "phylum_head.safetensors"), load_file(second / "phylum_head.safetensors")
    assert head["weight"].shape == (4, 32)  # 4 phyla x the ViT's hidden size
    assert not torch.equal(head["weight"], later["weight"])  # the phylum loss trains it
    config = json.loads((out / "config.json").read_text())
    assert config["hf_classifier"]["hierarchy"] == "multitask"
    classifier = pipeline("image-classification", model=str(out))  # no trust_remote_code
    assert classifier(Image.new("RGB", (50, 40)))[0]["label"] in clean_demo_data.labels


def test_multitask_without_a_hierarchy_is_a_clear_error(tmp_path, vit_checkpoint):
    root = make_image_tree(tmp_path / "data", {"cats": 6, "dogs": 6})
    with pytest.raises(DataSourceError, match="phylum"):
        train_run(tmp_path / "o", data_dir=root, model_name_or_path=vit_checkpoint, hierarchy="multitask")


@pytest.mark.slow
def test_experts_route_each_image_to_the_family_model_of_its_phylum(
    clean_demo_data, vit_checkpoint, tmp_path
):
    out = tmp_path / "experts"
    train_on_families(out, clean_demo_data, vit_checkpoint, hierarchy="experts", num_train_epochs=1)
    spec = json.loads((out / "experts.json").read_text())
    assert spec["experts"] == {"arthropoda": "family_arthropoda", "chordata": "family_chordata"}
    assert spec["single_family"] == {"cnidaria": "acroporidae", "mollusca": "octopodidae"}
    router_labels = json.loads((out / "router" / "config.json").read_text())["id2label"].values()
    assert sorted(router_labels) == ["arthropoda", "chordata", "cnidaria", "mollusca"]
    # The validation figures are the experts' own, on the validation split: recomputed from its predictions.
    eval_results = json.loads((out / "eval_results.json").read_text())
    rows = read(out / "evaluation_validation" / "predictions.csv")
    validation_size = json.loads((out / "evaluation_validation" / "metrics.json").read_text())["num_images"]
    assert len(rows) == validation_size == len(read(out / "splits" / "validation.csv"))
    assert eval_results["eval_num_images"] == validation_size  # counts are kept, as in a flat run
    assert eval_results["eval_f1_macro"] == pytest.approx(recomputed_macro_f1(rows), abs=1e-6)

    predictor = load_predictor(out)
    assert isinstance(predictor, ExpertsPredictor)
    pixels = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    probabilities = predictor.probabilities(pixels)
    routed = predictor.router.probabilities(pixels).argmax(dim=1)
    for row, phylum_index in zip(probabilities, routed, strict=True):
        phylum = predictor.router.labels[phylum_index]
        inside = [i for i, label in enumerate(predictor.labels) if predictor.parents.of[label] == phylum]
        outside = [i for i in range(len(predictor.labels)) if i not in inside]
        assert row[outside].sum() == 0 and 0 < row[inside].sum() <= 1 + 1e-6

    assert (
        main(
            [
                "predict",
                "--model",
                str(out),
                "--input",
                str(clean_demo_data.metadata_csv),
                "--output",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    rows = read(tmp_path / "p.csv")
    assert list(rows[0])[:4] == ["id", "family", "phylum", "score"]
    assert all(row["phylum"] == spec["phylum_of"][row["family"]] for row in rows if not row["error"])


@pytest.mark.slow
def test_compare_trains_every_strategy_on_the_same_splits(clean_demo_data, vit_checkpoint, tmp_path):
    splits = tmp_path / "splits"
    assert (
        main(
            [
                "split",
                "--data_dir",
                str(clean_demo_data.root),
                "--label_column",
                "family",
                "--output_dir",
                str(splits),
                "--val_size",
                "0.15",
                "--test_size",
                "0.2",
            ]
        )
        == 0
    )
    out = tmp_path / "compare"
    assert (
        main(
            [
                "compare",
                "--split_dir",
                str(splits),
                "--model_name_or_path",
                str(vit_checkpoint),
                *fast_training_flags(out, num_train_epochs=1),
            ]
        )
        == 0
    )
    results = json.loads((out / "comparison.json").read_text())
    assert [r["strategy"] for r in results] == ["flat", "multitask", "experts"]
    phylum_of = {f.family: f.phylum for f in clean_demo_data.families}
    test_size = len(read(splits / "test.csv"))
    for result in results:  # each figure recomputed from that strategy's own test predictions
        rows = read(out / result["strategy"] / "evaluation_test" / "predictions.csv")
        assert len(rows) == test_size and result["evaluated_on"] == f"test ({test_size} images)"
        assert result["family_f1_macro"] == pytest.approx(recomputed_macro_f1(rows), abs=1e-6)
        as_phyla = [{"true": phylum_of[r["true"]], "predicted": phylum_of[r["predicted"]]} for r in rows]
        assert result["phylum_f1_macro"] == pytest.approx(recomputed_macro_f1(as_phyla), abs=1e-6)
        assert result["cross_phylum_errors"] == sum(r["true"] != r["predicted"] for r in as_phyla)
        assert result["parameters"] == load_predictor(out / result["strategy"]).num_parameters()
    assert results[2]["parameters"] > results[0]["parameters"]  # a router and two family models
    assert "f1_macro_vs_flat" in results[1] and "f1_macro_vs_flat" in results[2]
    table = (out / "comparison.md").read_text()
    assert "| experts |" in table and "paired bootstrap" in table
    flat_ids = [row["id"] for row in read(out / "flat" / "evaluation_test" / "predictions.csv")]
    experts_ids = [row["id"] for row in read(out / "experts" / "evaluation_test" / "predictions.csv")]
    assert flat_ids == experts_ids  # judged on the same images


def test_compare_needs_a_split_dir(tmp_path, capsys):
    assert main(["compare", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 1
    assert "--split_dir" in capsys.readouterr().err


def test_model_predictor_loads_plain_model(family_model):
    predictor = load_predictor(family_model)
    assert isinstance(predictor, ModelPredictor) and predictor.label_name == "family"
    assert predictor.num_parameters() == sum(
        p.numel() for p in AutoModelForImageClassification.from_pretrained(family_model).parameters()
    )
