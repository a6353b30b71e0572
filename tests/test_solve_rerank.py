"""`/v1/solve` strategy `rerank` on a real Serve app: the solver pool samples, the verifier pool (a second
`Sampler` deployment in the solver's app, `serving.verifier`) scores every sample through `Sampler.score`, and
the answer is chosen by the one clustering (`trainers.core.rerank`) and the configured rule.

The verifier here is the untrained base model: as a judge it is only plumbing, so these tests prove the wiring
and that every number in the answer is consistent (tests/test_verifier.py trains a verifier that separates)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest
from ray import serve

from cluster.config import parse_config
from services.api import SolverAPI
from services.config import ServingConfig, VerifierConfig
from services.pools import deploy_pool, pool_status
from tests.conftest import tiny_run_config
from trainers.core.answers import answer_checker
from trainers.core.errors import CheckpointError, ConfigError
from trainers.engine.scoring import score_candidates
from trainers.models.checkpoints import load_policy

QUESTION = "Ava has 12 pens. She buys 5 more. How many pens does she have?"


def _not_a_causal_lm(base_checkpoint: Path, folder: Path) -> Path:
    """A complete checkpoint folder whose config names a seq2seq model."""
    shutil.copytree(base_checkpoint, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8, "num_layers": 1}))
    return folder


def test_a_verifier_folder_that_is_not_a_causal_lm_is_a_one_line_config_error(base_checkpoint, tmp_path) -> None:
    t5 = _not_a_causal_lm(base_checkpoint, tmp_path / "t5")
    cases = {str(t5): "serving.verifier.path: checkpoint", str(tmp_path / "nowhere"): "is not a folder"}
    for path, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            ServingConfig.from_dict({"verifier": {"path": path}})
        assert message in str(caught.value) and "\n" not in str(caught.value), caught.value
    assert "is not a causal LM (model_type 't5')" in str(pytest.raises(
        ConfigError, ServingConfig.from_dict, {"verifier": {"path": str(t5)}}).value)
    # the run config embeds the section: `dpost run` refuses it, `dpost submit` (paths on the cluster) does not
    raw = tiny_run_config(tmp_path, "rr", 1)
    raw["serving"]["verifier"] = {"path": str(t5), "rule": "weighted"}
    with pytest.raises(ConfigError, match=r"^config: serving\.verifier\.path: checkpoint .* is not a causal LM"):
        parse_config(raw)
    assert parse_config(raw, check_files=False).serving.verifier.rule == "weighted"
    with pytest.raises(ConfigError, match="serving.verifier.rule: Input should be 'rr_topk', 'weighted' or"):
        ServingConfig.from_dict({"verifier": {"path": str(base_checkpoint), "rule": "maj"}})


def _served() -> tuple:
    """What is deployed: when the solver app was last deployed, and each pool's version."""
    app = serve.status().applications.get("solver")
    return (app.last_deployed_time_s if app else None, pool_status("solver")["version"],
            pool_status("verifier")["version"])


@pytest.mark.ray
def test_a_verifier_that_is_not_a_causal_lm_fails_the_deploy_before_anything_changes(
        serve_port, sft_result, base_checkpoint, tmp_path) -> None:
    t5 = _not_a_causal_lm(base_checkpoint, tmp_path / "t5")
    # as read back on another machine (`dpost scale`): the paths are checked where it deploys
    config = ServingConfig.from_dict({"port": serve_port, "verifier": {"path": str(t5)}}, check_files=False)
    before = _served()
    with pytest.raises(CheckpointError, match=r"is not a causal LM \(model_type 't5'\)$"):
        deploy_pool("solver", config, "never", str(sft_result.checkpoint))
    assert _served() == before


@pytest.fixture(scope="module")
def reranking(serve_port, sft_result, base_checkpoint):
    config = ServingConfig(port=serve_port, max_new_tokens=48, max_n=16,
                           verifier=VerifierConfig(path=str(base_checkpoint), version="judge-1"))
    deploy_pool("solver", config, "rr-1", str(sft_result.checkpoint))
    return config, f"http://127.0.0.1:{serve_port}"


@pytest.mark.ray
def test_sampler_score_on_a_replica_gives_the_in_process_scores_batched(reranking, base_checkpoint,
                                                                       sft_result) -> None:
    problems = [QUESTION, "What is 6 times 7?", "Tom had 10 apples and ate 2. How many are left?"]
    solutions = ["12 + 5 = <<12+5=17>>17\n#### 17", "6 * 7 = 41\n#### 41", "10 - 2 = <<10-2=8>>8 apples.\n#### 8"]
    for deployment, checkpoint, version in (("Verifier", base_checkpoint, "judge-1"),
                                            ("Sampler", sft_result.checkpoint, "rr-1")):  # the sampling replicas
        handle = serve.get_deployment_handle(deployment, app_name="solver")

        async def concurrently() -> list[dict]:  # one @serve.batch group, split back per request
            return await asyncio.gather(*(handle.score.remote(problems[i:], solutions[i:]) for i in range(3)))

        answers = asyncio.run(concurrently())
        expected = score_candidates(*load_policy(checkpoint), problems, solutions)
        assert all(a["model_version"] == version for a in answers)
        for i, answer in enumerate(answers):
            assert answer["scores"] == pytest.approx(expected[i:], abs=1e-5), deployment
    assert pool_status("verifier")["version"] == "judge-1"


@pytest.mark.ray
def test_rerank_answer_follows_rr_topk_over_clusters_consistent_with_votes(reranking, base_checkpoint) -> None:
    _, url = reranking
    r = httpx.post(f"{url}/v1/solve", json={"question": QUESTION, "strategy": "rerank", "n": 12,
                                             "temperature": 1.0}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    clusters, k = body["clusters"], body["top_k"]
    print(f"rerank n=12: {[(c['answer'], c['votes'], round(c['best_score'], 4)) for c in clusters]}, k={k}, "
          f"chosen {body['answer']}")
    assert body["n"] == 12 and body["rule"] == "rr_topk" and k == 6  # min(8, n // 2)
    assert body["model_version"] == "rr-1" and body["verifier_version"] == "judge-1"
    assert clusters and sum(c["votes"] for c in clusters) <= 12
    assert [c["votes"] for c in clusters] == sorted((c["votes"] for c in clusters), reverse=True)
    checker = answer_checker("gsm8k")
    model, tokenizer = load_policy(base_checkpoint)
    rescored = score_candidates(model, tokenizer, [QUESTION] * len(clusters), [c["rationale"] for c in clusters])
    for c, score in zip(clusters, rescored):
        # each cluster shows its best-scored sample, whose answer is the cluster's
        assert checker.equivalent(checker.extract(c["rationale"]), float(c["answer"]))
        assert c["best_score"] == pytest.approx(score, abs=1e-5)
        assert 0 < c["best_score"] <= c["summed_score"] <= c["votes"] * c["best_score"] + 1e-9
    distinct = [checker.extract(c["rationale"]) for c in clusters]
    assert not any(checker.equivalent(a, b) for i, a in enumerate(distinct) for b in distinct[i + 1:])
    # RR.Top-K: the best single score within the K largest clusters (the larger cluster wins a tie)
    chosen = max(clusters[:k], key=lambda c: c["best_score"])
    assert (body["answer"], body["votes"], body["rationale"], body["score"]) == (
        chosen["answer"], chosen["votes"], chosen["rationale"], chosen["best_score"])

    r = httpx.post(f"{url}/v1/solve", json={"question": QUESTION, "strategy": "rerank", "n": 4, "top_k": 1},
                   timeout=120)
    body = r.json()
    assert r.status_code == 200 and body["top_k"] == 1
    assert body["answer"] == body["clusters"][0]["answer"]  # K = 1 keeps only the majority


@pytest.mark.ray
def test_dpost_solve_reranks_through_the_cli_and_a_bad_top_k_is_one_line(reranking, capsys) -> None:
    from cluster.cli import main

    _, url = reranking
    assert main(["solve", QUESTION, "--url", url, "--strategy", "rerank", "--n", "4", "--top-k", "1"]) == 0
    assert "answer: " in capsys.readouterr().out
    assert main(["solve", QUESTION, "--url", url, "--strategy", "rerank", "--n", "4", "--top-k", "5"]) == 2
    assert capsys.readouterr().err.strip().endswith("top_k: must be between 1 and n=4")


@pytest.mark.ray
@pytest.mark.parametrize(("body", "message"), [
    ({"strategy": "rerank", "n": 1}, "n: strategy rerank needs at least 2 samples"),
    ({"strategy": "rerank"}, "n: strategy rerank needs at least 2 samples"),
    ({"strategy": "rerank", "n": 17}, "n: at most 16"),
    ({"strategy": "rerank", "n": 4, "top_k": 5}, "top_k: must be between 1 and n=4"),
    ({"strategy": "rerank", "n": 4, "top_k": 0}, "top_k: Input should be greater than or equal to 1"),
    ({"strategy": "majority", "n": 4, "top_k": 2}, "top_k: only used with strategy rerank"),
])
def test_bad_rerank_requests_get_422_json_and_the_service_stays_up(reranking, body, message) -> None:
    _, url = reranking
    r = httpx.post(f"{url}/v1/solve", json={"question": QUESTION, **body}, timeout=30)
    assert r.status_code == 422 and r.json()["error"] == {"message": message, "type": "invalid_request_error"}
    assert httpx.get(f"{url}/healthz").status_code == 200


@pytest.mark.ray
def test_a_solver_without_a_verifier_answers_rerank_with_422_and_majority_as_before(reranking, sft_result) -> None:
    """The solver's ingress as `build_app` makes it without `serving.verifier`, beside the app under test on the
    same Sampler replicas (a second app costs one ingress replica, not a redeploy of the models)."""
    config, url = reranking
    plain = ServingConfig(port=config.port, max_new_tokens=48)
    sampler = serve.get_deployment_handle("Sampler", app_name="solver")
    serve.run(SolverAPI.options(ray_actor_options={"num_cpus": 0}).bind(
        sampler, plain.model_dump(mode="json", exclude={"rollout", "solver"})), name="plain", route_prefix="/plain")
    try:
        r = httpx.post(f"{url}/plain/v1/solve", json={"question": QUESTION, "strategy": "rerank", "n": 4}, timeout=30)
        assert r.status_code == 422 and r.json()["error"] == {
            "message": "strategy rerank needs a verifier, and this solver has none deployed (serving.verifier)",
            "type": "invalid_request_error"}
        r = httpx.post(f"{url}/plain/v1/solve", json={"question": QUESTION, "strategy": "majority", "n": 2},
                       timeout=120)
        assert r.status_code == 200 and r.json()["model_version"] == "rr-1" and "rule" not in r.json()
    finally:
        serve.delete("plain")
