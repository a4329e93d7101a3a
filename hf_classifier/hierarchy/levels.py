"""The label hierarchy (family -> phylum, species -> order, ...), taken from the data: the parent
column `--parent_column` names, or, for phyla, class folders named `phylum_family` (chordata_ardeidae)."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

from hf_classifier.data.schema import LABEL, ImageData
from hf_classifier.hierarchy import DEFAULT_PARENT_COLUMN, ParentLabels

logger = logging.getLogger(__name__)

PHYLUM = "phylum"

# Animal phyla (and the plant/fungal divisions EOL photos also show), lower case, for reading
# `phylum_family` folder names without mistaking `golden_retriever` for a phylum.
KNOWN_PHYLA = frozenset(
    {
        "acanthocephala",
        "annelida",
        "arthropoda",
        "brachiopoda",
        "bryozoa",
        "chaetognatha",
        "chordata",
        "cnidaria",
        "ctenophora",
        "cycliophora",
        "echinodermata",
        "entoprocta",
        "gastrotricha",
        "gnathostomulida",
        "hemichordata",
        "kinorhyncha",
        "loricifera",
        "micrognathozoa",
        "mollusca",
        "nematoda",
        "nematomorpha",
        "nemertea",
        "onychophora",
        "orthonectida",
        "phoronida",
        "placozoa",
        "platyhelminthes",
        "porifera",
        "priapulida",
        "rhombozoa",
        "rotifera",
        "sipuncula",
        "tardigrada",
        "xenacoelomorpha",
        "tracheophyta",
        "bryophyta",
        "marchantiophyta",
        "chlorophyta",
        "rhodophyta",
        "ascomycota",
        "basidiomycota",
    }
)


def phylum_of_folder_name(name: str) -> str | None:
    """`chordata_ardeidae` -> `chordata`; None when the prefix is not a known phylum."""
    prefix = name.split("_", 1)[0].lower()
    return prefix if "_" in name and prefix in KNOWN_PHYLA else None


def label_to_parent(data: ImageData, column: str = DEFAULT_PARENT_COLUMN) -> dict[str, str] | None:
    """Map every label to its parent in `column`, or None when the data does not say.

    The column wins; otherwise, for phyla only, every class name must read as `phylum_family`. A label
    seen with several parents in the column gets the most frequent one (with a warning).
    """
    if data.label_name == column:
        return None
    labels = data.labels
    # A streamed split cannot be read up front: the column is looked up in the stored ones.
    stored = _stored_splits(data)
    if stored and column in stored[0].column_names:
        seen: dict[str, Counter] = defaultdict(Counter)
        for split in stored:
            names = split.features[LABEL].names
            for label, parent in zip(split[LABEL], split[column], strict=True):
                if parent:
                    seen[names[label]][str(parent).lower()] += 1
        if set(seen) == set(labels):
            mapping = {}
            for label in labels:
                (parent, _), *others = seen[label].most_common()
                if others:
                    logger.warning(
                        "%s %r appears with several values of %r (%s); using %s.",
                        data.label_name,
                        label,
                        column,
                        ", ".join(seen[label]),
                        parent,
                    )
                mapping[label] = parent
            return mapping
    if column != PHYLUM:
        return None
    from_names = {label: phylum_of_folder_name(label) for label in labels}
    if all(from_names.values()):
        return from_names  # type: ignore[return-value]
    return None


def parent_labels(data: ImageData, column: str | None, required_by: str | None = None) -> ParentLabels | None:
    """`label_to_parent` as `ParentLabels`, None when the data does not say. `column` None: the default
    (phylum), when the data has it. An error naming the flag and what the data lacks instead of None
    when `required_by` (a flag) needs the parents, or when `--parent_column` named a column."""
    if column is None:
        column = DEFAULT_PARENT_COLUMN
    elif required_by is None:
        required_by = f"--parent_column {column}"
    mapping = label_to_parent(data, column)
    if mapping:
        return ParentLabels(column, mapping)
    if required_by is None:
        return None
    from hf_classifier.data.schema import DataSourceError

    stored = _stored_splits(data)
    if stored and column in stored[0].column_names:
        known = {
            split.features[LABEL].names[label]
            for split in stored
            for label, parent in zip(split[LABEL], split[column], strict=True)
            if parent
        }
        missing = [label for label in data.labels if label not in known]
        lacking = f"the {column!r} column is empty for every image of {', '.join(missing[:5])}"
    else:
        lacking = f"there is no {column!r} column" + (
            " and the class names do not read as phylum_family" if column == PHYLUM else ""
        )
    folders = ", or class folders named phylum_family (e.g. chordata_ardeidae)" if column == PHYLUM else ""
    raise DataSourceError(
        f"{required_by} needs each label's {column}, but {lacking}. Give a {column!r} column{folders}, "
        "or name the data's coarser column with --parent_column."
    )


def _stored_splits(data: ImageData) -> list:
    return [split for split in data.splits.values() if hasattr(split, "__len__")]


def relabel(data: ImageData, parents: ParentLabels) -> ImageData:
    """The same images labelled with their parent (e.g. family -> phylum)."""
    from datasets import ClassLabel

    splits = {}
    for name, split in data.splits.items():
        parent_ids = parents.indices(split.features[LABEL].names)
        splits[name] = (
            split.remove_columns(LABEL)
            .add_column(LABEL, [parent_ids[i] for i in split[LABEL]])
            .cast_column(LABEL, ClassLabel(names=parents.parents))
        )
    return _with_splits(data, splits, parents.column)


def subset(data: ImageData, labels: list[str]) -> ImageData:
    """Only the images of `labels`, with a label set reduced to them (in their original order)."""
    from datasets import ClassLabel

    kept = [label for label in data.labels if label in set(labels)]
    splits = {}
    for name, split in data.splits.items():
        old = split.features[LABEL].names
        rows = [i for i, label in enumerate(split[LABEL]) if old[label] in kept]
        if not rows:
            continue
        chosen = split.select(rows)
        new_ids = [kept.index(old[i]) for i in chosen[LABEL]]
        splits[name] = (
            chosen.remove_columns(LABEL).add_column(LABEL, new_ids).cast_column(LABEL, ClassLabel(names=kept))
        )
    return _with_splits(data, splits, data.label_name)


def _with_splits(data: ImageData, splits: dict, label_name: str) -> ImageData:
    from datasets import DatasetDict

    return ImageData(
        splits=DatasetDict(splits),
        label_name=label_name,
        image_root=data.image_root,
        source_columns=data.source_columns,
        source=dict(data.source),
        skipped_images=data.skipped_images,
    )
