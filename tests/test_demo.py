"""``culnig demo --tiny``: the whole pipeline end to end at a minimal size.

Real BLEnD / CountryRC / CommonsenseQA / GLUE files, a tiny random-weight Llama, the HF backend,
both protocols as one sweep on one kept engine (isolation engine). Checks the leaderboard has the
culture and the general columns and a random-baseline spread, the report pages exist and open,
and a second run reuses every step.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser

import pandas as pd
import pytest

from tests.conftest import run_culnig, single_error


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.data: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.data.append(data)


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def tiny_demo(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = run_culnig("demo", "--tiny", "--out", str(out), env={"CULNIG_DATA_DIR": str(data_dir)},
                      timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_tiny_demo_leaderboard_has_culture_general_and_random_spread(tiny_demo):
    out, proc = tiny_demo
    for protocol in ("paper", "loglik"):
        assert f"== {protocol} protocol ==" in proc.stdout
    lb = pd.read_csv(out / "report" / "demo_leaderboard.csv")
    assert set(lb["protocol"]) == {"paper", "loglik"}
    assert set(lb["row"]) == {"original", "culture-general masked", "random masked (3 seeds)"}
    for protocol, sub in lb.groupby("protocol"):
        benches = set(sub["bench"])
        assert {"culture avg", "general avg"} <= benches, protocol
        assert {"blendmcq", "countryrc", "commonsenseqa", "qnli", "mrpc"} <= {
            b.removesuffix("_ll") for b in benches}
        rand = sub[sub["row"].str.startswith("random")]
        assert rand["spread"].notna().all() and (rand["spread"] >= 0).all()
        masked = sub[sub["row"] != "original"]
        assert (masked["ci_low"] <= masked["change"] + 1e-12).all()
        assert (masked["change"] <= masked["ci_high"] + 1e-12).all()
        # The culture average is the mean of the culture tasks' scores.
        orig = sub[sub["row"] == "original"].set_index("bench")["score"]
        culture = [b for b in orig.index if b.removesuffix("_ll") in ("blendmcq", "countryrc",
                                                                       "blendsaq")]
        assert math.isclose(orig["culture avg"], orig[culture].mean(), rel_tol=1e-9)
    assert "blendsaq" in set(lb["bench"])  # generation task: paper protocol only
    report = out / "report"
    # both protocols on one backend: one sweep, one lm-eval run per checkpoint, one sweep report
    for name in ("demo.html", "demo.md", "both/report.html", "both/report.md", "demo_layers.png",
                 "demo_countries_blendmcq_ll.png", "both/labels.csv"):
        assert (report / name).is_file(), name
    labels = pd.read_csv(report / "both" / "labels.csv")
    assert set(labels["protocol"]) == {"paper", "loglik"}
    records = [json.loads(f.read_text()) for f in (out / "run" / "both").rglob("culnig_eval.json")]
    assert len(records) == 5 and {r["isolation"] for r in records} == {"engine"}
    md = (report / "demo.md").read_text()
    assert "culture avg" in md and "general avg" in md and "chance (uniform guess)" in md
    tags = _Tags()
    tags.feed((report / "demo.html").read_text())
    assert tags.tags.count("table") >= 2 and tags.tags.count("img") >= 2
    assert "report: " + str(report / "demo.html") in proc.stdout


def test_tiny_demo_second_run_reuses_every_step(tiny_demo, data_dir):
    out, _ = tiny_demo
    proc = run_culnig("demo", "--tiny", "--out", str(out), env={"CULNIG_DATA_DIR": str(data_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "score files present (reused)" in proc.stderr
    assert "both (hf): 5 checkpoints, 5 reused, 0 evaluated" in proc.stderr


def test_tiny_demo_other_settings_need_another_out(tiny_demo, data_dir):
    out, _ = tiny_demo
    proc = run_culnig("demo", "--tiny", "--out", str(out), "--protocol", "loglik",
                      env={"CULNIG_DATA_DIR": str(data_dir)})
    line = single_error(proc)
    assert str(out) in line and "protocol" in line and "--force" in line


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium on this machine")
def test_demo_pages_open_in_headless_chromium(tiny_demo, tmp_path):
    out, _ = tiny_demo
    for page in ("demo.html", "both/report.html"):
        shot = tmp_path / f"{page.replace('/', '_')}.png"
        proc = subprocess.run(
            [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
             "--v=0", f"--screenshot={shot}", "--window-size=1400,2400",
             (out / "report" / page).resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert shot.is_file() and shot.stat().st_size > 10_000, page
        errors = [ln for ln in proc.stderr.splitlines()
                  if "Uncaught" in ln or ("CONSOLE" in ln and "ERROR" in ln.upper())]
        assert not errors, errors
