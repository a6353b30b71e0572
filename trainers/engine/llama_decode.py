"""Decode steps and prefills of Llama-shaped models on the CPU, without transformers' per-module machinery.

At the demo's size (a 128-wide, 4-layer model) a decode step's products take microseconds and most of the
step is the framework around them: module calls and their hooks, output records, the mask and cache plumbing,
three projections where one would do. `LeanDecoder` runs the same steps as the model's own forward, with the
model's own weights and layers and the same operations in the same order: RMSNorm, the q/k/v projections,
rotary embedding from the model's own rotary module (its scaling included), the key/value cache, the
attention (the model's own attention function: the decode-attention kernel of `decode_attention.py` for a
decode step, SDPA under the model's own mask for a prefill), the output projection, the gated MLP, the final norm and the last
position's logits. The linear layers run as `cpu_linear.pack_linears` made them, and a small model's q,
k and v as one joined product (`cpu_linear.JoinedLinear`). The logits are the model's own forward's, bit for
bit wherever the joined product takes the same kernel as the three layers one by one (packed or not, by
`cpu_linear`'s rule), and up to rounding where it does not.

`LeanDecoder.for_model(model)` returns one for a CPU model of a family whose decoder layer is exactly
`h + attn(norm(h))`, `h + mlp(norm(h))` with rotate-half RoPE over the whole head (Llama, Mistral, Qwen2) and
full attention on the decode kernel; None for anything else, which keeps the model's own forward. Scoring and
training always use the model's own forward.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from transformers.masking_utils import create_causal_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from trainers.engine.cpu_linear import MIN_PACKED_WEIGHT, JoinedLinear
from trainers.engine.decode_attention import NAME as DECODE_ATTENTION

FAMILIES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def _projections(layers: list[nn.Linear]) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """q, k and v as one joined product when all three are small; large ones (which pack_linears packs
    anyway) through their own forwards, so that no second packed copy of them is made."""
    forwards = [layer.forward for layer in layers]  # pack_linears' where it gave them one
    if any(layer.weight.numel() >= MIN_PACKED_WEIGHT for layer in layers):
        return lambda x: tuple(forward(x) for forward in forwards)
    joined, sizes = JoinedLinear(layers), [layer.out_features for layer in layers]
    return lambda x: joined(x).split(sizes, dim=-1)  # never None here: CPU, the model's dtype, no gradients


def _norm(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's RMSNorm; in float32 torch's fused `rms_norm`, which computes exactly what transformers'
    module does (float32 mean of squares, rsqrt, weight) in one operation instead of six."""
    weight, eps = module.weight, module.variance_epsilon
    if weight.dtype != torch.float32:
        return module.forward
    return lambda x: F.rms_norm(x, (x.shape[-1],), weight, eps)


class _Layer:
    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.attn_norm = _norm(layer.input_layernorm)
        self.mlp_norm = _norm(layer.post_attention_layernorm)
        self.qkv = _projections([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o_proj = attn.o_proj.forward
        self.module = attn  # the model's attention function reads its settings
        self.head_dim = attn.head_dim
        self.scaling = float(attn.scaling)
        self.mlp = mlp.forward  # pack_linears': gate and up as one product


class LeanDecoder:
    """`decode` (one step of every live row) and `prefill` (prompts into a fresh cache), each returning the
    next token's logits per row, as the model's own forward computes them."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.config = model, model.config
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.layers = [_Layer(layer) for layer in inner.layers]
        self.norm = _norm(inner.norm)
        self.lm_head = model.lm_head.forward
        self.attention = ALL_ATTENTION_FUNCTIONS[model.config._attn_implementation]

    @classmethod
    def for_model(cls, model: nn.Module) -> "LeanDecoder | None":
        """A LeanDecoder where this step is exactly the model's own; None otherwise."""
        config = getattr(model, "config", None)
        if (type(model).__name__ not in FAMILIES or config is None or model.device.type != "cpu"
                or model.dtype not in (torch.float32, torch.bfloat16)
                or config._attn_implementation != DECODE_ATTENTION):
            return None
        inner = getattr(model, "model", None)
        layers = list(getattr(inner, "layers", []))
        if not layers or not all(_plain_layer(layer) for layer in layers):
            return None
        return cls(model)

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, owned: torch.Tensor, cache: Any) -> torch.Tensor:
        """One decode step: `ids` [rows] the newest tokens, `positions` [rows, 1], `owned` [rows, window + 1]
        the cache columns each row attends to (the step's own included), `cache` the engine's `SlotCache`.
        Returns the next token's logits [rows, vocab]."""
        return self._forward(self.embed.forward(ids[:, None]), positions, owned[:, None, None, :], cache)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """Left-padded prompts `ids` [rows, width] with their `mask` and `positions` into an empty
        `DynamicCache`, masked as the model's own forward masks them. Returns each prompt's last position's
        logits [rows, vocab]."""
        h = self.embed.forward(ids)
        causal = create_causal_mask(config=self.config, inputs_embeds=h, attention_mask=mask,
                                    past_key_values=cache, position_ids=positions)
        return self._forward(h, positions, causal, cache)

    @torch.inference_mode()
    def _forward(self, h: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: Any
                 ) -> torch.Tensor:
        """The layers over embeddings `h` [rows, width, hidden]; attention through the model's own attention
        function (the decode kernel for a one-query step with a boolean mask, SDPA otherwise)."""
        rows, width = h.shape[:2]
        cos, sin = self.rotary(h, positions)
        cos, sin = cos[:, None], sin[:, None]  # [rows, 1, width, head_dim]: the same for every head
        for index, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.attn_norm(h))
            dim = layer.head_dim
            heads = q.shape[-1] // dim
            qk = _rotate(torch.cat((q, k), -1).view(rows, width, -1, dim).transpose(1, 2), cos, sin)  # both at once
            keys, values = cache.update(qk[:, heads:], v.view(rows, width, -1, dim).transpose(1, 2), index)
            out = self.attention(layer.module, qk[:, :heads], keys, values, mask, dropout=0.0,
                                 scaling=layer.scaling)[0]
            h = h + layer.o_proj(out.reshape(rows, width, -1))  # out: [rows, width, heads, head_dim]
            h = h + layer.mlp(layer.mlp_norm(h))
        return self.lm_head(self.norm(h)[:, -1:])[:, 0]  # as transformers slices: the same product


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers' `apply_rotary_pos_emb` computes it (rotate-half, whole head)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _plain_layer(layer: nn.Module) -> bool:
    """The decoder layer is norm -> attention -> residual, norm -> gated MLP -> residual, nothing else: no
    sliding window, no q/k norms, linear projections, a gated MLP."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None or getattr(attn, "sliding_window", None) is not None:
        return False
    if any(hasattr(attn, name) for name in ("q_norm", "k_norm")):
        return False
    projections = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    gated = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    norms = [getattr(layer, n, None) for n in ("input_layernorm", "post_attention_layernorm")]
    return (all(isinstance(p, nn.Linear) for p in projections + gated) and callable(getattr(mlp, "act_fn", None))
            and all(n is not None and hasattr(n, "variance_epsilon") for n in norms)
            and set(dict(layer.named_children())) == {"self_attn", "mlp", "input_layernorm",
                                                      "post_attention_layernorm"})
