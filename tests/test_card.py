"""The model card's usage instructions work as written, with transformers alone."""

from __future__ import annotations

import csv
import json
import re

from helpers import textured_photo


def test_card_instructions_work_with_transformers_alone(trained_model, tmp_path, monkeypatch):
    text = (trained_model / "README.md").read_text(encoding="utf-8")
    usage = text[text.index("## How to use") : text.index("## Intended uses")]
    # Every package it tells readers to install exists on PyPI (hf-classifier is on no index).
    installs = re.findall(r"^pip install (.+)$", usage, re.MULTILINE)
    assert installs == ["transformers torch pillow"]
    assert "hf-classifier" not in usage

    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    names = ["a.jpg", "b.JPG", "more/c.png", "more/d.jpeg"]
    for seed, name in enumerate(names):
        textured_photo(seed).save(photos / name)
    textured_photo(9).save(tmp_path / "photo.jpg")
    (photos / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)

    blocks = re.findall(r"```python\n(.*?)```", usage, re.DOTALL)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "model card", "exec"), {})  # noqa: S102 - the card's own snippet, run as a reader would

    config = json.loads((trained_model / "config.json").read_text(encoding="utf-8"))
    phylum_of = config["hf_classifier"]["phylum_of"]
    with (tmp_path / "predictions.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["file"] for row in rows) == sorted(f"photos/{name}" for name in names)
    assert list(rows[0]) == ["file", "family", "phylum", "score"]
    for row in rows:
        assert row["family"] in config["label2id"]
        assert row["phylum"] == phylum_of[row["family"]]
        assert 0 < float(row["score"]) <= 1
