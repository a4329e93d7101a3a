"""Bundled evaluate modules load offline and agree with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_classifier.evaluation.metrics import build_compute_metrics, classification_metrics, load_metric

# 3 classes. Class 0: TP 1, predicted 1, support 1. Class 1: TP 1, predicted 2, support 1.
# Class 2: TP 1, predicted 1, support 2.
PREDICTIONS = [0, 1, 1, 2]
REFERENCES = [0, 1, 2, 2]


def test_metric_modules_load_offline_through_evaluate():
    import evaluate

    for name in ("accuracy", "f1", "precision", "recall", "top_k_accuracy"):
        assert isinstance(load_metric(name), evaluate.EvaluationModule)


def test_accuracy_f1_precision_recall_by_hand():
    assert load_metric("accuracy").compute(predictions=PREDICTIONS, references=REFERENCES)["accuracy"] == 0.75
    f1 = load_metric("f1")
    per_class = f1.compute(predictions=PREDICTIONS, references=REFERENCES, average=None)["f1"]
    assert per_class == pytest.approx([1.0, 2 / 3, 2 / 3])
    assert f1.compute(predictions=PREDICTIONS, references=REFERENCES)["f1"] == pytest.approx(7 / 9)
    # weighted by support (1, 1, 2): (1 + 2/3 + 2 * 2/3) / 4
    assert f1.compute(predictions=PREDICTIONS, references=REFERENCES, average="weighted")[
        "f1"
    ] == pytest.approx(0.75)
    assert f1.compute(predictions=PREDICTIONS, references=REFERENCES, average="micro")["f1"] == pytest.approx(
        0.75
    )
    precision = load_metric("precision").compute(predictions=PREDICTIONS, references=REFERENCES, average=None)
    assert precision["precision"] == pytest.approx([1.0, 0.5, 1.0])
    recall = load_metric("recall").compute(predictions=PREDICTIONS, references=REFERENCES, average=None)
    assert recall["recall"] == pytest.approx([1.0, 1.0, 0.5])


def test_classes_never_seen_count_as_zero_only_when_listed():
    # Class 3 is predicted but absent from the references: it is in the macro average (F1 0).
    f1 = load_metric("f1")
    assert f1.compute(predictions=[0, 3], references=[0, 1])["f1"] == pytest.approx(1 / 3)
    assert f1.compute(predictions=[0, 1], references=[0, 1], labels=[0, 1, 2])["f1"] == pytest.approx(2 / 3)


def test_top_k_accuracy_by_hand():
    scores = [
        [0.1, 0.5, 0.3, 0.05, 0.05],  # true 2: 2nd best -> top-1 miss, top-2 hit
        [0.6, 0.1, 0.1, 0.1, 0.1],  # true 4: ties with 3 others below the best -> rank 1
        [0.2, 0.2, 0.2, 0.2, 0.2],
    ]  # true 0: nothing strictly better -> rank 0
    top = load_metric("top_k_accuracy")
    assert top.compute(predictions=scores, references=[2, 4, 0], k=1)["top_k_accuracy"] == pytest.approx(
        1 / 3
    )
    assert top.compute(predictions=scores, references=[2, 4, 0], k=2)["top_k_accuracy"] == pytest.approx(1.0)


def test_compute_metrics_from_logits():
    logits = np.array(
        [
            [3.0, 0, 0, 0, 0, 0],  # true 0: predicted 0
            [0, 3.0, 0, 0, 0, 0],  # true 1: predicted 1
            [0, 2.0, 1.0, 0, 0, 0],  # true 2: predicted 1, second best -> top-5 hit
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # true 5: predicted 0, sixth best -> top-5 miss
        ]
    )
    labels = np.array([0, 1, 2, 5])
    metrics = build_compute_metrics()(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics["accuracy"] == 0.5
    assert metrics["top5_accuracy"] == 0.75
    # predictions [0, 1, 1, 0]; per-class F1 over labels {0, 1, 2, 5}: 2/3, 2/3, 0, 0
    assert metrics["f1_macro"] == pytest.approx((2 / 3 + 2 / 3) / 4)
    assert set(metrics) == {
        "accuracy",
        "f1_macro",
        "f1_weighted",
        "top5_accuracy",
        "cross_entropy",
        "num_images",
    }
    assert metrics["num_images"] == 4
    # -log softmax of the true class, averaged: exact, in float64
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert metrics["cross_entropy"] == pytest.approx(-log_probs[np.arange(4), labels].mean(), rel=1e-12)


def test_no_top5_with_fewer_than_five_classes():
    metrics = classification_metrics(np.eye(3), np.array([0, 1, 2]))
    assert "top5_accuracy" not in metrics and metrics["f1_macro"] == 1.0


def test_the_bundled_modules_compute_what_the_library_computes():
    # One implementation: the evaluate modules give, to the last bit, the figures of the functions
    # that Trainer, evaluate and compare use, including on batches of resamples.
    from hf_classifier.evaluation import metrics

    rng = np.random.default_rng(0)
    references, predictions = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    counts = metrics.class_counts(predictions, references, 7)
    for name, score in metrics.PER_CLASS.items():
        module = load_metric(name)
        assert module.compute(predictions=predictions, references=references, average=None)[name] == (
            score(counts).tolist()
        )
        assert module.compute(predictions=predictions, references=references)[name] == float(
            metrics.macro_average(score(counts), counts)
        )
    rows = rng.integers(0, 300, size=(4, 300))
    batched = metrics.macro_f1(references[rows], predictions[rows], 7)
    assert batched.tolist() == [
        load_metric("f1").compute(predictions=predictions[r], references=references[r])["f1"] for r in rows
    ]
    scores = rng.random((300, 7))
    assert load_metric("top_k_accuracy").compute(predictions=scores, references=references, k=3)[
        "top_k_accuracy"
    ] == metrics.top_k_accuracy(scores.astype(np.float32), references, 3)


def test_weakest_classes_rank_by_f1_then_name_and_skip_classes_without_images():
    from hf_classifier.evaluation.metrics import weakest_classes

    per_class = {
        "zebra": {"f1": 0.2, "support": 3},
        "ant": {"f1": 0.2, "support": 1},  # a tie: by name
        "unseen": {"f1": 0.0, "support": 0},  # no image to judge it on
        "bee": {"f1": 0.9, "support": 2},
        "wasp": {"f1": 0.5, "support": 2},
    }
    assert [label for label, _ in weakest_classes(per_class)] == ["ant", "zebra", "wasp", "bee"]
    assert weakest_classes(per_class, count=1) == [("ant", per_class["ant"])]
