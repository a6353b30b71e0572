"""`dpost`: run, submit and operate DPO-augmented self-training on Ray.

    dpost run configs/demo.yaml                 # embedded: local Ray, the loop, then serve the result
    dpost experiment configs/matrix/paper.yaml  # methods x seeds, paired, with 95% intervals
    dpost submit configs/x.yaml --address http://HEAD:8265
    dpost status [RUN]    dpost scale solver 3    dpost solve "question"    dpost rollback sft-0
    dpost eval --checkpoint runs/demo/checkpoints/sft-1 --data test.jsonl
    dpost synthesize configs/synthesis.yaml --problems 200 --seed-text notes.txt
    dpost build-model --preset small --out models/small

User mistakes (bad config, missing file, unknown version) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from cluster import eval_cmd
from trainers.core.errors import ConfigError, DpostError

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage over several)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def connect(address: str | None) -> None:
    """Join a running Ray cluster (no-op when this process is already connected)."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False,
                 namespace="dpost")
    except ConnectionError as exc:
        raise ConfigError(f"no Ray cluster at {address or 'auto'} ({exc})") from None


def cmd_run(args: argparse.Namespace) -> int:
    """The console shows the run's stage lines, one bar for the stage in flight, and the accuracy table;
    everything else goes to the run directory's logs/ (this process's output to driver.log, the Ray
    processes' logs through the `ray` link)."""
    from cluster.aggregate import gain_lines
    from cluster.config import load_config
    from cluster.console import Console
    from cluster.job import drive
    from cluster.report import accuracy_table

    overrides: dict[str, Any] = {}
    if args.name:
        overrides["name"] = args.name
    config = load_config(args.config, overrides)
    logs = config.run_dir / "logs"
    with Console.to_log_file(logs / "driver.log") as console:
        if args.address:
            connect(args.address)
        else:
            _start_local_ray(logs)
        started = time.time()
        console.print(f"dpost: run {config.name} ({config.mode}, {config.iterations} iteration(s)) in "
                      f"{config.run_dir}; logs in {logs}")
        result = drive(config, detached=bool(args.address), console=console)
        console.print(f"dpost: finished in {(time.time() - started) / 60:.1f} min\n")
        manifest = json.loads((Path(result["run_dir"]) / "manifest.json").read_text())
        for line in accuracy_table(manifest) + [""] + gain_lines(manifest):
            console.print(line)
        url = f"http://{config.serving.host}:{config.serving.port}"
        console.print(f"\nThe solver serves {result['live'].get('solver')} at {url}. Try:\n"
                      f"  curl -s {url}/v1/solve -H 'content-type: application/json' "
                      f"-d '{{\"question\": \"Ava has 12 pens. She buys 5 more. How many pens does she have?\"}}'\n"
                      f"  dpost solve --url {url} \"Ava has 12 pens. She buys 5 more. How many pens does she have?\"")
        if args.exit_when_done or args.address:
            return 0
        console.print("Serving until Ctrl-C.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    """Only the synthesis stages of a run (the warm-up, the synthesizer, iteration 1's written problems and
    votes) into its run directory, then one line per stage. Seed files and data are read before Ray starts,
    so bad input is one line."""
    import ray

    from cluster.config import parse_config, read_yaml_file
    from cluster.console import Console
    from cluster.job import start_coordinator
    from services.pools import start_serve
    from trainers.synthesis.prompts import load_seed_texts

    raw = read_yaml_file(args.config) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("synthesis") or {}, dict):
        raise ConfigError(f"{args.config}: the top level and its `synthesis` must be mappings")
    synthesis = dict(raw.get("synthesis") or {}, enabled=True)
    for key, value in (("problems_per_iteration", args.problems), ("vote_threshold", args.vote_threshold)):
        if value is not None:
            synthesis[key] = value
    if args.seed_text:
        synthesis["seed_texts"] = [*(synthesis.get("seed_texts") or []), *args.seed_text]
    raw = {**raw, "synthesis": synthesis, **({"name": args.name} if args.name else {})}
    config = parse_config(raw, where=args.config)
    load_seed_texts(config.synthesis.seed_texts)
    _check_synthesis_data(config)
    logs = config.run_dir / "logs"
    with Console.to_log_file(logs / "driver.log") as console:
        console.print(f"dpost: synthesis stages of run {config.name} in {config.run_dir}; logs in {logs}")
        if args.address:
            connect(args.address)
        else:
            _start_local_ray(logs)
        start_serve(config.serving)
        coordinator = start_coordinator(config, detached=False)
        try:
            ray.get(coordinator.synthesize.remote())
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, DpostError):  # a user's mistake found inside a stage: still one line
                raise exc.cause from None
            raise
        finally:
            ray.kill(coordinator, no_restart=True)  # `dpost run` of the run directory starts its own
    manifest = json.loads((config.run_dir / "manifest.json").read_text())
    for line in synthesis_lines(manifest):
        print(line)
    return 0


def _check_synthesis_data(config: Any) -> None:
    """What the synthesizer needs from a run's own files, checked before anything starts."""
    if config.data.synthetic is not None:
        return
    from trainers.data.problems import load_problems

    if not any(p.rationale for p in load_problems(config.data.labeled)):
        raise ConfigError(f"data.labeled {config.data.labeled}: no problem has a rationale for the synthesizer "
                          "to learn from")
    load_problems(config.data.unlabeled, unanswered=True)


def synthesis_lines(manifest: dict[str, Any]) -> list[str]:
    """One line per synthesis stage of a run's manifest: what the synthesizer learnt from, the filter
    counts, the vote's label stats."""
    stages = {name: s.get("outputs", {}) for name, s in manifest["stages"].items() if s.get("status") == "done"}
    lines = []
    if "synthesizer" in stages:
        s = stages["synthesizer"]
        if s.get("reused"):
            lines.append(f"synthesizer: {s['checkpoint']} as is (synthesis.train: false)")
        else:
            lines.append(f"synthesizer: {s['examples']} examples ({s['seed_texts']} seed texts), "
                         f"{s['global_step']} SFT steps from {s['trained_from']}, loss {s['first_loss']:.3g} -> "
                         f"{s['final_loss']:.3g}")
    for name in sorted(n for n in stages if n.endswith("-synthesized")):
        s = stages[name]
        empty = "nothing kept: " if not s["kept"] else ""
        lines.append(f"{name}: {empty}{s['summary']} (by {s['synthesizer_version']})")
    for name in sorted(n for n in stages if n.endswith("-votes")):
        s = stages[name]
        accuracy = ("no gold to grade against" if s["label_accuracy"] is None
                    else f"label accuracy {100 * s['label_accuracy']:.1f}% against the synthesizer's answers")
        lines.append(f"{name}: k={s['samples_per_question']}, threshold {s['vote_threshold']}: synthesized "
                     f"{s['synthesized_labelled']}/{s['synthesized']} labelled, unanswered "
                     f"{s['unanswered_labelled']}/{s['unanswered']} labelled; {accuracy}; U_t {s['count']} "
                     f"questions in {s['path']}")
    return lines


def _start_local_ray(logs: Path) -> None:
    """A fresh local cluster ("local": a bare ray.init() would join whatever /tmp/ray last recorded), its
    logs linked from the run directory."""
    import ray

    from services.config import apply_serve_env

    apply_serve_env()
    context = ray.init(address="local", include_dashboard=False, namespace="dpost", log_to_driver=False,
                       runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    _link(logs / "ray", Path(context.address_info["session_dir"]) / "logs")


def cmd_experiment(args: argparse.Namespace) -> int:
    """Every cell of the matrix in turn on one cluster (started when the first unfinished cell needs it), then
    the aggregate: results JSON, Markdown report and figures."""
    from cluster.aggregate import markdown, write_outputs
    from cluster.console import Console
    from cluster.experiment import load_experiment, run_experiment
    from cluster.job import drive

    experiment, base = load_experiment(args.file)
    started = time.time()

    def run_cell(config: Any) -> None:
        logs = config.run_dir / "logs"
        with Console.to_log_file(logs / "driver.log") as console:
            if args.address:
                connect(args.address)
            elif not _ray_initialized():
                _start_local_ray(logs)
            drive(config, detached=bool(args.address), console=console)

    cells = run_experiment(experiment, base, run_cell)
    doc = write_outputs(experiment, cells)
    print(f"dpost: experiment {experiment.name}: {len(cells)} cells in {experiment.folder} "
          f"({(time.time() - started) / 60:.1f} min this time); wrote {experiment.results_json} and "
          f"{experiment.report_md}")
    print(markdown(doc, {}), end="")
    return 0


def _ray_initialized() -> bool:
    import ray

    return ray.is_initialized()


def _link(link: Path, target: Path) -> None:
    """Point `link` at `target` (replacing an older link, e.g. a resumed run's previous Ray session)."""
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)


def cmd_submit(args: argparse.Namespace) -> int:
    from ray.job_submission import JobSubmissionClient

    from cluster.config import load_config

    # validate here, so a bad file fails before the cluster sees it (data paths may be cluster-only)
    config = load_config(args.config, check_files=False)
    text = Path(args.config).read_text()
    try:
        client = JobSubmissionClient(args.address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot reach the Ray Jobs API at {args.address} ({exc})") from None
    entry = f"python -m cluster.job --config-b64 {base64.b64encode(text.encode()).decode()}"
    deadline = time.monotonic() + 60
    while True:  # a just-started head answers "No available agent" until its job agent is up
        try:
            job_id = client.submit_job(entrypoint=entry, submission_id=f"dpost-{config.name}-{int(time.time())}")
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise ConfigError(f"the cluster refused the job: {exc}") from None
            time.sleep(2)
    print(f"submitted {job_id}; run directory on the cluster: {config.run_dir}")
    if not args.wait:
        return 0
    from ray.job_submission import JobStatus

    while True:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            print(f"job {job_id}: {status.value}")
            return 0 if status == JobStatus.SUCCEEDED else 1
        time.sleep(2)


def _find_run(name: str | None, root: str) -> Path:
    base = Path(root)
    if name and (Path(name) / "manifest.json").exists():
        return Path(name)
    if name:
        path = base / name
        if not (path / "manifest.json").exists():
            raise ConfigError(f"no run named {name!r} under {base} (no manifest.json)")
        return path
    runs = sorted(base.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ConfigError(f"no runs under {base}")
    return runs[-1].parent


def cmd_status(args: argparse.Namespace) -> int:
    run = _find_run(args.run, args.root)
    m = json.loads((run / "manifest.json").read_text())
    print(f"run {m.get('name')} [{m.get('status')}] in {run}; live solver: {m['live'].get('solver')}")
    for name, s in m["stages"].items():
        extra = {k: v for k, v in s.get("outputs", {}).items() if isinstance(v, (int, float))}
        print(f"  {name:22s} {s.get('status'):8s} {s.get('seconds', 0):7.1f}s  {extra if extra else ''}")
    if args.address:
        from services.pools import pool_status

        connect(args.address)
        for pool in ("rollout", "solver"):
            st = pool_status(pool)
            print(f"pool {pool}: {st['version']} on {len(st['replicas'])} replica(s)")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from services.pools import scale

    if args.pool not in ("rollout", "solver", "verifier"):
        raise ConfigError(f"pool must be rollout, solver or verifier, got {args.pool!r}")
    connect(args.address)
    scale(args.pool, args.replicas)
    print(f"pool {args.pool}: {args.replicas} replica(s)")
    return 0


def cmd_solve(args: argparse.Namespace) -> int:
    import httpx

    body = {"question": args.question, "strategy": args.strategy, "n": args.n}
    if args.top_k is not None:
        body["top_k"] = args.top_k
    try:
        r = httpx.post(f"{args.url.rstrip('/')}/v1/solve", json=body, timeout=120)
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the solver at {args.url} ({exc})") from None
    data = r.json()
    if r.status_code != 200:
        raise ConfigError(data.get("error", {}).get("message", r.text))
    print(data["rationale"])
    print(f"\nanswer: {data['answer']}  (votes {data['votes']}, model {data['model_version']})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Through the run's coordinator while it lives (it is the manifest's only writer, and keeps gating
    promotions against the rolled-back version); when none is running, nothing else holds the manifest, so
    this process does the same rollback itself."""
    from cluster.rundir import RunDir
    from cluster.stages import rollback

    run = RunDir(_find_run(args.run, args.root))
    versions = run.versions()
    if args.version not in versions:  # checked here too, so the mistake is one line, not a remote traceback
        raise ConfigError(f"unknown version {args.version!r}; this run has {sorted(versions)}")
    connect(args.address)
    coordinator = running_coordinator(run.name, run.root)
    if coordinator is not None:
        import ray

        label = ray.get(coordinator.rollback.remote(args.version))
    else:
        label = rollback(run, args.version)
    print(f"solver now serves {label}")
    return 0


def running_coordinator(run_name: str, run_root: Path) -> Any | None:
    """The coordinator actor of the run in `run_root` if one is alive, else None. Actors are named by the
    run's name only, so one of another run directory with the same name does not count."""
    import ray

    from cluster.job import coordinator_name
    from services.registry import NAMESPACE

    try:
        actor = ray.get_actor(coordinator_name(run_name), namespace=NAMESPACE)
        root = ray.get(actor.run_root.remote())
    except (ValueError, ray.exceptions.RayActorError):  # no such actor, or it died for good
        return None
    return actor if root == str(Path(run_root).resolve()) else None


def cmd_config(args: argparse.Namespace) -> int:
    """The run config's JSON Schema (for editors validating YAML), or a config file resolved with every
    default filled in."""
    from cluster.config import config_schema, load_config, show_config

    if args.schema:
        print(json.dumps(config_schema(), indent=1))
    else:
        print(show_config(load_config(args.show)), end="")
    return 0


def cmd_build_model(args: argparse.Namespace) -> int:
    from trainers.data.synthetic import SyntheticTaskConfig, corpus_texts
    from trainers.models.scratch import build_tiny_model

    if args.data:
        from trainers.data.problems import load_problems

        texts = [f"{p.question}\n{p.rationale or ''}" for p in load_problems(args.data).problems]
    else:
        texts = corpus_texts(SyntheticTaskConfig(seed=args.seed), 5000)
    path = build_tiny_model(args.out, args.preset, texts, seed=args.seed)
    print(f"saved {args.preset} model to {path}")
    return 0


def _positive_int(text: str) -> int:
    """An argument checked before anything connects to a cluster."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dpost", description="DPO-augmented self-training for math reasoning, on Ray")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=fn)
        return p

    p = add("run", cmd_run, "run a config: warm-up SFT, iterations, report, then serve the live model")
    p.add_argument("config")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--name", help="override the run name (the run directory)")
    p.add_argument("--exit-when-done", action="store_true", help="do not keep serving after the run")

    p = add("experiment", cmd_experiment, "run a matrix of methods x seeds (cluster/experiment.py), then write "
                                          "the results with 95%% intervals")
    p.add_argument("file", help="experiment YAML")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")

    p = add("submit", cmd_submit, "submit a run to a Ray cluster through the Jobs API")
    p.add_argument("config")
    p.add_argument("--address", required=True, help="the Jobs API, e.g. http://HEAD:8265")
    p.add_argument("--wait", action="store_true")

    p = add("status", cmd_status, "show a run's stages (and the pools, with --address)")
    p.add_argument("run", nargs="?")
    p.add_argument("--root", default="runs")
    p.add_argument("--address")

    p = add("scale", cmd_scale, "set a pool's replica count")
    p.add_argument("pool", choices=["rollout", "solver", "verifier"])
    p.add_argument("replicas", type=_positive_int)
    p.add_argument("--address")

    p = add("solve", cmd_solve, "ask the live solver a question over HTTP")
    p.add_argument("question")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--strategy", choices=["greedy", "majority", "rerank"], default="greedy",
                   help="rerank: the solver's verifier pool (serving.verifier) scores the n samples")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--top-k", type=int, help="rerank: only the K largest answer clusters compete")

    p = add("rollback", cmd_rollback, "put an earlier version of a run back on the live solver")
    p.add_argument("version")
    p.add_argument("--run")
    p.add_argument("--root", default="runs")
    p.add_argument("--address")

    p = add("config", cmd_config, "print the run config's JSON Schema, or a config with its defaults filled in")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--schema", action="store_true", help="the JSON Schema of a run config")
    which.add_argument("--show", metavar="FILE", help="this run config, resolved, as YAML")

    p = add("build-model", cmd_build_model, "build a from-scratch tokenizer + model preset")
    p.add_argument("--preset", default="small")
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="GSM8K-format file to train the tokenizer on (default: synthetic task)")
    p.add_argument("--seed", type=int, default=0)

    p = add("synthesize", cmd_synthesize, "run only the synthesis stages (synthesizer, written problems, filters, "
                                          "vote labels) into a run directory and print their counts")
    p.add_argument("config")
    p.add_argument("--name", help="override the run name (the run directory)")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--problems", type=int, help="synthesis.problems_per_iteration")
    p.add_argument("--vote-threshold", type=float, help="synthesis.vote_threshold, in (0, 1]")
    p.add_argument("--seed-text", action="append", metavar="FILE", help="a seed text file (repeatable), added "
                                                                        "to synthesis.seed_texts")

    p = add("eval", eval_cmd.run, "evaluate a checkpoint or the live solver on benchmark files")
    eval_cmd.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DpostError as exc:
        print(f"dpost: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dpost: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
