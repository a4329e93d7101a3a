"""Every training input is a pure function of (seed, epoch, sample): the same whatever the number of
DataLoader workers, and the same after a SIGKILL mid-epoch and a rerun (bit-identical weights)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import make_textured_tree, train_argv, train_run
from safetensors.torch import load_file

SCRIPTS = Path(__file__).parent / "scripts"
BATCH, EPOCHS, SAVE_STEPS = 4, 2, 4
TRAIN_IMAGES = {"train/ants": 14, "train/bees": 10}  # unequal: the balanced sampler draws repeats
STEPS_PER_EPOCH = sum(TRAIN_IMAGES.values()) // BATCH  # 6
KILL_AT = 10  # in the second epoch, after checkpoint-8: the rerun resumes 2 batches into epoch 1
# The weights after the last step. Not model.safetensors: that is the best checkpoint's, which may be
# one saved before the kill (identical in both runs whatever happens after it).
LAST_CHECKPOINT = f"checkpoint-{EPOCHS * STEPS_PER_EPOCH}"

CONFIGS = {
    "0 workers": dict(dataloader_num_workers=0, augmentation="light"),
    "2 workers": dict(dataloader_num_workers=2, augmentation="light"),
    "mixup, cutmix, balanced sampler": dict(
        dataloader_num_workers=0,
        augmentation="strong",
        mixup_alpha=0.4,
        cutmix_alpha=1.0,
        balanced_sampler=True,
    ),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("determinism")
    make_textured_tree(root, {**TRAIN_IMAGES, "validation/ants": 3, "validation/bees": 3}, seed=12)
    return root


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """As in the killed subprocess (OMP_NUM_THREADS=1): another thread count sums in another order,
    and the weights would differ in the last bits for that reason alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_flags(photos: Path, checkpoint: Path, output_dir: Path, config: str) -> dict:
    return dict(
        data_dir=photos,
        model_name_or_path=checkpoint,
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=BATCH,
        eval_strategy="steps",
        eval_steps=SAVE_STEPS,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        save_total_limit=None,
        logging_steps=SAVE_STEPS,
        **CONFIGS[config],
    )


class _Straight:
    """Uninterrupted runs, one per configuration, made once for the module; each records the
    training inputs of every step (normalised pixels and labels, as the model receives them)."""

    def __init__(self, photos: Path, checkpoint: Path, folder: Path):
        self.photos, self.checkpoint, self.folder = photos, checkpoint, folder
        self.runs: dict[str, tuple[Path, list[tuple[torch.Tensor, torch.Tensor]]]] = {}

    def __call__(self, config: str) -> tuple[Path, list[tuple[torch.Tensor, torch.Tensor]]]:
        if config not in self.runs:
            from hf_classifier.training.trainer import ImageClassificationTrainer

            inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
            original = ImageClassificationTrainer.model_inputs

            def recording(trainer, batch):
                prepared = original(trainer, batch)
                if trainer.model.training:
                    inputs.append((prepared["pixel_values"].clone(), prepared["labels"].clone()))
                return prepared

            output_dir = self.folder / config.replace(" ", "_").replace(",", "")
            with pytest.MonkeyPatch.context() as patch, one_thread():
                patch.setattr(ImageClassificationTrainer, "model_inputs", recording)
                train_run(output_dir, **run_flags(self.photos, self.checkpoint, output_dir, config))
            self.runs[config] = output_dir, inputs
        return self.runs[config]


@pytest.fixture(scope="module")
def straight(photos, vit_checkpoint, tmp_path_factory) -> _Straight:
    return _Straight(photos, vit_checkpoint, tmp_path_factory.mktemp("straight"))


def assert_same_weights(expected: Path, actual: Path) -> None:
    """Every tensor of the two runs' last checkpoints bit for bit."""
    a, b = (load_file(run / LAST_CHECKPOINT / "model.safetensors") for run in (expected, actual))
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def test_the_inputs_are_the_same_with_0_and_2_workers(straight):
    _, serial = straight("0 workers")
    _, parallel = straight("2 workers")
    assert len(serial) == len(parallel) == EPOCHS * STEPS_PER_EPOCH
    for step, ((pixels, labels), (pixels_2, labels_2)) in enumerate(zip(serial, parallel, strict=True)):
        assert torch.equal(labels, labels_2), step
        assert torch.equal(pixels, pixels_2), step
    # The epoch reaches the (persistent) workers: every image is augmented anew in epoch 2, so no
    # input of the second epoch repeats one of the first.
    first = [image for pixels, _ in serial[:STEPS_PER_EPOCH] for image in pixels]
    second = [image for pixels, _ in serial[STEPS_PER_EPOCH:] for image in pixels]
    assert not any(torch.equal(a, b) for a in first for b in second)
    assert_same_weights(straight.runs["0 workers"][0], straight.runs["2 workers"][0])


def run_python(log: Path, *args: str) -> int:
    """Output to a file, not a pipe: DataLoader workers orphaned by the SIGKILL keep a pipe open."""
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS.parent), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as handle:
        return subprocess.run(
            [sys.executable, *args], stdout=handle, stderr=subprocess.STDOUT, timeout=600, env=env
        ).returncode


@pytest.mark.parametrize("config", list(CONFIGS))
def test_a_run_killed_mid_epoch_and_rerun_ends_with_the_same_weights(
    config, straight, photos, vit_checkpoint, tmp_path
):
    uninterrupted, _ = straight(config)
    crashed = tmp_path / "crashed"
    argv = train_argv(crashed, **run_flags(photos, vit_checkpoint, crashed, config))
    log = tmp_path / "killed.log"
    returncode = run_python(log, str(SCRIPTS / "kill_at_step.py"), str(KILL_AT), *argv)
    assert returncode == -9, log.read_text()[-3000:]
    last = KILL_AT // SAVE_STEPS * SAVE_STEPS
    assert (crashed / f"checkpoint-{last}" / "checkpoint_complete.json").is_file()
    assert not (crashed / "model.safetensors").exists()

    with one_thread():  # the same command again: it resumes from checkpoint-8
        train_run(crashed, **run_flags(photos, vit_checkpoint, crashed, config))
    assert_same_weights(uninterrupted, crashed)


def test_mixing_draws_come_from_the_step_generator_only():
    from hf_classifier.data.sampling import step_rng
    from hf_classifier.models.regularization import Mixer

    pixels = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mixer = Mixer(4, mixup_alpha=0.4, cutmix_alpha=1.0)
    outcomes = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # what else the process drew must not matter
        np.random.seed(global_seed)
        outcomes.append(mixer(pixels, labels, rng=step_rng(0, 7, 0, 0)))
    assert torch.equal(outcomes[0][0], outcomes[1][0]) and torch.equal(outcomes[0][1], outcomes[1][1])
    assert not torch.equal(outcomes[0][0], pixels)  # something was mixed
    other_step = mixer(pixels, labels, rng=step_rng(0, 8, 0, 0))
    assert not torch.equal(other_step[0], outcomes[0][0])


def test_each_micro_batch_of_a_step_mixes_differently_and_a_resumed_step_the_same():
    from hf_classifier.training.trainer import ImageClassificationTrainer

    def fresh_trainer(step: int) -> SimpleNamespace:
        return SimpleNamespace(
            state=SimpleNamespace(global_step=step),
            args=SimpleNamespace(seed=3, process_index=0),
            _micro_batch_step=-1,
            _micro_batch=0,
        )

    def draws(trainer: SimpleNamespace) -> list[float]:
        return ImageClassificationTrainer._mix_generator(trainer).random(3).tolist()

    running = fresh_trainer(4)
    first, second = draws(running), draws(running)  # two micro-batches (gradient accumulation)
    assert first != second
    running.state.global_step = 5
    next_step = draws(running)
    assert draws(fresh_trainer(5)) == next_step  # a run resumed at step 5
    assert draws(fresh_trainer(4)) == first


def test_the_epoch_reaches_the_key_sampler_where_accelerate_set_epoch_does_not():
    """Two processes resuming mid-epoch: the sampler sits under SkipBatchSampler > BatchSamplerShard >
    BatchSampler, out of reach of Accelerate's `set_epoch`; the trainer's epoch callback sets it."""
    from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
    from torch.utils.data import BatchSampler, DataLoader

    from hf_classifier.data.sampling import EpochKeySampler, ShuffleSampler
    from hf_classifier.training.trainer import _SampleEpochCallback

    keys = EpochKeySampler(ShuffleSampler(12, seed=0))
    loader = DataLoader(
        list(range(12)),
        batch_sampler=SkipBatchSampler(BatchSamplerShard(BatchSampler(keys, 2, False), 2, 0), 1),
        collate_fn=lambda batch: batch,
    )
    from accelerate.data_loader import DataLoaderShard

    shard = DataLoaderShard(loader.dataset, batch_sampler=loader.batch_sampler, collate_fn=lambda b: b)
    shard.set_epoch(1)
    assert keys.epoch == 0  # why the callback exists
    trainer = SimpleNamespace(_key_sampler=keys)
    _SampleEpochCallback(trainer).on_epoch_begin(None, SimpleNamespace(epoch=1 + 4 / 6), None)
    assert keys.epoch == 1 and keys.sampler.epoch == 1
    assert {key.epoch for key in keys} == {1}


def test_a_streamed_reader_augments_from_its_own_seeded_generator():
    import random

    from helpers import tinted_jpeg

    from hf_classifier.data.schema import FILE_PATH, IMAGE, LABEL
    from hf_classifier.data.streaming import StreamTransform
    from hf_classifier.transforms.pipeline import ImageTransform, get_preset
    from hf_classifier.transforms.preview import default_spec

    photo = tinted_jpeg(0, seed=1)
    batch = {IMAGE: [photo] * 4, LABEL: [0] * 4, FILE_PATH: [f"train-00000.tar:{i}" for i in range(4)]}
    outputs = []
    for global_seed in (1, 2):
        random.seed(global_seed)  # what else the process drew from the global generator must not matter
        transform = StreamTransform(ImageTransform(default_spec(32), get_preset("strong")), seed=5)
        outputs.append(transform(batch)["pixel_values"])
    assert all(torch.equal(a, b) for a, b in zip(*outputs, strict=True))
    assert not torch.equal(outputs[0][0], outputs[0][1])  # each image of the stream drawn anew


def test_keyed_training_images_drive_the_processor_fallback_too(tmp_path):
    """Processors with geometry of their own (`ProcessorTransform`) get the per-sample generator as well."""
    from datasets import Dataset
    from helpers import textured_photo
    from transformers import EfficientNetImageProcessor

    from hf_classifier.data.sampling import SampleKey
    from hf_classifier.data.schema import IMAGE, LABEL
    from hf_classifier.transforms.pipeline import KeyedTrainingImages, ProcessorTransform, create_transform

    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"photo{i}.jpg"))
        textured_photo(i, (96, 80)).save(paths[-1])
    processor = EfficientNetImageProcessor(size={"height": 32, "width": 32})
    transform = create_transform(processor, training=True, augmentation="strong")
    assert isinstance(transform, ProcessorTransform)
    images = KeyedTrainingImages(Dataset.from_dict({IMAGE: paths, LABEL: [0, 1]}), transform, seed=0)
    key, next_epoch = SampleKey(0, 0, 1), SampleKey(1, 0, 1)
    first, again = images.__getitems__([key, key])
    assert torch.equal(first["pixel_values"], again["pixel_values"]) and first["labels"] == 1
    assert not torch.equal(first["pixel_values"], images[next_epoch]["pixel_values"])
