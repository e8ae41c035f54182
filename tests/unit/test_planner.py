"""The micro-batch planner: coverage, order, budget, grouping by layer."""

from __future__ import annotations

import random

import pytest

from mmrerank.serving.planner import plan_micro_batches, share_micro_batch


def random_workload(seed: int, count: int = 300) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(5, 300), rng.randint(1000, 4000)]) for _ in range(count)]
    layers = [rng.choice([3, 6, 11, 22]) for _ in range(count)]
    return lengths, layers


@pytest.mark.parametrize("seed", range(5))
def test_every_pair_is_planned_exactly_once(seed):
    lengths, layers = random_workload(seed)
    batches = plan_micro_batches(lengths, layers, max_batch_tokens=8192)
    planned = sorted(i for batch in batches for i in batch.indices)
    assert planned == list(range(len(lengths)))


@pytest.mark.parametrize("seed", range(5))
def test_batches_hold_one_layer_and_respect_the_budget(seed):
    lengths, layers = random_workload(seed)
    for batch in plan_micro_batches(lengths, layers, max_batch_tokens=8192):
        assert {layers[i] for i in batch.indices} == {batch.layer}
        assert batch.padded_length == max(lengths[i] for i in batch.indices)
        assert batch.padded_tokens <= 8192 or len(batch.indices) == 1


def test_a_pair_longer_than_the_budget_runs_alone():
    batches = plan_micro_batches([10, 5000, 12], [22, 22, 22], max_batch_tokens=1000)
    assert [batch.indices for batch in batches] == [(1,), (2, 0)]


def test_sorting_keeps_padding_small():
    lengths = [10, 3000, 11, 2990, 12, 2980]
    batches = plan_micro_batches(lengths, [22] * 6, max_batch_tokens=9000)
    assert [sorted(batch.indices) for batch in batches] == [[1, 3, 5], [0, 2, 4]]


@pytest.mark.parametrize("seed", range(5))
def test_a_real_token_budget_packs_more_pairs_and_stays_under_it(seed):
    lengths, layers = random_workload(seed)
    padded = plan_micro_batches(lengths, layers, max_batch_tokens=8192)
    packed = plan_micro_batches(lengths, layers, max_batch_tokens=8192, count_padding=False)
    assert sorted(i for batch in packed for i in batch.indices) == list(range(len(lengths)))
    for batch in packed:
        assert batch.real_tokens == sum(lengths[i] for i in batch.indices)
        assert batch.real_tokens <= 8192 or len(batch.indices) == 1
    assert len(packed) < len(padded)


def test_real_tokens_count_without_padding():
    batches = plan_micro_batches([100, 10, 10, 10], [3] * 4, max_batch_tokens=130, count_padding=False)
    assert [batch.indices for batch in batches] == [(0, 1, 2, 3)]
    assert batches[0].real_tokens == 130 and batches[0].padded_tokens == 400


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="one entry per pair"):
        plan_micro_batches([1, 2], [3], max_batch_tokens=10)


def test_a_shared_batch_starts_with_the_first_requests_longest_pairs_as_the_plan_cuts_them():
    first = [900, 500, 400, 300]
    taken = share_micro_batch([first, [950, 600, 200, 100]], max_batch_tokens=2000)
    planned = plan_micro_batches(first, [6] * 4, max_batch_tokens=2000)[0]
    assert taken[0] == sorted(planned.indices) == [0, 1]
    assert taken[1] == [], "no pair fits beside 2 x 900 padded tokens"


@pytest.mark.parametrize(
    ("count_padding", "expected"),
    [(True, [[0, 1], [1, 2, 3], [0]]), (False, [[0, 1], [1, 2, 3], [0, 1]])],
)
def test_other_requests_fill_the_budget_without_lengthening_the_batch(count_padding, expected):
    queues = [[100, 80], [400, 90, 90, 50], [100, 10]]
    taken = share_micro_batch(queues, 600, count_padding=count_padding)
    assert taken == expected  # the 400-token pair would lengthen the batch; padded, the sixth row fills 600
    chosen = [queue[k] for queue, positions in zip(queues, taken, strict=True) for k in positions]
    assert max(chosen) == 100
    assert (len(chosen) * 100 if count_padding else sum(chosen)) <= 600


def test_a_pair_over_the_budget_still_runs_alone():
    assert share_micro_batch([[5000, 10], [10]], max_batch_tokens=1000) == [[0], []]
