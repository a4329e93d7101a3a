"""`hf-classifier inspect`: look at the data before training on it.

One parallel pass (`data.scan`) reads every file once: content hash, header facts (format, mode, size,
EXIF orientation), and a reduced decode (JPEG at 1/8 scale; every byte is still read, so truncation
shows) that feeds the perceptual hash. Then: class counts (per parent label too), size statistics, odd files,
unreadable files, exact / near duplicates and label conflicts, as `report.json`, PNG plots and
contact sheets.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hf_classifier.data.duplicates import DEFAULT_NEAR_THRESHOLD, DuplicateGroups, find_duplicates
from hf_classifier.data.images import ImageSource, image_extensions, open_image, relative_or_absolute
from hf_classifier.data.scan import ImageScan, scan_rows
from hf_classifier.data.schema import IMAGE, LABEL, ImageData
from hf_classifier.evaluation.plots import bar_chart, color_map, histogram, image_grid, side_by_side
from hf_classifier.hierarchy import DEFAULT_PARENT_COLUMN, plural
from hf_classifier.hierarchy.levels import parent_labels
from hf_classifier.io_utils import write_json, write_png

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
CLASSES_PER_SHEET = 40


@dataclass
class InspectedData:
    """The data's rows in one flat list (all splits) with their facts and duplicate groups."""

    data: ImageData
    splits: list[str]
    rows: list[int]  # row within its split
    labels: list[str]
    paths: list[str]  # relative to the image root when below it; split/row for images held as bytes
    facts: list[ImageScan]
    duplicates: DuplicateGroups = field(repr=False)

    def source(self, index: int) -> ImageSource:
        return self.data.splits[self.splits[index]][self.rows[index]][IMAGE]


def scan_data(
    data: ImageData,
    *,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    num_workers: int | None = None,
    progress: bool = True,
) -> InspectedData:
    """Scan every image of every split once, with its hashes."""
    splits, rows, facts = [], [], []
    for split_name, row, scan in scan_rows(
        data, hashes=True, num_workers=num_workers, progress=progress, description="Inspecting images"
    ):
        splits.append(split_name)
        rows.append(row)
        facts.append(scan)
    labels = [name for split in data.splits.values() for name in split.features[LABEL].int2str(split[LABEL])]
    paths = [
        f"{split}/{row}" if f.path.startswith("<") else relative_or_absolute(f.path, data.image_root)
        for f, split, row in zip(facts, splits, rows, strict=True)
    ]
    duplicates = find_duplicates(
        [f.content_hash for f in facts],
        [f.perceptual_hash for f in facts],
        near_threshold,
        aspect_ratios=[f.width / f.height if f.width and f.height else None for f in facts],
    )
    return InspectedData(data, splits, rows, labels, paths, facts, duplicates)


# ---------------------------------------------------------------------------------------------
# The report


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {
        "min": round(float(array.min()), 4),
        "median": round(float(np.median(array)), 4),
        "max": round(float(array.max()), 4),
        "mean": round(float(array.mean()), 4),
    }


def _histogram(values: Sequence[float], edges: Sequence[float]) -> dict[str, int]:
    counts, _ = np.histogram(values, bins=np.asarray(edges, dtype=np.float64))
    return {f"{edges[i]:g}-{edges[i + 1]:g}": int(c) for i, c in enumerate(counts)}


def _extension_problem(path: str, image_format: str | None) -> str | None:
    suffix = Path(path).suffix.lower()
    if not image_format or path.startswith("<"):
        return None
    if not suffix:
        return "no extension"
    registered = Image.registered_extensions()
    if suffix not in image_extensions():
        return f"unknown extension {suffix}"
    if registered.get(suffix) != image_format and not (
        {registered.get(suffix), image_format} <= {"JPEG", "MPO"}  # MPO is a JPEG with extra frames
    ):
        return f"{suffix} file holds {image_format}"
    return None


def build_report(
    inspected: InspectedData,
    *,
    tiny_size: int = 64,
    min_images_per_class: int = 10,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    parent_column: str | None = None,
) -> dict[str, Any]:
    """The figures of report.json; the counts per parent go under the parent's plural."""
    data, facts, paths, labels = inspected.data, inspected.facts, inspected.paths, inspected.labels
    counts = Counter(labels)
    for label in data.labels:
        counts.setdefault(label, 0)
    parents = parent_labels(data, parent_column)
    parent_column = parents.column if parents else parent_column or DEFAULT_PARENT_COLUMN
    by_parent = plural(parent_column)
    readable = [f for f in facts if f.readable]
    widths = [f.width for f in readable]
    heights = [f.height for f in readable]
    aspects = [f.width / f.height for f in readable if f.height]
    smallest = min(counts.values()) if counts else 0

    def group_entry(members: list[int]) -> dict[str, Any]:
        return {
            "paths": [paths[i] for i in members],
            "labels": sorted({labels[i] for i in members}),
            "splits": sorted({inspected.splits[i] for i in members}),
        }

    groups = [members for members in inspected.duplicates.groups() if len(members) > 1]
    report: dict[str, Any] = {
        "source": data.source,
        "image_root": str(data.image_root) if data.image_root else None,
        "label_name": data.label_name,
        "num_images": len(facts),
        "num_classes": len(data.labels),
        "splits": dict(Counter(inspected.splits)),
        "classes": {
            "counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "imbalance_ratio": round(max(counts.values()) / smallest, 2) if smallest else None,
            "too_small_to_stratify": sorted(label for label, n in counts.items() if n < 2),
            "too_small_to_learn": sorted(label for label, n in counts.items() if n < min_images_per_class),
            "min_images_per_class": min_images_per_class,
        },
        "parent_column": parent_column,
        by_parent: None,
        "sizes": {
            "width": _stats(widths),
            "height": _stats(heights),
            "aspect_ratio": _stats(aspects),
            "megapixels": _stats([w * h / 1e6 for w, h in zip(widths, heights, strict=True)]),
            "shorter_side_histogram": _histogram(
                [min(w, h) for w, h in zip(widths, heights, strict=True)],
                [0, 32, 64, 128, 224, 384, 512, 1024, 2048, 4096, 1e9],
            ),
            "aspect_ratio_histogram": _histogram(aspects, [0, 0.5, 0.75, 0.9, 1.1, 1.33, 1.5, 2, 1e9]),
        },
        "modes": dict(Counter(f.mode for f in readable).most_common()),
        "formats": dict(Counter(f.format for f in readable).most_common()),
        "exif_rotated": [
            {"path": paths[i], "orientation": f.orientation}
            for i, f in enumerate(facts)
            if f.readable and f.orientation != 1
        ],
        "extension_mismatch": [
            {"path": paths[i], "problem": problem, "format": f.format}
            for i, f in enumerate(facts)
            if (problem := _extension_problem(f.path, f.format))
        ],
        "tiny_images": [
            {"path": paths[i], "width": f.width, "height": f.height}
            for i, f in enumerate(facts)
            if f.readable and min(f.width, f.height) < tiny_size
        ],
        "tiny_size": tiny_size,
        "unreadable": [{"path": paths[i], "reason": f.reason} for i, f in enumerate(facts) if not f.readable],
        "duplicates": {
            "near_duplicate_threshold": near_threshold,
            "exact": [[paths[i] for i in members] for members in inspected.duplicates.exact],
            "near": [[paths[i] for i in members] for members in inspected.duplicates.near],
            "label_conflicts": [group_entry(m) for m in groups if len({labels[i] for i in m}) > 1],
            "across_splits": [group_entry(m) for m in groups if len({inspected.splits[i] for i in m}) > 1],
            "images_in_groups": sum(len(m) for m in groups),
            "redundant_images": sum(len(m) - 1 for m in groups),
        },
    }
    if parents:
        per_parent: dict[str, dict[str, int]] = defaultdict(dict)
        for label, count in counts.items():
            per_parent[parents.of[label]][label] = count
        report[by_parent] = {
            "images": {p: sum(c.values()) for p, c in sorted(per_parent.items())},
            "classes": {p: len(c) for p, c in sorted(per_parent.items())},
            f"label_to_{parent_column}": dict(parents.of),
        }
    return report


def summary(report: dict[str, Any], output_dir: Path) -> str:
    classes, sizes, dup = report["classes"], report["sizes"], report["duplicates"]
    by_parent = plural(report["parent_column"])
    counts = classes["counts"]
    lines = [
        f"Inspected {report['num_images']} images in {report['num_classes']} classes ({report['label_name']})"
        + (f", {len(parents['images'])} {by_parent}" if (parents := report[by_parent]) else "")
        + "."
    ]
    if counts:
        lines.append(
            f"  classes: {min(counts.values())} to {max(counts.values())} images "
            f"(imbalance {classes['imbalance_ratio']}:1); too small to learn "
            f"(< {classes['min_images_per_class']}): {len(classes['too_small_to_learn'])}; "
            f"to stratify (< 2): {len(classes['too_small_to_stratify'])}"
        )
    if sizes["width"]:
        lines.append(
            f"  sizes: width {sizes['width']['min']:g}-{sizes['width']['max']:g} "
            f"(median {sizes['width']['median']:g}), height {sizes['height']['min']:g}-"
            f"{sizes['height']['max']:g} (median {sizes['height']['median']:g}), aspect "
            f"{sizes['aspect_ratio']['min']:.2f}-{sizes['aspect_ratio']['max']:.2f}"
        )
    lines.append(
        "  modes: "
        + ", ".join(f"{m} {n}" for m, n in report["modes"].items())
        + "; formats: "
        + ", ".join(f"{m} {n}" for m, n in report["formats"].items())
    )
    lines.append(
        f"  EXIF-rotated: {len(report['exif_rotated'])}; extension does not match content: "
        f"{len(report['extension_mismatch'])}; tiny (< {report['tiny_size']} px): {len(report['tiny_images'])}"
    )
    unreadable = report["unreadable"]
    lines.append(
        f"  unreadable: {len(unreadable)}"
        + (f" (e.g. {unreadable[0]['path']}: {unreadable[0]['reason']})" if unreadable else "")
    )
    lines.append(
        f"  duplicates: {len(dup['exact'])} exact groups, {len(dup['near'])} near-duplicate groups, "
        f"{len(dup['label_conflicts'])} with conflicting labels, {len(dup['across_splits'])} across splits"
    )
    lines.append(
        f"Report: {output_dir / REPORT_FILE}; pictures: "
        + ", ".join(str(output_dir / name) for name in report.get("pictures", []))
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Pictures


def class_distribution_plot(report: dict[str, Any]) -> Image.Image:
    counts = report["classes"]["counts"]
    column = report["parent_column"]
    parents = report[plural(column)]
    labels = list(counts)
    if parents:
        parent_of = parents[f"label_to_{column}"]
        colors_by_parent = color_map(parent_of.values())
        colors = [colors_by_parent[parent_of[label]] for label in labels]
        legend = colors_by_parent
    else:
        colors, legend = None, None
    return bar_chart(
        labels,
        [counts[label] for label in labels],
        colors=colors,
        legend=legend,
        title=f"Images per {report['label_name']} ({report['num_images']} images, imbalance "
        f"{report['classes']['imbalance_ratio']}:1)",
    )


def size_distribution_plot(facts: Sequence[ImageScan]) -> Image.Image:
    readable = [f for f in facts if f.readable]
    return side_by_side(
        [
            histogram([f.width for f in readable], title="width (px)", log_x=True),
            histogram([f.height for f in readable], title="height (px)", log_x=True),
            histogram(
                [f.width / f.height for f in readable], title="aspect ratio (width / height)", log_x=True
            ),
        ]
    )


def contact_sheets(
    inspected: InspectedData, samples_per_class: int, seed: int = 0, thumb: int = 96
) -> list[Image.Image]:
    """Sample pictures per class, `CLASSES_PER_SHEET` classes per sheet."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, (label, facts) in enumerate(zip(inspected.labels, inspected.facts, strict=True)):
        if facts.readable:
            by_label[label].append(index)
    labels = sorted(inspected.data.labels, key=lambda label: (-len(by_label[label]), label))
    sheets = []
    for start in range(0, len(labels), CLASSES_PER_SHEET):
        rows = []
        for label in labels[start : start + CLASSES_PER_SHEET]:
            chosen = sorted(rng.sample(by_label[label], min(samples_per_class, len(by_label[label]))))
            cells = [
                (open_image(inspected.source(i), draft_size=(thumb, thumb)), Path(inspected.paths[i]).name)
                for i in chosen
            ]
            rows.append((f"{label}\n{len(by_label[label])} images", cells))
        page = start // CLASSES_PER_SHEET + 1
        sheets.append(
            image_grid(
                rows,
                thumb=thumb,
                title=f"Sample images per {inspected.data.label_name} (sheet {page})",
                caption_lines=1,
            )
        )
    return sheets


def inspect(
    data: ImageData,
    output_dir: str | os.PathLike,
    *,
    tiny_size: int = 64,
    min_images_per_class: int = 10,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    samples_per_class: int = 6,
    num_workers: int | None = None,
    seed: int = 0,
    parent_column: str | None = None,
) -> dict[str, Any]:
    """Scan the data, write `report.json`, the plots and the contact sheets; return the report."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    inspected = scan_data(data, near_threshold=near_threshold, num_workers=num_workers)
    report = build_report(
        inspected,
        tiny_size=tiny_size,
        min_images_per_class=min_images_per_class,
        near_threshold=near_threshold,
        parent_column=parent_column,
    )
    pictures = {
        "class_distribution.png": class_distribution_plot(report),
        "size_distribution.png": size_distribution_plot(inspected.facts),
    }
    for page, sheet in enumerate(contact_sheets(inspected, samples_per_class, seed), start=1):
        pictures[f"contact_sheet_{page}.png"] = sheet
    for name, picture in pictures.items():
        write_png(output_dir / name, picture)
    report["pictures"] = list(pictures)
    write_json(output_dir / REPORT_FILE, report)
    return report
