"""Perceptual hashes: copies stay close, different pictures stay far; grouping of duplicates."""

from __future__ import annotations

import io
import random

from helpers import textured_photo
from PIL import Image

from hf_classifier.data.duplicates import content_hash, find_duplicates, near_pairs, perceptual_hash
from hf_classifier.data.images import open_image


def distance(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def reencoded(image: Image.Image, scale: float = 1.0, quality: int = 60, fmt: str = "JPEG") -> Image.Image:
    buffer = io.BytesIO()
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    image.resize(size).save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return open_image(buffer.getvalue())


def test_resized_and_reencoded_copies_stay_within_the_threshold():
    for seed in range(20):
        photo = textured_photo(seed)
        original = perceptual_hash(photo)
        assert distance(original, perceptual_hash(reencoded(photo, 0.5, 50))) <= 4
        assert distance(original, perceptual_hash(reencoded(photo, 1.7, 85))) <= 4
        assert distance(original, perceptual_hash(reencoded(photo, fmt="PNG"))) <= 2


def test_different_pictures_are_far_apart():
    hashes = [perceptual_hash(textured_photo(seed)) for seed in range(60)]
    closest = min(distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :])
    assert closest > 12


def test_near_pairs_matches_brute_force():
    rng = random.Random(0)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    hashes[10] = hashes[200] ^ 0b1011  # 3 bits apart
    hashes[50] = hashes[51]
    expected = {(i, j) for i in range(300) for j in range(i + 1, 300) if distance(hashes[i], hashes[j]) <= 8}
    assert set(near_pairs(hashes, threshold=8, block=64)) == expected
    assert {(10, 200), (50, 51)} <= expected


def test_find_duplicates_groups_exact_and_near_copies():
    photos = [textured_photo(seed) for seed in range(4)]
    contents = ["a", "a", "b", "c", "d"]  # 0 and 1 are byte-identical
    hashes = [
        perceptual_hash(photos[0]),
        perceptual_hash(photos[0]),
        perceptual_hash(photos[1]),
        perceptual_hash(reencoded(photos[1], 0.5)),
        perceptual_hash(photos[3]),
    ]
    groups = find_duplicates(contents, hashes)
    assert groups.exact == [[0, 1]]
    assert groups.near == [[2, 3]]
    assert groups.component_of[2] == groups.component_of[3] != groups.component_of[4]


def test_near_copies_need_the_same_aspect_ratio():
    same_hash = perceptual_hash(textured_photo(0))
    groups = find_duplicates(["a", "b"], [same_hash, same_hash], aspect_ratios=[1.33, 0.75])
    assert groups.near == []
    groups = find_duplicates(["a", "b"], [same_hash, same_hash], aspect_ratios=[1.333, 1.34])
    assert groups.near == [[0, 1]]


def test_unreadable_images_match_nothing():
    groups = find_duplicates([None, None, "x"], [None, None, 5])
    assert groups.exact == [] and groups.near == [] and len(set(groups.component_of)) == 3


def test_content_hash_is_of_the_bytes():
    assert content_hash(b"abc") == content_hash(b"abc") != content_hash(b"abd")
