"""Screenshot MLflow's parallel-coordinates view of a study's search trials, the way a person gets there.

    python docs/images/capture_mlflow_compare.py runs/quickstart            # -> docs/images/mlflow_parallel_coordinates.png

It starts `mmstudy ui STUDY` on a free port of 127.0.0.1, opens the study's runs table in headless Chromium
(Playwright's Python API driving the system's /usr/bin/chromium; `pip install playwright`, never
`playwright install`), filters the table to the search trials (tags.`mmstudy.role` = 'search'), expands the
study's parent run, ticks its child runs, presses Compare, and on the Parallel Coordinates tab picks every
sampled parameter of the study's search space and the metrics (default best_val_acc, best_test_acc: each
trial's mean over seeds at its best validation epoch). Before the screenshot it checks that every sampled
parameter is on every selected run as an MLflow param, and numeric ones in a form the UI reads as a number.
The UI is stopped at the end (the process group this script started, nothing else).

Checked with MLflow 3.17 and Chromium 140+; MLflow's UI changes between versions, so the selectors below are
the ones a person would click (the filter box, the expand button, the row checkboxes, Compare, the two pickers).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FILTER_BOX = 'metrics.rmse < 1 and params.model = "tree"'  # the runs table's search box (its placeholder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sampled_params(config: dict) -> list[str]:
    """The study's sampled parameters as its runs name them (dotted config keys; several loss settings are
    one more categorical)."""
    from search_spaces import load_space

    names = load_space(config.get("search_space")).sampled_names()
    return names + (["loss_setting"] if len(config.get("loss_settings") or []) > 1 else [])


def check_params(study: str, params: list[str], role: str) -> list[str]:
    """The child runs of `role`, after checking each has every sampled param, numeric where the value is."""
    from analysis.load import child_runs, resolve_study

    runs = [r for r in child_runs(resolve_study(study)) if r.data.tags.get("mmstudy.role") == role]
    if len(runs) < 2:
        sys.exit(f"capture: study '{study}' has {len(runs)} {role} run(s); Compare needs two or more")
    for run in runs:
        missing = [p for p in params if p not in run.data.params]
        if missing:
            sys.exit(f"capture: run {run.info.run_name} lacks the params {missing}")
    numeric = [p for p in params if all(_is_number(r.data.params[p]) for r in runs)]
    print(f"{len(runs)} {role} runs; sampled params on every run: {', '.join(params)} "
          f"(numeric: {', '.join(numeric) or 'none'})")
    return [r.info.run_name for r in runs]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    sys.exit(f"capture: MLflow's UI did not answer on {url} within {timeout_s:.0f} s")


def pick(page, index: int, keys: list[str]) -> None:
    """Choose `keys` in the compare page's `index`-th picker (0: parameters, 1: metrics), by exact title."""
    box = page.locator(".du-bois-light-select").nth(index).locator("input")
    for key in keys:
        box.click()
        box.fill(key)
        page.locator(f".du-bois-light-select-item-option[title='{key}']").first.click()
    page.keyboard.press("Escape")


def capture(url: str, study_name: str, role: str, names: list[str], params: list[str], metrics: list[str],
            out: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(120000)  # a loaded machine renders MLflow's pages slowly
        page.goto(url)
        box = page.get_by_placeholder(FILTER_BOX)
        box.wait_for()
        box.fill(f"tags.`mmstudy.role` = '{role}'")
        box.press("Enter")
        parent = page.locator("[role=row]").filter(has_text=study_name).first
        parent.wait_for()
        parent.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # expand the study's run
        children = page.locator("[role=row]").filter(has_text=f"{study_name}-{role}-")
        children.first.wait_for()
        if children.count() != len(names):
            sys.exit(f"capture: the runs table shows {children.count()} of the {len(names)} {role} runs")
        for i in range(children.count()):
            children.nth(i).get_by_label("Press Space to toggle row selection (unchecked)").check()
        page.get_by_role("button", name="Compare").click()
        page.wait_for_url("**compare-runs**")
        page.get_by_text("Parallel Coordinates Plot").wait_for()
        if page.get_by_text("MLflow Assistant").count():  # give the plot the assistant panel's width
            page.get_by_label("Close").first.click()
        page.get_by_role("button", name="Clear All").click()
        pick(page, 0, params)
        pick(page, 1, metrics)
        page.mouse.click(5, height - 5)  # close any open picker
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out))
        browser.close()
    print(f"wrote {out} ({len(names)} runs: {', '.join(sorted(names))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a study folder (runs/NAME) or its MLflow experiment name")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "mlflow_parallel_coordinates.png"))
    parser.add_argument("--role", default="search", help="which trials to compare (mmstudy.role)")
    parser.add_argument("--metrics", nargs="+", default=["best_val_acc", "best_test_acc"])
    parser.add_argument("--params", nargs="+", help="default: the study's sampled parameters")
    parser.add_argument("--size", default="1600x1000", help="browser window, WIDTHxHEIGHT")
    args = parser.parse_args()

    from analysis.load import resolve_study
    from study.ui import runs_table_url

    ref = resolve_study(args.study)
    params = args.params or sampled_params(ref.config)
    names = check_params(args.study, params, args.role)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    ui = subprocess.Popen([sys.executable, "-m", "study.cli", "ui", args.study, "--port", str(port)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health", 180)
        width, height = (int(v) for v in args.size.lower().split("x"))
        capture(runs_table_url(base, ref.experiment_id), ref.name, args.role, names, params, args.metrics,
                Path(args.out), width, height)
    finally:
        stop_group(ui)


def stop_group(process: subprocess.Popen, grace_s: float = 60) -> None:
    """Stop `mmstudy ui` and the MLflow server processes it started (their own process group, nothing else):
    SIGTERM, then SIGKILL for whatever is still there after `grace_s`."""
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=grace_s)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # is any process of the group left?
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
