"""The label hierarchy as an extension: a coarser label column (phylum, order, ...) as an extra
head (multitask), as routing (experts), and the comparison with and without it.

The rest of the package knows only `ParentLabels` (each label's parent, named after its column) and
the trainer's `AuxiliaryTask` (an extra loss on an extra head); everything else lives here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# What training does with the parent level (--hierarchy): nothing, an extra head and loss on the same
# backbone, or a parent classifier routing each image to one model per parent.
Hierarchy = Literal["none", "multitask", "experts"]

# The parent column of Rare Species; the one `--parent_column` names unless told otherwise, and the one
# configs written before the flag existed (with only `phylum_of`) mean.
DEFAULT_PARENT_COLUMN = "phylum"
PARENT_COLUMN_KEY = "parent_column"
# `compare --strategies`: each strategy's `--hierarchy`.
STRATEGY_HIERARCHY: dict[str, Hierarchy] = {"flat": "none", "multitask": "multitask", "experts": "experts"}
TAXONOMIC_RANKS = frozenset({"kingdom", "phylum", "division", "class", "order", "family", "genus"})


@dataclass(frozen=True)
class ParentLabels:
    """Each label's parent in a coarser level (family -> phylum, species -> order). `column` names
    every output about it: the prediction column, the `<column>_of` config entry, the metrics."""

    column: str
    of: Mapping[str, str]

    @property
    def taxonomic(self) -> bool:
        """A rank of the tree of life (the card then speaks of biology)."""
        return self.column.lower() in TAXONOMIC_RANKS

    @property
    def parents(self) -> list[str]:
        return sorted(set(self.of.values()))

    def indices(self, labels: Sequence[str]) -> list[int]:
        """The parent index (in `parents`) of each of `labels`."""
        position = {parent: i for i, parent in enumerate(self.parents)}
        return [position[self.of[label]] for label in labels]

    def config(self) -> dict[str, Any]:
        """The config.json / experts.json entries that `from_config` reads back."""
        return config_entries(self.column, self)

    @classmethod
    def from_config(cls, entries: Mapping[str, Any]) -> ParentLabels | None:
        column = entries.get(PARENT_COLUMN_KEY) or DEFAULT_PARENT_COLUMN
        mapping = entries.get(f"{column}_of")
        return cls(column, dict(mapping)) if mapping else None


def config_entries(column: str | None, parents: ParentLabels | None) -> dict[str, Any]:
    """`parent_column` and `<column>_of` (null when the data gives no parent)."""
    column = parents.column if parents else column or DEFAULT_PARENT_COLUMN
    return {PARENT_COLUMN_KEY: column, f"{column}_of": dict(parents.of) if parents else None}


def plural(column: str) -> str:
    """`phylum` -> `phyla`, `family` -> `families`, `order` -> `orders`: names outputs about all parents."""
    irregular = {"phylum": "phyla", "genus": "genera", "species": "species"}
    if column in irregular:
        return irregular[column]
    if column.endswith("y") and column[-2:-1] not in "aeiou":
        return column[:-1] + "ies"
    return column + ("es" if column.endswith(("s", "x", "ch", "sh")) else "s")
