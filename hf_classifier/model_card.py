"""The model card (README.md): metadata the Hub indexes, and a body built from the run's real figures.

The template lives in the top-level `model_cards/` folder (shipped in the package as
`hf_classifier.model_cards`) and is rendered with `huggingface_hub.ModelCard`.
"""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .io_utils import write_text
from .sources import LABEL, ImageData
from .transforms import PreprocessSpec, describe_preset, spec_from_processor

TEMPLATE = "model_card.md"
CARD_FILE = "README.md"
RESULT_METRICS = (  # (metrics key, model-index metric type, display name, metric args)
    ("accuracy", "accuracy", "Accuracy", None),
    ("f1_macro", "f1", "Macro F1", {"average": "macro"}),
    ("f1_weighted", "f1", "Weighted F1", {"average": "weighted"}),
    ("top5_accuracy", "top_k_accuracy", "Top-5 accuracy", {"k": 5}),
)
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


RARE_SPECIES_ID = "imageomics/rare-species"


def card_dataset_id(data: ImageData, requested: str | None = None) -> str | None:
    """The Hub data set named in the card: `requested` ('none' for none), else the source's Hub id,
    else Rare Species when the metadata has its columns."""
    if requested:
        return None if requested.lower() == "none" else requested
    if data.source.get("dataset_name") and not Path(str(data.source["dataset_name"])).exists():
        return str(data.source["dataset_name"])
    columns = set(next(iter(data.splits.values())).column_names)
    return RARE_SPECIES_ID if "rare_species_id" in columns else None


def render_model_card(
    *,
    model: Any,
    processor: Any | None,
    base_model: str | None,
    data: ImageData,
    augmentation: str,
    training_args: Any,
    metrics: dict[str, float],
    training_seconds: float,
    model_ref: str,
    dataset_id: str | None = None,
    hardware: str | None = None,
    versions: dict[str, str] | None = None,
) -> ModelCard:
    labels = data.labels
    label_name = data.label_name
    dataset_id = card_dataset_id(data, dataset_id)
    rare_species = dataset_id is not None and "rare-species" in dataset_id
    model_name = Path(model_ref).name or "model"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        metrics=sorted({metric_type for _, metric_type, _, _ in RESULT_METRICS}),
        tags=["image-classification", "vision", "hf-classifier", model.config.model_type]
        + (["biology", "biodiversity"] if rare_species else []),
        model_name=model_name,
        eval_results=_eval_results(metrics, dataset_id or "imagefolder", dataset_id or "local image data"),
    )
    train_counts = Counter(labels[i] for i in data.splits["train"][LABEL])
    counts = sorted(train_counts.values())
    spec = spec_from_processor(processor) if processor is not None else None
    context = {
        "title": f"{model_name}: {label_name} from a photo",
        "summary": _summary(label_name, len(labels), base_model, metrics),
        "model_ref": model_ref,
        "label_name": label_name,
        "num_labels": len(labels),
        "intended_use": (
            f"suggesting the taxonomic {label_name} of an animal from a photo, among the {len(labels)} "
            "it was trained on, to help biologists and students sort and check photo collections."
            if rare_species
            else f"predicting the {label_name} shown in a photo, among the {len(labels)} classes it was trained on."
        ),
        "domain": (
            "Encyclopedia of Life photos (wildlife photography of many sizes and qualities)"
            if rare_species
            else "the training photos described below"
        ),
        "imbalance": {"smallest": counts[0], "largest": counts[-1], "ratio": f"{counts[-1] / counts[0]:.1f}"}
        if counts and counts[-1] > counts[0]
        else None,
        "data_description": _data_description(data),
        "splits": [{"name": name, "size": len(split)} for name, split in data.splits.items()],
        "skipped_images": data.skipped_images,
        "class_counts": [{"label": md_cell(label), "count": train_counts.get(label, 0)} for label in labels],
        "eval_preprocessing": describe_preprocessing(spec),
        "augmentation": augmentation,
        "augmentation_description": describe_preset(augmentation),
        "base_model": base_model,
        "hyperparameters": _hyperparameters(training_args, augmentation),
        "results": _result_rows(metrics, data),
        "hardware": hardware or describe_hardware(),
        "training_time": _duration(training_seconds),
        "versions": versions or framework_versions(),
        "citation": RARE_SPECIES_CITATION if rare_species else "Please cite the source of the training data.",
    }
    return ModelCard.from_template(card_data, template_str=load_template(), **context)


def write_model_card(output_dir: str | Path, **kwargs: Any) -> Path:
    """Render the card for the run in `output_dir` and write `output_dir/README.md`."""
    output_dir = Path(output_dir)
    kwargs.setdefault("model_ref", str(output_dir))
    card = render_model_card(**kwargs)
    path = output_dir / CARD_FILE
    write_text(path, str(card))
    return path


def describe_hardware() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def framework_versions() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    from . import __version__

    return {
        "hf_classifier": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
    }


def md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def describe_preprocessing(spec: PreprocessSpec | None) -> str:
    if spec is None:
        return "the checkpoint's own image processor (`preprocessor_config.json`)."
    from PIL import Image

    resample = Image.Resampling(spec.resample).name.lower()
    if spec.resize_to:
        steps = f"resize to {spec.resize_to[1]}×{spec.resize_to[0]} ({resample})"
    else:
        steps = f"resize the shorter side to {spec.shortest_edge} px ({resample})"
    if spec.crop_to:
        steps += f", centre crop {spec.crop_to[1]}×{spec.crop_to[0]}"
    mean = ", ".join(f"{v:.3f}" for v in spec.mean)
    std = ", ".join(f"{v:.3f}" for v in spec.std)
    return f"{steps}; scale to [0, 1] and normalise with mean ({mean}), std ({std})."


def _summary(label_name: str, num_labels: int, base_model: str | None, metrics: dict[str, float]) -> str:
    origin = (
        f"a fine-tuned version of [`{base_model}`](https://huggingface.co/{base_model})"
        if base_model
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


def _data_description(data: ImageData) -> str:
    kind = data.source.get("kind")
    total = sum(len(split) for split in data.splits.values())
    where = {
        "data_dir": "image folders (one folder per class)",
        "metadata_csv": "images listed in a metadata CSV",
        "dataset": f"the data set `{data.source.get('dataset_name')}`",
    }.get(kind, "local images")
    return (
        f"{total} images from {where}, labelled with their {data.label_name} ({len(data.labels)} classes). "
        "The splits are stratified by class; the exact file lists are in `splits/` next to the model."
    )


def _hyperparameters(args: Any, augmentation: str) -> list[tuple[str, Any]]:
    devices = max(1, getattr(args, "world_size", 1))
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * devices
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return [
        ("learning rate", args.learning_rate),
        (
            "effective batch size",
            f"{effective} ({args.per_device_train_batch_size} per device × "
            f"{args.gradient_accumulation_steps} accumulation × {devices} device(s))",
        ),
        ("epochs", args.num_train_epochs),
        ("optimizer", f"{_value(args.optim)} (weight decay {args.weight_decay})"),
        ("learning-rate schedule", f"{_value(args.lr_scheduler_type)}, warmup {args.warmup_steps}"),
        ("gradient clipping (max norm)", args.max_grad_norm),
        ("label smoothing", args.label_smoothing_factor),
        ("precision", precision),
        ("augmentation", augmentation),
        ("seed", args.seed),
    ]


def _value(option: Any) -> str:
    return str(getattr(option, "value", option))


def _result_rows(metrics: dict[str, float], data: ImageData) -> list[dict[str, str]]:
    rows = []
    for prefix, split in (("eval", "validation"), ("test", "test")):
        if f"{prefix}_accuracy" not in metrics:
            continue
        row = {"split": split, "size": len(data.splits[split]) if split in data.splits else ""}
        for key, _, _, _ in RESULT_METRICS:
            value = metrics.get(f"{prefix}_{key}")
            row[key] = f"{value:.4f}" if value is not None else "–"
        rows.append(row)
    return rows


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


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"
