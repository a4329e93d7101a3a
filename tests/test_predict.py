"""predict: a folder, a CSV or files in; one row per image out (id, label, score, top-k, error)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from hf_classifier.cli.commands import main
from hf_classifier.data.resolve import resolve_images as collect_inputs
from hf_classifier.data.schema import DataSourceError
from hf_classifier.evaluation.predictions import predict
from hf_classifier.models.build import build_model, load_image_processor

FAMILIES = ["ardeidae", "felidae", "formicidae"]


@pytest.fixture(scope="module")
def model_dir(vit_checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("family-model")
    build_model(str(vit_checkpoint), FAMILIES, extra_config={"label_name": "family"}).save_pretrained(folder)
    load_image_processor(str(vit_checkpoint)).save_pretrained(folder)
    return folder


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    Image.new("RGB", (60, 40), "red").save(root / "a.jpg")
    Image.new("L", (30, 50), 90).save(root / "nested" / "b.png")
    Image.new("RGB", (20, 20), "blue").save(root / "no_extension", format="JPEG")
    (root / "broken.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


def read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_folder_ids_are_relative_paths_and_bad_files_get_an_error_row(model_dir, photos, tmp_path):
    output = tmp_path / "out" / "predictions.csv"
    summary = predict(str(model_dir), [str(photos)], output, batch_size=2)
    rows = read(output)
    assert [row["id"] for row in rows] == ["a.jpg", "broken.jpg", "nested/b.png", "no_extension"]
    assert list(rows[0]) == ["id", "family", "score", "error"]
    broken = rows[1]
    assert broken["family"] == "" and "empty file" in broken["error"]
    assert all(row["family"] in FAMILIES and 0 < float(row["score"]) <= 1 for row in rows if not row["error"])
    assert summary.rows == 4 and summary.errors == 1 and summary.label_name == "family"
    assert not [p for p in output.parent.iterdir() if p.name != "predictions.csv"]  # no temp files left


def test_top_k_columns_are_sorted_by_score(model_dir, photos, tmp_path):
    output = tmp_path / "p.csv"
    predict(str(model_dir), [str(photos / "a.jpg")], output, top_k=3)
    (row,) = read(output)
    assert list(row)[:7] == ["id", "family", "score", "family_2", "score_2", "family_3", "score_3"]
    scores = [float(row["score"]), float(row["score_2"]), float(row["score_3"])]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-4)
    assert {row["family"], row["family_2"], row["family_3"]} == set(FAMILIES)


def test_top_k_larger_than_the_label_set_is_clamped(model_dir, photos, tmp_path):
    output = tmp_path / "p.csv"
    predict(str(model_dir), [str(photos / "a.jpg")], output, top_k=10)
    assert "family_3" in read(output)[0] and "family_4" not in read(output)[0]


def test_csv_input_uses_rare_species_id_and_image_root(model_dir, photos, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("rare_species_id,file_path\nid-1,a.jpg\nid-2,nested/b.png\nid-3,missing.jpg\n")
    output = tmp_path / "p.csv"
    predict(str(model_dir), [str(listing)], output, image_root=str(photos))
    rows = read(output)
    assert [row["id"] for row in rows] == ["id-1", "id-2", "id-3"]
    assert rows[2]["error"] == "file not found" and not rows[0]["error"]


def test_csv_id_column_option_and_errors(model_dir, photos, tmp_path):
    listing = photos / "list.csv"
    listing.write_text("photo,code\na.jpg,X1\n")
    output = tmp_path / "p.csv"
    predict(str(model_dir), [str(listing)], output, image_column="photo", id_column="code")
    assert read(output)[0]["id"] == "X1"
    with pytest.raises(DataSourceError, match="--id_column"):
        predict(str(model_dir), [str(listing)], output, image_column="photo", id_column="nope")


def test_files_keep_the_path_given_as_id(model_dir, photos, tmp_path):
    items = collect_inputs([str(photos / "a.jpg"), str(photos / "nested" / "b.png")])
    assert [item.id for item in items] == [str(photos / "a.jpg"), str(photos / "nested" / "b.png")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataSourceError, match="No images"):
        collect_inputs([str(empty)])


def test_cli_predict_with_workers(model_dir, photos, tmp_path, capsys):
    output = tmp_path / "cli.csv"
    code = main(
        [
            "predict",
            "--model",
            str(model_dir),
            "--input",
            str(photos),
            "--output",
            str(output),
            "--top_k",
            "2",
            "--num_workers",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert "Wrote 4 predictions (family)" in capsys.readouterr().out
    assert len(read(output)) == 4


def test_cuda_request_without_a_gpu_is_a_clear_error(model_dir, photos, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="--device cpu"):
        predict(str(model_dir), [str(photos)], tmp_path / "p.csv", device="cuda")


def test_the_inference_flags_reach_the_engine_whole(model_dir, photos, tmp_path, monkeypatch):
    from dataclasses import fields

    from hf_classifier.cli.arguments import EvaluateArguments, field_names
    from hf_classifier.evaluation import predictions
    from hf_classifier.evaluation.inference import InferenceOptions

    engine, received = predictions.classify, []

    def spy(predictor, sources, options, **kwargs):
        received.append(options)
        return engine(predictor, sources, options, **kwargs)

    monkeypatch.setattr(predictions, "classify", spy)
    flags = "--batch_size 3 --device cpu --num_workers 0 --tta flip --precision fp32".split()
    output = tmp_path / "p.csv"
    assert (
        main(["predict", "--model", str(model_dir), "--input", str(photos), "--output", str(output), *flags])
        == 0
    )
    assert received == [
        InferenceOptions(
            batch_size=3, device="cpu", num_workers=0, tta="flip", precision="fp32", distributed=True
        )
    ]
    assert len(read(output)) == 4
    # evaluate's flags are the same options: none is left behind by InferenceOptions.of
    shared = {f.name for f in fields(InferenceOptions)} - {"progress", "distributed"}
    assert shared <= field_names(EvaluateArguments)
    with pytest.raises(ValueError, match="--precision must be one of auto, fp32, bf16, got 'fp16'"):
        InferenceOptions(precision="fp16")


def test_a_listing_resolves_as_it_does_for_training(photos, tmp_path):
    """predict reads a CSV through the same resolver as `train --metadata_csv`: a wrong --image_root
    stops at once, naming it, instead of giving one 'file not found' row per image."""
    from hf_classifier.data.resolve import resolve_images

    listing = tmp_path / "list.csv"
    listing.write_text("file_path\na.jpg\nnested/b.png\n")
    with pytest.raises(DataSourceError, match=r"--image_root .*nowhere is not a folder"):
        resolve_images([str(listing)], image_root=str(tmp_path / "nowhere"))
    found = resolve_images([str(listing)], image_root=str(photos))
    assert [(item.id, item.source) for item in found] == [
        ("a.jpg", str(photos / "a.jpg")),
        ("nested/b.png", str(photos / "nested" / "b.png")),
    ]
