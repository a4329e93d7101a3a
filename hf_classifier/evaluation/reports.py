"""`hf-classifier evaluate`: metrics on every image the data lists, error analysis, pictures.

Outputs (OUTPUT_DIR): metrics.json, classification_report.csv, predictions.csv, confusion_matrix.png
(row-normalised, ordered by parent label when there is one, with the most frequent confusions), misclassified.png (the most
confident mistakes first), summary.md, and bad_images.csv when some images could not be read.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Value
from PIL import Image, ImageDraw

from hf_classifier.data.images import ImageSource, open_image, relative_or_absolute
from hf_classifier.data.resolve import find_id_column
from hf_classifier.data.schema import FILE_PATH, IMAGE, LABEL, DataSourceError, ImageData
from hf_classifier.evaluation.inference import InferenceOptions, classify, load_predictor
from hf_classifier.evaluation.metrics import (
    PER_CLASS,
    TOP_K,
    accuracy,
    class_counts,
    classification_metrics,
    macro_average,
    macro_f1,
    weakest_classes,
)
from hf_classifier.evaluation.plots import INK, font, heatmap, image_grid, side_by_side
from hf_classifier.hierarchy import ParentLabels
from hf_classifier.hierarchy.levels import parent_labels
from hf_classifier.io_utils import write_csv, write_json, write_png, write_text
from hf_classifier.training.distributed import is_main_process

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
EVALUATION_OPTIONS = InferenceOptions(batch_size=64, progress=True)
TOP_CONFUSIONS = 20


def md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def classification_report(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    labels: Sequence[str],
    parents: ParentLabels | None = None,
) -> dict[str, Any]:
    """The figures of `metrics.json` for true label indices and predicted probabilities (rows: images);
    with `parents`, the same at the parent level, under the parent column's name."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probabilities.argmax(axis=1)
    counts = class_counts(y_pred, y_true, len(labels))
    per_class_values = {name: score(counts) for name, score in PER_CLASS.items()}
    report: dict[str, Any] = {
        "num_images": int(len(y_true)),
        **classification_metrics(probabilities, y_true),  # the figures training reports, and top-5
        # Averaged over the classes that occur, as f1_macro is.
        "precision_macro": float(macro_average(per_class_values["precision"], counts)),
        "recall_macro": float(macro_average(per_class_values["recall"], counts)),
    }
    support = counts.support.astype(int)
    report["per_class"] = {
        label: {
            "precision": float(per_class_values["precision"][i]),
            "recall": float(per_class_values["recall"][i]),
            "f1": float(per_class_values["f1"][i]),
            "support": int(support[i]),
            **({parents.column: parents.of.get(label)} if parents else {}),
        }
        for i, label in enumerate(labels)
    }
    errors = y_true != y_pred
    confusions = Counter(zip(y_true[errors].tolist(), y_pred[errors].tolist(), strict=True))
    report["top_confusions"] = [
        {"true": labels[t], "predicted": labels[p], "count": n, "share_of_true_class": n / max(1, support[t])}
        for (t, p), n in confusions.most_common(TOP_CONFUSIONS)
    ]
    if parents:
        to_parent = np.array(parents.indices(labels))
        true_parent, pred_parent = to_parent[y_true], to_parent[y_pred]
        report["parent_column"] = parents.column  # which key below holds the parent-level figures
        report[parents.column] = {
            "accuracy": accuracy(pred_parent, true_parent),
            "f1_macro": float(macro_f1(true_parent, pred_parent, int(to_parent.max()) + 1)[0]),
        }
        crossing = int(np.sum(errors & (true_parent != pred_parent)))
        report[f"cross_{parents.column}_errors"] = {
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
    options: InferenceOptions | None = None,
    *,
    max_misclassified: int = 48,
    parent_column: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate `model` (a model or experts folder) on every image of every split of `data`, classified
    as `options` say (default: batches of 64, with a progress bar; `overrides`, e.g. `batch_size=8`,
    replace some of them). The parent labels are the model's own, else `parent_column`'s in `data`.
    Under several processes (`distributed`), the main process gets the report
    and writes it; the others return an empty one."""
    options = replace(options or EVALUATION_OPTIONS, **overrides)
    predictor = load_predictor(model)
    # The top-5 rows are all that the report uses: the argmax and the top-5 accuracy.
    probabilities, errors = classify(predictor, _image_sources(data), options, top_k=TOP_K)
    if not is_main_process():  # the rows were gathered to the main process only
        return {}
    return report_predictions(
        probabilities,
        errors,
        data,
        output_dir,
        labels=list(predictor.labels),
        parents=predictor.parents or parent_labels(data, parent_column),
        model_name=str(model),
        tta=options.tta,
        max_misclassified=max_misclassified,
    )


def report_predictions(
    probabilities: np.ndarray,
    errors: Sequence[str],
    data: ImageData,
    output_dir: str | Path,
    *,
    labels: Sequence[str],
    parents: ParentLabels | None,
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
    report = classification_report(y_true, probs, model_labels, parents)
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
    _write_classification_report(output_dir / "classification_report.csv", report, parents)
    y_pred = probs.argmax(axis=1)
    scores = probs[np.arange(len(scored)), y_pred]
    write_csv(
        output_dir / "predictions.csv",
        ["id", "true", "predicted", "score", "correct"]
        + ([f"true_{parents.column}", f"predicted_{parents.column}"] if parents else []),
        [
            [ids[i], model_labels[t], model_labels[p], f"{s:.6f}", int(t == p)]
            + ([parents.of.get(model_labels[t], ""), parents.of.get(model_labels[p], "")] if parents else [])
            for i, t, p, s in zip(scored, y_true, y_pred, scores, strict=True)
        ],
    )
    bad = [(ids[i], errors[i]) for i in range(len(errors)) if errors[i]]
    if bad:
        write_csv(output_dir / "bad_images.csv", ["id", "reason"], bad)
    write_png(
        output_dir / "confusion_matrix.png",
        confusion_matrix_picture(y_true, y_pred, model_labels, parents, report),
    )
    wrong = [k for k in np.argsort(-scores, kind="stable") if y_true[k] != y_pred[k]][:max_misclassified]
    write_png(
        output_dir / "misclassified.png",
        misclassified_picture(
            [sources[scored[k]] for k in wrong],
            [(model_labels[y_true[k]], model_labels[y_pred[k]], float(scores[k])) for k in wrong],
        ),
    )
    write_text(output_dir / "summary.md", summary_markdown(report, model_labels, parents))
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


def _write_classification_report(path: Path, report: dict[str, Any], parents: ParentLabels | None) -> None:
    """One row per class, grouped by parent (a column named after it) when there is one."""
    rows = [
        [
            label,
            *([values[parents.column] or ""] if parents else []),
            f"{values['precision']:.4f}",
            f"{values['recall']:.4f}",
            f"{values['f1']:.4f}",
            values["support"],
        ]
        for label, values in report["per_class"].items()
    ]
    rows.sort(key=lambda row: (row[1], row[0]) if parents else row[0])
    header = ["label", *([parents.column] if parents else []), "precision", "recall", "f1", "support"]
    write_csv(path, header, rows)


def confusion_matrix_picture(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: Sequence[str],
    parents: ParentLabels | None,
    report: dict[str, Any],
) -> Image.Image:
    """Row-normalised confusion matrix, classes ordered by parent then name, beside the top confusions."""
    parent_of = parents.of if parents else {}
    order = sorted(range(len(labels)), key=lambda i: (parent_of.get(labels[i], ""), labels[i]))
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
        group_of=[parent_of[labels[i]] for i in order] if parents else None,
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


def _parent_cell(values: dict[str, Any], parents: ParentLabels | None) -> str:
    """A class's parent as a table cell (with its closing bar), or nothing when there is no parent."""
    return f" {md_cell(values[parents.column] or '')} |" if parents else ""


def summary_markdown(report: dict[str, Any], labels: Sequence[str], parents: ParentLabels | None) -> str:
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
    if parents:
        column = parents.column
        crossing = report[f"cross_{column}_errors"]
        lines += [
            f"| {column} accuracy | {report[column]['accuracy']:.4f} |",
            f"| {column} macro-F1 | {report[column]['f1_macro']:.4f} |",
            "",
            f"{crossing['count']} of the errors ({crossing['share_of_errors']:.0%}) put the image in another {column}.",
        ]
    lines += [
        "",
        "## The ten weakest classes (lowest F1)",
        "",
        f"| class |{f' {parents.column} |' if parents else ''} F1 | precision | recall | images |",
        "|---|" + ("---|" if parents else "") + "---|---|---|---|",
    ]
    lines += [
        f"| {md_cell(label)} |{_parent_cell(values, parents)} {values['f1']:.3f} | "
        f"{values['precision']:.3f} | {values['recall']:.3f} | {values['support']} |"
        for label, values in weakest_classes(report["per_class"])
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
