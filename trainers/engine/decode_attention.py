"""A decode step's attention on the CPU, compiled once per machine, behind transformers' `AttentionInterface`.

In a decode step each row has one query. SDPA and batched matmul then run one tiny matrix-vector product per
(row, head) over the whole shared cache window (`kv_slots.py`), masked columns included; on the CPU that is
the largest cost of a step (a third of it at 0.9M parameters, about 40% at 100M). `csrc/decode_attention.cpp`
computes each (row, key/value head) in one loop over the span of columns the row's mask keeps, for all the
query heads that share that key/value head at once, so each key and value is read once: several times faster
than SDPA at those shapes, float32 and bfloat16, grouped-query attention included.

`use_decode_attention(model)` switches a CPU model to the attention registered here as `dpost_cpu_decode`: a
step with one query per row and a boolean mask (what `DecodeEngine` passes) runs the kernel; everything else
(prefills, scoring, a float mask, sliding windows, soft-capping) goes to transformers' own SDPA function
unchanged. The kernel is built by `torch.utils.cpp_extension` into `TORCH_EXTENSIONS_DIR` on first use (about
40 s; `make setup` does it) for the vector width torch detected on this CPU, and loaded from there after. Where
it cannot be built (no C++ compiler), the model keeps SDPA and one warning says why.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from trainers.jit import extensions_dir

NAME = "dpost_cpu_decode"
SOURCE = Path(__file__).with_name("csrc") / "decode_attention.cpp"
# Instruction sets per vector width torch detected (`torch.backends.cpu.get_cpu_capability`): the build runs
# on every machine that loads it, so it may use what this CPU has. -ffast-math lets the compiler vectorize the
# reductions and exp (the kernel keeps masked columns finite for it).
ARCH_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
              "AVX2": ["-mavx2", "-mfma", "-mf16c"]}


@functools.cache
def kernel() -> Any | None:
    """The compiled kernel's module, built on first call in this environment; None where it cannot be built."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())
    capability = torch.backends.cpu.get_cpu_capability()
    name = f"dpost_decode_attention_{capability.lower()}"
    try:
        from torch.utils.cpp_extension import load

        return load(name=name, sources=[str(SOURCE)], verbose=False,
                    extra_cflags=["-O3", "-ffast-math", "-fopenmp-simd", *ARCH_FLAGS.get(capability, [])])
    except Exception as exc:  # no compiler, no headers: SDPA stays, slower but the same results
        warnings.warn(f"dpost: the CPU decode-attention kernel could not be built ({type(exc).__name__}: "
                      f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); decoding uses SDPA",
                      stacklevel=2)
        return None


def decode_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [rows, heads, q_len, dim], key and value [rows,
    kv_heads, width, dim]; returns [rows, q_len, heads, dim]."""
    if (query.shape[2] == 1 and query.device.type == "cpu" and attention_mask is not None
            and attention_mask.dtype == torch.bool and attention_mask.dim() == 4
            and attention_mask.shape[1] == attention_mask.shape[2] == 1 and attention_mask.shape[-1] == key.shape[2]
            and not dropout and kwargs.get("sliding_window") is None and kwargs.get("softcap") is None
            and query.dtype in (torch.float32, torch.bfloat16) and key.stride(-1) == value.stride(-1) == 1):
        compiled = kernel()
        if compiled is not None:
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            keep = attention_mask[:, 0, 0, :].expand(query.shape[0], -1)  # a one-row mask serves every row
            out = compiled.decode_attention(query[:, :, 0].contiguous(), key, value, keep, float(scale))
            return out.unsqueeze(1), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def register() -> None:
    """Make `NAME` an attention implementation transformers knows, with SDPA's mask preparation."""
    AttentionInterface.register(NAME, decode_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_decode_attention(model: Any) -> bool:
    """Switch a CPU model that runs SDPA to the kernel for its decode steps; return whether it now does."""
    config = model.config
    if config._attn_implementation == NAME:
        return True
    if config._attn_implementation != "sdpa" or model.device.type != "cpu" or kernel() is None:
        return False
    register()
    model.set_attn_implementation(NAME)
    return config._attn_implementation == NAME


if __name__ == "__main__":  # `python -m trainers.engine.decode_attention`: build it now (make setup does)
    ok = kernel() is not None
    print(f"dpost decode-attention kernel for {torch.backends.cpu.get_cpu_capability()}: "
          f"{'ready' if ok else 'not built, decoding uses SDPA'}")
    sys.exit(0)
