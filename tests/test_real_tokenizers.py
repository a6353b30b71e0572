"""The calculator under real-vocabulary tokenizers: `=`, `<<`, `>>` merged with their neighbours (`)=`, `=$`,
` =<<`, `>>.`) and numbers in multi-digit pieces, for the three tokenizer kinds the presets declare.

The tokenizers are trained by `build_tokenizer` on GSM8K's own text (the test set next to the checkout), so
their merges are the ones GSM8K-trained vocabularies have. A row is driven the way `DecodeEngine` drives
it: before each step the calculator's queue wins, else the model's next token; `observe` after each token.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import memorise
from trainers.core.calculator import CalculatorError, calculate
from trainers.data.synthetic import SyntheticTaskConfig, corpus_texts
from trainers.engine import fast_tokenizer
from trainers.engine.calculator_forcing import _tails, encode_after, plan_forcing
from trainers.engine.decoding import DecodeEngine, Decoded, DecodeRequest, RowCalculator, equals_token_ids
from trainers.models.scratch import (PRESETS, TOKENIZER_KINDS, build_preset_tokenizer, build_tokenizer,
                                     model_config)

KINDS = TOKENIZER_KINDS  # single-digits (tiny/small), gpt2 (llama-100m), llama3 (llama-100m-digits3)


@pytest.fixture(scope="module")
def gsm8k_texts(gsm8k_test_file) -> list[str]:
    rows = [json.loads(line) for line in gsm8k_test_file.read_text().splitlines()]
    return [f"{r['question']}\n{r['answer']}" for r in rows]


@pytest.fixture(scope="module")
def tokenizers(gsm8k_texts):
    return {kind: build_tokenizer(gsm8k_texts, 4000, kind) for kind in KINDS}


def _texts(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def drive(tokenizer, script: list[int]) -> tuple[list[int], RowCalculator, int]:
    """Feed `script` (the model's tokens) to a row until the calculator's forcing is written or the script
    ends; return the row's ids, its calculator, and how many of the script's tokens the row kept."""
    calc = RowCalculator(tokenizer)
    tokens: list[int] = []
    taken = 0
    while True:
        token = calc.forced_token()
        if token is None:
            if calc.overrides or taken == len(script):
                return tokens, calc, taken - 1 if calc.overrides else taken
            token, taken = script[taken], taken + 1
        tokens.append(token)
        calc.observe(tokens)


def check_forcing(tokenizer, head: str, expr: str, script: list[int]) -> bool:
    """The model writes `script` (ids of a text that starts with `head + expr + '='`); after the row is
    driven, its text is `head + expr + '=' + value + '>>'` and its ids are the tokenizer's own wherever the
    model's committed tokens allow. Returns whether they are the tokenizer's encoding of the whole text."""
    tokens, calc, kept = drive(tokenizer, script)
    try:
        value = calculate(expr)
    except CalculatorError:  # refused: nothing forced, the model's text stands
        assert calc.overrides == [] and tokens == script
        return False
    final = f"{head}{expr}={value}>>"
    assert calc.overrides == [{"expr": expr, "result": value}]
    assert tokenizer.decode(tokens) == final
    assert tokens[:kept] == script[:kept]  # tokens already fed to the model never change
    canonical = tokenizer.encode(final, add_special_tokens=False)
    if canonical[:kept] == tokens[:kept]:
        # the model wrote the text as the tokenizer does: so does the row, forced part included
        assert tokens == canonical, (_texts(tokenizer, tokens), _texts(tokenizer, canonical))
        return True
    # a committed token ends where the tokenizer would merge across: the rest is encoded on its own
    rest = final[len(tokenizer.decode(tokens[:kept])):]
    assert tokens[kept:] in (tokenizer.encode(rest, add_special_tokens=False),
                             canonical[len(canonical) - len(tokens) + kept:])
    return False


def test_presets_declare_their_tokenizer_and_the_realistic_ones_have_a_realistic_shape():
    assert {p.tokenizer for name, p in PRESETS.items() if name in ("tiny", "small")} == {"single-digits"}
    assert PRESETS["llama-100m"].tokenizer == "gpt2" and PRESETS["llama-100m-digits3"].tokenizer == "llama3"
    tokenizer = build_preset_tokenizer("llama-100m", corpus_texts(SyntheticTaskConfig(seed=0), 300))
    assert len(tokenizer) == 32000 and tokenizer.model_max_length == 2048
    with torch.device("meta"):  # the shape, without allocating 100M random weights
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(model_config(PRESETS["llama-100m"], tokenizer))
    assert 90e6 < sum(p.numel() for p in model.parameters()) < 110e6
    assert model.config.max_position_embeddings == 2048 and model.config.num_key_value_heads == 4
    # the unused entries that fill the vocabulary decode as text and are never produced by encoding
    assert tokenizer.decode([31999]) == "<unused31999>"
    assert tokenizer.encode("<unused31999>", add_special_tokens=False) != [31999]


def test_tokenizer_kinds_split_numbers_like_their_families(tokenizers):
    def longest_digit_run(kind: str) -> int:
        texts = _texts(tokenizers[kind], range(len(tokenizers[kind])))
        return max(len(run) for t in texts for run in re.findall(r"\d+", t) or [""])

    assert longest_digit_run("single-digits") == 1
    assert longest_digit_run("llama3") == 3  # Llama-3's pattern cuts digit runs into chunks of at most 3
    assert longest_digit_run("gpt2") > 3  # GPT-2's lets BPE merge a whole run
    pieces = tokenizers["llama3"].backend_tokenizer.pre_tokenizer.pre_tokenize_str("1234567")
    assert [piece for piece, _ in pieces] == ["123", "456", "7"]
    for kind in KINDS:  # GSM8K-trained vocabularies merge the annotation's marks with their neighbours
        merged = {t for t in _texts(tokenizers[kind], equals_token_ids(tokenizers[kind])) if t != "="}
        assert {")=", "=$", "=.", " =<<"} <= merged, kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("head, expr, after", [
    ("She earned 0.2 x 50 = $<<", "0.2*50", "$10>>10"),   # the model's `=$` is replaced by `=`
    ("The total is <<", "3*(4+12)", "48>>48."),           # `)=` closes the expression
    ("Natalia sold 48/2 =<<", "48/2", "24>>24 clips"),    # ` =<<` opened the annotation
    ("He has <<", "1234*5678", "7006652>>"),               # a result of several multi-digit pieces
    ("It drops by <<", "3-8", "-5>>"),                     # a negative result
    ("Each gets <<", "1/8", ".125>>"),                     # `=.`: GSM8K's leading-dot decimals
    ("<<", "$1,200*3", "3600>>"),                          # `$` and thousands separators in the expression
])
def test_forcing_writes_the_result_as_the_tokenizer_encodes_it(tokenizers, kind, head, expr, after):
    tokenizer = tokenizers[kind]
    script = tokenizer.encode(f"{head}{expr}={after}", add_special_tokens=False)
    assert check_forcing(tokenizer, head, expr, script)  # a model that writes like the tokenizer


@pytest.mark.parametrize("kind", KINDS)
def test_a_boundary_the_model_committed_stays_and_the_rest_is_the_tokenizers(tokenizers, kind):
    """The model wrote `)` and `=$` where the tokenizer has `)=`: the `)` is already in the model's cache, so
    the row keeps it, and `=$` is replaced by `=51>>` as the tokenizer encodes it on its own."""
    tokenizer = tokenizers[kind]
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    script = enc("Total: <<(3+4*12") + enc(")") + enc("=$")
    assert len(enc(")=")) == len(enc("=$")) == 1  # the tokenizer would have merged both
    tokens, calc, kept = drive(tokenizer, script)
    assert tokens[:kept] == script[:-1]
    assert tokenizer.decode(tokens) == "Total: <<(3+4*12)=51>>"
    assert tokens[kept:] == enc("=51>>") and calc.overrides == [{"expr": "(3+4*12)", "result": "51"}]


def test_forcing_replaces_only_a_token_that_closes_an_open_annotation(tokenizers):
    tokenizer = tokenizers["gpt2"]
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    for text in ["48/2 =<<", "So 3+4 = 7", "<<2*3=6>>6 and 6/2 =", "<<2*3=6>> =$", "<<=", "<<1/0=", "<<2*3"]:
        assert plan_forcing(tokenizer, enc(text)) is None, text
    head = "Weng earns 12/60 = $<<12/60"
    script = enc(head + "=$")
    forcing = plan_forcing(tokenizer, script)
    assert (forcing.expr, forcing.result) == ("12/60", "0.2")
    assert tokenizer.decode(script[:-1]) == head and tokenizer.decode(forcing.ids) == "=0.2>>"
    assert script[:-1] + forcing.ids == enc(head + "=0.2>>")
    # where the tokenizer would merge across the committed end, the continuation is encoded on its own
    assert encode_after(tokenizer, "<<(1+1", ")=2>>") == enc(")=2>>")
    assert encode_after(tokenizer, "<<(1+1)", "=2>>") == enc("=2>>")


NUMBERS = st.one_of(
    st.integers(0, 10**7).map(str),
    st.tuples(st.integers(0, 999), st.integers(1, 99)).map(lambda t: f"{t[0]}.{t[1]}"),
    st.integers(1, 99).map(lambda n: f".{n}"),
    st.integers(1000, 999999).map(lambda n: f"${n:,}"),
)
OPERATORS = st.sampled_from(["+", "-", "*", "/", " + ", " * "])


@st.composite
def expressions(draw, depth: int = 2) -> str:
    if depth == 0 or draw(st.booleans()):
        return draw(NUMBERS)
    left, right = draw(expressions(depth - 1)), draw(expressions(depth - 1))
    expr = f"{left}{draw(OPERATORS)}{right}"
    return f"({expr})" if draw(st.booleans()) else expr


HEADS = st.sampled_from(["", "So ", "Natalia sold 48/2 = ", "She earned 0.2 x 50 = $", "He has 12 apples, ",
                         "Total:\n", "The price is $"])
OPENINGS = st.sampled_from(["<<", " <<", "$<<", " $<<", "=<<", " =<<"])
AFTERS = st.sampled_from(["", "$", ".", " ", "5>>5", "$<<", "12>>12.", "=", ">>", "\n"])


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=HEADS, opening=OPENINGS, expr=expressions(), after=AFTERS, data=st.data())
def test_forcing_holds_for_random_annotations_and_model_spellings(tokenizers, kind, head, opening, expr,
                                                                   after, data):
    """Random expressions in random contexts, written by the model either as the tokenizer would or split
    at random points (a model may spell text in any tokens): the row always ends in `<<expr=value>>`, and
    its ids are the tokenizer's own wherever the model's committed tokens allow."""
    tokenizer = tokenizers[kind]
    written = f"{head}{opening}{expr}={after}"
    cuts = sorted(data.draw(st.sets(st.integers(1, len(written) - 1), max_size=4), label="cuts"))
    script = [i for a, b in zip([0, *cuts], [*cuts, len(written)])
              for i in tokenizer.encode(written[a:b], add_special_tokens=False)]
    check_forcing(tokenizer, head + opening, expr, script)


def drive_unfiltered(tokenizer, script: list[int]) -> tuple[list[int], list[dict[str, str]]]:
    """What `drive` gives when `plan_forcing` runs after every token that writes an '='."""
    eq_ids = equals_token_ids(tokenizer)
    for end in range(1, len(script) + 1):
        if script[end - 1] in eq_ids and (forcing := plan_forcing(tokenizer, script[:end])) is not None:
            return script[:end - 1] + forcing.ids, [{"expr": forcing.expr, "result": forcing.result}]
    return script, []


MARKED = st.lists(st.sampled_from(["<<", "<", ">>", ">", "=", "1", "23", "+", "*", " ", "$", "\n", "4.5"]),
                  min_size=1, max_size=16).map("".join)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MARKED, data=st.data())
def test_tracking_open_annotations_skips_no_forcing(tokenizers, kind, text, data):
    """A row runs `plan_forcing` only for an '=' written while its text may hold an open `<<`; on any text of
    '<', '>', '=' and numbers, spelled in any tokens, it forces exactly what checking every '=' forces."""
    tokenizer = tokenizers[kind]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=6), label="cuts"))
    script = [i for a, b in zip([0, *cuts], [*cuts, len(text)])
              for i in tokenizer.encode(text[a:b], add_special_tokens=False)]
    tokens, calc, _ = drive(tokenizer, script)
    assert (tokens, calc.overrides) == drive_unfiltered(tokenizer, script)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MARKED, extra=st.lists(st.integers(0, 3999), max_size=6), skip=st.booleans())
def test_the_loops_tokenizer_calls_give_what_transformers_gives(tokenizers, kind, text, extra, skip):
    """`fast_tokenizer.encode`/`decode` call the Rust backend directly; they give what the transformers calls
    give (special tokens and any ids included)."""
    tokenizer = tokenizers[kind]
    ids = tokenizer.encode(text, add_special_tokens=False) + extra + [tokenizer.eos_token_id]
    assert fast_tokenizer.encode(tokenizer, text) == tokenizer.encode(text, add_special_tokens=False)
    assert (fast_tokenizer.decode(tokenizer, ids, skip_special_tokens=skip)
            == tokenizer.decode(ids, skip_special_tokens=skip))


@pytest.fixture(scope="module")
def wordpiece(gsm8k_texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(cleanup=False)  # the clean-up is left to transformers
    backend.train_from_iterator(gsm8k_texts, trainers.WordPieceTrainer(vocab_size=2000,
                                                                       special_tokens=["[UNK]", "[SEP]"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]",
                                   clean_up_tokenization_spaces=True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MARKED, skip=st.booleans())
def test_decoding_falls_back_where_only_transformers_cleans_up_spaces(wordpiece, text, skip):
    """A WordPiece tokenizer decodes `4.5` as `4 . 5`, which transformers' clean-up turns into `4. 5`."""
    ids = wordpiece.encode(text, add_special_tokens=False) + [wordpiece.sep_token_id]
    assert wordpiece.clean_up_tokenization_spaces
    assert (fast_tokenizer.decode(wordpiece, ids, skip_special_tokens=skip)
            == wordpiece.decode(ids, skip_special_tokens=skip))


def test_the_engine_feeds_the_model_the_token_that_replaced_its_own(tokenizers):
    """Through the real engine: a tiny Llama that learned to write `=$` inside an annotation has its `=$`
    replaced by `=` and the result. What it writes after the forced `>>` is its greedy choice after the row's
    final ids, recomputed without a cache: the cache held the replacement, not the token the model chose."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizers["gpt2"]
    prompt = "Q: Weng earns $12 an hour for 5 hours. How much does she earn?\nA:"
    ids = torch.tensor([tokenizer.encode(prompt + " 12*5 = $<<12*5=$70>>70 dollars.\n#### 70")])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    memorise(model, ids, lr=3e-2, max_steps=150, stop_loss=0.02)
    model.eval()

    engine = DecodeEngine(model, tokenizer, max_batch=2)
    results: dict[int, Decoded] = {}
    engine.add([DecodeRequest(prompt=prompt, max_new_tokens=14),
                DecodeRequest(prompt=prompt, max_new_tokens=14, calculator=False)], results.__setitem__)
    row = engine.waiting[0][0]
    engine.run()
    assert results[1].text.startswith("12*5 = $<<12*5=$70>>70")  # what the model writes on its own
    assert results[0].text.startswith("12*5 = $<<12*5=60>>")
    assert results[0].calculator_overrides == [{"expr": "12*5", "result": "60"}]
    prompt_ids = tokenizer.encode(prompt)
    free = next(k for k in range(len(row.tokens)) if tokenizer.decode(row.tokens[:k]).endswith("=60>>"))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + row.tokens])).logits[0]
    greedy = logits[len(prompt_ids) - 1:-1].argmax(-1).tolist()
    assert free < len(row.tokens) and row.tokens[free:] == greedy[free:]


def test_single_digit_rows_are_forced_as_before_one_token_per_digit():
    """The tiny/small presets' tokenizer on the synthetic task's own rationales: the model's `=` stays and the
    result is forced one digit per token, then `>>` (what the demo's calculator always did)."""
    texts = corpus_texts(SyntheticTaskConfig(seed=0), 300)
    tokenizer = build_preset_tokenizer("tiny", texts)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    checked = 0
    for line in (line for text in texts[:40] for line in text.splitlines()):
        for match in re.finditer(r"<<([^=<>]+)=", line):  # one annotation per rationale line
            script = enc(line[:match.end()])
            tokens, calc, kept = drive(tokenizer, script)
            result = calculate(match.group(1))
            assert tokens[:kept + 1] == script and calc.overrides == [{"expr": match.group(1), "result": result}]
            assert tokens[kept + 1:] == [i for d in result for i in enc(d)] + enc(">>")
            assert all(len(tokenizer.decode([i])) == 1 for i in tokens[kept + 1:-1])
            checked += 1
    assert checked > 80


SPACED = st.lists(st.sampled_from(["<<", ">>", "=", "$", "1", "23", "4567", "+", "*", "(", ")", " ", "  ", "\n",
                                   " \n", "\t", "So", " she", "'s", ".", ",", "é", "x"]),
                  min_size=1, max_size=20).map("".join)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=SPACED, more=SPACED)
def test_encoding_from_the_space_cut_gives_the_whole_texts_ids(tokenizers, kind, text, more):
    """The calculator encodes only a row's end (`space_cut`): for every preset kind, the ids of the text up to
    the cut followed by the ids from it are the ids of the whole text, whatever comes after."""
    _check_space_cut(tokenizers[kind], text, more)


def _check_space_cut(tokenizer, text: str, more: str) -> None:
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    assert fast_tokenizer.cuts_at_spaces(tokenizer)
    cut = fast_tokenizer.space_cut(tokenizer, text)
    assert cut == 0 or (text[cut] == " " and not text[cut - 1].isspace())
    assert enc(text[:cut]) + enc(text[cut:] + more) == enc(text + more)
    _check_row_cut(tokenizer, text, more)


def _check_row_cut(tokenizer, text: str, more: str) -> None:
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    cut = fast_tokenizer.row_cut(tokenizer, text, more)
    assert enc(text[:cut]) + enc(text[cut:] + more) == enc(text + more)
    if more[:1] == "=" and text[-1:].isascii() and text[-1:].isdigit():
        assert fast_tokenizer.cuts_at_equals(tokenizer) and cut == len(text)


# a row's text up to an annotation's '=' after a digit, and what the calculator writes from that '='
BEFORE_EQUALS = st.tuples(SPACED, st.sampled_from("0123456789")).map("".join)
FROM_EQUALS = st.tuples(st.sampled_from(["=", "=-", "=$"]), SPACED).map("".join)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=BEFORE_EQUALS, more=FROM_EQUALS)
def test_encoding_from_an_equals_sign_after_a_digit_gives_the_whole_texts_ids(tokenizers, kind, text, more):
    """Where the calculator writes from an '=' that follows a digit (`48/2` + `=24>>`), a piece starts there for
    every preset kind: the continuation's own ids are the tail of the whole text's, whatever came before."""
    _check_row_cut(tokenizers[kind], text, more)


@pytest.fixture(scope="module")
def qwen2_style(gsm8k_texts):
    """A byte-level BPE split by Qwen2's pattern (its tokenizer.json's pre-tokenizer: single digits)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(fast_tokenizer.QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(gsm8k_texts, trainers.BpeTrainer(
        vocab_size=3000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=SPACED, more=SPACED)
def test_encoding_from_the_space_cut_gives_the_whole_texts_ids_under_qwen2s_pattern(qwen2_style, text, more):
    _check_space_cut(qwen2_style, text, more)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=BEFORE_EQUALS, more=FROM_EQUALS)
def test_encoding_from_an_equals_sign_after_a_digit_gives_the_whole_texts_ids_under_qwen2s_pattern(
        qwen2_style, text, more):
    _check_row_cut(qwen2_style, text, more)


def test_tokenizers_that_may_not_start_a_piece_at_an_equals_sign_are_not_cut_there(tokenizers):
    """A ByteLevel that puts a space in front of a text, an added token holding '=', a normalizer, a pattern
    outside the known ones: no cut at the '=' (the space cut, where it applies, stays)."""
    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def variant(change) -> PreTrainedTokenizerFast:
        backend = Tokenizer.from_str(tokenizers["gpt2"].backend_tokenizer.to_str())
        change(backend)
        return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)

    prefixed = variant(lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True)))
    added = variant(lambda b: b.add_tokens([AddedToken("2=2")]))
    normalized = variant(lambda b: setattr(b, "normalizer", normalizers.NFKC()))
    unknown = variant(lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\S+"), behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False)])))
    text, more = "So 48/2", "=24>>"
    for tokenizer in (prefixed, added, normalized, unknown):
        assert not fast_tokenizer.cuts_at_equals(tokenizer)
        assert fast_tokenizer.row_cut(tokenizer, text, more) == fast_tokenizer.space_cut(tokenizer, text) < len(text)
    assert fast_tokenizer.cuts_at_equals(tokenizers["gpt2"])
    # what the guard prevents: `=24>>` alone gets the prefix space, after `48/2` it does not
    enc = lambda s: prefixed.encode(s, add_special_tokens=False)  # noqa: E731
    assert enc(text) + enc(more) != enc(text + more)
    enc = lambda s: added.encode(s, add_special_tokens=False)  # noqa: E731
    assert enc("48/2") + enc("=24>>") != enc("48/2=24>>")


def test_calculator_encodings_are_remembered_per_tokenizer_until_forgotten(tokenizers, monkeypatch):
    gpt2, llama3 = tokenizers["gpt2"], tokenizers["llama3"]
    real = fast_tokenizer.encode
    calls = []
    monkeypatch.setattr(fast_tokenizer, "encode", lambda tok, text: calls.append(text) or real(tok, text))
    for tokenizer in (gpt2, llama3):
        fast_tokenizer.forget_encodings(tokenizer)
    first = encode_after(gpt2, "So 48/2", "=24>>")
    first.append(0)  # a caller's list is its own
    # the same result after another expression: encoded once, the continuation's own ids
    assert encode_after(gpt2, "Then 96/4", "=24>>") == real(gpt2, "=24>>") and calls == ["=24>>"]
    encode_after(llama3, "So 48/2", "=24>>")  # another tokenizer remembers its own
    assert calls == ["=24>>"] * 2
    fast_tokenizer.forget_encodings(gpt2)
    encode_after(gpt2, "So 48/2", "=24>>")
    assert calls == ["=24>>"] * 3


def test_tokenizers_that_may_join_across_a_space_are_encoded_whole(tokenizers, wordpiece):
    """A pre-tokenizer outside the known ones (here pieces of two words), a normalizer, known parts that never
    split at spaces, or WordPiece's splitting: no cut, the whole row is encoded. Cutting anyway would change
    ids."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def variant(change) -> PreTrainedTokenizerFast:
        backend = Tokenizer.from_str(tokenizers["gpt2"].backend_tokenizer.to_str())
        change(backend)
        return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)

    joined = variant(lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\S+(?: \S+)?"), behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False)])))
    normalized = variant(lambda b: setattr(b, "normalizer", normalizers.NFKC()))
    unsplit = variant(lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(use_regex=False)])))
    for tokenizer in (joined, normalized, unsplit, wordpiece):
        assert not fast_tokenizer.cuts_at_spaces(tokenizer) and fast_tokenizer.space_cut(tokenizer, "a b c") == 0
    # what the guard prevents: `He So 12` is `He So` + ` ` + `12` to this tokenizer, ` So 12` is ` ` + `So 12`
    text, more = "He So", " 12"
    enc = lambda s: joined.encode(s, add_special_tokens=False)  # noqa: E731
    cut = text.rfind(" ")
    assert enc(text[:cut]) + enc(text[cut:] + more) != enc(text + more)


@pytest.fixture(scope="module")
def metaspace(gsm8k_texts):
    """A SentencePiece-style BPE (Metaspace pre-tokenizer and decoder, as in T5 or Mistral's tokenizers): its
    decode is not its tokens' bytes joined, and it is not one of the known space-led splitters, so the
    calculator decodes and encodes whole rows for it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    backend.decoder = decoders.Metaspace(prepend_scheme="never")
    backend.train_from_iterator(gsm8k_texts, trainers.BpeTrainer(vocab_size=3000, special_tokens=["</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", clean_up_tokenization_spaces=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=HEADS, opening=OPENINGS, expr=expressions(), after=AFTERS, data=st.data())
def test_forcing_holds_for_a_tokenizer_without_byte_level_pieces(metaspace, head, opening, expr, after, data):
    """The same property for the SentencePiece-style tokenizer, which takes the calculator's general path."""
    assert fast_tokenizer.piece_texts(metaspace) is None and not fast_tokenizer.cuts_at_spaces(metaspace)
    written = f"{head}{opening}{expr}={after}"
    cuts = sorted(data.draw(st.sets(st.integers(1, len(written) - 1), max_size=4), label="cuts"))
    script = [i for a, b in zip([0, *cuts], [*cuts, len(written)])
              for i in metaspace.encode(written[a:b], add_special_tokens=False)]
    check_forcing(metaspace, head + opening, expr, script)


@pytest.mark.parametrize("kind", KINDS)
def test_byte_level_tokens_texts_join_to_the_decoded_text(tokenizers, kind):
    """`piece_texts`: for the presets' byte-level tokenizers, ids whose texts are all listed decode to their
    texts joined; a token holding part of a character is not listed."""
    tokenizer = tokenizers[kind]
    texts = fast_tokenizer.piece_texts(tokenizer)
    assert texts is not None and tokenizer.eos_token_id not in texts
    assert any(tokenizer.decode([i]) == "\ufffd" for i in range(len(tokenizer)) if i not in texts)
    ids = tokenizer.encode("Natalia sold 48/2 = <<48/2=24>>24 clips. Café: $1,200 — ½\n#### 72",
                           add_special_tokens=False)
    listed = [i for i in ids if i in texts]
    assert len(listed) < len(ids) and tokenizer.decode(listed) == "".join(texts[i] for i in listed)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=SPACED, special=st.booleans())
def test_a_rows_text_joined_from_token_texts_is_its_decoded_text(tokenizers, metaspace, kind, text, special):
    """`text_of`, what `plan_forcing` reads a row's text with: the decoded text (special tokens skipped),
    joined from token texts where they are all listed, decoded where not (a special token, part of a
    character, a tokenizer that is not byte-level)."""
    for tokenizer in (tokenizers[kind], metaspace):
        ids = tokenizer.encode(text, add_special_tokens=False) + ([tokenizer.eos_token_id] if special else [])
        assert fast_tokenizer.text_of(tokenizer, ids) == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=SPACED)
def test_the_tails_the_calculator_compares_are_the_decoded_tails(tokenizers, metaspace, kind, text):
    """What `encode_after` compares with the continuation: the text of each tail of the ids, joined from the
    tokens' texts or decoded, is what decoding that tail gives."""
    for tokenizer in (tokenizers[kind], metaspace):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert list(_tails(tokenizer, ids)) == [(s, tokenizer.decode(ids[s:])) for s in range(len(ids) - 1, -1, -1)]
