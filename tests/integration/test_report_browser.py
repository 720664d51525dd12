"""The HTML report in a real browser: Debian's chromium, headless, driven by playwright.

A tiny run is trained (tiny random-init BERT, toy intents), `loratune report` writes its HTML, and
chromium opens the file from disk: no console error, no page error, no network request, the key
elements present, the scripts work, and full-page screenshots are taken (kept under
$LORATUNE_REPORT_SHOTS when set). The same for a tiny study directory.

chromium comes from `make install` (apt-get, see the Makefile; LORATUNE_CHROMIUM names another
executable). Without it this test FAILS, so CI cannot pass without having looked at the report; set
LORATUNE_NO_BROWSER=1 to skip it locally.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from loratune import api
from loratune.cli import main
from loratune.config import load_config

from support import overrides

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]


def _need(what: str, fix: str):
    if os.environ.get("LORATUNE_NO_BROWSER") == "1":
        pytest.skip(f"{what} (LORATUNE_NO_BROWSER=1)")
    pytest.fail(f"{what}: {fix} (or set LORATUNE_NO_BROWSER=1 to skip the browser test locally)")


def _chromium() -> str:
    explicit = os.environ.get("LORATUNE_CHROMIUM")  # another chromium build; never a downloaded one
    if explicit:
        if Path(explicit).is_file():
            return explicit
        _need(f"LORATUNE_CHROMIUM={explicit} does not exist", "point it at a chromium executable")
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    _need("Debian's chromium is not installed", "run `make install` as root, or `apt-get install chromium`")


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the playwright package is missing", "pip install -e '.[test]' (make install)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _shots_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("LORATUNE_REPORT_SHOTS") or tmp_path / "shots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def open_report(browser, html: Path, shot: Path, width: int = 1280):
    """Open a report file; returns (page, problems): console errors/warnings, page errors, network requests."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: problems.append(f"request: {r.url}") if not r.url.startswith(("file:", "data:"))
            else None)
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.goto(html.resolve().as_uri())
    page.wait_for_selector("html[data-ready='1']", timeout=10_000)
    page.screenshot(path=str(shot), full_page=True)
    return page, problems


@pytest.fixture(scope="module")
def tiny_run(tiny_bert, intent_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-run") / "run"
    # short on purpose: a model that still confuses a few intents gives the pairs section something to show
    cfg = load_config(None, overrides(tiny_bert, intent_data, out, max_steps=8, eval_steps=4, learning_rate=1e-2))
    api.train(cfg, progress=False)
    return out


def test_run_report_in_chromium(tiny_run, browser, tmp_path, capsys):
    html = tmp_path / "run.html"
    assert main(["report", str(tiny_run), "-o", str(html)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert html.stat().st_size < 5 * 1024 * 1024
    page, problems = open_report(browser, html, _shots_dir(tmp_path) / "run-report.png")
    assert problems == []
    assert page.title().startswith("run ")
    for sel in ("#summary .tile[data-key=best]", "#summary .tile[data-key=verdict]", "#curves svg",
                "[data-chart=loss] circle.dot", "[data-chart=metric] circle.dot", "#diagnosis",
                "[data-chart=recall] rect.bar", "#classes #worst-classes tbody tr", "#params table.params",
                "#confusion [data-chart=confusion-focus] svg", "nav.toc a[href='#pairs']"):
        assert page.locator(sel).count() > 0, sel
    # one marker per eval point on the val loss curve (steps 0, 4, 8)
    assert page.locator("[data-chart=loss] .s-val circle.dot").count() == 3
    best = page.locator("#summary .tile[data-key=best] .v").inner_text()
    assert best.replace(".", "").isdigit()
    # confused pairs with example texts (or, when the model makes no error, a section that says so)
    pairs = page.locator("#pairs-table tbody tr")
    if pairs.count():
        assert page.locator("#pairs-table ul.examples li").count() > 0
    else:
        assert page.locator("#pairs [data-missing]").count() == 1
    # the sortable table sorts, the copy button works, and neither logs an error
    page.locator("#classes details summary").first.click()
    head = page.locator("#all-classes th").nth(3)
    head.click()
    head.click()
    assert head.get_attribute("aria-sort") == "descending"
    vals = [float(v) for v in page.locator("#all-classes tbody tr td:nth-child(4)").evaluate_all(
        "cells => cells.map(c => c.getAttribute('data-v')).filter(v => v !== null && v !== 'None')")]
    assert vals == sorted(vals, reverse=True)
    page.locator("#params details summary").click()
    page.locator("#params button.copy").click()
    page.wait_for_timeout(100)
    assert problems == []
    page.close()


def _scripted_study(study_dir: Path) -> Path:
    """A study played by the protocol on scripted trial outcomes (no training; see test_report_model.py),
    with real trial directories, decisions.jsonl and final/ (study.json, config.yaml)."""
    path = Path(__file__).resolve().parents[1] / "unit" / "test_report_model.py"
    spec = importlib.util.spec_from_file_location("_report_model_helpers", path)
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    helpers.scripted_study(study_dir, run_dirs=True)
    return study_dir


def test_study_report_in_chromium(browser, tmp_path, capsys):
    study = _scripted_study(tmp_path / "study")
    assert main(["report", str(study), "--trial-reports"]) == 0
    html = study / "report.html"
    assert "wrote" in capsys.readouterr().out
    page, problems = open_report(browser, html, _shots_dir(tmp_path) / "study-report.png")
    assert problems == []
    assert page.title().startswith("study ")
    for sel in ("#summary .tile[data-key=recommended]", "#summary .tile[data-key=test]", "#trail .trail-row",
                "#compute [data-chart=best-vs-examples] circle.pt", "#rank [data-chart=rank] circle.pt",
                "#rank .mark3", "#rank .mark2", "#pair [data-chart=pair] rect.bar", "#pair .err",
                "#lora-vs-full #lora-full-table", "#recommendation pre.yaml", "#trials #trials-table tbody tr"):
        assert page.locator(sel).count() > 0, sel
    assert page.locator("#trail .trail-row[data-kind=pair]").count() == 1
    assert "learning_rate: 0.004" in page.locator("#recommendation pre.yaml").inner_text()
    # a trial link of the trail jumps to that trial's details
    link = page.locator("#trail a[href^='#trial-']").first
    target = link.get_attribute("href")
    link.click()
    assert page.evaluate("location.hash") == target
    assert page.locator(f"{target}.trial-card svg").count() == 1  # the trial's own curve
    page.locator("#recommendation button.copy").click()
    page.wait_for_timeout(100)
    # and on to that trial's own run report (written by --trial-reports), which loads cleanly too
    page.locator(f"{target} a", has_text="full run report").click()
    page.wait_for_selector("body[data-report=run]")
    page.wait_for_selector("html[data-ready='1']")
    assert page.locator("#curves svg").count() > 0
    assert problems == []
    page.close()


def test_show_prints_the_study_essentials(tmp_path, capsys):
    study = _scripted_study(tmp_path / "study")
    assert main(["show", str(study)]) == 0
    out = capsys.readouterr().out
    for needle in ("decision trail", "binding knob: optimization", "rank vs val macro-F1", "plateau",
                   "LoRA vs full fine-tuning", "recommended config", "learning_rate: 0.004"):
        assert needle in out, needle


def test_show_prints_the_run_essentials(tiny_run, capsys):
    assert main(["show", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    for needle in ("eval points", "diagnosis", "verdict:", "per-class recall", "top confused pairs", "parameters",
                   "best val/macro_f1"):
        assert needle in out, needle


def test_report_of_a_missing_path_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["show", str(tmp_path / "empty")]) == 2


def test_report_json_is_the_plain_report_data(tiny_run, capsys):
    import json

    assert main(["report", str(tiny_run), "--json", "--no-examples"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "run" and data["metric"] == "val/macro_f1"
    assert {p["id"] for p in data["curves"]} >= {"loss", "metric"}
    assert data["classes"]["rows"] and data["params"]
    assert not (tiny_run / "report.html").exists()  # --json writes no file
