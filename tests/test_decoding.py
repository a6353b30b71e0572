"""The continuous-batching decode engine: slot cache moves, refilled rows, and the replica's decode thread."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from services.decode_loop import DecodeLoop
from trainers.models.checkpoints import Policy, load_policy
from trainers.data.problems import load_problems
from trainers.engine import fast_tokenizer
from trainers.engine.decoding import (PREFILL_PADDING, DecodeEngine, DecodeRequest, decode_all, equals_token_ids,
                                     length_groups)
from trainers.engine.kv_slots import SlotCache
from trainers.core.prompting import format_prompt


def _prefill(rows: int, length: int, layers: int = 2) -> DynamicCache:
    cache = DynamicCache()
    for layer in range(layers):
        k = torch.arange(rows * 3 * length * 4, dtype=torch.float).reshape(rows, 3, length, 4) + 1000 * layer
        cache.update(k, -k, layer)
    return cache


def test_slot_cache_keeps_every_row_through_moves_and_growth():
    cache = SlotCache(num_layers=2)
    prefill = _prefill(rows=2, length=5)
    cache.window.start = cache.window.end = 5
    cache.allocate_like(prefill, slots=3, capacity=8)
    cache.place(0, prefill, row=0, length=5)
    cache.place(1, prefill, row=1, length=3)
    cache.window.start = 0
    starts = torch.tensor([0, 2])
    expected = [prefill.layers[1].keys[0, :, -5:].clone(), prefill.layers[1].keys[1, :, -3:].clone()]

    shift = cache.make_room(left=7, right=4)  # a 7-token prompt and 4 more steps do not fit: move and grow
    starts += shift
    assert cache.capacity >= cache.window.end + 4 and cache.window.end >= 7
    layer = cache.layers[1]
    assert torch.equal(layer.keys[0, :, starts[0]:cache.window.end], expected[0])
    assert torch.equal(layer.keys[1, :, starts[1]:cache.window.end], expected[1])
    assert torch.equal(layer.values[1, :, starts[1]:cache.window.end], -expected[1])
    assert cache.make_room(left=7, right=4) == 0  # now it fits: nothing moves

    cache.move_slot(1, 2)
    assert torch.equal(layer.keys[2, :, starts[1]:cache.window.end], expected[1])


@pytest.fixture(scope="module")
def trained(sft_result, synthetic_dir):
    model, tokenizer = load_policy(sft_result.checkpoint)
    problems = load_problems(synthetic_dir / "test.jsonl").problems[:24]
    return model, tokenizer, problems


def _mixed_rows(problems: list[Any]) -> list[DecodeRequest]:
    """Rows that end at very different steps (so slots are refilled mid-batch), prompts of very different
    lengths (so the cache window moves and grows), greedy and sampled, calculator on and off."""
    rows = []
    for i, p in enumerate(problems):
        prompt = format_prompt(p.question if i % 7 else " ".join([p.question] * 4))
        rows.append(DecodeRequest(prompt=prompt, max_new_tokens=[64, 5, 23, 40, 1][i % 5],
                                  temperature=0.0 if i % 3 else 0.9, top_p=0.9 if i % 2 else 1.0,
                                  calculator=i % 4 != 1, seed=100 + i))
    return rows


@pytest.mark.ray
def test_refilled_slots_decode_exactly_as_rows_decoded_alone(trained):
    model, tokenizer, problems = trained
    rows = _mixed_rows(problems)
    alone = decode_all(model, tokenizer, rows, batch_size=1)
    for batch in (4, 7):
        together = decode_all(model, tokenizer, rows, batch_size=batch)
        assert [(d.text, d.num_tokens, d.finish_reason, d.calculator_overrides) for d in together] == \
               [(d.text, d.num_tokens, d.finish_reason, d.calculator_overrides) for d in alone]
    assert all(d.num_tokens <= r.max_new_tokens for d, r in zip(alone, rows))
    assert any(d.calculator_overrides for d in alone)


@pytest.mark.ray
def test_engine_refills_slots_while_other_rows_decode(trained):
    model, tokenizer, problems = trained
    engine = DecodeEngine(model, tokenizer, max_batch=4)
    finished: dict[int, Any] = {}
    engine.add(_mixed_rows(problems)[:12], lambda index, decoded: finished.__setitem__(index, decoded))
    engine.run()
    assert sorted(finished) == list(range(12))
    # static batching would run each wave of 4 rows until its longest row ends; refilling a slot as soon as
    # its row ends takes fewer steps
    static_steps = sum(max(finished[i].num_tokens for i in range(w, w + 4)) for w in (0, 4, 8))
    assert engine.steps < static_steps


def _count_prefills(monkeypatch: Any) -> list[tuple[int, int, int]]:
    """(rows, width, real tokens) of each prefill forward the engine runs from now on (through the model's own
    forward or the lean step's)."""
    prefills: list[tuple[int, int, int]] = []
    prefill = DecodeEngine._prefill

    def counting_prefill(self: DecodeEngine, prompts: list[tuple[int, ...]]) -> Any:
        prefills.append((len(prompts), max(map(len, prompts)), sum(map(len, prompts))))
        return prefill(self, prompts)

    monkeypatch.setattr(DecodeEngine, "_prefill", counting_prefill)
    return prefills


@pytest.mark.ray
def test_samples_of_one_question_share_one_prefill_and_keep_their_own_seeds(trained, monkeypatch):
    model, tokenizer, problems = trained
    rows = [DecodeRequest(prompt=format_prompt(p.question), max_new_tokens=24, temperature=0.9, seed=k)
            for p in problems[:3] for k in range(4)]
    alone = decode_all(model, tokenizer, rows, batch_size=1)
    prefills = _count_prefills(monkeypatch)
    together = decode_all(model, tokenizer, rows, batch_size=12)
    assert sum(rows for rows, _, _ in prefills) == 3  # one prefill row per distinct question
    assert [d.text for d in together] == [d.text for d in alone]
    assert len({d.text for d in together[:4]}) > 1  # each sample follows its own seed


@pytest.mark.ray
def test_decode_loop_runs_two_policies_at_once_and_survives_a_bad_request(trained):
    model, tokenizer, problems = trained
    rows = [DecodeRequest(prompt=format_prompt(p.question), max_new_tokens=32) for p in problems[:6]]
    expected = decode_all(model, tokenizer, rows)
    old, new = Policy("v1", "in-memory", model, tokenizer), Policy("v2", "in-memory", model, tokenizer)

    async def scenario() -> tuple[list[Any], ...]:
        loop = DecodeLoop(max_batch=4)
        bad = loop.submit(old, [DecodeRequest(prompt=12345)])  # type: ignore[arg-type]
        first = loop.submit(old, rows[:3])
        second = loop.submit(new, rows[3:])
        empty = loop.submit(new, [])
        done = await asyncio.gather(first, second, empty)
        with pytest.raises(Exception):
            await bad
        after = await loop.submit(new, rows[:2])
        assert loop.alive
        return (*done, after)

    first, second, empty, after = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert [d.text for d in first + second] == [d.text for d in expected]
    assert empty == [] and [d.text for d in after] == [d.text for d in expected[:2]]


def _word_tokenizer(words: list[str]) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]"] + words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def test_token_sets_are_per_tokenizer_and_go_with_it():
    import gc

    before = len(fast_tokenizer._PER_TOKENIZER)
    for swap in range(20):  # hot swaps: each new tokenizer may land at the address of the one just dropped
        words = ["a", "b=", "c"] if swap % 2 else ["x=", "y", "z", "w="]
        tokenizer = _word_tokenizer(words)
        assert equals_token_ids(tokenizer) == {i for i, w in enumerate(["[UNK]"] + words) if w.endswith("=")}
        del tokenizer
        gc.collect()
    assert len(fast_tokenizer._PER_TOKENIZER) == before  # nothing kept for tokenizers that are gone


def test_every_token_table_of_the_decode_loop_comes_from_one_pass_over_the_vocabulary():
    from trainers.engine.decoding import angle_token_texts, hash_token_ids, space_token_ids

    words = [f"w{i}" for i in range(200)] + ["<<", ">>", "x=", "#", "<s>"]
    tokenizer = _word_tokenizer(words)
    tokenizer.add_special_tokens({"eos_token": "</s>"})
    decodes = []
    decode = tokenizer.decode
    tokenizer.decode = lambda ids, **kw: decodes.append(ids) or decode(ids, **kw)
    assert angle_token_texts(tokenizer)[tokenizer.eos_token_id] == ""  # left out of a decoded row
    assert angle_token_texts(tokenizer)[words.index("<s>") + 1] == "<s>"  # an ordinary word, written
    assert len(equals_token_ids(tokenizer)) == len(hash_token_ids(tokenizer)) == 1
    space_token_ids(tokenizer), fast_tokenizer.piece_texts(tokenizer)
    assert len(decodes) <= len(tokenizer) + 2  # once per id, again only for the added and special ones


def test_prefill_groups_prompts_by_length_so_padding_stays_small():
    lengths = [48, 12, 50, 13, 200, 49, 12, 51]
    groups = length_groups(lengths, padding=0.1)
    assert [sorted(lengths[i] for i in g) for g in groups] == [[12, 12, 13], [48, 49, 50, 51], [200]]
    for padding in (0.1, PREFILL_PADDING, 0.0):
        groups = length_groups(lengths, padding)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        for g in groups:
            assert len(g) * max(lengths[i] for i in g) <= (1 + padding) * sum(lengths[i] for i in g)
    assert length_groups([7] * 5) == [[0, 1, 2, 3, 4]]  # equal lengths: one forward


@pytest.mark.ray
def test_prompts_of_very_different_lengths_are_prefilled_with_little_padding(trained, monkeypatch):
    model, tokenizer, problems = trained
    rows = _mixed_rows(problems)[:14]  # every 7th prompt is four questions long
    alone = decode_all(model, tokenizer, rows, batch_size=1)
    prefills = _count_prefills(monkeypatch)
    together = decode_all(model, tokenizer, rows, batch_size=14)
    assert len(prefills) > 1 and sum(r for r, _, _ in prefills) == len(rows)
    assert all(r * width <= (1 + PREFILL_PADDING) * real for r, width, real in prefills)
    assert [d.text for d in together] == [d.text for d in alone]

