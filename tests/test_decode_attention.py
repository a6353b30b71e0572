"""The CPU decode-attention kernel (trainers/engine/decode_attention.py): built here, equal to SDPA on masked
windows of a larger cache (float32 and bfloat16, grouped-query attention), out of the way of everything that is
not a one-query decode step, and what the engine's decode steps run, with SDPA's logits. No Ray."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from trainers.engine import decode_attention
from trainers.engine.decode_attention import NAME, decode_attention_forward, kernel
from trainers.engine.decoding import DecodeEngine, DecodeRequest


def test_the_kernel_is_built_in_this_environment():
    # decoding falls back to SDPA where no compiler is found; here one is, so a fallback would be a bug
    assert kernel() is not None


def _window(rows: int, heads: int, kv_heads: int, dim: int, width: int, dtype: torch.dtype):
    """q [rows, heads, dim] and k, v as a window of a larger slot buffer (strided views, as the cache gives)."""
    torch.manual_seed(rows * 1000 + heads * 10 + kv_heads)
    k = torch.randn(rows + 2, kv_heads, width + 20, dim, dtype=dtype)[:rows, :, 7:7 + width]
    v = torch.randn(rows + 2, kv_heads, width + 20, dim, dtype=dtype)[:rows, :, 7:7 + width]
    return torch.randn(rows, heads, dim, dtype=dtype), k, v


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 4, 32), (8, 2, 64), (2, 1, 128), (6, 3, 16)])
def test_the_kernel_gives_sdpas_attention_over_any_mask(dtype, tol, heads, kv_heads, dim):
    rows, width = 5, 37
    q, k, v = _window(rows, heads, kv_heads, dim, width, dtype)
    keep = torch.arange(width)[None, :] >= torch.tensor([[0], [9], [36], [20], [3]])  # suffixes, one of 1 column
    keep[4, 10:15] = False  # and holes
    expected = F.scaled_dot_product_attention(q[:, :, None].float(), k.float(), v.float(), scale=0.3,
                                              attn_mask=keep[:, None, None, :], enable_gqa=True)[:, :, 0]
    got = kernel().decode_attention(q, k, v, keep, 0.3)
    assert got.dtype == dtype and got.shape == (rows, heads, dim)
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol)


def test_a_row_that_keeps_no_column_attends_to_nothing():
    q, k, v = _window(2, 4, 4, 8, 6, torch.float32)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1] = False
    got = kernel().decode_attention(q, k, v, keep, 1.0)
    assert torch.equal(got[1], torch.zeros(4, 8)) and got[0].abs().sum() > 0


def test_prefills_float_masks_and_sliding_windows_go_to_sdpa_unchanged():
    q, k, v = _window(3, 4, 4, 8, 6, torch.float32)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups, module.training = True, 1, False
    keep = torch.ones(3, 1, 1, 6, dtype=torch.bool)
    cases = [(q[:, :, None].expand(3, 4, 6, 8).contiguous(), torch.ones(3, 1, 6, 6, dtype=torch.bool), {}),
             (q[:, :, None], torch.zeros(3, 1, 1, 6), {}),
             (q[:, :, None], keep, {"sliding_window": 4})]
    for query, mask, extra in cases:
        got, _ = decode_attention_forward(module, query, k, v, mask, scaling=0.5, **extra)
        expected, _ = sdpa_attention_forward(module, query, k, v, mask, scaling=0.5, **extra)
        assert torch.equal(got, expected)


def _models(tokenizer):
    common = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, intermediate_size=128, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    yield LlamaForCausalLM(LlamaConfig(**common)).eval()
    yield Qwen2ForCausalLM(Qwen2Config(**common)).eval()  # q/k/v projections with biases


class _Counting:
    """The kernel, counting its calls."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def decode_attention(self, q, k, v, keep, scale):
        self.rows.append(q.shape[0])
        return kernel().decode_attention(q, k, v, keep, scale)


def test_the_engines_decode_steps_run_the_kernel_with_sdpas_logits(base_checkpoint, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(base_checkpoint)
    prompts = ["Ava has 12 pens.", "Ian scores 24 points. Ava scores 22 fewer points than Ian. How many?", "7 + 8"]
    for model in _models(tokenizer):
        engine = DecodeEngine(model, tokenizer, max_batch=4)
        assert model.config._attn_implementation == NAME
        engine.add([DecodeRequest(prompt=p, max_new_tokens=12, temperature=0.0) for p in prompts], lambda i, d: None)
        for _ in range(4):  # rows of different lengths: the window holds columns some rows do not own
            engine.step()
        inputs = engine._model_inputs(*engine._decode_inputs())
        counting = _Counting()
        with torch.inference_mode(), monkeypatch.context() as patch:
            patch.setattr(decode_attention, "kernel", lambda: counting)
            through_kernel = model(**inputs).logits
        model.set_attn_implementation("sdpa")
        with torch.inference_mode():
            through_sdpa = model(**inputs).logits
        assert counting.rows == [len(prompts)] * model.config.num_hidden_layers
        torch.testing.assert_close(through_kernel, through_sdpa, rtol=1e-5, atol=1e-5)
