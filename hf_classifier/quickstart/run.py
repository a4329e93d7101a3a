"""`hf-classifier quickstart`: the whole pipeline on an embedded, procedurally drawn data set.

No network needed: it writes a small Rare-Species-like folder (phylum_family folders, metadata.csv,
odd image formats, broken files), builds a small ViT from a config, fine-tunes it on the CPU,
evaluates it, predicts new photos, and says where everything is. With network, the same pipeline
runs on a real checkpoint (`--model_name_or_path google/vit-base-patch16-224-in21k`).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import ViTConfig, ViTImageProcessor

from hf_classifier.cli.arguments import ClassifierTrainingArguments, DataArguments, ModelArguments
from hf_classifier.evaluation.predictions import predict
from hf_classifier.quickstart.synthetic import FAMILIES, make_demo_dataset
from hf_classifier.training.run import train

logger = logging.getLogger(__name__)

TINY_VIT = {
    "image_size": 64,
    "patch_size": 8,
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 192,
}


@dataclass
class QuickstartArguments:
    output_dir: str = field(
        default="quickstart_output", metadata={"help": "Where data, model and predictions go."}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A real checkpoint to fine-tune (needs network or a local copy). Default: a small ViT "
            "built from a config, trained from scratch on the CPU."
        },
    )
    num_train_epochs: float = field(default=30, metadata={"help": "Training epochs."})
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Default: 2e-3 for the small ViT from scratch, 5e-5 for a checkpoint."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for the data and the training."})


@dataclass
class QuickstartResult:
    output_dir: Path
    model_dir: Path
    predictions: Path
    metrics: dict
    new_photo_accuracy: float
    chance: float


def write_tiny_vit(folder: Path) -> Path:
    """A ViT config + image processor (no weights): what `--from_config` builds from."""
    ViTConfig(**TINY_VIT).save_pretrained(folder)
    size = TINY_VIT["image_size"]
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def run_quickstart(args: QuickstartArguments) -> QuickstartResult:
    import datasets
    import transformers

    # A readable console: one line per epoch, no save/load progress bars.
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    out = Path(args.output_dir)
    data = make_demo_dataset(out / "data", seed=args.seed)
    # New photos the model never sees in training: a CSV with ids, like a user's field photos.
    new_photos = make_demo_dataset(
        out / "new_photos", counts=(8,) * len(FAMILIES), broken_files=False, seed=args.seed + 1, folders=False
    )
    logger.info(
        "Wrote the demo data set to %s (%d families, metadata.csv, broken files included).",
        data.root,
        len(FAMILIES),
    )

    from_scratch = args.model_name_or_path is None
    checkpoint = str(write_tiny_vit(out / "tiny-vit-config")) if from_scratch else args.model_name_or_path
    model_dir = out / "model"
    outcome = train(
        DataArguments(
            data_dir=str(data.root),
            label_column="family",
            skip_bad_images=True,
            augmentation="light",
            card_dataset_id="none",
            # The data is drawn anew on every run: its prepared copies belong with it, not in the user's cache.
            prepared_cache_dir=str(out / "prepared"),
        ),  # drawn data, not Rare Species
        ModelArguments(model_name_or_path=checkpoint, from_config=from_scratch),
        ClassifierTrainingArguments(
            output_dir=str(model_dir),
            num_train_epochs=args.num_train_epochs,
            learning_rate=args.learning_rate or (2e-3 if from_scratch else 5e-5),
            per_device_train_batch_size=32,
            warmup_steps=0.05,
            logging_steps=10,
            seed=args.seed,
            save_total_limit=1,
            report_to="none",
            disable_tqdm=True,
        ),
        concise_logs=True,
    )
    predictions = out / "predictions.csv"
    predict(str(model_dir), [str(new_photos.metadata_csv)], predictions, top_k=3)
    accuracy = _accuracy(predictions, new_photos.metadata_csv)
    return QuickstartResult(out, model_dir, predictions, outcome.metrics, accuracy, 1 / len(FAMILIES))


def _accuracy(predictions: Path, truth_csv: Path) -> float:
    with truth_csv.open(encoding="utf-8") as handle:
        truth = {row["rare_species_id"]: row["family"] for row in csv.DictReader(handle)}
    with predictions.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return sum(truth[row["id"]] == row["family"] for row in rows) / len(rows)


def summary(result: QuickstartResult) -> str:
    m = result.metrics
    lines = [
        "",
        "Quickstart finished.",
        f"  validation: accuracy {m.get('eval_accuracy', float('nan')):.3f}, "
        f"macro-F1 {m.get('eval_f1_macro', float('nan')):.3f} (chance: {result.chance:.3f})",
        f"  new photos: accuracy {result.new_photo_accuracy:.3f} on the images in {result.output_dir / 'new_photos'}",
        "",
        f"  data set          {result.output_dir / 'data'} (metadata.csv + phylum_family folders)",
        f"  fine-tuned model  {result.model_dir}",
        f"  model card        {result.model_dir / 'README.md'}",
        f"  metrics           {result.model_dir / 'eval_results.json'}",
        f"  splits            {result.model_dir / 'splits'}",
        f"  skipped images    {result.model_dir / 'bad_images.csv'}",
        f"  predictions       {result.predictions}",
        "",
        "Use the model:",
        f'  python -c "from transformers import pipeline; '
        f"print(pipeline('image-classification', model='{result.model_dir}')('some_photo.jpg'))\"",
        f"  hf-classifier predict --model {result.model_dir} --input photos/ --output predictions.csv",
    ]
    return "\n".join(lines)
