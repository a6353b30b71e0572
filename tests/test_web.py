"""The web page in real headless Chromium (Debian's, driven by Playwright) against the real solver app on the
session cluster: ask a question and see the answer with the calculator's results marked; open the run view of
a real tiny run and see its per-iteration chart and stage list.

    DPOST_WEB_SCREENSHOTS=docs pytest tests/test_web.py    # also writes docs/web_ask.png and docs/web_run.png
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from ray import serve

from services.app import solver_app

pytestmark = pytest.mark.ray
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's; .ci/run installs it
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
REFRESH_S = 3  # the page reloads /v1/run this often (services/static/app.js)
ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")


@pytest.fixture(scope="module")
def solver_url(serve_port) -> str:
    return f"http://127.0.0.1:{serve_port}"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert not errors, f"the page threw: {errors}"


def screenshot(page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("DPOST_WEB_SCREENSHOTS") or tmp_path)
    page.screenshot(path=str(folder / name), full_page=True)
    assert (folder / name).stat().st_size > 10_000


def _redeploy_solver(config, run_dir: str) -> None:
    args = {"serving": config.serving.model_dump(mode="json"), "run_dir": run_dir}
    serve.run(solver_app(args), name="solver", route_prefix="/")


def _wait_until_served(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url}/ never served the page"
        time.sleep(1)


@pytest.fixture(scope="module")
def served_run(tiny_run, solver_url):
    """The session's tiny run (`tiny_run`, one DPO-ST iteration from the trained warm-up), finished, as
    `serve run services.app:solver_app run_dir=...` shows it, with its live model on the solver again (runs of
    other tests may have promoted theirs since): the run view needs every kind of stage, and the ask view a live
    model that writes calculator annotations."""
    from services.pools import swap

    config, manifest = tiny_run
    _redeploy_solver(config, str(config.run_dir))
    live = manifest["live"]["solver"]
    swap("solver", f"{config.name}:{live}", manifest["versions"][live]["path"])
    return config, manifest


def test_run_view_refreshes_by_itself_and_shows_the_stage_in_progress(tiny_run_in_progress, solver_url, page):
    config, _, _ = tiny_run_in_progress
    _wait_until_served(solver_url)  # the run deploys the solver app if no test did before
    page.goto(f"{solver_url}/#run")
    page.wait_for_selector("#stages li.running", timeout=600_000)
    shown = page.inner_text("#stages li.running .name").rstrip(" ⋯")
    seen_at = time.time()
    entry = json.loads((config.run_dir / "manifest.json").read_text())["stages"][shown]
    assert entry["status"] == "running" or entry["finished"] >= seen_at - 2 * REFRESH_S, entry
    assert f"in progress: {shown}" in page.inner_text("#run-status")
    first = page.inner_text("#run-status")
    page.wait_for_function(f"document.querySelector('#run-status').textContent !== {json.dumps(first)}",
                           timeout=60_000)  # a later refresh: new seconds, or the next stage


def test_run_view_is_a_404_json_error_until_the_solver_is_started_for_a_run(tiny_run, solver_url, page):
    config, _ = tiny_run
    _redeploy_solver(config, "")  # `serve run services.app:solver_app run_dir=`: no run
    r = httpx.get(f"{solver_url}/v1/run", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error", r.text
    page.goto(f"{solver_url}/#run")
    page.wait_for_selector("#run-error:not([hidden])")
    assert "No run to show" in page.inner_text("#run-error")

    _redeploy_solver(config, str(config.run_dir))  # what `serve run services.app:solver_app run_dir=...` does
    r = httpx.get(f"{solver_url}/v1/run", timeout=30)
    assert r.status_code == 200 and r.json()["run_dir"] == str(config.run_dir.resolve()), r.text
    assert "/v1/run" in httpx.get(f"{solver_url}/openapi.json").json()["paths"]


def _question_answered_with_the_calculator(url: str, manifest: dict) -> str:
    """A training question the live model answers (greedy) with at least one calculator annotation."""
    labeled = Path(manifest["stages"]["data"]["outputs"]["labeled_path"])
    questions = [json.loads(line)["question"] for line in labeled.read_text().splitlines()[:40]]
    for question in questions:
        r = httpx.post(f"{url}/v1/solve", json={"question": question}, timeout=60)
        assert r.status_code == 200, r.text
        if ANNOTATION.search(r.json()["rationale"]):
            return question
    raise AssertionError("the live model wrote no <<expr=result>> annotation for 40 training questions")


def test_ask_view_shows_the_answer_and_marks_each_calculator_result(served_run, solver_url, page, tmp_path):
    config, manifest = served_run
    question = _question_answered_with_the_calculator(solver_url, manifest)
    page.goto(solver_url)
    offered = httpx.get(f"{solver_url}/openapi.json").json()["components"]["schemas"]["SolveRequest"]["properties"][
        "strategy"]["enum"]  # rerank only where the API offers it
    assert page.eval_on_selector_all("#strategy option", "os => os.map(o => o.value)") == [
        s for s in ("greedy", "majority", "rerank") if s in offered]
    page.fill("#question", question)
    page.click("#solve")
    page.wait_for_selector("#result:not([hidden])")
    rationale = page.inner_text("#rationale")
    forced = [m.group(2) for m in ANNOTATION.finditer(rationale)]
    assert forced, rationale
    assert page.eval_on_selector_all("#rationale mark.calc", "ms => ms.map(m => m.textContent)") == forced
    assert page.inner_text("#answer")
    assert page.inner_text("#answer-model").startswith(f"{config.name}:")
    assert page.is_hidden("#clusters-box")  # greedy: one sample

    page.select_option("#strategy", "majority")
    page.fill("#n", "5")
    page.click("#solve")
    page.wait_for_selector("#clusters-box:not([hidden])")
    votes = [int(v) for v in page.eval_on_selector_all("#clusters tbody tr td:nth-child(2)",
                                                       "tds => tds.map(t => t.textContent)")]
    assert votes and sum(votes) <= 5, votes
    rationale = page.inner_text("#rationale")  # the winning answer's: its calculator results marked too
    assert page.eval_on_selector_all("#rationale mark.calc", "ms => ms.map(m => m.textContent)") == [
        m.group(2) for m in ANNOTATION.finditer(rationale)]
    screenshot(page, "web_ask.png", tmp_path)


def test_run_view_draws_accuracy_per_iteration_and_the_stage_list_of_the_run(served_run, solver_url, page,
                                                                              tmp_path):
    config, manifest = served_run
    page.goto(f"{solver_url}/#run")
    page.wait_for_selector("#run-body:not([hidden])")
    assert page.inner_text("#run-title") == f"Run {config.name}"
    assert "done" in page.inner_text("#run-status")
    # two models, sft-0 (the warm-up) and sft-1, each a dev and a test point
    assert page.locator("#accuracy-chart circle.point-dev").count() == 2
    assert page.locator("#accuracy-chart circle.point-test").count() == 2
    assert page.locator("#accuracy-chart polyline").count() == 2
    pairs = manifest["stages"]["it1-pairs"]["outputs"]["pairs"]
    assert page.locator("#data-chart rect.bar-pairs").count() == 1, pairs
    assert page.locator("#data-chart rect.bar-pseudo_labels").count() == 1
    names = page.eval_on_selector_all("#stages li .name", "ns => ns.map(n => n.textContent)")
    assert names == list(manifest["stages"]), names
    live = manifest["live"]["solver"]
    assert page.inner_text("#serving-version") == f"{config.name}:{live}"
    assert f"{live} (live)" in page.inner_text("#promotions")
    screenshot(page, "web_run.png", tmp_path)
