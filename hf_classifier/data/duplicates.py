"""Exact and near-duplicate images.

Exact duplicates share the same bytes (BLAKE2b of the file). Near duplicates (re-encoded, resized,
recompressed copies) have perceptual hashes (64-bit DCT hash of a 32x32 grayscale thumbnail) within a
small Hamming distance and the same aspect ratio (within 5 %). On real photos, copies land at distance
0-4 and distinct photos at 12 or more, hence the default threshold of 8; the aspect-ratio check stops
similar compositions on plain backgrounds (drawings, specimens) from passing as copies.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

HASH_SIZE = 8  # 8x8 low-frequency DCT coefficients -> 64 bits
THUMBNAIL = 32
DEFAULT_NEAR_THRESHOLD = 8
ASPECT_TOLERANCE = 0.05  # resizing keeps the aspect ratio up to rounding


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    matrix = np.sqrt(2 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT = _dct_matrix(THUMBNAIL)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash: the signs of the 8x8 lowest DCT frequencies relative to their median."""
    gray = image.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    coefficients = (_DCT @ pixels @ _DCT.T)[:HASH_SIZE, :HASH_SIZE].ravel()
    bits = coefficients > np.median(coefficients[1:])  # the DC term would dominate the median
    return int(np.packbits(bits).view(">u8")[0])


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # NumPy >= 2.0
        return np.bitwise_count(values)
    as_bytes = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)


def near_pairs(
    hashes: Sequence[int], threshold: int = DEFAULT_NEAR_THRESHOLD, block: int | None = None
) -> list[tuple[int, int]]:
    """All index pairs (i < j) whose hashes differ in at most `threshold` bits (blockwise, all pairs).

    Each block compares `block` hashes with all of them; by default sized so that a block's distance
    matrix stays near 4 million entries (about 32 MB) however many images there are."""
    values = np.asarray(hashes, dtype=np.uint64)
    block = block or max(1, 2**22 // max(1, len(values)))
    pairs = []
    for start in range(0, len(values), block):
        distances = _popcount(values[start : start + block, None] ^ values[None, :])
        rows, cols = np.nonzero(distances <= threshold)
        rows = rows + start
        keep = rows < cols
        pairs.extend(zip(rows[keep].tolist(), cols[keep].tolist(), strict=True))
    return pairs


def _similar_aspect(a: float | None, b: float | None) -> bool:
    if not a or not b:
        return True
    return abs(a - b) <= ASPECT_TOLERANCE * max(a, b)


class _UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


@dataclass
class DuplicateGroups:
    exact: list[list[int]]  # byte-identical files
    near: list[list[int]]  # perceptually identical, with at least two different contents
    component_of: list[int]  # every image's group id (exact and near links together); singletons too

    def groups(self) -> list[list[int]]:
        members: dict[int, list[int]] = defaultdict(list)
        for index, component in enumerate(self.component_of):
            members[component].append(index)
        return list(members.values())


def find_duplicates(
    content_hashes: Sequence[str | None],
    perceptual_hashes: Sequence[int | None],
    threshold: int = DEFAULT_NEAR_THRESHOLD,
    aspect_ratios: Sequence[float | None] | None = None,
) -> DuplicateGroups:
    """Group images that are copies of each other. `None` hashes (unreadable images) match nothing;
    with `aspect_ratios`, near pairs must also have aspect ratios within `ASPECT_TOLERANCE`."""
    size = len(content_hashes)
    by_content: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(content_hashes):
        if digest is not None:
            by_content[digest].append(index)
    exact = [members for members in by_content.values() if len(members) > 1]

    links = _UnionFind(size)
    for members in exact:
        for other in members[1:]:
            links.union(members[0], other)
    known = [i for i, h in enumerate(perceptual_hashes) if h is not None]
    for a, b in near_pairs([perceptual_hashes[i] for i in known], threshold):
        first, second = known[a], known[b]
        if aspect_ratios is None or _similar_aspect(aspect_ratios[first], aspect_ratios[second]):
            links.union(first, second)
    component_of = [links.find(i) for i in range(size)]

    near_members: dict[int, list[int]] = defaultdict(list)
    for index, component in enumerate(component_of):
        near_members[component].append(index)
    near = [
        members
        for members in near_members.values()
        if len(members) > 1 and len({content_hashes[i] for i in members}) > 1
    ]
    return DuplicateGroups(exact=exact, near=near, component_of=component_of)
