"""`dpost eval`: score a checkpoint (in-process) or the live `rollout` pool on benchmark files.

    dpost eval --checkpoint PATH | --live [--address ADDR] --data FILE [--data FILE ...] [--format auto]
               [--n 0] [--k 1 5] [--temperature 0.7] [--max-new-tokens 300] [--seed 0] [--no-greedy]
               [--no-calculator | --ablate-calculator] [--limit N] [--out DIR] [--batch-size 32]
               [--rerank VERIFIER [--rerank-top-k K]]

Prints the table and the throughput; writes eval.json (per-item records) and eval.md (the table for a README)
into --out. With --rerank, a verifier checkpoint (loaded once, in this process) scores every sampled solution
and the table adds the re-ranked accuracies rr_topk@n, weighted@n and weighted_topk@n next to pass@1, maj@n
and pass@n. Ctrl-C keeps what is done; the same command again resumes. The work is in trainers/evaluation.py
(`evaluate_files`, over the same `evaluate_problems` the coordinator's eval stage uses).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trainers.core.errors import CheckpointError, ConfigError
from trainers.data.problems import FORMATS
from trainers.engine.decoding import MAX_NEW_TOKENS
from trainers.evaluation import (RERANK_TOP_K, DecodeFn, EvalConfig, ScoreFn, evaluate_files, format_rerank,
                                 format_skipped, format_throughput, local_decoder, local_scorer, plan_runs,
                                 terminal_table)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="PATH", help="a Hugging Face checkpoint folder, decoded in-process")
    model.add_argument("--live", action="store_true", help="decode on the running cluster's rollout pool")
    parser.add_argument("--address", metavar="ADDR",
                        help="Ray cluster address for --live (default: $RAY_ADDRESS, else auto)")
    parser.add_argument("--data", metavar="FILE", action="append", required=True,
                        help="a benchmark file (GSM8K jsonl, SVAMP/MultiArith/AddSub/SingleEq json, ASDiv xml); "
                             "repeat for more")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="the files' format (default: auto)")
    parser.add_argument("--n", type=int, default=0, help="samples per item for pass@k / maj@k (default: 0, none)")
    parser.add_argument("--k", type=int, nargs="+", metavar="K", help="k values to report (default: 1 and n)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default: 0.7)")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                        help=f"longest answer (default: {MAX_NEW_TOKENS})")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the sampled answers (default: 0)")
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy pass@1 decode (needs --n)")
    calculator = parser.add_mutually_exclusive_group()
    calculator.add_argument("--no-calculator", action="store_true",
                            help="decode without the calculator (default: on, except for data whose solutions "
                                 "carry no <<expr=result>> annotations, such as MATH)")
    calculator.add_argument("--ablate-calculator", action="store_true",
                            help="evaluate every file with and without the calculator")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N items of each file")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: runs/eval/<checkpoint name>, or runs/eval/live)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="items per decode chunk; eval.json is saved after each (default: 32)")
    parser.add_argument("--rerank", metavar="VERIFIER",
                        help="a verifier checkpoint folder: score every sampled answer and report solution-cluster "
                             "re-ranking (rr_topk, weighted, weighted_topk); needs --n 2 or more")
    parser.add_argument("--rerank-top-k", type=int, metavar="K",
                        help=f"K of rr_topk and weighted_topk, in 1..n (default: min({RERANK_TOP_K}, n // 2))")


def run(args: argparse.Namespace) -> int:
    if args.address and not args.live:
        raise ConfigError("--address is only used with --live")
    if args.rerank_top_k is not None and not args.rerank:
        raise ConfigError("--rerank-top-k is only used with --rerank")
    if args.rerank and args.n < 2:
        raise ConfigError(f"--rerank needs --n 2 or more sampled answers per item to re-rank, got --n {args.n}")
    # None: each file's data decides (ProblemSet.calculator)
    calculators = [True, False] if args.ablate_calculator else [False if args.no_calculator else None]
    model = "live:rollout" if args.live else _model_id(args.checkpoint)
    config = EvalConfig(data=args.data, fmt=args.format, greedy=not args.no_greedy, n=args.n, ks=args.k,
                        temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                        calculator=calculators[0], seed=args.seed, batch_size=args.batch_size,
                        limit=args.limit, model=model,
                        verifier=_model_id(args.rerank) if args.rerank else None, rerank_top_k=args.rerank_top_k)
    out = Path(args.out) if args.out else Path("runs/eval") / ("live" if args.live else Path(model).name)

    # Read every file and check any earlier output before a model is loaded.
    for plan in plan_runs(config, out, calculators):
        if plan.done:
            print(f"{plan.name}: resuming, {plan.done} item(s) already in {out / 'eval.json'}", file=sys.stderr)
    score_fn = _verifier(args.rerank, config.batch_size) if args.rerank else None
    if args.live:
        decode_fn, version = _live_decoder(args.address)
    else:
        decode_fn, version = local_decoder(args.checkpoint, config.batch_size), Path(model).name

    try:
        results = evaluate_files(config, decode_fn, out, version, calculators=calculators, score_fn=score_fn)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished items are in {out / 'eval.json'}; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(terminal_table(results), end="")
    for result in results:
        print(format_throughput(result))
    for result in results:
        if reranked := format_rerank(result):
            print(reranked)
    for result in results:
        if skipped := format_skipped(result):
            print(skipped)
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return 0


def _model_id(checkpoint: str) -> str:
    path = Path(checkpoint)
    return str(path.resolve()) if path.exists() else checkpoint


def _verifier(path: str, batch_size: int) -> ScoreFn:
    """The verifier's score_fn, loaded before the policy so a bad folder fails before anything decodes."""
    try:
        return local_scorer(path, batch_size)
    except CheckpointError as exc:  # transformers' messages run over several lines: keep the first
        raise CheckpointError(f"--rerank: {str(exc).splitlines()[0]} (expected a causal LM checkpoint folder)"
                              ) from None


def _live_decoder(address: str | None) -> tuple[DecodeFn, str]:
    from ray import serve  # Ray and Serve load only for --live, like the other cluster commands

    from cluster.cli import connect  # imported here: cli.py imports this module
    from services.pools import decode_on_pool

    connect(address)
    if "rollout" not in serve.status().applications:
        raise ConfigError("the cluster has no rollout pool running; start it (dpost run / submit) or use "
                          "--checkpoint")

    def decode(rows: list[Any]) -> Any:
        return decode_on_pool(rows, pool="rollout")  # (rows, the model version of each row)

    return decode, "live:rollout"
