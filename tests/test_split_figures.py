"""Every figure is computed on the split it names: train (with persistent loader workers, the default),
evaluate and compare, checked against an independent run of the saved model over each split's images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARD_CLASSES, fast_training_flags, tinted_jpeg, train_run
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, TrainerCallback

from hf_classifier.cli.commands import main

# Validation and test differ in size and in content: a third of the test images wear another class's
# tint, so the test figures are lower than the validation ones whatever the model learned.
VALIDATION_PER_CLASS = 4
TEST_PER_CLASS = 6
MISLEADING_TEST_IMAGES = 2  # per class, tinted like the next class
EPOCHS = 3


def write_split_folder(root: Path) -> Path:
    for split, count in (("train", 12), ("validation", VALIDATION_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label, name in enumerate(SHARD_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                tint = (
                    (label + 1) % len(SHARD_CLASSES)
                    if split == "test" and i < MISLEADING_TEST_IMAGES
                    else label
                )
                seed = {"train": 0, "validation": 500, "test": 900}[split] + 40 * label + i
                (folder / f"{split}_{i}.jpg").write_bytes(tinted_jpeg(tint, seed))
    return root


def independent_figures(model_dir: Path, split_dir: Path) -> dict[str, float]:
    """Accuracy and macro-F1 of the saved model on the images of one split folder, with transformers'
    own image processor and a hand-written macro-F1 (over the classes in the truth or the predictions)."""
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    files = sorted(split_dir.glob("*/*.jpg"))
    truth = np.array([model.config.label2id[path.parent.name] for path in files])
    images = [Image.open(path).convert("RGB") for path in files]
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits
    predicted = logits.argmax(-1).numpy()
    f1 = []
    for label in sorted(set(truth) | set(predicted)):
        tp = np.sum((truth == label) & (predicted == label))
        fp = np.sum((truth != label) & (predicted == label))
        fn = np.sum((truth == label) & (predicted != label))
        f1.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": float(np.mean(truth == predicted)),
        "f1_macro": float(np.mean(f1)),
        "num_images": len(files),
    }


class CountEvaluatedImages(TrainerCallback):
    """Counts the images the trained model sees in eval mode, i.e. every evaluation pass."""

    def __init__(self) -> None:
        self.images = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        model.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs):  # noqa: ANN001
        if not module.training:
            self.images += len(kwargs["pixel_values"])


def no_second_pass(*args, **kwargs):
    raise AssertionError("train reloaded the saved model to evaluate it a second time")


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, vit_checkpoint):
    root = write_split_folder(tmp_path_factory.mktemp("split_figures") / "data")
    out = root.parent / "run"
    counter = CountEvaluatedImages()
    # 2 loader workers, persistent (the default with workers): the setting that made Trainer evaluate
    # the cached validation loader again for the test split. EMA on: the final figures must be those of
    # the weights that were saved.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("hf_classifier.evaluation.reports.load_predictor", no_second_pass)
        train_run(
            out,
            data_dir=root,
            model_name_or_path=vit_checkpoint,
            dataloader_num_workers=2,
            num_train_epochs=EPOCHS,
            ema_decay=0.5,
            callbacks=[counter],
        )
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.dataloader_num_workers == 2 and args.dataloader_persistent_workers
    figures = {split: independent_figures(out, root / split) for split in ("validation", "test")}
    return root, out, figures, counter.images


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def assert_figures(found: dict, expected: dict, what: str) -> None:
    assert found["num_images"] == expected["num_images"], what
    assert found["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9), what
    assert found["f1_macro"] == pytest.approx(expected["f1_macro"], abs=1e-9), what


def test_the_splits_really_differ(split_run):
    _, _, figures, _ = split_run
    assert figures["validation"]["num_images"] == 3 * VALIDATION_PER_CLASS
    assert figures["test"]["num_images"] == 3 * TEST_PER_CLASS
    assert figures["validation"]["accuracy"] != figures["test"]["accuracy"]
    assert figures["validation"]["f1_macro"] != figures["test"]["f1_macro"]


def test_train_writes_each_splits_own_figures(split_run):
    _, out, figures, _ = split_run
    all_results = read_json(out / "all_results.json")
    for split, prefix in (("validation", "eval"), ("test", "test")):
        results = read_json(out / f"{prefix}_results.json")
        for source, name in ((results, f"{prefix}_results.json"), (all_results, "all_results.json")):
            assert_figures(
                {key: source[f"{prefix}_{key}"] for key in ("accuracy", "f1_macro", "num_images")},
                figures[split],
                f"{name} {prefix}_*",
            )
        assert "epoch" in results  # the keys users read are unchanged
        assert_figures(read_json(out / f"evaluation_{split}" / "metrics.json"), figures[split], split)
        predictions = (out / f"evaluation_{split}" / "predictions.csv").read_text().splitlines()
        assert len(predictions) == 1 + figures[split]["num_images"]


def test_the_card_publishes_the_test_figures_as_test(split_run):
    _, out, figures, _ = split_run
    text = (out / "README.md").read_text(encoding="utf-8")
    card = ModelCard.load(out / "README.md")
    model_index = {
        (result.dataset_split, result.metric_name): result.metric_value for result in card.data.eval_results
    }
    for split in ("validation", "test"):
        expected = figures[split]
        assert model_index[(split, "Accuracy")] == round(expected["accuracy"], 4)
        assert model_index[(split, "Macro F1")] == round(expected["f1_macro"], 4)
        row = re.search(rf"^\| {split} \| ([0-9.]+) \| ([0-9.]+) \|.*\| (\d+) \|$", text, re.MULTILINE)
        assert row, split
        assert float(row[1]) == pytest.approx(expected["accuracy"], abs=5e-5)
        assert float(row[2]) == pytest.approx(expected["f1_macro"], abs=5e-5)
        assert int(row[3]) == expected["num_images"]
    assert f"It reaches {figures['test']['f1_macro']:.3f} macro-F1 on the test split." in text


def test_evaluate_with_workers_scores_the_split_it_is_given(split_run, tmp_path):
    root, out, figures, _ = split_run
    for split in ("test", "validation"):
        assert (
            main(
                [
                    "evaluate",
                    "--model",
                    str(out),
                    "--data_dir",
                    str(root / split),
                    "--output_dir",
                    str(tmp_path / split),
                    "--num_workers",
                    "2",
                ]
            )
            == 0
        )
        assert_figures(read_json(tmp_path / split / "metrics.json"), figures[split], split)


def test_compare_judges_on_the_test_split(split_run, tmp_path, vit_checkpoint):
    root, out, _, _ = split_run
    flags = fast_training_flags(tmp_path / "compare", num_train_epochs=1)
    argv = ["compare", "--split_dir", str(out / "splits"), "--model_name_or_path", str(vit_checkpoint)]
    assert main([*argv, "--strategies", "flat", *flags]) == 0
    (flat,) = read_json(tmp_path / "compare" / "comparison.json")
    expected = independent_figures(tmp_path / "compare" / "flat", root / "test")
    assert flat["evaluated_on"] == f"test ({expected['num_images']} images)"
    assert flat["family_f1_macro"] == pytest.approx(expected["f1_macro"], abs=1e-9)
    assert flat["family_accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)


def test_the_final_evaluation_is_one_pass_per_split(split_run):
    # Each epoch's validation, then validation and test once for the final figures; nothing reloads
    # the saved model for a second pass (the fixture makes that fail).
    _, _, figures, evaluated_images = split_run
    validation, test = figures["validation"]["num_images"], figures["test"]["num_images"]
    assert evaluated_images == EPOCHS * validation + validation + test


# ---------------------------------------------------------------- inference: what each batch costs


def tiny_predictor(num_labels: int, seed: int):
    from helpers import TINY_VIT
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from hf_classifier.evaluation.inference import ModelPredictor

    torch.manual_seed(seed)
    labels = {i: f"class_{seed}_{i}" for i in range(num_labels)}
    model = ViTForImageClassification(
        ViTConfig(**TINY_VIT, id2label=labels, label2id={v: k for k, v in labels.items()})
    )
    return ModelPredictor(model, ViTImageProcessor(size={"height": 32, "width": 32}))


def test_classify_copies_to_the_host_without_a_blocking_copy_per_batch(tmp_path, monkeypatch):
    from hf_classifier.evaluation.inference import classify

    paths = []
    for seed in range(5):
        paths.append(tmp_path / f"{seed}.jpg")
        (tmp_path / f"{seed}.jpg").write_bytes(tinted_jpeg(seed % 3, seed))
    predictor = tiny_predictor(4, seed=0)
    expected, _ = classify(predictor, [str(p) for p in paths], batch_size=5)

    def blocking_copy(self):
        raise AssertionError("a blocking .cpu() copy per batch")

    monkeypatch.setattr(torch.Tensor, "cpu", blocking_copy)
    probabilities, errors = classify(predictor, [str(p) for p in paths], batch_size=2)
    assert errors == [""] * 5
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)


def test_top_k_rows_rank_as_the_full_matrix_does():
    from hf_classifier.evaluation.inference import _dense_rows, _top_k_rows

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(12), size=40).astype(np.float32)
    probabilities[3] = 0  # every column tied
    probabilities[4, [2, 7, 9]] = probabilities[4].max()  # a tie inside the top 3
    probabilities[5] = np.nan  # an unreadable image
    dense = _dense_rows(_top_k_rows(probabilities, 5), 12)
    readable = np.arange(40) != 5
    ranked = np.argsort(-probabilities[readable], axis=1, kind="stable")[:, :5]
    assert np.array_equal(np.argsort(-dense[readable], axis=1, kind="stable")[:, :5], ranked)
    assert np.array_equal(
        np.take_along_axis(dense[readable], ranked, 1), np.take_along_axis(probabilities[readable], ranked, 1)
    )
    assert np.isnan(dense[5]).all()
    assert _top_k_rows(probabilities, 12) is probabilities  # nothing to cut


def test_experts_route_without_building_tensors_per_batch(tmp_path, monkeypatch):
    from hf_classifier.evaluation.inference import EXPERTS_FILE, ExpertsPredictor

    # Phylum "p0" has an expert for families d and b; "p1" has the single family c.
    router, expert = tiny_predictor(2, seed=1), tiny_predictor(2, seed=2)
    torch.manual_seed(3)
    pixels = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():  # a router that sends half the images each way, so both routes are taken
        margin = router.model(pixel_values=router.normalize(pixels)).logits @ torch.tensor([1.0, -1.0])
        router.model.classifier.bias[0] -= margin.median() + 1e-4
    for name, predictor, labels in (("router", router, ["p0", "p1"]), ("family_p0", expert, ["d", "b"])):
        predictor.model.config.id2label = dict(enumerate(labels))
        predictor.model.config.label2id = {label: i for i, label in enumerate(labels)}
        predictor.model.save_pretrained(tmp_path / name)
        predictor.processor.save_pretrained(tmp_path / name)
    spec = {
        "labels": ["b", "c", "d"],
        "label_name": "family",
        "phylum_of": {"b": "p0", "c": "p1", "d": "p0"},
        "router": "router",
        "experts": {"p0": "family_p0"},
        "single_family": {"p1": "c"},
    }
    (tmp_path / EXPERTS_FILE).write_text(json.dumps(spec))
    experts = ExpertsPredictor(tmp_path)
    phylum = router.probabilities(pixels)
    family = expert.probabilities(pixels)
    assert set(phylum.argmax(-1).tolist()) == {0, 1}  # both routes are taken
    expected = torch.zeros(16, 3)
    for row in range(16):
        if phylum[row].argmax() == 0:  # p0: d is the expert's column 0, b its column 1
            expected[row, 2] = phylum[row, 0] * family[row, 0]
            expected[row, 0] = phylum[row, 0] * family[row, 1]
        else:
            expected[row, 1] = phylum[row, 1]

    def no_new_tensor(*args, **kwargs):
        raise AssertionError("an index tensor built per batch")

    monkeypatch.setattr(torch, "tensor", no_new_tensor)
    torch.testing.assert_close(experts.probabilities(pixels), expected)
