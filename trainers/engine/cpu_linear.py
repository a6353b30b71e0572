"""Pre-packed oneDNN weights for a float32 model's linear layers when it decodes on the CPU.

`torch.nn.functional.linear` in float32 goes to MKL's sgemm, which on some x86 CPUs (AMD's among them) runs
far below the core's AVX-512 peak for the decode step's shapes (a few rows times a weight matrix). oneDNN
with the weight reordered once into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, what
torch.compile's CPU backend and vLLM's CPU build use) runs the same product about 1.5x faster there and no
slower elsewhere, for batches of rows; a single row and small layers stay on `F.linear`, which is faster there.
Results equal `F.linear` up to float32 rounding.

`pack_linears(model)` gives every large `nn.Linear` of a float32 CPU model a forward that uses a packed copy of its
weight (one extra copy of the linear weights in memory). It is idempotent, and safe if the model trains
afterwards: with gradients enabled the layer runs plain `F.linear`, and a weight changed in place since it was
packed (its tensor version moved) is packed again before use.
"""

from __future__ import annotations

import types

import torch
from torch import nn

# Below this many weights a layer stays on F.linear: the packed call's fixed cost outweighs its faster kernel
# (a 128-wide model decodes slower packed; every layer of a 768-wide one is far above this).
MIN_PACKED_WEIGHT = 2**17
# Fewer rows than this (a batch-1 decode step) stay on F.linear too: MKL's matrix-vector path is faster there.
MIN_PACKED_ROWS = 4


def _packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if (x.numel() < MIN_PACKED_ROWS * weight.shape[1] or (torch.is_grad_enabled() and weight.requires_grad)
            or x.dtype != torch.float32 or x.device.type != "cpu"):
        return nn.functional.linear(x, weight, self.bias)
    if self._dpost_packed_version != weight._version:
        self._dpost_packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 32)
        self._dpost_packed_version = weight._version
    bias = None if self.bias is None else self.bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, self._dpost_packed, bias, "none", [], "")


def pack_linears(model: nn.Module) -> bool:
    """Switch `model`'s linear layers to packed oneDNN weights if it is a float32 model on the CPU and this
    torch build can pack; return whether it did (or had already)."""
    if getattr(model, "_dpost_linears_packed", False):
        return True
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or first.dtype != torch.float32 or not _packing_available():
        return False
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.numel() >= MIN_PACKED_WEIGHT:
            module._dpost_packed_version = -1  # packed on first use
            module._dpost_packed = None
            module.forward = types.MethodType(_packed_forward, module)
    model._dpost_linears_packed = True
    return True
