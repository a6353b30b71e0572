"""The lean decode step and prefill (trainers/engine/llama_decode.py): the model's own logits (and a prefill's
cache), bit for bit, mid-decode on
Llama, grouped-query Llama, Qwen2 (q/k/v biases), Llama 3 rope scaling, layers large enough to be packed, and
bfloat16; the same texts as the model's own forward through the engine; and the model's own forward wherever
the step would not be the same. No Ray."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from trainers.engine.decoding import DecodeEngine, DecodeRequest, decode_all
from trainers.engine.llama_decode import LeanDecoder

PROMPTS = ["Ava has 12 pens.", "Ian scores 24 points. Ava scores 22 fewer points than Ian. How many?", "7 + 8"]


def _common(tokenizer, **overrides):
    return dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, intermediate_size=128, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id) | overrides


def _models(tokenizer):
    torch.manual_seed(0)
    yield "llama, grouped-query", LlamaForCausalLM(LlamaConfig(**_common(tokenizer))).eval()
    yield "llama, one kv head per head", LlamaForCausalLM(LlamaConfig(**_common(tokenizer, num_key_value_heads=8))).eval()
    yield "qwen2, q/k/v biases", Qwen2ForCausalLM(Qwen2Config(**_common(tokenizer))).eval()
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 16}
    yield "llama 3 rope scaling", LlamaForCausalLM(LlamaConfig(**_common(tokenizer, rope_parameters={
        "rope_theta": 10000.0, **llama3}))).eval()
    # q and the MLP above cpu_linear's size for packing: those layers keep their packed forwards
    yield "packed layers", LlamaForCausalLM(LlamaConfig(**_common(tokenizer, hidden_size=512, intermediate_size=1024,
                                                                 num_hidden_layers=1))).eval()
    yield "bfloat16", LlamaForCausalLM(LlamaConfig(**_common(tokenizer))).to(torch.bfloat16).eval()


def _mid_decode(model, tokenizer) -> DecodeEngine:
    """An engine four steps into rows of different lengths: the window holds columns some rows do not own."""
    engine = DecodeEngine(model, tokenizer, max_batch=4)
    engine.add([DecodeRequest(prompt=p, max_new_tokens=30, temperature=0.0) for p in PROMPTS], lambda i, d: None)
    for _ in range(4):
        engine.step()
    return engine


def test_the_lean_step_gives_the_models_own_logits_bit_for_bit(base_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(base_checkpoint)
    for name, model in _models(tokenizer):
        engine = _mid_decode(model, tokenizer)
        assert engine.lean is not None, name
        engine.row_start += engine.cache.make_room(0, 1)
        ids, positions, owned = engine._decode_inputs()
        with torch.inference_mode():
            lean = engine.lean.decode(ids, positions, owned, engine.cache)
            own = model(**engine._model_inputs(ids, positions, owned)).logits[:, -1]
        assert len(engine.active) >= 2 and lean.shape == (len(engine.active), model.config.vocab_size), name
        assert torch.equal(lean, own), f"{name}: largest difference {(lean - own).abs().max().item()}"


def test_the_lean_prefill_gives_the_models_own_logits_and_cache_bit_for_bit(base_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(base_checkpoint)
    for name, model in _models(tokenizer):
        engine = DecodeEngine(model, tokenizer, max_batch=4)
        prompts = [tuple(tokenizer.encode(p)) for p in PROMPTS]
        for group in (prompts, prompts[:1] * 2):  # left padding, and none (the model's mask may then be None)
            with torch.inference_mode():
                lean_cache, lean = engine._prefill(group)
                engine_lean, engine.lean = engine.lean, None
                own_cache, own = engine._prefill(group)
            engine.lean = engine_lean
            assert torch.equal(lean, own), f"{name}: largest difference {(lean - own).abs().max().item()}"
            for a, b in zip(lean_cache.layers, own_cache.layers, strict=True):
                assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values), name


def test_the_engine_writes_the_same_texts_with_and_without_the_lean_step(base_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(base_checkpoint)
    model = LlamaForCausalLM.from_pretrained(base_checkpoint).eval()
    requests = [DecodeRequest(prompt=p, max_new_tokens=24, temperature=t, seed=s)
                for p in PROMPTS for t, s in ((0.0, 0), (1.0, 1), (1.0, 2))]
    results = {}
    for lean in (True, False):
        engine = DecodeEngine(model, tokenizer, max_batch=4)  # fewer slots than rows: rows join mid-decode
        assert engine.lean is not None
        if not lean:
            engine.lean = None
        done = {}
        engine.add(requests, lambda i, d: done.__setitem__(i, d))
        engine.run()
        results[lean] = [done[i] for i in range(len(requests))]
    assert [d.text for d in results[True]] == [d.text for d in results[False]]
    assert [d.num_tokens for d in results[True]] == [d.num_tokens for d in results[False]]
    assert len({d.text for d in results[True]}) > 3  # the rows differ: a broken step would show


def test_the_model_keeps_its_own_forward_where_the_step_would_differ(base_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(base_checkpoint)
    torch.manual_seed(0)
    sliding = Qwen2ForCausalLM(Qwen2Config(**_common(tokenizer, use_sliding_window=True, sliding_window=4,
                                                     max_window_layers=0))).eval()
    eager = LlamaForCausalLM(LlamaConfig(**_common(tokenizer))).eval()
    eager.set_attn_implementation("eager")
    for name, model in (("sliding window", sliding), ("eager attention", eager)):
        assert LeanDecoder.for_model(model) is None, name
        assert DecodeEngine(model, tokenizer, max_batch=2).lean is None, name
    # and such a model still decodes through its own forward
    assert decode_all(sliding, tokenizer, [DecodeRequest(prompt=PROMPTS[0], max_new_tokens=6)], 2)[0].num_tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_norm_is_transformers_own(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from trainers.engine.llama_decode import _norm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(96, eps=1e-6).to(dtype)
    torch.nn.init.normal_(norm.weight)
    x = (torch.randn(33, 96) * 7).to(dtype)
    assert torch.equal(_norm(norm)(x), norm(x))
