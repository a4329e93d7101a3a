"""The model card (README.md): the metadata the Hub indexes, and a body built from the run's figures.

The card is a function of the model folder alone, so `train` writes it and `push` re-renders it (with
the repo id in the usage examples, and any evaluation added since):

- config.json: labels, label name, label -> parent map (the coarser label column), architecture;
- preprocessor_config.json: how images are prepared;
- training_summary.json (written by `train`): data, augmentation, hyperparameters, compute, versions;
- eval_results.json / test_results.json: the figures of the best checkpoint;
- evaluation_<split>/metrics.json and confusion_matrix.png: parent-level figures, weakest classes.

The template is the top-level `model_cards/model_card.md` (shipped as `hf_classifier.model_cards`),
rendered with `huggingface_hub.ModelCard`.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_classifier.data.schema import LABEL, ImageData
from hf_classifier.evaluation.metrics import weakest_classes
from hf_classifier.evaluation.reports import md_cell
from hf_classifier.hierarchy import ParentLabels
from hf_classifier.io_utils import write_json, write_text
from hf_classifier.transforms.pipeline import PreprocessSpec, describe_preset, spec_from_processor

TEMPLATE = "model_card.md"
CARD_FILE = "README.md"
SUMMARY_FILE = "training_summary.json"
EVALUATION_SPLITS = (
    "test",
    "validation",
)  # preferred first: the card shows the test figures when there are some
RESULT_METRICS = (  # (metrics key, model-index metric type, display name, metric args)
    ("accuracy", "accuracy", "Accuracy", None),
    ("f1_macro", "f1", "Macro F1", {"average": "macro"}),
    ("f1_weighted", "f1", "Weighted F1", {"average": "weighted"}),
    ("top5_accuracy", "top_k_accuracy", "Top-5 accuracy", {"k": 5}),
)
RARE_SPECIES_ID = "imageomics/rare-species"
RARE_SPECIES_CITATION = """The training data is the Rare Species data set of the BioCLIP study (photos from the
Encyclopedia of Life):

```bibtex
@inproceedings{stevens2024bioclip,
  title     = {BioCLIP: A Vision Foundation Model for the Tree of Life},
  author    = {Stevens, Samuel and Wu, Jiaman and Thompson, Matthew J. and Campolongo, Elizabeth G. and
               Song, Chan Hee and Carlyn, David Edward and Dong, Li and Dahdul, Wasila M. and Stewart, Charles and
               Berger-Wolf, Tanya and Chao, Wei-Lun and Su, Yu},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}
```"""


def load_template() -> str:
    return (resources.files("hf_classifier.model_cards") / TEMPLATE).read_text(encoding="utf-8")


def card_dataset_id(data: ImageData, requested: str | None = None) -> str | None:
    """The Hub data set named in the card: `requested` ('none' for none), else the source's Hub id,
    else Rare Species when the metadata has its columns."""
    if requested:
        return None if requested.lower() == "none" else requested
    name = data.source.get("dataset_name")
    if name and not Path(str(name)).exists():
        return str(name)
    columns = set(next(iter(data.splits.values())).column_names)
    return RARE_SPECIES_ID if "rare_species_id" in columns else None


# ---------------------------------------------------------------------------------------------
# What train records for the card


def write_training_summary(
    output_dir: Path,
    *,
    data: ImageData,
    base_model: str | None,
    local_checkpoint: str | None = None,
    dataset_id: str | None,
    license: str | None,
    augmentation: str,
    training_args: Any,
    training_seconds: float,
) -> Path:
    """Everything the card needs about the run that the model folder does not hold already.
    Curated on purpose: hyperparameter values only, no paths, no tokens."""
    labels = data.labels
    streamed = bool(data.source.get("streaming"))
    train_counts: dict[str, int] = {}
    if streamed:  # counted only as far as training read: the number of images drawn
        devices = max(1, getattr(training_args, "world_size", 1))
        drawn = training_args.max_steps * training_args.per_device_train_batch_size * devices
        drawn *= training_args.gradient_accumulation_steps
    else:
        counts = Counter(data.splits["train"][LABEL])
        train_counts = {label: counts[index] for index, label in enumerate(labels)}
    summary = {
        "base_model": base_model,
        "local_checkpoint": local_checkpoint,
        "dataset_id": dataset_id,
        "license": license,
        "data": {
            "kind": data.source.get("kind"),
            "label_name": data.label_name,
            "splits": {
                name: drawn if streamed and name == "train" else len(split)
                for name, split in data.splits.items()
            },
            "streamed": streamed,
            "train_class_counts": train_counts,
            "skipped_images": data.skipped_images,
        },
        "augmentation": augmentation,
        "hyperparameters": _hyperparameters(training_args, augmentation),
        "training_seconds": round(training_seconds, 1),
        "hardware": describe_hardware(),
        "versions": framework_versions(),
    }
    path = output_dir / SUMMARY_FILE
    write_json(path, summary)
    return path


def _hyperparameters(args: Any, augmentation: str) -> list[list[Any]]:
    devices = max(1, getattr(args, "world_size", 1))
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * devices
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    rows = [
        ["fine-tuning strategy", args.finetune_strategy],
        ["learning rate", args.learning_rate],
        [
            "head learning rate",
            args.head_learning_rate if args.head_learning_rate is not None else args.learning_rate,
        ],
        ["layer-wise learning-rate decay", args.layer_decay],
        [
            "effective batch size",
            f"{effective} ({args.per_device_train_batch_size} per device x "
            f"{args.gradient_accumulation_steps} accumulation x {devices} device(s))",
        ],
        ["epochs", args.num_train_epochs],
        [
            "optimizer",
            f"{_value(args.optim)} (weight decay {args.weight_decay}, not on norms, biases, tokens)",
        ],
        ["learning-rate schedule", f"{_value(args.lr_scheduler_type)}, warmup {args.warmup_steps}"],
        ["gradient clipping (max norm)", args.max_grad_norm],
        ["label smoothing", args.label_smoothing_factor],
        ["class weighting", args.class_weighting],
        ["balanced sampler", args.balanced_sampler],
        ["mixup / cutmix alpha", f"{args.mixup_alpha} / {args.cutmix_alpha}"],
        ["EMA decay", args.ema_decay or "off"],
        ["label hierarchy", args.hierarchy],
        ["precision", precision],
        ["augmentation", augmentation],
        ["seed", args.seed],
    ]
    if args.finetune_strategy in ("freeze_then_unfreeze", "gradual_unfreeze"):
        rows.insert(1, ["head-only epochs", args.freeze_epochs])
    return rows


def _value(option: Any) -> str:
    return str(getattr(option, "value", option))


def describe_hardware() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def framework_versions() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    from hf_classifier import __version__

    return {
        "hf_classifier": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
    }


def base_model_license(base_model: str | None) -> str | None:
    """The base checkpoint's license, from its own card when it is on disk (local folder or Hub cache)."""
    if not base_model:
        return None
    try:
        local = Path(base_model) / CARD_FILE
        if local.is_file():
            return ModelCard.load(local).data.license
        from huggingface_hub import hf_hub_download

        return ModelCard.load(hf_hub_download(base_model, CARD_FILE, local_files_only=True)).data.license
    except Exception:  # noqa: BLE001 - no card on disk: the license is simply unknown
        return None


# ---------------------------------------------------------------------------------------------
# Rendering


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _evaluations(model_dir: Path) -> dict[str, dict]:
    found = {}
    for split in EVALUATION_SPLITS:
        metrics = _read_json(model_dir / f"evaluation_{split}" / "metrics.json")
        if metrics:
            found[split] = metrics
    return found


def render_model_card(model_dir: str | Path, model_ref: str | None = None) -> ModelCard:
    """The card of the trained model in `model_dir`; `model_ref` (a repo id) goes in the examples."""
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    extra = getattr(config, "hf_classifier", {}) or {}
    labels = [config.id2label[i] for i in range(config.num_labels)]
    label_name = extra.get("label_name", "label")
    parents = ParentLabels.from_config(extra)
    parent_of = parents.of if parents else {}
    summary = _read_json(model_dir / SUMMARY_FILE) or {}
    data = summary.get("data", {})
    base_model = summary.get("base_model")
    dataset_id = summary.get("dataset_id")
    rare_species = bool(dataset_id and "rare-species" in dataset_id)
    taxonomic = rare_species or bool(parents and parents.taxonomic)  # photos of living things
    model_ref = model_ref or str(model_dir)
    model_name = model_ref.rstrip("/").split("/")[-1] or "model"

    metrics = {
        **(_read_json(model_dir / "eval_results.json") or {}),
        **(_read_json(model_dir / "test_results.json") or {}),
    }
    evaluations = _evaluations(model_dir)
    shown_split = next(iter(evaluations), None)
    shown = evaluations.get(shown_split) if shown_split else None

    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        license=summary.get("license") or "other",
        metrics=sorted({metric_type for _, metric_type, _, _ in RESULT_METRICS}),
        tags=["image-classification", "vision", "hf-classifier", config.model_type]
        + (["biology", "biodiversity"] if taxonomic else []),
        model_name=model_name,
        eval_results=_eval_results(metrics, dataset_id or "imagefolder", dataset_id or "local image data"),
    )
    train_counts = data.get("train_class_counts") or {}
    counts = sorted(v for v in train_counts.values() if v)
    context = {
        "title": f"{model_name}: {label_name} from a photo",
        "summary": _summary(label_name, len(labels), base_model, metrics, summary.get("local_checkpoint")),
        "model_ref": model_ref,
        "label_name": label_name,
        "num_labels": len(labels),
        "intended_use": (
            f"suggesting the taxonomic {label_name} of an animal from a photo, among the {len(labels)} "
            "it was trained on, to help biologists and students sort and check photo collections."
            if taxonomic
            else f"predicting the {label_name} shown in a photo, among the {len(labels)} classes it was trained on."
        ),
        "domain": "Encyclopedia of Life photos (wildlife photography of many sizes and qualities)"
        if rare_species
        else "the training photos described below",
        "imbalance": {"smallest": counts[0], "largest": counts[-1], "ratio": f"{counts[-1] / counts[0]:.1f}"}
        if counts and counts[-1] > counts[0]
        else None,
        "license_note": None
        if summary.get("license")
        else "The license is not set (pass `--license` when training); check the base model's and the data's licenses.",
        "data_description": _data_description(data, label_name, len(labels)),
        "splits": [{"name": name, "size": size} for name, size in (data.get("splits") or {}).items()],
        "skipped_images": data.get("skipped_images", 0),
        "class_counts": [
            {
                "label": md_cell(label),
                "count": train_counts.get(label, 0),
                "parent": md_cell(parent_of.get(label, "")),
            }
            for label in labels
        ],
        "parent": parents.column if parents else None,
        "parent_key": f"{parents.column}_of" if parents else None,
        "eval_preprocessing": describe_preprocessing(_processor_spec(model_dir)),
        "augmentation": summary.get("augmentation", "light"),
        "augmentation_description": describe_preset(summary.get("augmentation", "light")),
        "base_model": base_model,
        "local_checkpoint": summary.get("local_checkpoint"),
        "hyperparameters": [(name, md_cell(value)) for name, value in summary.get("hyperparameters", [])],
        "results": _result_rows(metrics, data.get("splits") or {}),
        "evaluation_split": shown_split,
        "parent_results": shown.get(parents.column) if shown and parents else None,
        "cross_parent": shown.get(f"cross_{parents.column}_errors") if shown and parents else None,
        "weakest": _weakest(shown, parents) if shown else [],
        "confusions": [
            {**c, "true": md_cell(c["true"]), "predicted": md_cell(c["predicted"])}
            for c in (shown.get("top_confusions", [])[:5] if shown else [])
        ],
        "confusion_matrix": f"evaluation_{shown_split}/confusion_matrix.png"
        if shown_split and (model_dir / f"evaluation_{shown_split}" / "confusion_matrix.png").is_file()
        else None,
        # Without the run's summary, the machine that renders the card is not the one that trained.
        "hardware": summary.get("hardware") or "not recorded",
        "training_time": _duration(summary.get("training_seconds")),
        "versions": summary.get("versions") or framework_versions(),
        "citation": RARE_SPECIES_CITATION if rare_species else "Please cite the source of the training data.",
    }
    return ModelCard.from_template(card_data, template_str=load_template(), **context)


def write_model_card(model_dir: str | Path, model_ref: str | None = None) -> Path:
    """Render the card of `model_dir` and write `model_dir/README.md` (atomically)."""
    model_dir = Path(model_dir)
    path = model_dir / CARD_FILE
    write_text(path, str(render_model_card(model_dir, model_ref)))
    return path


def _processor_spec(model_dir: Path) -> PreprocessSpec | None:
    from hf_classifier.models.build import load_image_processor

    try:
        return spec_from_processor(load_image_processor(str(model_dir)))
    except OSError:
        return None


def describe_preprocessing(spec: PreprocessSpec | None) -> str:
    if spec is None:
        return "the checkpoint's own image processor (`preprocessor_config.json`)."
    from PIL import Image

    resample = Image.Resampling(spec.resample).name.lower()
    if spec.resize_to:
        steps = f"resize to {spec.resize_to[1]}x{spec.resize_to[0]} ({resample})"
    else:
        steps = f"resize the shorter side to {spec.shortest_edge} px ({resample})"
    if spec.crop_to:
        steps += f", centre crop {spec.crop_to[1]}x{spec.crop_to[0]}"
    mean = ", ".join(f"{v:.3f}" for v in spec.mean)
    std = ", ".join(f"{v:.3f}" for v in spec.std)
    return f"{steps}; scale to [0, 1] and normalise with mean ({mean}), std ({std})."


def _summary(
    label_name: str,
    num_labels: int,
    base_model: str | None,
    metrics: dict[str, float],
    local_checkpoint: str | None = None,
) -> str:
    origin = (
        f"a fine-tuned version of [`{base_model}`](https://huggingface.co/{base_model})"
        if base_model
        else f"fine-tuned from the local checkpoint `{local_checkpoint}`"
        if local_checkpoint
        else "trained from random initialisation"
    )
    best = next(
        (
            f"{metrics[k]:.3f} {name} on the {split} split"
            for k, name, split in (
                ("test_f1_macro", "macro-F1", "test"),
                ("eval_f1_macro", "macro-F1", "validation"),
            )
            if k in metrics
        ),
        None,
    )
    return (
        f"An image classifier that predicts the **{label_name}** from a photo ({num_labels} classes), {origin}."
        + (f" It reaches {best}." if best else "")
    )


def _data_description(data: dict, label_name: str, num_labels: int) -> str:
    total = sum((data.get("splits") or {}).values())
    where = {
        "data_dir": "image folders (one folder per class)",
        "metadata_csv": "images listed in a metadata CSV",
        "dataset": "a data set from the Hugging Face Hub",
        "webdataset": "WebDataset shards",
    }.get(data.get("kind"), "local images")
    if data.get("streamed"):
        sizes = data.get("splits") or {}
        return (
            f"Streamed from {where}, labelled with their {label_name} ({num_labels} classes): training drew "
            f"{sizes.get('train', 0)} images from a shuffled stream; validation holds {sizes.get('validation', 0)} "
            "images of its own shards."
        )
    return (
        f"{total} images from {where}, labelled with their {label_name} ({num_labels} classes). "
        "The splits are stratified by class; the exact file lists stay with the training run (`splits/`)."
    )


def _result_rows(metrics: dict[str, float], split_sizes: dict[str, int]) -> list[dict[str, str]]:
    rows = []
    for prefix, split in (("eval", "validation"), ("test", "test")):
        if f"{prefix}_accuracy" not in metrics:
            continue
        row = {"split": split, "size": split_sizes.get(split, "")}
        for key, _, _, _ in RESULT_METRICS:
            value = metrics.get(f"{prefix}_{key}")
            row[key] = f"{value:.4f}" if value is not None else "-"
        rows.append(row)
    return rows


def _weakest(evaluation: dict, parents: ParentLabels | None) -> list[dict[str, Any]]:
    return [
        {
            "label": md_cell(label),
            "parent": md_cell((values.get(parents.column) or "") if parents else ""),
            "f1": f"{values['f1']:.3f}",
            "support": values["support"],
        }
        for label, values in weakest_classes(evaluation.get("per_class", {}))
    ]


def _eval_results(metrics: dict[str, float], dataset_type: str, dataset_name: str) -> list[EvalResult] | None:
    results = []
    for prefix, split in (("eval", "validation"), ("test", "test")):
        for key, metric_type, display, metric_args in RESULT_METRICS:
            value = metrics.get(f"{prefix}_{key}")
            if value is None:
                continue
            results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image Classification",
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=display,
                    metric_value=round(float(value), 4),
                    metric_args=metric_args,
                )
            )
    return results or None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"
