"""Pre-packed oneDNN weights for a float32 or bfloat16 model's linear layers when it decodes on the CPU.

`torch.nn.functional.linear` in float32 goes to MKL's sgemm/sgemv, which on some x86 CPUs (AMD's among them)
runs far below the core's AVX-512 peak for the decode step's shapes (a few rows times a weight matrix). oneDNN
with the weight reordered once into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, what
torch.compile's CPU backend and vLLM's CPU build use) multiplies about twice as fast there, but each call costs
about 10 us more: it pays for large layers from a single row on (a decode step streams every weight from
memory, and the blocked layout streams faster than MKL's matrix-vector path) and for small layers once a call
has enough rows (`MIN_PACKED_WORK`); anything less stays on `F.linear`. Results equal `F.linear` up to
rounding. A bfloat16 model is packed the same way where the CPU has native bfloat16 dot products (AVX512-BF16
or AMX, `torch.ops.mkldnn._is_mkldnn_bf16_supported`): its packed product runs faster than bfloat16 `F.linear`
there, and about twice as fast as the float32 one.

`JoinedLinear(layers)` multiplies linear layers that read the same input as one weight made by joining theirs
(q, k and v; a gated MLP's gate and up): one product instead of several, packed or not by the rule above;
unpacked, the joined product gives the same numbers as the layers one by one.
`pack_linears(model)` gives every `nn.Linear` of such a CPU model a forward through one, and a gated MLP
(`gate_proj`, `up_proj`, `down_proj` and `act_fn`, as Llama, Qwen2 and Mistral have) a forward that multiplies
gate and up as one. Both are idempotent and safe if the model trains afterwards: with gradients enabled every
layer runs its own forward, and a weight changed in place (its tensor version moved) or replaced is joined and
packed again before use. A packed copy of a weight is made on its first packed product (one extra copy of
those weights in memory).
"""

from __future__ import annotations

import types

import torch
from torch import nn

# At this many weights or more a layer is always packed: the packed product streams the weights faster.
MIN_PACKED_WEIGHT = 2**17
# Below MIN_PACKED_WEIGHT, a call with at least this many multiply-adds (rows x weights) is packed: about the
# work at which the packed product's speed outweighs its fixed cost (a 128-wide layer at 32 rows, a 128 x 384
# one at 12).
MIN_PACKED_WORK = 2**19


def _packing_available(dtype: torch.dtype) -> bool:
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    if dtype == torch.bfloat16:  # without native bf16 dot products oneDNN emulates them, slower than F.linear
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


class JoinedLinear:
    """`joined(x)`: x times the layers' weights joined (and their biases), the layers' outputs side by side;
    None where the layers' own forwards must run (gradients wanted, another dtype or device)."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.layers = layers
        self.weights = sum(layer.weight.numel() for layer in layers)
        self.packable = _packing_available(layers[0].weight.dtype)
        self._key: tuple[int, ...] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        first = self.layers[0].weight
        if x.dtype != first.dtype or x.device.type != "cpu" or (torch.is_grad_enabled() and first.requires_grad):
            return None
        params = [p for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        key = tuple(id(p) for p in params) + tuple(p._version for p in params)
        if key != self._key:  # new or changed weights: join (and pack) again when next needed
            self._key, self._weight, self._packed = key, None, None
            self._bias = None if all(layer.bias is None for layer in self.layers) else self._join(
                [layer.bias if layer.bias is not None else first.new_zeros(layer.out_features)
                 for layer in self.layers])
        rows = x.numel() // x.shape[-1]
        if self.packable and (self.weights >= MIN_PACKED_WEIGHT or rows * self.weights >= MIN_PACKED_WORK):
            if self._packed is None:
                self._packed = torch.ops.mkldnn._reorder_linear_weight(self._joined_weight(), 32)
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self._bias, "none", [], "")
        return nn.functional.linear(x, self._joined_weight(), self._bias)

    def _joined_weight(self) -> torch.Tensor:
        if self._weight is None:
            self._weight = self._join([layer.weight for layer in self.layers])
        return self._weight

    @staticmethod
    def _join(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.detach() for t in tensors]) if len(tensors) > 1 else tensors[0].detach()


def pack_linears(model: nn.Module) -> bool:
    """Give `model`'s linear layers and gated MLPs forwards through `JoinedLinear` if it is a float32 or
    bfloat16 model on the CPU and this torch build (and, for bfloat16, this CPU) can pack; return whether it
    did (or had already)."""
    if getattr(model, "_dpost_linears_packed", False):
        return True
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or not _packing_available(first.dtype):
        return False
    for module in model.modules():
        if type(module) is nn.Linear:
            module._dpost_joined = JoinedLinear([module])
            module.forward = types.MethodType(_linear_forward, module)
        elif _is_gated_mlp(module):
            module._dpost_joined = JoinedLinear([module.gate_proj, module.up_proj])
            module.forward = types.MethodType(_gated_mlp_forward, module)
    model._dpost_linears_packed = True
    return True


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out = self._dpost_joined(x)
    return nn.functional.linear(x, self.weight, self.bias) if out is None else out


def _gated_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = self._dpost_joined(x)
    gate, up = (self.gate_proj(x), self.up_proj(x)) if out is None else out.chunk(2, dim=-1)
    return self.down_proj(self.act_fn(gate) * up)


def _is_gated_mlp(module: nn.Module) -> bool:
    gate, up = getattr(module, "gate_proj", None), getattr(module, "up_proj", None)
    return (type(gate) is nn.Linear and type(up) is nn.Linear and gate.bias is None and up.bias is None
            and gate.weight.shape == up.weight.shape
            and isinstance(getattr(module, "down_proj", None), nn.Module)
            and callable(getattr(module, "act_fn", None)))
