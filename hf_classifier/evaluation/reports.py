"""`hf-classifier evaluate`: metrics on every image the data lists, error analysis, pictures.

Outputs (OUTPUT_DIR): metrics.json, classification_report.csv, predictions.csv, confusion_matrix.png
(row-normalised, ordered by phylum, with the most frequent confusions), misclassified.png (the most
confident mistakes first), summary.md, and bad_images.csv when some images could not be read.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Value
from PIL import Image, ImageDraw

from hf_classifier.data.images import ImageSource, open_image, relative_or_absolute
from hf_classifier.data.sources import FILE_PATH, IMAGE, LABEL, DataSourceError, ImageData, find_id_column
from hf_classifier.evaluation.inference import load_predictor
from hf_classifier.evaluation.metrics import TOP_K, classification_metrics, load_metric
from hf_classifier.evaluation.plots import INK, font, heatmap, image_grid, side_by_side
from hf_classifier.evaluation.predictions import classify
from hf_classifier.hierarchy.levels import label_to_phylum
from hf_classifier.hub.card import md_cell
from hf_classifier.io_utils import write_csv, write_json, write_png, write_text
from hf_classifier.training.distributed import is_main_process

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
TOP_CONFUSIONS = 20


def classification_report(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    labels: Sequence[str],
    phylum_of: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The figures of `metrics.json` for true label indices and predicted probabilities (rows: images)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probabilities.argmax(axis=1)
    compute = {"predictions": y_pred, "references": y_true}
    report: dict[str, Any] = {
        "num_images": int(len(y_true)),
        **classification_metrics(probabilities, y_true),  # the figures training reports, and top-5
        "precision_macro": load_metric("precision").compute(**compute, average="macro")["precision"],
        "recall_macro": load_metric("recall").compute(**compute, average="macro")["recall"],
    }
    every = list(range(len(labels)))
    per_class_values = {
        name: load_metric(name).compute(**compute, average=None, labels=every)[name]
        for name in ("precision", "recall", "f1")
    }
    support = np.bincount(y_true, minlength=len(labels))
    report["per_class"] = {
        label: {
            "precision": per_class_values["precision"][i],
            "recall": per_class_values["recall"][i],
            "f1": per_class_values["f1"][i],
            "support": int(support[i]),
            **({"phylum": phylum_of.get(label)} if phylum_of else {}),
        }
        for i, label in enumerate(labels)
    }
    errors = y_true != y_pred
    confusions = Counter(zip(y_true[errors].tolist(), y_pred[errors].tolist(), strict=True))
    report["top_confusions"] = [
        {"true": labels[t], "predicted": labels[p], "count": n, "share_of_true_class": n / max(1, support[t])}
        for (t, p), n in confusions.most_common(TOP_CONFUSIONS)
    ]
    if phylum_of:
        phyla = sorted(set(phylum_of.values()))
        to_phylum = np.array([phyla.index(phylum_of[label]) for label in labels])
        true_phylum, pred_phylum = to_phylum[y_true], to_phylum[y_pred]
        phylum_compute = {"predictions": pred_phylum, "references": true_phylum}
        report["phylum"] = {
            "accuracy": load_metric("accuracy").compute(**phylum_compute)["accuracy"],
            "f1_macro": load_metric("f1").compute(**phylum_compute, average="macro")["f1"],
        }
        crossing = int(np.sum(errors & (true_phylum != pred_phylum)))
        report["cross_phylum_errors"] = {
            "count": crossing,
            "share_of_errors": crossing / max(1, int(errors.sum())),
            "rate": crossing / max(1, len(y_true)),
        }
    return report


class _LazyImages(Sequence):
    """The image column of every split, read row by row (Hub images carry their bytes)."""

    def __init__(self, data: ImageData):
        self.data = data
        self.rows = [(name, i) for name, split in data.splits.items() for i in range(len(split))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ImageSource:
        split, row = self.rows[index]
        return self.data.splits[split][row][IMAGE]


def _image_sources(data: ImageData) -> Sequence[ImageSource]:
    if all(split.features[IMAGE] == Value("string") for split in data.splits.values()):
        return [path for split in data.splits.values() for path in split[IMAGE]]
    return _LazyImages(data)


def _ids(data: ImageData) -> list[str]:
    ids = []
    for name, split in data.splits.items():
        column = find_id_column(split.column_names) or (
            FILE_PATH if FILE_PATH in split.column_names else None
        )
        if column:
            ids.extend(str(v) for v in split[column])
        elif split.features[IMAGE] == Value("string"):
            ids.extend(relative_or_absolute(p, data.image_root) for p in split[IMAGE])
        else:
            ids.extend(f"{name}/{i}" for i in range(len(split)))
    return ids


def evaluate_model(
    model: str | Path,
    data: ImageData,
    output_dir: str | Path,
    *,
    tta: str = "none",
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
    max_misclassified: int = 48,
    progress: bool = True,
    precision: str = "auto",
    distributed: bool = False,
) -> dict[str, Any]:
    """Evaluate `model` (a model or experts folder) on every image of every split of `data`. Under
    several processes (`distributed`), the main process gets the report and writes it; the others
    return an empty one."""
    predictor = load_predictor(model)
    probabilities, errors = classify(
        predictor,
        _image_sources(data),
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        tta=tta,
        precision=precision,
        progress=progress,
        distributed=distributed,
        top_k=TOP_K,  # all that the report uses: the argmax and the top-5 accuracy
    )
    if not is_main_process():  # the rows were gathered to the main process only
        return {}
    return report_predictions(
        probabilities,
        errors,
        data,
        output_dir,
        labels=list(predictor.labels),
        phylum_of=predictor.phylum_of or label_to_phylum(data),
        model_name=str(model),
        tta=tta,
        max_misclassified=max_misclassified,
    )


def report_predictions(
    probabilities: np.ndarray,
    errors: Sequence[str],
    data: ImageData,
    output_dir: str | Path,
    *,
    labels: Sequence[str],
    phylum_of: dict[str, str] | None,
    model_name: str,
    tta: str = "none",
    max_misclassified: int = 48,
) -> dict[str, Any]:
    """metrics.json, the reports and the pictures in `output_dir`, from a model's probabilities over
    `labels` for every image of every split of `data`, in order (NaN rows where `errors` names why
    an image could not be read). `evaluate` feeds it the predictions it computes; `train` the ones
    its final evaluation computed, so that every figure of a run comes from one pass."""
    output_dir = Path(output_dir)
    model_labels = list(labels)
    index_of = {label: i for i, label in enumerate(model_labels)}
    true_names = [
        name
        for split in data.splits.values()
        for name in (split.features[LABEL].int2str(i) for i in split[LABEL])
    ]
    if len(probabilities) != len(true_names) or len(errors) != len(true_names):
        raise ValueError(
            f"{len(probabilities)} predictions and {len(errors)} error entries for {len(true_names)} images."
        )
    sources = _image_sources(data)
    ids = _ids(data)

    unknown = Counter(name for name in true_names if name not in index_of)
    if unknown:
        logger.warning(
            "%d image(s) have labels the model does not know (%s) and are not scored.",
            sum(unknown.values()),
            ", ".join(sorted(unknown)[:5]),
        )
    scored = [
        i
        for i, (name, error) in enumerate(zip(true_names, errors, strict=True))
        if not error and name in index_of
    ]
    if not scored:
        raise DataSourceError(
            f"No image could be scored with {model_name}: of {len(true_names)} listed, "
            f"{sum(1 for e in errors if e)} could not be read and {sum(unknown.values())} have labels the "
            f"model does not know (e.g. {', '.join(sorted(unknown)[:3]) or '-'}; it knows "
            f"{', '.join(model_labels[:3])}, ...). Check --label_column and the data's paths."
        )
    y_true = np.array([index_of[true_names[i]] for i in scored])
    probs = probabilities[scored]
    report = classification_report(y_true, probs, model_labels, phylum_of)
    report.update(
        {
            "model": model_name,
            "tta": tta,
            "images_listed": len(true_names),
            "unreadable": sum(1 for e in errors if e),
            "unknown_labels": dict(unknown),
        }
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / METRICS_FILE, report)
    _write_classification_report(output_dir / "classification_report.csv", report)
    y_pred = probs.argmax(axis=1)
    scores = probs[np.arange(len(scored)), y_pred]
    write_csv(
        output_dir / "predictions.csv",
        ["id", "true", "predicted", "score", "correct"]
        + (["true_phylum", "predicted_phylum"] if phylum_of else []),
        [
            [ids[i], model_labels[t], model_labels[p], f"{s:.6f}", int(t == p)]
            + ([phylum_of.get(model_labels[t], ""), phylum_of.get(model_labels[p], "")] if phylum_of else [])
            for i, t, p, s in zip(scored, y_true, y_pred, scores, strict=True)
        ],
    )
    bad = [(ids[i], errors[i]) for i in range(len(errors)) if errors[i]]
    if bad:
        write_csv(output_dir / "bad_images.csv", ["id", "reason"], bad)
    write_png(
        output_dir / "confusion_matrix.png",
        confusion_matrix_picture(y_true, y_pred, model_labels, phylum_of, report),
    )
    wrong = [k for k in np.argsort(-scores, kind="stable") if y_true[k] != y_pred[k]][:max_misclassified]
    write_png(
        output_dir / "misclassified.png",
        misclassified_picture(
            [sources[scored[k]] for k in wrong],
            [(model_labels[y_true[k]], model_labels[y_pred[k]], float(scores[k])) for k in wrong],
        ),
    )
    write_text(output_dir / "summary.md", summary_markdown(report, model_labels, phylum_of))
    return report


def evaluate_splits(
    model: str | Path, data: ImageData, output_dir: str | Path, **options: Any
) -> dict[str, dict[str, Any]]:
    """`evaluate_model` on the validation and the test split (those `data` has), each into
    `output_dir/evaluation_<split>/`; the reports by split."""
    return {
        split: evaluate_model(model, data.only(split), Path(output_dir) / f"evaluation_{split}", **options)
        for split in ("validation", "test")
        if split in data.splits
    }


def _write_classification_report(path: Path, report: dict[str, Any]) -> None:
    rows = [
        [
            label,
            values.get("phylum", ""),
            f"{values['precision']:.4f}",
            f"{values['recall']:.4f}",
            f"{values['f1']:.4f}",
            values["support"],
        ]
        for label, values in report["per_class"].items()
    ]
    rows.sort(key=lambda row: (row[1], row[0]))
    write_csv(path, ["label", "phylum", "precision", "recall", "f1", "support"], rows)


def confusion_matrix_picture(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: Sequence[str],
    phylum_of: dict[str, str] | None,
    report: dict[str, Any],
) -> Image.Image:
    """Row-normalised confusion matrix, classes ordered by phylum then name, beside the top confusions."""
    order = sorted(range(len(labels)), key=lambda i: ((phylum_of or {}).get(labels[i], ""), labels[i]))
    position = {index: k for k, index in enumerate(order)}
    matrix = np.zeros((len(labels), len(labels)))
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[position[t], position[p]] += 1
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    accuracy = report["accuracy"]
    picture = heatmap(
        matrix,
        [labels[i] for i in order],
        title=f"Confusion matrix (row-normalised; accuracy {accuracy:.3f}, macro-F1 {report['f1_macro']:.3f})",
        group_of=[phylum_of[labels[i]] for i in order] if phylum_of else None,
        cell=max(4, min(28, 2400 // max(1, len(labels)))),
    )
    lines = ["Most frequent confusions", "(true -> predicted: count, share of the true class)", ""]
    lines += [
        f"{c['true']} -> {c['predicted']}: {c['count']} ({c['share_of_true_class']:.0%})"
        for c in report["top_confusions"]
    ] or ["none"]
    panel = Image.new("RGB", (420, 40 + 18 * len(lines)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for k, line in enumerate(lines):
        draw.text((10, 12 + 18 * k), line, fill=INK, font=font(14 if k == 0 else 12))
    return side_by_side([picture, panel])


def misclassified_picture(
    sources: Sequence[ImageSource],
    captions: Sequence[tuple[str, str, float]],
    per_row: int = 8,
    thumb: int = 128,
) -> Image.Image:
    """Wrong predictions, the most confident first: the image, its true and predicted label, the score."""
    cells = []
    for source, (true, predicted, score) in zip(sources, captions, strict=True):
        try:
            picture = open_image(source, draft_size=(thumb * 2, thumb * 2))
        except Exception:  # noqa: BLE001 - a picture that cannot be shown leaves its cell empty
            picture = None
        cells.append((picture, f"true: {true}\npred: {predicted}\nscore {score:.2f}"))
    rows = [("", cells[i : i + per_row]) for i in range(0, len(cells), per_row)] or [
        ("", [(None, "no mistakes")])
    ]
    colours = [[(40, 40, 40)] * len(row_cells) for _, row_cells in rows]
    return image_grid(
        rows,
        thumb=thumb,
        row_title_width=8,
        caption_lines=3,
        caption_colors=colours,
        title=f"Misclassified images, most confident mistakes first ({len(cells)} shown)",
    )


def summary_markdown(report: dict[str, Any], labels: Sequence[str], phylum_of: dict[str, str] | None) -> str:
    figures = [
        ("accuracy", report["accuracy"]),
        ("macro-F1", report["f1_macro"]),
        ("weighted-F1", report["f1_weighted"]),
        ("macro precision", report["precision_macro"]),
        ("macro recall", report["recall_macro"]),
    ]
    if f"top{TOP_K}_accuracy" in report:
        figures.append((f"top-{TOP_K} accuracy", report[f"top{TOP_K}_accuracy"]))
    lines = [
        f"# Evaluation of `{report['model']}`",
        "",
        f"{report['num_images']} images scored of {report['images_listed']} listed"
        f" ({report['unreadable']} unreadable, {sum(report['unknown_labels'].values())} with labels the "
        f"model does not know); test-time augmentation: {report['tta']}.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value:.4f} |" for name, value in figures]
    if "phylum" in report:
        crossing = report["cross_phylum_errors"]
        lines += [
            f"| phylum accuracy | {report['phylum']['accuracy']:.4f} |",
            f"| phylum macro-F1 | {report['phylum']['f1_macro']:.4f} |",
            "",
            f"{crossing['count']} of the errors ({crossing['share_of_errors']:.0%}) put the image in another phylum.",
        ]
    weakest = sorted(
        (
            (values["f1"], label, values)
            for label, values in report["per_class"].items()
            if values["support"] > 0
        ),
        key=lambda item: (item[0], item[1]),
    )[:10]
    lines += [
        "",
        "## The ten weakest classes (lowest F1)",
        "",
        "| class | phylum | F1 | precision | recall | images |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {md_cell(label)} | {md_cell(values.get('phylum', ''))} | {values['f1']:.3f} | "
        f"{values['precision']:.3f} | {values['recall']:.3f} | {values['support']} |"
        for _, label, values in weakest
    ]
    lines += [
        "",
        "## Most frequent confusions",
        "",
        "| true | predicted | count | share of the true class |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {md_cell(c['true'])} | {md_cell(c['predicted'])} | {c['count']} | {c['share_of_true_class']:.0%} |"
        for c in report["top_confusions"][:10]
    ]
    lines += [
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![misclassified images](misclassified.png)",
        "",
    ]
    return "\n".join(lines)
