"""prepare: stored copies, the cache (reuse, invalidation, resuming, sharing), bad files, drafts."""

from __future__ import annotations

import multiprocessing
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_textured_tree, textured_photo, train_run
from PIL import Image
from transformers import ConvNextImageProcessor, ViTImageProcessor

import hf_classifier.data.prepared as prepare
from hf_classifier.cli.arguments import ClassifierTrainingArguments
from hf_classifier.data.checks import BadImagesError
from hf_classifier.data.images import BadImageError, decode_image
from hf_classifier.data.prepared import prepare_split, prepared_size, stored_size_for
from hf_classifier.data.schema import FILE_PATH, IMAGE, LABEL
from hf_classifier.data.sources import from_image_folder
from hf_classifier.transforms.pipeline import create_transform


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    make_textured_tree(root, {"a": 5, "b": 5}, seed=11)
    textured_photo(5, (640, 480)).save(root / "a" / "large.jpg", quality=90)
    return root


class Counting:
    """Wraps the prepare function to count the images it decodes."""

    def __init__(self, monkeypatch, fail_after: int | None = None):
        self.images, self.fail_after = 0, fail_after
        original = prepare._PrepareBatch.__call__

        def counting(batch_self, batch):
            if self.fail_after is not None and self.images >= self.fail_after:
                raise RuntimeError("interrupted")
            self.images += len(batch[IMAGE])
            return original(batch_self, batch)

        monkeypatch.setattr(prepare._PrepareBatch, "__call__", counting)


def test_stored_copies_are_rgb_pre_resized_and_keep_their_columns(photos, tmp_path):
    split = from_image_folder(photos).splits["train"]
    prepared, bad = prepare_split(split, 128, tmp_path / "cache", num_proc=1)
    assert bad == [] and len(prepared) == len(split)
    assert prepared[FILE_PATH] == split[FILE_PATH] and prepared[LABEL] == split[LABEL]
    for row in range(len(prepared)):
        stored = decode_image(prepared[row][IMAGE]).image
        original = Image.open(split[row][IMAGE]).convert("RGB")
        assert stored.mode == "RGB"
        # At least the training size (112 for 128), at most the tolerance above the stored size.
        assert 112 <= min(stored.size) <= 128 * 1.15 or min(stored.size) == min(original.size)
        reference = original.resize(stored.size, Image.Resampling.BILINEAR)
        error = np.abs(np.asarray(stored, np.float64) - np.asarray(reference, np.float64)).mean()
        assert error < 4, error  # the same picture, only smaller


def test_the_cache_is_reused_and_invalidated_by_size_and_source(photos, tmp_path, monkeypatch):
    split = from_image_folder(photos).splits["train"]
    counter = Counting(monkeypatch)
    first, _ = prepare_split(split, 128, tmp_path / "cache", num_proc=1)
    assert counter.images == len(split)
    again, _ = prepare_split(split, 128, tmp_path / "cache", num_proc=1)
    assert counter.images == len(split)  # nothing decoded twice
    assert again[IMAGE] == first[IMAGE]
    prepare_split(split, 160, tmp_path / "cache", num_proc=1)  # another size: another entry
    assert counter.images == 2 * len(split)
    os.utime(photos / "a" / "photo000.jpg", ns=(1, 1))  # the source changed
    prepare_split(from_image_folder(photos).splits["train"], 128, tmp_path / "cache", num_proc=1)
    assert counter.images == 3 * len(split)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 3


def test_an_interrupted_pass_resumes_at_the_first_missing_shard(photos, tmp_path, monkeypatch):
    split = from_image_folder(photos).splits["train"]  # 11 images: shards of 4, 4, 3
    Counting(monkeypatch, fail_after=4)
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare_split(split, 128, tmp_path / "cache", num_proc=1, shard_size=4)
    (entry,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["shard-00000"]  # no half-written shard left
    monkeypatch.undo()
    counter = Counting(monkeypatch)
    prepared, _ = prepare_split(split, 128, tmp_path / "cache", num_proc=1, shard_size=4)
    assert counter.images == 7 and len(prepared) == 11
    assert prepared[FILE_PATH] == split[FILE_PATH]


def _prepare_in_child(args):
    folder, cache = args
    from hf_classifier.data.prepared import prepare_split
    from hf_classifier.data.sources import from_image_folder

    prepared, _ = prepare_split(
        from_image_folder(folder).splits["train"], 128, Path(cache), num_proc=1, shard_size=3
    )
    return [bytes(b) for b in prepared[IMAGE]]


def test_two_runs_on_one_cache_do_not_corrupt_it(photos, tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        first, second = pool.map(_prepare_in_child, [(str(photos), str(tmp_path / "cache"))] * 2)
    assert first == second
    (entry,) = (tmp_path / "cache").iterdir()
    assert all(not p.name.startswith(".") for p in entry.iterdir())  # no staging folder left behind
    assert _prepare_in_child((str(photos), str(tmp_path / "cache"))) == first


def test_bad_files_are_recorded_and_handled_like_the_foundation(photos, tmp_path, vit_checkpoint):
    (photos / "b" / "empty.jpg").write_bytes(b"")
    truncated = photos / "b" / "truncated.jpg"
    truncated.write_bytes((photos / "a" / "large.jpg").read_bytes()[:3000])
    _, bad = prepare_split(from_image_folder(photos).splits["train"], 128, tmp_path / "cache", num_proc=1)
    reasons = {Path(path).name: reason for _, path, reason in bad}
    assert set(reasons) == {"empty.jpg", "truncated.jpg"} and "truncated" in reasons["truncated.jpg"]

    common = dict(
        data_dir=photos,
        model_name_or_path=vit_checkpoint,
        prepare=True,
        prepared_cache_dir=tmp_path / "cache",
    )
    with pytest.raises(BadImagesError, match="empty.jpg"):
        train_run(tmp_path / "stop", **common)
    out = tmp_path / "run"
    train_run(out, skip_bad_images=True, num_train_epochs=1, **common)
    assert (out / "bad_images.csv").read_text().count("\n") == 3 and (out / "model.safetensors").is_file()


def test_stored_size_covers_training_and_evaluation():
    assert prepared_size(224) == 256
    assert stored_size_for(ViTImageProcessor()) == 256
    assert stored_size_for(ConvNextImageProcessor(size={"shortest_edge": 224})) == 256
    assert stored_size_for(ConvNextImageProcessor(size={"shortest_edge": 384})) == prepared_size(384)


# ---------------------------------------------------------------- JPEG drafts


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("large") / "photo.jpg"
    textured_photo(21, (2400, 1800)).save(path, quality=92)
    return path


@pytest.mark.parametrize(
    "processor",
    [ViTImageProcessor(), ConvNextImageProcessor(size={"shortest_edge": 224})],
    ids=["vit", "convnext"],
)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_draft_decoding_keeps_the_geometry_and_the_picture(large_jpeg, processor, training):
    full_transform = create_transform(
        processor, training=training, augmentation="medium", rng=random.Random(3)
    )
    draft_transform = create_transform(
        processor, training=training, augmentation="medium", rng=random.Random(3)
    )
    decoded = decode_image(large_jpeg, draft_transform.draft_size)
    assert decoded.image.width < 2400 and decoded.original_size == (2400, 1800)
    full = full_transform(decode_image(large_jpeg)).double()
    drafted = draft_transform(decoded).double()
    assert full.shape == drafted.shape
    psnr = 10 * np.log10(255**2 / ((full - drafted) ** 2).mean().item())
    assert psnr > 40, psnr  # the same crop of the same picture


def test_drafts_only_for_jpegs_without_rotation(tmp_path, large_jpeg):
    png = tmp_path / "big.png"
    textured_photo(2, (1200, 900)).save(png)
    assert decode_image(png, (100, 100)).scale == 1
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    textured_photo(2, (1200, 900)).save(rotated, exif=exif)
    decoded = decode_image(rotated, (100, 100))
    assert decoded.scale == 1 and decoded.image.size == (900, 1200)  # rotated, in full
    assert decode_image(large_jpeg, (100, 100)).scale == pytest.approx(1 / 8)


def test_raw_ppm_fast_path_matches_pillow():
    picture = textured_photo(4, (37, 23))
    stored = prepare.encode_ppm(picture)
    assert np.array_equal(np.asarray(decode_image(stored).image), np.asarray(picture))
    import io

    pillow_ppm = io.BytesIO()
    picture.save(pillow_ppm, format="PPM")
    assert np.array_equal(np.asarray(decode_image(pillow_ppm.getvalue()).image), np.asarray(picture))
    with pytest.raises(BadImageError):  # 11 bytes for 2 x 2 pixels: not the fast path, and Pillow refuses it
        decode_image(b"P6\n2 2\n255\n" + bytes(11))


def test_loader_and_device_defaults_fit_the_machine(tmp_path, monkeypatch):
    import hf_classifier.cli.arguments as arguments

    # Workers: the usable CPUs shared among this machine's processes, one left to each main process.
    monkeypatch.setattr(arguments, "available_cpus", lambda: 8)
    monkeypatch.setattr(arguments, "cpu_quota", lambda *args: None)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert ClassifierTrainingArguments(output_dir=str(tmp_path)).dataloader_num_workers == 7
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert ClassifierTrainingArguments(output_dir=str(tmp_path)).dataloader_num_workers == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    args = ClassifierTrainingArguments(output_dir=str(tmp_path))
    assert args.dataloader_persistent_workers and args.dataloader_prefetch_factor == 4
    if not torch.cuda.is_available():
        assert args.bf16 is False and not args.tf32 and not args.dataloader_pin_memory


def test_the_cache_holds_images_only_so_labels_always_come_from_the_source(photos, tmp_path):
    """Same photos, another label column (or corrected labels): the cache is reused, the labels are
    the ones asked for, and split CSVs written after preparing still list paths, not pixels."""
    from hf_classifier.data.prepared import prepare_data
    from hf_classifier.data.schema import SOURCE_IMAGE
    from hf_classifier.data.sources import from_metadata_csv
    from hf_classifier.data.splits import write_splits

    paths = sorted(p for p in photos.rglob("*.jpg"))
    listing = tmp_path / "metadata.csv"
    rows = [f"{p.relative_to(photos)},{p.parent.name}_family,{p.parent.name}_phylum" for p in paths]
    listing.write_text("image,family,phylum\n" + "\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    for column in ("family", "phylum"):
        data = from_metadata_csv(listing, image_root=photos, label_column=column)
        prepared, bad = prepare_data(data, 64, cache_dir=cache, num_proc=1)
        split = prepared.splits["train"]
        assert bad == [] and prepared.labels == ["a_" + column, "b_" + column]
        names = [split.features[LABEL].int2str(i) for i in split[LABEL]]
        assert names == [f"{Path(p).parent.name}_{column}" for p in split[SOURCE_IMAGE]]
        assert isinstance(split[0][IMAGE], bytes)
    assert len(list(cache.iterdir())) == 1  # one cache entry served both label columns
    write_splits(prepared, tmp_path / "splits")
    header, first, *_ = (tmp_path / "splits" / "train.csv").read_text().splitlines()
    assert header.split(",")[0] == "image" and first.split(",")[0].endswith(".jpg")


def test_train_with_prepare_decodes_each_photo_once(photos, tmp_path, vit_checkpoint, monkeypatch):
    """Preparing reads each photo through the same scan as the check and keeps its verdict: the photos
    are decoded once up front, not once to check them and again to prepare them."""
    from helpers import TRAIN_ARGS, train_argv

    import hf_classifier.data.scan as scan
    from hf_classifier.cli.arguments import parse_args
    from hf_classifier.training.run import load_training_data

    decode, decoded = scan.decode_image, []

    def counting(source, *args, **kwargs):
        decoded.append(source)
        return decode(source, *args, **kwargs)

    monkeypatch.setattr(scan, "decode_image", counting)
    flags = dict(prepare="true", prepare_num_proc=1, prepared_cache_dir=tmp_path / "cache")
    argv = train_argv(tmp_path / "run", data_dir=photos, model_name_or_path=vit_checkpoint, **flags)
    data = load_training_data(*parse_args(TRAIN_ARGS, argv))
    assert sum(len(split) for split in data.splits.values()) == 11
    assert sorted(decoded) == sorted(str(path) for path in photos.rglob("*.jpg"))
