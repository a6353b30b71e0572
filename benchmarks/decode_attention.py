"""The decode step's attention alone: the engine's compiled kernel against SDPA, at the demo's and 100M's shapes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/decode_attention.py

One decode step attends, layer after layer, over each layer's slot buffer (`trainers/engine/kv_slots.py`): a
window of `--window` columns of a larger buffer, one query per row, each row masking the columns before its
own first one (`--masked`: on average this share, as continuous batching leaves it). The benchmark does the
same over every layer's buffers in turn, so each layer reads its keys and values from memory, not from the
cache a previous call warmed, and reports microseconds per layer (best of `--repeats`), the kernel's speed-up,
and the largest difference from SDPA's output. One thread.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, machine_info, print_table, results_path, setup_env, write_json  # noqa: E402

setup_env()

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

# (name, layers, heads, kv heads, head dim): the demo's `small` preset and `llama-100m`
SHAPES = [("demo", 4, 4, 4, 32), ("llama-100m", 12, 12, 4, 64)]


def per_layer_us(step, layers: int, repeats: int) -> float:
    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            step()
        best = min(best, (time.perf_counter() - start) / 5)
    return best * 1e6 / layers


def measure(kernel, layers: int, heads: int, kv_heads: int, dim: int, dtype: torch.dtype, args) -> dict:
    torch.manual_seed(0)
    rows, width, capacity = args.rows, args.window, 2 * args.window + 40
    keys = [torch.randn(rows, kv_heads, capacity, dim, dtype=dtype)[:, :, 20:20 + width] for _ in range(layers)]
    values = [torch.randn(rows, kv_heads, capacity, dim, dtype=dtype)[:, :, 20:20 + width] for _ in range(layers)]
    q = torch.randn(rows, heads, dim, dtype=dtype)
    starts = torch.randint(0, int(2 * args.masked * width) + 1, (rows, 1)).clamp(max=width - 1)
    keep = torch.arange(width)[None, :] >= starts
    scale = dim ** -0.5

    def sdpa(k, v):
        return F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=keep[:, None, None, :], scale=scale,
                                              enable_gqa=kv_heads != heads)[:, :, 0]

    def ours(k, v):
        return kernel.decode_attention(q, k, v, keep, scale)

    diff = max((ours(k, v).float() - sdpa(k, v).float()).abs().max().item() for k, v in zip(keys, values))
    times = {name: per_layer_us(lambda f=f: [f(k, v) for k, v in zip(keys, values)], layers, args.repeats)
             for name, f in (("sdpa", sdpa), ("kernel", ours))}
    return {"sdpa_us": round(times["sdpa"], 1), "kernel_us": round(times["kernel"], 1),
            "speedup": round(times["sdpa"] / times["kernel"], 2), "max_abs_diff": diff,
            "masked_share": round(1 - keep.float().mean().item(), 3)}


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--window", type=int, default=150)
    parser.add_argument("--masked", type=float, default=0.33, help="mean share of each row's masked columns")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 2
    torch.set_num_threads(1)
    from trainers.engine.decode_attention import kernel

    compiled = kernel()
    if compiled is None:
        raise SystemExit("the decode-attention kernel could not be built here (see the warning above)")
    cells = []
    for name, layers, heads, kv_heads, dim in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            cell = {"shape": name, "layers": layers, "heads": heads, "kv_heads": kv_heads, "head_dim": dim,
                    "dtype": str(dtype).removeprefix("torch."), "rows": args.rows, "window": args.window,
                    **measure(compiled, layers, heads, kv_heads, dim, dtype, args)}
            cells.append(cell)
            print(f"[bench] {name} {cell['dtype']}: sdpa {cell['sdpa_us']} us, kernel {cell['kernel_us']} us "
                  f"per layer", flush=True)
    print_table(f"decode-step attention, {args.rows} rows, window {args.window}, one thread, every layer's "
                f"buffers in turn (us per layer)",
                ("shape", "dtype", "SDPA", "kernel", "speed-up", "max |diff|", "masked"),
                [(c["shape"], c["dtype"], c["sdpa_us"], c["kernel_us"], c["speedup"], f"{c['max_abs_diff']:.1e}",
                  c["masked_share"]) for c in cells])
    result = {"args": vars(args), "machine": machine_info(), "cells": cells}
    write_json(results_path("decode_attention" + ("-quick" if args.quick else ""), args.out), result)
    return result


if __name__ == "__main__":
    main()
