"""The trained demo ranks for real on places it never saw: deeper and wider is better, the needle is found."""

from __future__ import annotations

import pytest

from mmrerank.dev import facts
from mmrerank.dev.needle import found_rate, needle_cases, sentences_for
from mmrerank.launch.launcher import DEFAULT_DEMO_CHECKPOINT
from mmrerank.model import Matryoshka2DReranker


@pytest.fixture(scope="module")
def demo() -> Matryoshka2DReranker:
    return Matryoshka2DReranker.from_pretrained(DEFAULT_DEMO_CHECKPOINT, device="cpu")


def test_it_is_labelled_a_demo(demo):
    assert demo.reranker.spec.model_name == "demo-tiny-trained"


def test_the_readme_example_ranks_the_river_first(demo):
    ranked = demo.rerank(
        "where does the river meet the sea?", ["A recipe for bread.", "The river reaches the sea at the delta."]
    )
    assert ranked[0][0] == "The river reaches the sea at the delta."


def top1_accuracy(demo, layer: int, dim: int, queries: int = 90) -> float:
    """Share of held-out queries whose relevant document outscores both near misses (chance: 1/3)."""
    world = facts.held_out_world(seed=5)
    hits = 0
    for index in range(queries):
        language = facts.LANGUAGES[index % len(facts.LANGUAGES)]
        fact = world.facts[world.rng.choice(world.places)][world.rng.choice(facts.RELATIONS)]
        documents = [
            world.document(language, [f], world.filler_length(False), fact) for f in [fact, *world.near_misses(fact)]
        ]
        scores = demo.compute_score([(fact.question(language), d) for d in documents], layer_idx=layer, dim_idx=dim)
        hits += scores[0] > max(scores[1:])
    return hits / queries


def test_held_out_queries_score_better_deeper_and_wider(demo):
    spec = demo.reranker.spec
    deepest = top1_accuracy(demo, spec.default_layer, spec.default_dim)
    shallowest = top1_accuracy(demo, min(spec.layer_indices), min(spec.dim_indices))
    assert deepest > 0.5  # chance is 1/3; measured: 0.59 at (6, 128), 0.38 at (1, 8)
    assert deepest > shallowest + 0.1


def test_the_needle_is_found_above_chance_in_full_context(demo):
    """The demo finds the answer at the START of a 1,500-token document above chance.

    (It does not yet find the END as often as the START: see docs/benchmarks.md.)
    """
    cases = needle_cases(10, sentences_for(demo, 1500), distractors=4)
    layer, dim = demo.reranker.spec.default_layer, demo.reranker.spec.default_dim
    full = found_rate(demo, cases, layer, dim, None)
    assert full["START"] >= 0.4  # measured: 0.5; chance is 1 in 5
