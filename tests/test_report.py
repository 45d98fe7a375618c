"""report.html and plots/training.png: a run at a glance, checked in a real headless browser (every picture
loads, a table row for every setting). Under CI (CI=true, where .ci/run installs chromium) a browser that cannot
start fails the test instead of skipping it."""
import json
import os
import re
import shutil
import subprocess

import pytest

from tests.test_cli import demo_args, run


def rendered(page, tmp_path) -> dict:
    """The DOM of `page` after load in headless chromium: the body's data-* attributes and the table rows."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    under_ci = os.environ.get("CI", "").lower() == "true"
    if not browser:
        if under_ci:
            pytest.fail("chromium is not installed under CI (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    try:
        done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                               "--disable-component-update", "--disable-sync", "--no-first-run", "--allow-file-access-from-files",
                               f"--user-data-dir={tmp_path / 'chrome-profile'}", "--virtual-time-budget=10000",
                               "--dump-dom", f"file://{page}"], timeout=120, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        if under_ci:
            pytest.fail("chromium did not finish within 120 s")
        pytest.skip("chromium did not finish within 120 s here")
    if "<body" not in done.stdout:
        if under_ci:
            pytest.fail(f"chromium cannot start: {done.stderr[-300:]}")
        pytest.skip(f"chromium cannot start here: {done.stderr[-200:]}")
    body = re.search(r"<body([^>]*)>", done.stdout).group(1)
    attrs = {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', body)}
    attrs["setting-rows"] = done.stdout.count('<tr class="setting">')
    return attrs


def test_a_run_reads_at_a_glance(tmp_path, demo_root):
    out = tmp_path / "run"
    args = demo_args(demo_root, out, "--epochs", "2", "--epsilon_test", "2", "8", "--step_test", "1", "2",
                     "--num_visualization", "3", "--step_visualization", "1")
    assert run("--mode", "all", *args) == 0
    assert (out / "plots" / "training.png").stat().st_size > 5000
    page = (out / "report.html").read_text()
    assert "plots/training.png" in page and "visualization/index.html" in page and "auroc_vs_eps.png" in page
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    body = rendered(out / "report.html", tmp_path)
    assert body["images-total"] >= 6 and body["images-loaded"] == body["images-total"]
    assert body["setting-rows"] == len(settings) == 5


def test_class_all_report_links_each_class(tmp_path, demo_root):
    data = tmp_path / "data"
    for name in ("bottle", "screw"):
        shutil.copytree(os.path.join(demo_root, "widget"), data / name)
    out = tmp_path / "runs"
    from tests.test_cli import TINY
    assert run("--mode", "all", "--dataset", "mvtec", "--class_name", "all", "--dataset_dir", str(data),
               "--output_dir", str(out), *TINY, "--epochs", "1", "--step_train", "1", "--step_test", "1",
               "--epsilon_test", "8", "--num_visualization", "1", "--train_batch_size", "16") == 0
    page = (out / "report.html").read_text()
    assert 'href="bottle/report.html"' in page and 'href="screw/report.html"' in page and "mean" in page
    assert (out / "bottle" / "report.html").exists()


def test_a_flat_map_is_said_and_drawn_on_a_fixed_range(tmp_path):
    """Maps that span less than 1e-3 (an untrained attention map): a fixed range of width 1, and the report says so."""
    import numpy as np

    from engine.report_page import write_report
    from utils.figures import heat_range
    maps = np.full((4, 8, 8), 0.25, np.float32) + np.random.default_rng(0).random((4, 8, 8)).astype(np.float32) * 1e-6
    lo, hi, flat = heat_range(maps)
    assert flat and hi - lo == pytest.approx(1.0) and lo < 0.25 < hi
    lo, hi, flat = heat_range(np.linspace(0, 1, 256).reshape(4, 8, 8))
    assert not flat and lo == pytest.approx(0.01, abs=1e-3) and hi == pytest.approx(0.999, abs=1e-3)
    (tmp_path / "visualization").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"method": "casa", "data": {"dataset": "nih", "class_name": "nih"}}))
    (tmp_path / "visualization" / "pictures.json").write_text(json.dumps({"entries": [], "flat": True, "attack": "none"}))
    assert "Flat map" in open(write_report(str(tmp_path))).read()
