"""Class weights, the balanced sampler (also sharded over processes), mixup / cutmix, EMA."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from hf_classifier.models.regularization import ClassBalancedSampler, Mixer, ModelEMA, class_weights

LABELS = [0] * 80 + [1] * 15 + [2] * 5  # 100 images, imbalance 16 : 1


def test_balanced_class_weights_by_hand():
    weights = class_weights(LABELS, 3, "balanced")
    raw = torch.tensor([100 / (3 * 80), 100 / (3 * 15), 100 / (3 * 5)])
    torch.testing.assert_close(weights, raw * 3 / raw.sum())
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[2] / weights[0] == pytest.approx(16.0)  # inverse frequency


def test_effective_number_weights_by_hand():
    beta = 0.99
    weights = class_weights(LABELS, 3, "effective_number", beta=beta)
    raw = torch.tensor([(1 - beta) / (1 - beta**n) for n in (80, 15, 5)])
    torch.testing.assert_close(weights, (raw * 3 / raw.sum()).float())
    ratio = weights[2] / weights[0]
    assert 1 < ratio < 16  # favours rare classes, less than inverse frequency does


def test_no_weighting_and_missing_classes():
    assert class_weights(LABELS, 3, "none") is None
    weights = class_weights([0, 0, 1], 3, "balanced")  # class 2 never seen: weighted like one image
    assert weights[2] == pytest.approx(weights[1])
    with pytest.raises(ValueError, match="--class_weighting"):
        class_weights(LABELS, 3, "sqrt")


def test_balanced_sampler_draws_every_class_equally_often():
    sampler = ClassBalancedSampler(LABELS, num_samples=30_000, seed=1)
    counts = Counter(LABELS[i] for i in sampler)
    assert len(sampler) == 30_000
    for label in (0, 1, 2):
        assert counts[label] / 30_000 == pytest.approx(1 / 3, abs=0.02)


def test_balanced_sampler_is_seeded_and_changes_with_the_epoch():
    a, b = ClassBalancedSampler(LABELS, seed=3), ClassBalancedSampler(LABELS, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_balanced_sampler_is_sharded_without_overlap_across_processes():
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    def shard(rank: int, epoch: int) -> list[int]:
        loader = DataLoader(
            list(range(len(LABELS))), batch_size=10, sampler=ClassBalancedSampler(LABELS, seed=5)
        )
        prepared = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False)
        prepared.set_epoch(epoch)  # what Trainer calls at each epoch
        return [int(i) for batch in prepared for i in batch]

    for epoch in (0, 1):
        sampler = ClassBalancedSampler(LABELS, seed=5)
        sampler.set_epoch(epoch)
        expected = list(sampler)  # the sequence every process draws for this epoch
        first, second = shard(0, epoch), shard(1, epoch)
        # Process 0 takes batches 0, 2, 4, ..., process 1 batches 1, 3, 5, ...: together the sequence, once.
        rebuilt = [i for k in range(5) for part in (first, second) for i in part[10 * k : 10 * k + 10]]
        assert rebuilt == expected


def test_mixup_targets_are_convex_combinations():
    torch.manual_seed(0)
    pixels = torch.randn(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mixed, targets = Mixer(4, mixup_alpha=0.4)(pixels, labels)
    assert mixed.shape == pixels.shape and targets.shape == (8, 4)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    assert (targets > 0).sum(dim=1).max() <= 2


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area():
    # 4 flat images of values 0..3 and labels 0..3: a pasted pixel tells which image it came from.
    pixels = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 20, 20).clone()
    labels = torch.arange(4)
    pasted_rows = 0
    for seed in range(10):
        mixed, targets = Mixer(4, cutmix_alpha=1.0)(pixels, labels, rng=np.random.default_rng(seed))
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
        for row in range(4):
            changed = (mixed[row] != pixels[row]).any(dim=0)  # (20, 20)
            if not changed.any():  # paired with itself, or an empty box: the image's own label only
                assert targets[row, row].item() == pytest.approx(1.0)
                continue
            pasted_rows += 1
            (source,) = mixed[row][:, changed].unique().tolist()  # one partner image fills the box
            rows, cols = changed.nonzero(as_tuple=True)
            box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all()  # a rectangle
            share = changed.float().mean().item()
            assert targets[row, row].item() == pytest.approx(1 - share, abs=1e-6)
            assert targets[row, int(source)].item() == pytest.approx(share, abs=1e-6)
    assert pasted_rows >= 10  # most rows of most batches received a box


def test_mixer_off_gives_one_hot_targets():
    pixels = torch.randn(2, 3, 4, 4)
    mixed, targets = Mixer(3)(pixels, torch.tensor([2, 0]))
    assert torch.equal(mixed, pixels)
    assert targets.tolist() == [[0, 0, 1], [1, 0, 0]]


def test_ema_update_and_swap():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert ema.shadow["weight"].flatten().tolist() == [2.0, 2.0]  # 0.5 * 1 + 0.5 * 3
    with ema.applied_to(model):
        assert model.weight.flatten().tolist() == [2.0, 2.0]
    assert model.weight.flatten().tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="--ema_decay"):
        ModelEMA(model, decay=1.0)
