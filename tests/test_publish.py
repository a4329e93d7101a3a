"""Model cards and the Hub push: the card parses back with the run's own numbers, odd labels survive,
only the upload set goes up, no secret is written anywhere, the network boundary fails clearly."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import PLANTED_SECRETS, make_image_tree, train_run
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image
from transformers import pipeline

from hf_classifier.cli.commands import main
from hf_classifier.hub.offline import HubUnavailableError
from hf_classifier.hub.publish import PublishError, collect_upload_set, push_model_folder

SECRETS = PLANTED_SECRETS  # given to the shared trained model's run (conftest `trained_model`)
ODD_LABELS = ['ardeidae: "herons"', "müller's wrens", "pipe|family", "東京 beetles"]


@pytest.fixture
def trained(trained_model) -> Path:
    """The session's shared model (conftest `trained_model`): a test split, a licence, two planted tokens."""
    return trained_model


@pytest.fixture(scope="module")
def odd_labels_model(tmp_path_factory, vit_checkpoint) -> Path:
    """A short run on classes with quotes, colons, a pipe and unicode, with a test split."""
    root = tmp_path_factory.mktemp("odd")
    layout = {
        f"{split}/{label}": count for label in ODD_LABELS for split, count in (("train", 8), ("test", 3))
    }
    data = make_image_tree(root / "data", layout)
    train_run(root / "run", data_dir=data, model_name_or_path=vit_checkpoint, num_train_epochs=1)
    return root / "run"


def files_below(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_card_parses_back_with_the_runs_own_numbers(trained):
    card = ModelCard.load(trained / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-classification"
    assert data["license"] == "cc-by-4.0"
    assert {"image-classification", "hf-classifier", "vit"} <= set(data["tags"])
    assert set(data["metrics"]) == {"accuracy", "f1", "top_k_accuracy"}
    assert "base_model" not in data  # a local checkpoint is not a Hub reference
    eval_results = json.loads((trained / "eval_results.json").read_text())
    test_results = json.loads((trained / "test_results.json").read_text())
    measured = {(r.dataset_split, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert measured[("validation", "Macro F1")] == round(eval_results["eval_f1_macro"], 4)
    assert measured[("validation", "Accuracy")] == round(eval_results["eval_accuracy"], 4)
    assert measured[("test", "Macro F1")] == round(test_results["test_f1_macro"], 4)
    text = card.text
    for section in (
        "## How to use",
        "## Intended uses and limitations",
        "**Not for:**",
        "## Training data",
        "## Preprocessing and augmentation",
        "| learning rate |",
        "## Results",
        "## Compute",
        "## Framework versions",
        "## Citation",
        'pipeline("image-classification"',
    ):
        assert section in text, section
    assert "evaluation_test/confusion_matrix.png" in text
    assert "More information needed" not in text


def test_odd_labels_survive_config_card_pipeline_and_predict(odd_labels_model, tmp_path):
    config = json.loads((odd_labels_model / "config.json").read_text(encoding="utf-8"))
    assert sorted(config["id2label"].values()) == sorted(ODD_LABELS)
    text = (odd_labels_model / "README.md").read_text(encoding="utf-8")
    assert 'ardeidae: "herons"' in text and "müller's wrens" in text and "東京 beetles" in text
    assert "pipe\\|family" in text  # escaped inside the Markdown tables
    assert "| pipe|family |" not in text
    labels = {
        row["label"]
        for row in pipeline("image-classification", model=str(odd_labels_model))(
            Image.new("RGB", (40, 40)), top_k=4
        )
    }
    assert labels == set(ODD_LABELS)


def test_the_upload_set_is_only_what_a_user_needs(trained):
    files = collect_upload_set(trained)
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "evaluation_test/confusion_matrix.png",
        "evaluation_test/metrics.json",
        "eval_results.json",
    } <= set(files)
    forbidden = (
        "optimizer",
        "scheduler",
        "rng_state",
        "training_args",
        "checkpoint-",
        "splits/",
        "trainer_state",
        "training_summary",
        "misclassified",
        "predictions.csv",
    )
    assert not [f for f in files if any(word in f for word in forbidden)]
    assert list((trained).glob("checkpoint-*"))  # they exist locally, they are just not uploaded


def test_no_secret_in_any_written_file(trained, tmp_path):
    dry = tmp_path / "upload"
    assert (
        main(["push", str(trained), "--repo_id", "someone/odd", "--dry_run", str(dry), "--token", SECRETS[0]])
        == 0
    )
    for path in files_below(trained) + files_below(dry):
        content = path.read_bytes()
        assert not any(secret.encode() in content for secret in SECRETS), path


def test_dry_run_writes_exactly_the_upload_set_and_it_loads_in_pipeline(trained, tmp_path, capsys):
    dry = tmp_path / "upload"
    assert main(["push", str(trained), "--repo_id", "biologist/odd-families", "--dry_run", str(dry)]) == 0
    written = sorted(p.relative_to(dry).as_posix() for p in files_below(dry))
    assert written == collect_upload_set(trained)
    assert "nothing was sent" in capsys.readouterr().out
    card = (dry / "README.md").read_text(encoding="utf-8")
    assert 'model="biologist/odd-families"' in card  # the repository id, where the card shows how to load
    assert str(trained) not in card
    result = pipeline("image-classification", model=str(dry))(Image.new("RGB", (30, 30)), top_k=10)
    labels = json.loads((trained / "config.json").read_text())["id2label"].values()
    assert sorted(row["label"] for row in result) == sorted(labels)
    with pytest.raises(PublishError, match="not empty"):
        push_model_folder(trained, repo_id="a/b", dry_run=dry)


def test_offline_push_fails_in_seconds_with_one_line(trained, capsys):
    started = time.monotonic()
    assert main(["push", str(trained), "--repo_id", "someone/model"]) == 1
    assert time.monotonic() - started < 10
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "HF_HUB_OFFLINE" in error and "--dry_run" in error


@pytest.fixture
def reachable_hub(monkeypatch):
    import hf_classifier.hub.publish as publish

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(publish, "hub_reachable", lambda: True)


@pytest.mark.parametrize("status", [401, 403])
def test_unauthorised_push_is_one_clear_line(trained, reachable_hub, monkeypatch, capsys, status):
    def refuse(self, *args, **kwargs):
        response = SimpleNamespace(status_code=status, headers={}, request=None, url="https://huggingface.co")
        raise HfHubHTTPError(f"{status} Client Error", response=response)

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", refuse)
    assert main(["push", str(trained), "--repo_id", "someone/model"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"HTTP {status}" in error and "HF_TOKEN" in error


def test_push_calls_create_repo_and_upload_folder_with_the_upload_set(trained, reachable_hub, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)

    def create_branch(self, repo_id, **kwargs):
        calls["create_branch"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=None, **kwargs):
        calls["uploaded"] = sorted(
            p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()
        )
        calls["upload"] = (repo_id, revision, commit_message)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", create_repo)
    monkeypatch.setattr("huggingface_hub.HfApi.create_branch", create_branch)
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", upload_folder)
    url = push_model_folder(trained, repo_id="me/model", private=True, revision="v1", commit_message="first")
    assert url.endswith("/commit/abc")
    assert calls["create_repo"] == ("me/model", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["create_branch"][0] == "me/model"
    assert calls["upload"] == ("me/model", "v1", "first")
    assert calls["uploaded"] == collect_upload_set(trained)


def test_train_push_to_hub_offline_fails_before_training(tmp_path, vit_checkpoint):
    data = make_image_tree(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "run"
    started = time.monotonic()
    with pytest.raises(HubUnavailableError):
        train_run(
            out, data_dir=data, model_name_or_path=vit_checkpoint, push_to_hub=True, hub_model_id="me/model"
        )
    assert time.monotonic() - started < 10
    assert not (out / "model.safetensors").exists()


def test_experts_and_non_model_folders_are_refused_clearly(tmp_path):
    (tmp_path / "experts.json").write_text("{}")
    with pytest.raises(PublishError, match="experts folder"):
        collect_upload_set(tmp_path)
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(
        PublishError, match="not a trained model folder: preprocessor_config.json, model.safetensors"
    ):
        collect_upload_set(half)
    with pytest.raises(PublishError, match="is not a folder"):
        collect_upload_set(tmp_path / "missing")


def test_card_metadata_base_model_datasets_and_licence_fallback(trained, vit_checkpoint, tmp_path):
    """The card's `base_model`, `datasets` and `license` come from the run's summary; without a licence
    the card says `other` and tells the reader to check; the base model's own card supplies one."""
    import shutil

    from hf_classifier.hub.card import SUMMARY_FILE, base_model_license, render_model_card

    # The shared run: a local checkpoint (no Hub reference), Rare Species columns, --license given.
    data = ModelCard.load(trained / "README.md").data.to_dict()
    assert "base_model" not in data and data["datasets"] == ["imageomics/rare-species"]
    assert data["license"] == "cc-by-4.0"

    folder = tmp_path / "model"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("checkpoint-*"))
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    summary.update(base_model="google/vit-base-patch16-224", dataset_id="someone/beetles", license=None)
    (folder / SUMMARY_FILE).write_text(json.dumps(summary))
    card = render_model_card(folder)
    data = card.data.to_dict()
    assert data["base_model"] == "google/vit-base-patch16-224" and data["datasets"] == ["someone/beetles"]
    assert data["license"] == "other" and "pass `--license` when training" in card.text
    assert "https://huggingface.co/google/vit-base-patch16-224" in card.text

    # The licence fallback: the base checkpoint's own card, when there is one on disk.
    assert base_model_license(str(vit_checkpoint)) is None  # no README.md in that folder
    with_card = tmp_path / "base"
    shutil.copytree(vit_checkpoint, with_card)
    (with_card / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A base model\n")
    assert base_model_license(str(with_card)) == "apache-2.0"


@pytest.mark.parametrize("how", ["flag", "HF_TOKEN"])
def test_the_token_is_used_but_never_printed_or_logged(
    trained, reachable_hub, monkeypatch, capsys, caplog, how
):
    from huggingface_hub import get_token

    secret = "hf_PrintedNowhere0123456789abcdef"
    seen = {}

    def create_repo(self, repo_id, **kwargs):
        seen["token"] = self.token or get_token()  # what the request would authenticate with

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", create_repo)
    monkeypatch.setattr("huggingface_hub.HfApi.create_branch", lambda *args, **kwargs: None)
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", upload_folder)
    argv = ["push", str(trained), "--repo_id", "me/model"]
    if how == "flag":
        argv += ["--token", secret]
    else:
        monkeypatch.setenv("HF_TOKEN", secret)
    with caplog.at_level("DEBUG"):
        assert main(argv) == 0
    assert seen["token"] == secret
    captured = capsys.readouterr()
    assert "commit/abc" in captured.out + captured.err + caplog.text  # the run did report
    assert secret not in captured.out + captured.err + caplog.text
