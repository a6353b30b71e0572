"""Pre-packed oneDNN weights for a float32 or bfloat16 model's linear layers when it decodes on the CPU.

`torch.nn.functional.linear` in float32 goes to MKL's sgemm/sgemv, which on some x86 CPUs (AMD's among them)
runs far below the core's AVX-512 peak for the decode step's shapes (a few rows times a weight matrix). oneDNN
with the weight reordered once into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, what
torch.compile's CPU backend and vLLM's CPU build use) runs the same product faster there, from a single row on
(a decode step streams every weight from memory, and the blocked layout streams faster than MKL's
matrix-vector path), and no slower elsewhere; small layers stay on `F.linear`, where the packed call's fixed
cost is more than its product. Results equal `F.linear` up to rounding. A bfloat16 model is packed the same way
where the CPU has native bfloat16 dot products (AVX512-BF16 or AMX, `torch.ops.mkldnn._is_mkldnn_bf16_supported`):
its packed product runs faster than bfloat16 `F.linear` there, and about twice as fast as the float32 one.

`pack_linears(model)` gives every large `nn.Linear` of such a CPU model a forward that uses a packed copy of its
weight (one extra copy of the linear weights in memory). A gated MLP (`gate_proj`, `up_proj`, `down_proj` and
`act_fn`, as Llama, Qwen2 and Mistral have) multiplies its input by gate and up as one packed weight: one
product twice as wide instead of two, which a decode step at realistic sizes runs faster. It is idempotent, and
safe if the model trains afterwards: with gradients enabled every layer runs its own forward, and a weight
changed in place since it was packed (its tensor version moved) is packed again before use.
"""

from __future__ import annotations

import types

import torch
from torch import nn

# Below this many weights a layer stays on F.linear: the packed call's fixed cost outweighs its faster kernel
# (a 128-wide model decodes slower packed; every layer of a 768-wide one is far above this).
MIN_PACKED_WEIGHT = 2**17


def _packing_available(dtype: torch.dtype) -> bool:
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    if dtype == torch.bfloat16:  # without native bf16 dot products oneDNN emulates them, slower than F.linear
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def _packed(x: torch.Tensor, weights: tuple[torch.Tensor, ...], bias: torch.Tensor | None, owner: nn.Module
            ) -> torch.Tensor | None:
    """x times the concatenation of `weights` (plus bias) through a packed copy cached on `owner`, repacked
    when a weight's tensor version moves; None where the packed product does not pay or training needs the
    layers' own autograd (the caller then runs the plain layers)."""
    first = weights[0]
    if x.dtype != first.dtype or (torch.is_grad_enabled() and first.requires_grad) or x.device.type != "cpu":
        return None
    versions = tuple(w._version for w in weights)
    if owner._dpost_packed_version != versions:
        joined = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else first.detach()
        owner._dpost_packed = torch.ops.mkldnn._reorder_linear_weight(joined, 32)
        owner._dpost_packed_version = versions
    return torch.ops.mkldnn._linear_pointwise(x, owner._dpost_packed, bias, "none", [], "")


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if self.bias is None else self.bias.detach()
    out = _packed(x, (self.weight,), bias, self)
    return nn.functional.linear(x, self.weight, self.bias) if out is None else out


def _fused_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = _packed(x, (self.gate_proj.weight, self.up_proj.weight), None, self)
    if out is None:
        gate, up = self.gate_proj(x), self.up_proj(x)
    else:
        gate, up = out.chunk(2, dim=-1)
    return self.down_proj(self.act_fn(gate) * up)


def _is_gated_mlp(module: nn.Module) -> bool:
    gate, up = getattr(module, "gate_proj", None), getattr(module, "up_proj", None)
    return (type(gate) is nn.Linear and type(up) is nn.Linear and gate.bias is None and up.bias is None
            and gate.weight.shape == up.weight.shape and gate.weight.numel() >= MIN_PACKED_WEIGHT
            and isinstance(getattr(module, "down_proj", None), nn.Module)
            and callable(getattr(module, "act_fn", None)))


def pack_linears(model: nn.Module) -> bool:
    """Switch `model`'s linear layers to packed oneDNN weights if it is a float32 or bfloat16 model on the CPU
    and this torch build (and, for bfloat16, this CPU) can pack; return whether it did (or had already)."""
    if getattr(model, "_dpost_linears_packed", False):
        return True
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or not _packing_available(first.dtype):
        return False
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.numel() >= MIN_PACKED_WEIGHT:
            forward = _packed_forward
        elif _is_gated_mlp(module):
            forward = _fused_mlp_forward
        else:
            continue
        module._dpost_packed_version = None  # packed on first use
        module._dpost_packed = None
        module.forward = types.MethodType(forward, module)
    model._dpost_linears_packed = True
    return True
