"""Fixed-size sampling: counts, membership and uniqueness checked by counting in numpy."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from handray.model.sampling import sample_indices, sample_mask


def candidate_rows(seed: int = 0) -> np.ndarray:
    """Rows with few, some, many and no candidates among 40 positions."""
    rng = np.random.default_rng(seed)
    rows = [rng.random(40) < p for p in (0.05, 0.3, 0.9)]
    return np.stack([*rows, np.zeros(40, bool)])


def test_sample_indices_fills_slots_with_distinct_candidates():
    tf.random.set_seed(0)
    candidates = candidate_rows()
    indices, valid = (t.numpy() for t in sample_indices(tf.constant(candidates), 8))
    assert indices.shape == valid.shape == (4, 8)
    for row, (picked, ok) in enumerate(zip(indices, valid, strict=True)):
        available = int(candidates[row].sum())
        assert ok.sum() == min(8, available)
        assert ok[: ok.sum()].all()  # valid slots come first
        chosen = picked[ok]
        assert len(set(chosen.tolist())) == len(chosen)
        assert candidates[row, chosen].all()
        assert (picked[~ok] == 0).all()


def test_more_slots_than_positions_pad_with_invalid_slots():
    candidates = np.array([[True, False, True], [False, False, False]])
    indices, valid = sample_indices(tf.constant(candidates), 5)
    assert indices.shape == (2, 5)
    assert sorted(indices[0, :2].numpy().tolist()) == [0, 2]
    assert valid.numpy().tolist() == [[True, True, False, False, False], [False] * 5]
    assert not indices[:, 2:].numpy().any()


def test_priority_picks_the_highest_priority_candidates_in_order():
    rng = np.random.default_rng(1)
    candidates = candidate_rows(1)[:3]
    priority = rng.random(candidates.shape).astype(np.float32)
    indices, valid = sample_indices(tf.constant(candidates), 5, tf.constant(priority))
    for row in range(3):
        ranked = [i for i in np.argsort(-priority[row]) if candidates[row, i]][:5]
        assert indices[row, : len(ranked)].numpy().tolist() == ranked
        assert valid[row].numpy().sum() == len(ranked)


def test_random_sampling_reaches_every_candidate():
    """Not a fixed subset: over many draws each of 10 candidates is picked about 3/10 of
    the time (200 draws: 60 expected, 30 is over five standard deviations away)."""
    tf.random.set_seed(2)
    candidates = tf.constant([[True] * 10 + [False] * 10])
    counts = np.zeros(20, int)
    for _ in range(200):
        indices, valid = sample_indices(candidates, 3)
        counts[indices[0][valid[0]].numpy()] += 1
    assert (counts[:10] > 30).all() and not counts[10:].any()


def test_sample_mask_keeps_up_to_each_rows_limit():
    tf.random.set_seed(3)
    candidates = candidate_rows(4)
    limits = np.array([3, 5, 12, 7], np.int32)
    kept = sample_mask(tf.constant(candidates), tf.constant(limits), 16).numpy()
    assert kept.shape == candidates.shape
    assert not (kept & ~candidates).any()  # only candidates survive
    expected = np.minimum(limits, candidates.sum(1))
    np.testing.assert_array_equal(kept.sum(1), expected)


def test_sample_mask_caps_at_max_slots_and_keeps_nothing_at_limit_zero():
    candidates = np.ones((2, 30), bool)
    kept = sample_mask(tf.constant(candidates), tf.constant([20, 0]), 6).numpy()
    assert kept.sum(1).tolist() == [6, 0]
