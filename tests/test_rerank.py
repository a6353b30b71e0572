"""Solution-cluster re-ranking: clusters by equivalent answer, and maj / rr_topk / weighted / weighted_topk."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.core.answers import answer_checker
from trainers.core.metrics import majority_vote
from trainers.core.rerank import STRATEGIES, choose, cluster_answers, rerank_correct

# Three clusters by size: 3 (low scores), 5 (high scores), 7 (one top-scored solution).
ANSWERS = [3.0, 5.0, 3.0, 7.0, 5.0, 3.0, None]
SCORES = [0.1, 0.9, 0.1, 0.99, 0.8, 0.1, 1.0]


def _pick(strategy: str, k: int | None = None, answers=ANSWERS, scores=SCORES, checker=None):
    cluster = choose(cluster_answers(answers, checker), strategy, scores, k)
    return None if cluster is None else cluster.answer


def test_clusters_are_ranked_by_size_then_first_seen_and_skip_missing_answers() -> None:
    clusters = cluster_answers(ANSWERS)
    assert [(c.answer, c.members) for c in clusters] == [(3.0, [0, 2, 5]), (5.0, [1, 4]), (7.0, [3])]
    assert [c.answer for c in cluster_answers([2.0, 1.0, 1.0, 2.0])] == [2.0, 1.0]  # a tie: seen first


@pytest.mark.parametrize(("strategy", "k", "answer"), [
    ("maj", None, 3.0),
    ("rr_topk", 2, 5.0),  # the top-scored solution (7) is outside the top-2 clusters
    ("rr_topk", 3, 7.0),
    ("weighted", None, 5.0),  # 0.9 + 0.8 beats 3 x 0.1 and 0.99
    ("weighted_topk", 1, 3.0),
    ("weighted_topk", 2, 5.0),
])
def test_each_strategy_picks_the_papers_answer(strategy: str, k: int | None, answer: float) -> None:
    assert _pick(strategy, k) == answer


def test_boxed_answers_cluster_by_math_verify_equivalence() -> None:
    boxed = answer_checker("boxed")
    clusters = cluster_answers([r"\frac{1}{2}", "3", "0.5", "x=3", "1/2", None, r"\frac12"], boxed)
    assert [(c.answer, c.votes) for c in clusters] == [(r"\frac{1}{2}", 4), ("3", 2)]
    result = rerank_correct([r"\frac{1}{2}", "3", "0.5", "x=3"], [0.1, 0.9, 0.1, 0.8], "3", k=2, checker=boxed)
    assert result == {"maj": False, "rr_topk": True, "weighted": True, "weighted_topk": True}


def test_no_answers_choose_nothing_and_nothing_is_correct() -> None:
    assert cluster_answers([None, float("nan")]) == []
    assert all(_pick(s, 2, [None, None], [0.5, 0.5]) is None for s in STRATEGIES)
    assert rerank_correct([None, None], [0.5, 0.5], 1.0, k=2) == dict.fromkeys(STRATEGIES, False)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: _pick("vote"), "unknown re-ranking strategy 'vote'"),
    (lambda: choose(cluster_answers([1.0]), "weighted"), "needs one score per solution"),
    (lambda: _pick("rr_topk", 0), "needs k >= 1"),
    (lambda: rerank_correct([1.0, 2.0], [0.5], 1.0, k=1), "1 scores for 2 answers"),
])
def test_bad_arguments_are_value_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


answer_lists = st.lists(st.one_of(st.none(), st.integers(0, 4).map(float)), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(answers=answer_lists, data=st.data())
def test_strategies_agree_where_the_paper_says_they_must(answers, data) -> None:
    scores = data.draw(st.lists(st.floats(0, 1), min_size=len(answers), max_size=len(answers)))
    clusters = cluster_answers(answers)
    # a partition of the present answers, ranked by votes
    assert sorted(i for c in clusters for i in c.members) == [i for i, a in enumerate(answers) if a is not None]
    assert [c.votes for c in clusters] == sorted((c.votes for c in clusters), reverse=True)
    maj = _pick("maj", answers=answers, scores=scores)
    assert maj == majority_vote(answers)[0]
    # top-1 leaves only the largest cluster; equal scores make the weighted vote a plain vote
    assert _pick("rr_topk", 1, answers, scores) == maj == _pick("weighted_topk", 1, answers, scores)
    assert _pick("weighted", answers=answers, scores=[0.5] * len(answers)) == maj
    every = max(1, len(clusters))
    assert _pick("weighted_topk", every, answers, scores) == _pick("weighted", answers=answers, scores=scores)
    present = [i for i, a in enumerate(answers) if a is not None]
    if present:  # with every cluster in, rr_topk follows the best-scored solution
        chosen = choose(clusters, "rr_topk", scores, every)
        assert chosen.best_score(scores) == max(scores[i] for i in present)
