"""The label hierarchy (family -> phylum), taken from the data: a `phylum` column, or class folders
named `phylum_family` (chordata_ardeidae)."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

from hf_classifier.data.sources import LABEL, ImageData

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


def label_to_phylum(data: ImageData) -> dict[str, str] | None:
    """Map every label to its phylum, or None when the data does not say.

    A `phylum` column wins; otherwise every class name must read as `phylum_family`. A label seen
    with several phyla in the column gets the most frequent one (with a warning).
    """
    if data.label_name == PHYLUM:
        return None
    labels = data.labels
    # A streamed split cannot be read up front: the column is looked up in the stored ones.
    stored = [split for split in data.splits.values() if hasattr(split, "__len__")]
    columns = stored[0].column_names if stored else []
    if PHYLUM in columns:
        seen: dict[str, Counter] = defaultdict(Counter)
        for split in stored:
            names = split.features[LABEL].names
            for label, phylum in zip(split[LABEL], split[PHYLUM], strict=True):
                if phylum:
                    seen[names[label]][phylum.lower()] += 1
        if set(seen) == set(labels):
            mapping = {}
            for label in labels:
                (phylum, _), *others = seen[label].most_common()
                if others:
                    logger.warning(
                        "%s %r appears with several phyla (%s); using %s.",
                        data.label_name,
                        label,
                        ", ".join(seen[label]),
                        phylum,
                    )
                mapping[label] = phylum
            return mapping
    from_names = {label: phylum_of_folder_name(label) for label in labels}
    if all(from_names.values()):
        return from_names  # type: ignore[return-value]
    return None


def require_phylum_of(data: ImageData, option: str) -> dict[str, str]:
    """`label_to_phylum(data)`, or an error naming `option` and what the data lacks."""
    phylum_of = label_to_phylum(data)
    if phylum_of:
        return phylum_of
    from hf_classifier.data.sources import DataSourceError

    stored = [split for split in data.splits.values() if hasattr(split, "__len__")]
    if stored and PHYLUM in stored[0].column_names:
        known = {
            split.features[LABEL].names[label]
            for split in stored
            for label, phylum in zip(split[LABEL], split[PHYLUM], strict=True)
            if phylum
        }
        missing = [label for label in data.labels if label not in known]
        lacking = f"the 'phylum' column is empty for every image of {', '.join(missing[:5])}"
    else:
        lacking = "there is no 'phylum' column and the class names do not read as phylum_family"
    raise DataSourceError(
        f"{option} needs each label's phylum, but {lacking}. Give a 'phylum' column, or class folders "
        "named phylum_family (e.g. chordata_ardeidae)."
    )


def relabel(data: ImageData, mapping: dict[str, str], label_name: str = PHYLUM) -> ImageData:
    """The same images labelled with `mapping[label]` (e.g. family -> phylum)."""
    from datasets import ClassLabel

    parents = sorted(set(mapping.values()))
    splits = {}
    for name, split in data.splits.items():
        old = split.features[LABEL].names
        new_ids = [parents.index(mapping[old[i]]) for i in split[LABEL]]
        splits[name] = (
            split.remove_columns(LABEL)
            .add_column(LABEL, new_ids)
            .cast_column(LABEL, ClassLabel(names=parents))
        )
    return _with_splits(data, splits, label_name)


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
