"""Batched, calculator-aware decoding with continuous batching.

`DecodeEngine` keeps up to `max_batch` rows decoding in one forward pass per step. When a row ends (EOS, a
complete `#### N`, or its token limit) its slot is given to the next waiting prompt at once, instead of the
whole batch waiting for its longest row as `model.generate` does; keys and values live in a preallocated
`SlotCache` (see `kv_slots.py`). We run our own step loop because `generate` cannot refill rows, and
transformers' own continuous batching cannot run a per-row calculator.

Per row, independent of which other rows share the batch:
- its own greedy / temperature / top-p choice with its own seeded `torch.Generator` (same seed -> same text);
- `RowCalculator`: when a row's newest token closes `<<expr=`, the safe calculator's `result>>` is written into
  that row only, encoded as the tokenizer encodes it in context (`calculator_forcing.py`), while other rows
  decode freely (`calculator=False` turns this off).

A caller that streams passes `on_text` to `add`: it gets each row's text as it grows, token by token, with
the calculator's forced results marked; the pieces put together are exactly the row's final `Decoded.text`.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from trainers.core.answers import final_answer_end
from trainers.engine.calculator_forcing import plan_forcing
from trainers.engine.cpu_linear import pack_linears
from trainers.engine.decode_attention import NAME as DECODE_ATTENTION
from trainers.engine.decode_attention import use_decode_attention
from trainers.engine.fast_tokenizer import decode, per_tokenizer, token_texts, visible_token_texts
from trainers.engine.kv_slots import SlotCache
from trainers.engine.llama_decode import LeanDecoder


MAX_NEW_TOKENS = 300  # the paper's cap on a rationale's tokens: every default in dpost reads this one


@dataclass(frozen=True)
class DecodeRequest:
    """One sequence to decode. temperature 0 means greedy."""

    prompt: str
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = MAX_NEW_TOKENS
    calculator: bool = True
    seed: int = 0


@dataclass
class Decoded:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS or a complete final answer) or "length"
    calculator_overrides: list[dict[str, str]] = field(default_factory=list)  # {expr, result}, in text order
    prompt_tokens: int = 0


# on_text(index, piece, override): `piece` extends the row's visible text; `override` is the calculator's
# {expr, result} when the piece was forced by it, else None.
TextCallback = Callable[[int, str, "dict[str, str] | None"], None]


def token_ids_where(tokenizer: PreTrainedTokenizerBase, predicate: Callable[[str], bool]) -> frozenset[int]:
    """Ids of the tokens whose text satisfies `predicate`."""
    return frozenset(i for i, text in token_texts(tokenizer).items() if predicate(text))


@per_tokenizer
def equals_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of every token whose text holds an '=' (`=`, `)=`, `=$`): only after one of these can a row need
    the calculator."""
    return token_ids_where(tokenizer, lambda t: "=" in t)


@per_tokenizer
def hash_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of every token whose text holds a '#': a row can only end in `#### N` after one."""
    return token_ids_where(tokenizer, lambda t: "#" in t)


@per_tokenizer
def space_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of every token whose text holds whitespace: where a final answer can end."""
    return token_ids_where(tokenizer, lambda t: any(c.isspace() for c in t))


@per_tokenizer
def angle_token_texts(tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
    """The text of every token that writes a '<' or '>', and '' for every token that writes nothing in a
    decoded row (special tokens): what a row's annotation state is tracked from."""
    return {i: t for i, t in visible_token_texts(tokenizer).items() if not t or "<" in t or ">" in t}


class RowCalculator:
    """One row's calculator: when its newest token closes `<<expr=`, the row writes `result>>` the way the
    tokenizer encodes it (`calculator_forcing.py`): the newest token may be replaced, the rest is queued.

    Most `=` a row writes are outside annotations (`48/2 = <<48/2=24>>`). The row tracks, from its tokens'
    '<' and '>' characters, whether its text holds a `<<` with no `>>` after it (what `pending_expression`
    looks for), so `plan_forcing`, which decodes and encodes the row's text, runs only for an `=` that may
    close an open annotation."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, enabled: bool = True) -> None:
        self.tokenizer = tokenizer
        self.enabled = enabled
        self.eq_token_ids = equals_token_ids(tokenizer)
        self.angle_texts = angle_token_texts(tokenizer)
        self.open = False  # the committed text has a `<<` with no `>>` after it
        self.last_angle = ""  # its last character when that is '<' or '>', else ""
        self.tracked = 0  # how many of the row's tokens the two fields above have seen
        self.queue: deque[int] = deque()
        self.overrides: list[dict[str, str]] = []

    def forced_token(self) -> int | None:
        return self.queue.popleft() if self.queue else None

    def observe(self, generated: list[int]) -> None:
        """Called after each new token of the row's generated ids, before the model is fed that token: so
        the calculator may still replace it (`generated[-1]`)."""
        if not self.enabled or not generated:
            return
        if self.tracked < len(generated) - 1:  # tokens added since the last call but the newest (none when
            for token in generated[self.tracked:-1]:  # called after every token, as the engine does)
                self._track(token)
        newest = generated[-1]
        if not self.queue and newest in self.eq_token_ids and (self.open or "<" in self.angle_texts.get(newest, "")):
            forcing = plan_forcing(self.tokenizer, generated)
            if forcing is not None:
                generated[-1] = newest = forcing.ids[0]
                self.queue.extend(forcing.ids[1:])
                self.overrides.append({"expr": forcing.expr, "result": forcing.result})
        if newest in self.angle_texts:  # runs for every token of every row: most write no '<' or '>'
            self._track(newest)
        else:
            self.last_angle = ""
        self.tracked = len(generated)

    def _track(self, token: int) -> None:
        text = self.angle_texts.get(token)
        if text is None:  # text without '<' or '>': no mark can span it
            self.last_angle = ""
            return
        for char in text:  # '' (a special token) changes nothing: the decoded row does not hold it
            if char in "<>":
                if char == self.last_angle:
                    self.open = char == "<"
                self.last_angle = char
            else:
                self.last_angle = ""


class _Row:
    """A request being decoded: its tokens so far and its per-row sampling state."""

    def __init__(self, index: int, request: DecodeRequest, prompt_ids: list[int],
                 tokenizer: PreTrainedTokenizerBase, on_text: TextCallback | None = None) -> None:
        self.index = index
        self.request = request
        self.prompt_ids = prompt_ids
        self.tokens: list[int] = []
        self.generator = torch.Generator().manual_seed(request.seed) if request.temperature > 0 else None
        self.calculator = RowCalculator(tokenizer, request.calculator)
        self.seen_marker = False  # a '#' was written: a final answer may be complete from now on
        self.on_text = on_text
        self.shown = 0  # characters of the visible text already passed to on_text
        self.forced: list[tuple[int, int, dict[str, str]]] = []  # (start, end, override) in the visible text

    def choose(self, logits: torch.Tensor, greedy: int) -> int:
        forced = self.calculator.forced_token()
        if forced is not None:
            return forced
        req = self.request
        if req.temperature <= 0:
            return greedy
        probs = torch.softmax(logits.float() / req.temperature, dim=-1)
        if req.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            sorted_probs[sorted_probs.cumsum(0) - sorted_probs >= req.top_p] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator)[0])


# A prefill pads every prompt to the longest in its forward; prompts are grouped by length so that padding
# stays under this share of the real tokens (one padded forward over prompts of mixed lengths computes about
# a third padding for word problems, as much as the useful work of many decode steps). Tighter groups mean
# more, smaller forwards: around 0.03-0.05 the two costs balance at both the demo's size and 100M.
PREFILL_PADDING = 0.05


def length_groups(lengths: Sequence[int], padding: float = PREFILL_PADDING) -> list[list[int]]:
    """Indices of `lengths` in groups of similar length, shortest first: each group padded to its longest
    member has at most `padding` x its real tokens of padding."""
    groups: list[list[int]] = []
    total = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and (len(groups[-1]) + 1) * lengths[i] <= (1 + padding) * (total + lengths[i]):
            groups[-1].append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return groups


class DecodeEngine:
    """Continuous batching over one model: `add` rows any time, `step` until `idle`; each finished row is
    passed to its `on_done(index, Decoded)` callback."""

    # Waiting rows are prefilled once this share of the slots is free (or nothing runs): a prefill per
    # finishing row would cost about a decode step each time.
    admit_when_free = 0.125

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_batch: int = 32) -> None:
        self.model = model
        pack_linears(model)  # float32 or bfloat16 on the CPU: oneDNN's packed weights
        use_decode_attention(model)  # on the CPU: a decode step's attention reads only each row's own columns
        self.lean = LeanDecoder.for_model(model)  # Llama-shaped models on the CPU: steps without the framework
        self.tokenizer = tokenizer
        self.device = model.device  # inputs go where the weights are; bookkeeping stays on the CPU
        self.max_batch = max(1, int(max_batch))
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.hash_ids = hash_token_ids(tokenizer)
        self.space_ids = space_token_ids(tokenizer)
        self.waiting: deque[tuple[_Row, Callable[[int, Decoded], None]]] = deque()
        self.active: list[tuple[_Row, Callable[[int, Decoded], None]]] = []  # slot i holds active[i]
        self.row_start = torch.zeros(self.max_batch, dtype=torch.long)
        self.cache = SlotCache(model.config.get_text_config().num_hidden_layers)
        self.bool_mask = model.config._attn_implementation in ("sdpa", DECODE_ATTENTION)
        params = inspect.signature(model.forward).parameters
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.steps = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.active

    def add(self, requests: Iterable[DecodeRequest], on_done: Callable[[int, Decoded], None],
            on_text: TextCallback | None = None) -> None:
        """Queue rows; `on_done` gets each row's index in `requests` and its result, `on_text` (if given) each
        row's text as it grows, before that row's `on_done`."""
        requests = list(requests)
        prompts = [r.prompt for r in requests]
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
        if any(not ids for ids in encoded):
            raise ValueError("a prompt encodes to no tokens")
        for i, (request, ids) in enumerate(zip(requests, encoded)):
            self.waiting.append((_Row(i, request, ids, self.tokenizer, on_text), on_done))

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting rows into free slots (one batched prefill), then decode one token for every row."""
        free = self.max_batch - len(self.active)
        if self.waiting and free and (free >= self.admit_when_free * self.max_batch or not self.active):
            self._admit(free)
        if self.active:
            self._decode()

    def run(self) -> None:
        while not self.idle:
            self.step()

    def _admit(self, free: int) -> None:
        admitted = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        # rows with the same prompt (n samples of one question) share one prefill
        sources: dict[tuple[int, ...], int] = {}
        source_of = [sources.setdefault(tuple(row.prompt_ids), len(sources)) for row, _ in admitted]
        prompts = list(sources)
        width = max(len(p) for p in prompts)
        prefills: list[tuple[DynamicCache, int]] = [(DynamicCache(), 0)] * len(prompts)  # (its group's cache, row)
        last = [torch.empty(0)] * len(prompts)  # each prompt's last position's logits
        for group in length_groups([len(p) for p in prompts]):
            prefill, logits = self._prefill([prompts[i] for i in group])
            for j, i in enumerate(group):
                prefills[i], last[i] = (prefill, j), logits[j]
        if self.cache.capacity == 0:
            longest_new = max(row.request.max_new_tokens for row, _ in admitted)
            self.cache.window.start = self.cache.window.end = width
            self.cache.allocate_like(prefills[0][0], self.max_batch, width + 2 * longest_new + 2)
        self.row_start += self.cache.make_room(width, 1)
        end = self.cache.window.end
        logits = torch.stack(last)[source_of].float()  # see _decode
        for (row, on_done), source in zip(admitted, source_of):
            n = len(prompts[source])
            slot = len(self.active)
            self.active.append((row, on_done))
            self.cache.place(slot, *prefills[source], n)
            self.row_start[slot] = end - n
        self._fit_window()
        self._advance(admitted, logits, logits.argmax(-1).tolist(), offset=len(self.active) - len(admitted))

    def _prefill(self, prompts: list[tuple[int, ...]]) -> tuple[DynamicCache, torch.Tensor]:
        """One forward over left-padded prompts: their cache and each one's last-position logits."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        prefill = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.lean is not None:
            return prefill, self.lean.prefill(ids, mask, positions, prefill)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), past_key_values=prefill, use_cache=True,
                         **self.keep_last)
        return prefill, out.logits[:, -1, :]

    def _decode(self) -> None:
        self.row_start += self.cache.make_room(0, 1)
        ids, positions, owned = self._decode_inputs()
        if self.lean is not None:
            logits = self.lean.decode(ids, positions, owned, self.cache)
        else:
            logits = self.model(**self._model_inputs(ids, positions, owned)).logits[:, -1, :]
        self.cache.window.end += 1
        self.steps += 1
        # float32 (a no-op for a float32 model): a bfloat16 argmax over the vocabulary is the slower kernel on
        # the CPU, and sampling reads float32 probabilities anyway; the choice is the same (exact conversion)
        logits = logits.float()
        self._advance(list(self.active), logits, logits.argmax(-1).tolist(), offset=0)

    def _decode_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decode step's inputs: each live row's newest token [rows], its position [rows, 1], written at
        column `window.end`, and the window columns it owns [rows, window + 1]."""
        rows = len(self.active)
        window = self.cache.window
        ids = torch.tensor([row.tokens[-1] for row, _ in self.active], dtype=torch.long)
        starts = self.row_start[:rows, None]
        owned = torch.arange(window.start, window.end + 1)[None, :] >= starts
        return ids, window.end - starts, owned

    def _model_inputs(self, ids: torch.Tensor, positions: torch.Tensor, owned: torch.Tensor) -> dict[str, Any]:
        """The same step as keyword arguments of the model's own forward."""
        if self.bool_mask:
            mask = owned[:, None, None, :]
        else:  # eager attention adds the mask to the scores
            mask = torch.zeros(owned.shape, dtype=self.model.dtype).masked_fill_(
                ~owned, torch.finfo(self.model.dtype).min)[:, None, None, :]
        return {"input_ids": ids[:, None].to(self.device), "attention_mask": mask.to(self.device),
                "position_ids": positions.to(self.device), "past_key_values": self.cache, "use_cache": True,
                **self.keep_last}

    def _advance(self, rows: list[tuple[_Row, Callable[[int, Decoded], None]]], logits: torch.Tensor,
                 greedy: list[int], offset: int) -> None:
        """Append each row's next token; finished rows report and leave their slot."""
        if logits.device.type != "cpu" and any(row.request.temperature > 0 for row, _ in rows):
            logits = logits.float().cpu()  # each row samples with its own CPU generator: same seed, same draw
        finished = []
        for i, (row, on_done) in enumerate(rows):
            token = row.choose(logits[i], greedy[i])
            reason = self._append(row, token)
            if reason is not None:
                finished.append(offset + i)
                result = self._result(row, reason)
                if row.on_text is not None:
                    self._show(row, result.text)
                on_done(row.index, result)
            elif row.on_text is not None:
                self._show(row, self._text(row).strip().rstrip("\ufffd"))
        for slot in sorted(finished, reverse=True):
            self._release(slot)

    def _append(self, row: _Row, token: int) -> str | None:
        """Add `token` to the row; return the finish reason if the row is done."""
        if token == self.eos:
            return "stop"
        known = len(row.calculator.overrides)
        row.tokens.append(token)
        row.calculator.observe(row.tokens)
        if row.on_text is not None and len(row.calculator.overrides) > known:
            self._mark_forced(row)
        row.seen_marker = row.seen_marker or token in self.hash_ids
        if row.seen_marker and token in self.space_ids and final_answer_end(self._text(row)) is not None:
            return "stop"
        if len(row.tokens) >= row.request.max_new_tokens:
            return "stop" if final_answer_end(self._text(row)) is not None else "length"
        return None

    def _text(self, row: _Row) -> str:
        return decode(self.tokenizer, row.tokens, skip_special_tokens=True)

    def _mark_forced(self, row: _Row) -> None:
        """Note where the calculator's `result>>` goes in the visible text: right after `<<expr=`, which the
        text now ends in or holds followed by the start of the result (the newest token may carry both)."""
        override = row.calculator.overrides[-1]
        text = self._text(row)
        opening = f"<<{override['expr']}="
        start = text.rfind(opening) + len(opening) - (len(text) - len(text.lstrip()))
        row.forced.append((start, start + len(override["result"]) + 2, override))

    def _show(self, row: _Row, visible: str) -> None:
        """Pass the row's new visible text to its `on_text`, split where calculator results begin and end.
        Visible text is what `Decoded.text` will hold: stripped, so trailing whitespace waits until text
        follows it (or the row ends); a trailing replacement character, half of a character spread over
        several tokens, waits for the rest."""
        if len(visible) <= row.shown:
            return
        cuts = sorted({row.shown, len(visible)} | {p for span in row.forced for p in span[:2]
                                                   if row.shown < p < len(visible)})
        for start, end in zip(cuts, cuts[1:]):
            override = next((o for s, e, o in row.forced if s <= start < e), None)
            row.on_text(row.index, visible[start:end], override)  # type: ignore[misc]
        row.shown = len(visible)

    def _result(self, row: _Row, reason: str) -> Decoded:
        return Decoded(text=self._text(row).strip(), num_tokens=len(row.tokens), finish_reason=reason,
                       calculator_overrides=row.calculator.overrides, prompt_tokens=len(row.prompt_ids))

    def _release(self, slot: int) -> None:
        """Free `slot` by moving the last active row into it, so live rows stay in slots [0, n)."""
        last = len(self.active) - 1
        if slot != last:
            self.cache.move_slot(last, slot)
            self.row_start[slot] = self.row_start[last]
            self.active[slot] = self.active[last]
        self.active.pop()
        self._fit_window()

    def _fit_window(self) -> None:
        """The cache window starts at the oldest live row's first column (empty when no row is live)."""
        rows = len(self.active)
        window = self.cache.window
        window.start = int(self.row_start[:rows].min()) if rows else window.end


def decode_all(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[DecodeRequest],
               batch_size: int = 32) -> list[Decoded]:
    """Decode any number of rows, up to `batch_size` at a time, with continuous batching. Prompts are
    admitted shortest first, so rows prefilled together need little padding."""
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
    results: list[Decoded | None] = [None] * len(requests)

    def done(index: int, decoded: Decoded) -> None:
        results[order[index]] = decoded

    engine = DecodeEngine(model, tokenizer, batch_size)
    engine.add([requests[i] for i in order], done)
    engine.run()
    return results  # type: ignore[return-value]


def decode_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 requests: Sequence[DecodeRequest]) -> list[Decoded]:
    """Decode all `requests` together, as one batch."""
    return decode_all(model, tokenizer, requests, batch_size=max(1, len(requests)))
