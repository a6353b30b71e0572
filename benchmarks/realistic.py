"""The realistic-size presets (`llama-100m`, `llama-100m-digits3`): build time, size, and greedy decoding speed.

    flock /tmp/dpost-ray.lock timeout 600 .venv/bin/python benchmarks/realistic.py
    .venv/bin/python benchmarks/realistic.py --quick     # smoke run: one preset, 2 prompts, 8 tokens

Per preset: `build_s` = `build_tiny_model` (BPE tokenizer trained on 5,000 synthetic task texts, random
Llama weights, `save_pretrained`); `parameters`; `folder_mib`; `load_s` = `load_policy` (what a pool replica
pays on a hot swap). Then `decode_all` (the engine every replica runs), greedy, `--max-new-tokens` each, on
the same `--prompts` synthetic test questions, at each batch size with and without the calculator;
tokens/s = generated tokens / wall time, best of `--repeats`. The weights are random, so rows rarely write
`<<expr=`: the calculator column measures its per-token checks, and `overrides` says how often it fired.
One torch thread (as every replica runs). Not part of any test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (PhaseTimer, base_parser, build_base, finish, machine_info, print_table,  # noqa: E402
                    setup_env, task_config, workdir)

setup_env()


def folder_mib(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20, 1)


def decode_cells(folder: Path, prompts: list[str], batches: list[int], max_new_tokens: int,
                 repeats: int) -> tuple[float, list[dict]]:
    from trainers.engine.decoding import DecodeRequest, decode_all
    from trainers.models.checkpoints import load_policy

    started = time.perf_counter()
    model, tokenizer = load_policy(folder)
    load_s = time.perf_counter() - started
    decode_all(model, tokenizer, [DecodeRequest(prompt=prompts[0], max_new_tokens=2)], batch_size=1)  # warm-up
    cells = []
    for batch in batches:
        for calculator in (True, False):
            requests = [DecodeRequest(prompt=p, max_new_tokens=max_new_tokens, calculator=calculator)
                        for p in prompts]
            best = None
            for _ in range(repeats):
                started = time.perf_counter()
                rows = decode_all(model, tokenizer, requests, batch_size=batch)
                seconds = time.perf_counter() - started
                tokens = sum(r.num_tokens for r in rows)
                if best is None or tokens / seconds > best["tokens_per_s"]:
                    best = {"batch": batch, "calculator": calculator, "rows": len(rows), "tokens": tokens,
                            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
                            "overrides": sum(len(r.calculator_overrides) for r in rows)}
            cells.append(best)
            print(f"[bench] batch {batch} calculator {calculator}: {best['tokens_per_s']} tokens/s", flush=True)
    return load_s, cells


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--presets", default="llama-100m,llama-100m-digits3")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.presets, args.prompts, args.max_new_tokens = args.presets.split(",")[0], 2, 8

    import torch

    from trainers.core.prompting import format_prompt
    from trainers.data.problems import load_problems
    from trainers.data.synthetic import build_synthetic_task

    torch.set_num_threads(1)
    phases = PhaseTimer()
    result: dict = {"args": vars(args), "machine": machine_info(), "presets": []}
    batches = [int(b) for b in args.batches.split(",")]
    with workdir(args.workdir, args.keep, "dpost-realistic-") as work:
        config = task_config(args.quick, args.seed, n_labeled=10, n_test=max(args.prompts, 10))
        paths = build_synthetic_task(config, work / "task")
        prompts = [format_prompt(p.question) for p in load_problems(paths["test"]).problems[:args.prompts]]
        for preset in args.presets.split(","):
            with phases.phase(f"{preset}: build"):
                folder = build_base(work, preset, config, args.seed)
            build_s = phases.times[f"{preset}: build"]
            with phases.phase(f"{preset}: decode"):
                load_s, cells = decode_cells(folder, prompts, batches, args.max_new_tokens, args.repeats)
            from transformers import AutoConfig

            model_config = AutoConfig.from_pretrained(folder)
            with torch.device("meta"):
                from transformers import AutoModelForCausalLM

                parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(model_config).parameters())
            result["presets"].append({"preset": preset, "build_s": build_s, "load_s": round(load_s, 2),
                                      "parameters": parameters, "folder_mib": folder_mib(folder),
                                      "vocab_size": model_config.vocab_size, "decode": cells})
    print_table("realistic presets", ("preset", "parameters", "build s", "load s", "folder MiB"),
                [(p["preset"], f"{p['parameters']:,}", p["build_s"], p["load_s"], p["folder_mib"])
                 for p in result["presets"]])
    print_table("greedy decoding (tokens/s, one thread)",
                ("preset", "batch", "calculator", "rows", "tokens", "seconds", "tokens/s", "overrides"),
                [(p["preset"], c["batch"], c["calculator"], c["rows"], c["tokens"], c["seconds"],
                  c["tokens_per_s"], c["overrides"]) for p in result["presets"] for c in p["decode"]])
    finish(result, {}, phases, "realistic", args, "one preset, 2 prompts, 8 tokens")


if __name__ == "__main__":
    main()
