"""Training randomness as a pure function of (seed, epoch, sample), never of a global generator.

Why: with `--dataloader_num_workers 0` the images are augmented in the main process, whose global
`random` state Trainer saves in a checkpoint *after* the loader has already fetched ahead; a resumed
run then augmented the same images differently. And the global generators of worker processes are
seeded per worker, so the inputs depended on the number of workers.

Instead the sampler yields `SampleKey`s (epoch, position in the epoch's draw, row index) instead of
bare indices. Samplers run in the main process, so the epoch travels inside the key to whichever
process reads the sample, including persistent workers, which never see an attribute set on the
dataset after they started. The dataset (`transforms.KeyedTrainingImages`) seeds one generator per
sample from the key. Resuming mid-epoch, Trainer skips whole batches of keys: the remaining samples
get the same keys, hence the same pixels, as in an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """Which sample to read, and which draw of the epoch it is."""

    epoch: int
    position: int  # place in the epoch's sequence: distinct even when a sampler draws a row twice
    index: int  # the row of the data set


def derived_seed(*parts: int) -> int:
    """A 64-bit seed that depends only on `parts`: the same in every process, worker and run
    (`hash()` of a tuple is not: it changes with PYTHONHASHSEED). Negative parts are fine."""
    digest = hashlib.blake2b(repr(tuple(int(part) for part in parts)).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def sample_rng(seed: int, key: SampleKey) -> random.Random:
    """The generator that augments one sample."""
    return random.Random(derived_seed(seed, *key))


def step_rng(seed: int, *parts: int) -> np.random.Generator:
    """A generator for draws made once per step (mixup / CutMix), e.g. from (seed, step, micro-batch)."""
    return np.random.default_rng(derived_seed(seed, *parts))


class ShuffleSampler(Sampler[int]):
    """Every index once per epoch, in an order that depends only on (seed, epoch): identical on every
    process of a distributed run (Accelerate gives each its share), and again after a resume."""

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class EpochKeySampler(Sampler[SampleKey]):
    """Wraps an index sampler: yields a `SampleKey` per index, carrying the epoch to the reader."""

    def __init__(self, sampler: Sampler[int]):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.epoch
        for position, index in enumerate(self.sampler):
            yield SampleKey(epoch, position, int(index))

    def __len__(self) -> int:
        return len(self.sampler)


def as_sample_key(key: SampleKey | int) -> SampleKey:
    """A bare index (the data set read directly, outside training) is read as epoch 0."""
    if isinstance(key, SampleKey):
        return key
    if isinstance(key, tuple):
        return SampleKey(*key)
    return SampleKey(0, int(key), int(key))
