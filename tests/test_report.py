"""`culnig report` and culnig.stats on synthetic lm-eval result and sample files with known answers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import statistics
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from culnig import stats
from culnig.errors import CulnigError
from culnig.neuron_sets import NeuronSet
from culnig.reports.figures import plot_layer_distribution, recorded_layers_png
from culnig.reports.paper import make_report, table2, table15
from culnig.reports.render import Section, html_table, md_table, render_page
from culnig.reports.runs import load_run
from culnig.results import EVAL_FORMAT, EVAL_RECORD
from culnig_tasks.countries import BLEND_COUNTRIES
from tests.conftest import run_culnig, single_error

SETTINGS = {"tasks": ["culnig_commonsenseqa", "blendmcq_paper_v1"], "backend": "hf", "limit": 40.0,
            "seed": 0, "dtype": "auto", "chat_template": "auto", "model_args": "",
            "lm_eval_args": [], "scale": 0.0}
CSQA = ("commonsenseqa_paper_v1", "commonsenseqa_paper_v2")
MCQ = "blendmcq_paper_v1"
N_CSQA = 40
DATE = "2026-01-01T00-00-00.000000"


def write_result(run_dir: Path, model: str, cp: str, kind: str, tasks: dict[str, list[tuple]], *,
                 seed=None, country=None, neurons=0, settings=None, versions=None) -> Path:
    """A result folder as `culnig sweep` writes it: lm-eval results + samples + culnig_eval.json.
    ``tasks``: leaf -> [(doc_id, country, acc), ...]."""
    d = run_dir / "results" / model / cp
    d.mkdir(parents=True)
    versions = versions or {**{t: 1.0 for t in tasks}, "culnig_commonsenseqa": "1.0"}
    results = {
        "results": {t: {"alias": t, "acc,none": float(np.mean([v for _, _, v in rows]))}
                    for t, rows in tasks.items()},
        "group_subtasks": {"culnig_commonsenseqa": [t for t in tasks if t.startswith("commonsenseqa")]},
        "versions": versions,
        "config": {"model": "hf", "limit": (settings or SETTINGS)["limit"], "random_seed": 0},
        "lm_eval_version": "0.4.13",
    }
    res_name = f"results_{DATE}.json"
    (d / res_name).write_text(json.dumps(results))
    samples = {}
    for t, rows in tasks.items():
        name = f"samples_{t}_{DATE}.jsonl"
        lines = [json.dumps({"doc_id": i, "doc": {"id": f"q{i}", **({"country": c} if c else {})},
                             "target": "A", "resps": [["A"]], "filtered_resps": ["A"], "acc": v})
                 for i, c, v in rows]
        (d / name).write_text("\n".join(lines) + "\n")
        samples[t] = name
    meta = {"format": EVAL_FORMAT, "model": model, "checkpoint": cp, "kind": kind, "seed": seed,
            "country": country, "settings": settings or SETTINGS,
            "versions": {k: str(float(v)) for k, v in versions.items()},
            "results_file": res_name,
            "results_sha256": hashlib.sha256((d / res_name).read_bytes()).hexdigest(),
            "samples_files": samples,
            "set": None if kind == "orig" else {
                "counts": {"gate": neurons, "up": 0, "q": 0, "k": 0, "v": 0, "total": neurons},
                "per_layer": {"gate": [neurons, 0], "up": [0, 0], "q": [0, 0], "k": [0, 0], "v": [0, 0]},
                "method": kind}}
    (d / EVAL_RECORD).write_text(json.dumps(meta))
    return d


def _mcq_rows(per_country_acc: dict[str, float]) -> list[tuple]:
    """4 documents per BLEnD culture; acc per culture given as the fraction of correct ones."""
    rows, i = [], 0
    for c in BLEND_COUNTRIES:
        k = round(4 * per_country_acc.get(c, 1.0))
        for j in range(4):
            rows.append((i, c, 1.0 if j < k else 0.0))
            i += 1
    return rows


SAQ = "blendsaq_paper_v1"
# BLEnD SAQ: two documents per culture; (USA, UK) correct counts per checkpoint, Spain always 2.
SAQ_CORRECT = {"orig": (2, 2), "general": (0, 1), "random_seed0": (1, 2), "random_seed1": (2, 2),
               "random_seed2": (2, 1)}


def _saq_rows(cp: str) -> list[tuple]:
    usa, uk = SAQ_CORRECT[cp]
    return [(0, "USA", float(usa >= 1)), (1, "USA", float(usa >= 2)), (2, "UK", float(uk >= 1)),
            (3, "UK", float(uk >= 2)), (4, "Spain", 1.0), (5, "Spain", 1.0)]


# Known per-culture accuracies on BLEnD MCQ for the specific masks: the USA mask costs USA docs
# everything and UK half (model m1); in m2 the USA mask costs UK more than USA.
SPECIFIC = {
    "m1": {"USA": {"USA": 0.0, "UK": 0.5}, "UK": {"UK": 0.25}},
    "m2": {"USA": {"USA": 0.5, "UK": 0.0}, "UK": {"UK": 0.0, "Spain": 0.5}},
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("synth") / "run"
    rng = np.random.default_rng(123)
    truth: dict = {}
    for model in ("m1", "m2"):
        p_correct = {"orig": 0.8, "general": 0.45, "random_seed0": 0.75, "random_seed1": 0.78,
                     "random_seed2": 0.7}
        truth[model] = {}
        for cp, p in p_correct.items():
            csqa = {t: [(i, None, float(rng.random() < p)) for i in range(N_CSQA)] for t in CSQA}
            mcq = _mcq_rows({})
            truth[model][cp] = csqa
            kind = cp if cp in ("orig", "general") else "random"
            write_result(run, model, cp, kind, {**csqa, MCQ: mcq, SAQ: _saq_rows(cp)},
                         seed=int(cp[-1]) if kind == "random" else None,
                         neurons=0 if cp == "orig" else 30)
        for country, accs in SPECIFIC[model].items():
            write_result(run, model, f"specific_{country.lower()}", "specific",
                         {**truth[model]["orig"], MCQ: _mcq_rows(accs), SAQ: _saq_rows("orig")},
                         country=country, neurons=7)
    return run, truth


# --- culnig.stats against straightforward implementations --------------------------------------
def _reference_bootstrap(o, c, rs, resamples, seed):
    """Resample by resample, document by document, in plain Python (same draws)."""
    idx, pick = stats.draw(len(o), len(rs), resamples, seed)
    hit_mean = hit_single = 0
    for b in range(resamples):
        so = sum(o[i] for i in idx[b])
        sc = sum(c[i] for i in idx[b])
        drops = [so - sum(r[i] for i in idx[b]) for r in rs]
        d_c = so - sc
        hit_mean += sum(drops) / len(drops) >= d_c - 1e-9 * max(1.0, abs(so), abs(sc))
        hit_single += drops[pick[b]] >= d_c - 1e-9 * max(1.0, abs(so), abs(sc))
    return hit_mean / resamples, hit_single / resamples


@pytest.mark.parametrize("n,s,shift", [(25, 3, 0.15), (40, 10, 0.0), (13, 1, 0.3)])
def test_bootstrap_matches_reference(n, s, shift):
    rng = np.random.default_rng(n)
    o = (rng.random(n) < 0.7).astype(float)
    c = np.clip(o - (rng.random(n) < shift), 0, 1)
    rs = [np.clip(o - (rng.random(n) < 0.1), 0, 1) for _ in range(s)]
    got = stats.bootstrap_reduction(o, c, np.array(rs), resamples=400, seed=7)
    want = _reference_bootstrap(list(o), list(c), [list(r) for r in rs], 400, 7)
    assert (got.p_mean, got.p_single) == want
    assert got.drop_culture == pytest.approx(o.mean() - c.mean())
    assert got.drop_random == pytest.approx(statistics.mean(o.mean() - r.mean() for r in rs))


def test_bootstrap_extremes_and_fixed_seed():
    o = np.ones(30)
    big = stats.bootstrap_reduction(o, np.zeros(30), np.ones((4, 30)), seed=0)
    assert (big.p_mean, big.p_single, big.significant) == (0.0, 0.0, True)
    same = stats.bootstrap_reduction(o, o.copy(), np.ones((4, 30)), seed=0)
    assert (same.p_mean, same.p_single, same.significant) == (1.0, 1.0, False)  # ties: not significant
    rng = np.random.default_rng(1)
    a, b, r = rng.random(50), rng.random(50), rng.random((3, 50))
    first = stats.bootstrap_reduction(a, b, r, seed=3)
    assert first == stats.bootstrap_reduction(a, b, r, seed=3)
    assert first.resamples == 2000


def test_resample_sums_vectorised_equals_loop():
    rng = np.random.default_rng(0)
    values = rng.random((3, 17))
    idx = rng.integers(0, 17, size=(9, 17))
    want = np.array([[values[k, idx[b]].sum() for k in range(3)] for b in range(9)])
    np.testing.assert_allclose(stats.resample_sums(values, idx), want, rtol=1e-12)


def test_mean_std_and_ranks():
    assert stats.mean_std([0.5, 0.7, 0.9]) == pytest.approx((0.7, statistics.pstdev([0.5, 0.7, 0.9])))
    assert stats.rank_drops([0.3, 0.1, 0.3, -0.2]).tolist() == [1.5, 3.0, 1.5, 4.0]


# --- report on synthetic run dirs --------------------------------------------------------------
def test_table2_known_answers(synth):
    run_dir, truth = synth
    run = load_run(run_dir)
    assert run.mixed == [] and run.benches == ["blendmcq", "blendsaq", "commonsenseqa"]
    t2 = table2(run, resamples=300, seed=5)
    for model in ("m1", "m2"):
        row = t2[(t2["model"] == model) & (t2["bench"] == "commonsenseqa")].iloc[0]

        def score(cp):  # mean over variants of per-variant accuracy
            return statistics.mean(statistics.mean(v for _, _, v in truth[model][cp][t]) for t in CSQA)

        assert row["orig"] == pytest.approx(score("orig"))
        assert row["cult"] == pytest.approx(score("general"))
        seeds = [score(f"random_seed{k}") for k in range(3)]
        assert row["rand_mean"] == pytest.approx(statistics.mean(seeds))
        assert row["rand_std"] == pytest.approx(statistics.pstdev(seeds))
        assert row["n_docs"] == N_CSQA and row["n_seeds"] == 3 and row["neurons_cult"] == 30

        def per_doc(cp):
            return [statistics.mean(truth[model][cp][t][i][2] for t in CSQA) for i in range(N_CSQA)]

        want = _reference_bootstrap(per_doc("orig"), per_doc("general"),
                                    [per_doc(f"random_seed{k}") for k in range(3)], 300, 5)
        assert (row["p_mean"], row["p_single"]) == want
        assert bool(row["significant"]) == (want[0] < 0.05 and want[1] < 0.05)
    mcq = t2[t2["bench"] == "blendmcq"]
    assert (mcq["orig"] == 1.0).all() and (mcq["p_mean"] == 1.0).all()  # no drop anywhere


def test_table15_and_figure4_known_ranks(synth):
    run_dir, _ = synth
    run = load_run(run_dir)
    avg, long = table15(run)
    m1 = long[(long["model"] == "m1") & (long["neuron_culture"] == "USA")].set_index("eval_culture")
    assert m1.loc["USA", "rank"] == 1 and m1.loc["UK", "rank"] == 2
    assert m1.loc["Spain", "rank"] == pytest.approx((3 + 16) / 2)  # 14 cultures tie at no drop
    assert (long["n_cultures"] == 16).all()
    # averaged over models: USA mask ranks USA 1 (m1) and 2 (m2)
    assert avg.loc["USA", "USA"] == pytest.approx(1.5) and avg.loc["USA", "own"] == pytest.approx(1.5)
    assert avg.loc["UK", "UK"] == pytest.approx(1.0)
    # m2's UK mask: UK drop 1, Spain 0.5 -> Spain rank 2; m1's UK mask: Spain ties at (2+16)/2
    assert avg.loc["UK", "Spain"] == pytest.approx((2 + 9) / 2)
    assert list(avg.index) == ["UK", "USA"]  # the paper's country order


def test_report_files_html_and_markdown(synth, tmp_path):
    run_dir, _ = synth
    out = tmp_path / "rep"
    rep = make_report(run_dir, out, resamples=200)
    names = {p.name for p in rep.files}
    for f in ("report.md", "report.html", "table2.csv", "leaderboard.csv", "figure4.csv",
              "table15.csv", "saq.csv", "counts.csv", "figure4_m1.png", "figure4_m2.png",
              "layers_m1.png"):
        assert f in names, f
    fig4 = pd.read_csv(out / "figure4.csv")
    cell = fig4[(fig4.model == "m1") & (fig4.bench == "blendmcq") & (fig4.neuron_culture == "USA")
                & (fig4.eval_culture == "UK")]
    assert cell["reduction"].item() == pytest.approx(-0.5)
    saq = pd.read_csv(out / "saq.csv").set_index(["model", "culture"])
    usa = saq.loc[("m1", "USA")]
    assert (usa["orig"], usa["cult"], usa["n_docs"]) == (1.0, 0.0, 2)
    assert usa["rand_mean"] == pytest.approx(statistics.mean([0.5, 1.0, 1.0]))
    assert usa["rand_std"] == pytest.approx(statistics.pstdev([0.5, 1.0, 1.0]))
    assert saq.loc[("m1", "UK"), "cult"] == 0.5 and saq.loc[("m1", "all"), "cult"] == pytest.approx(3 / 6)
    assert list(saq.loc["m1"].index) == ["Spain", "UK", "USA", "all"]
    lb = pd.read_csv(out / "leaderboard.csv")
    assert len(lb) == 14 and set(lb["kind"]) == {"orig", "general", "random", "specific"}
    md = (out / "report.md").read_text()
    assert "## Table 2" in md and "| orig |" in md and "## Warnings" not in md
    assert "![Figure 4, m1](figure4_m1.png)" in md
    _check_html(out / "report.html", n_rows=14)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.images, self.scripts, self.tables, self.rows = [], [], [], {}, 0
        self._in_script = self._table = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "script":
            self._in_script = []
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = 0
        if tag == "tr" and self._table is not None:
            self.tables[self._table] += 1
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()
        if tag == "script":
            self.scripts.append("".join(self._in_script))
            self._in_script = None

    def handle_data(self, data):
        if self._in_script is not None:
            self._in_script.append(data)


NODE_DOM = r"""
// A minimal DOM: one sortable table, enough for the page's script; click the second header.
function el(tag) {
  var e = {tag: tag, attrs: {}, children: [], listeners: {}, textContent: ""};
  e.getAttribute = function (k) { return k in e.attrs ? e.attrs[k] : null; };
  e.setAttribute = function (k, v) { e.attrs[k] = String(v); };
  e.removeAttribute = function (k) { delete e.attrs[k]; };
  e.addEventListener = function (ev, f) { e.listeners[ev] = f; };
  e.appendChild = function (c) { var i = e.children.indexOf(c); if (i >= 0) e.children.splice(i, 1); e.children.push(c); };
  return e;
}
var heads = [el("th"), el("th")];
var body = el("tbody");
[["a", "10"], ["b", "2"], ["c", null], ["d", "33.5"]].forEach(function (r) {
  var tr = el("tr"); var t0 = el("td"); t0.textContent = r[0];
  var t1 = el("td"); if (r[1] !== null) t1.setAttribute("data-v", r[1]); else t1.textContent = "—";
  tr.cells = [t0, t1]; body.appendChild(tr);
});
Object.defineProperty(body, "rows", {get: function () { return body.children.slice(); }});
var table = {tBodies: [body], querySelectorAll: function () { return heads; }};
var document = {querySelectorAll: function () { return [table]; }};
SCRIPT
heads[1].listeners.click();
var asc = body.children.map(function (r) { return r.cells[0].textContent; }).join("");
heads[1].listeners.click();
var desc = body.children.map(function (r) { return r.cells[0].textContent; }).join("");
console.log(asc + " " + desc + " " + heads[1].getAttribute("data-dir"));
"""


def _check_html(path: Path, n_rows: int) -> None:
    """The page parses, nests correctly, embeds its images, and its script runs and sorts.

    No headless browser is installed here (`which chromium` finds none), so the script is checked
    with node when available: syntax (`node --check`), then run against a minimal DOM stub."""
    text = path.read_text()
    p = _Collect()
    p.feed(text)
    p.close()
    assert p.stack == ["html"] or p.stack == [], p.stack
    assert p.tables["leaderboard"] == n_rows + 1
    assert p.images and all(src.startswith("data:image/png;base64,") for src in p.images)
    for src in p.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    (script,) = p.scripts
    assert script.count("{") == script.count("}") and script.count("(") == script.count(")")
    node = shutil.which("node")
    if node is None:
        return
    js = path.parent / "page.js"
    js.write_text(script)
    assert subprocess.run([node, "--check", str(js)], capture_output=True).returncode == 0
    harness = path.parent / "dom_test.js"
    harness.write_text(NODE_DOM.replace("SCRIPT", script))
    proc = subprocess.run([node, str(harness)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["badc", "dabc", "desc"]  # numbers sorted, empty cells last


# --- bad input ---------------------------------------------------------------------------------
def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def test_mixed_settings_are_an_error_or_a_warning_section(synth, tmp_path):
    run_dir = _copy(synth[0], tmp_path)
    orig = json.loads((run_dir / "results/m1/orig" / EVAL_RECORD).read_text())
    rows = {t: [(i, None, 1.0) for i in range(N_CSQA)] for t in CSQA}
    write_result(run_dir, "m1", "random_seed9", "random", rows, seed=9, neurons=30,
                 settings={**orig["settings"], "limit": 20.0})
    proc = run_culnig("report", str(run_dir))
    line = single_error(proc)
    assert "mixes results" in line and "limit" in line and "m1/random_seed9" in line
    assert "--allow-mixed" in line
    proc = run_culnig("report", str(run_dir), "--allow-mixed", "--resamples", "50")
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (run_dir / "report" / "report.md").read_text()
    assert "## Warnings" in md and "setting limit differs" in md
    assert '<div class="warn">' in (run_dir / "report" / "report.html").read_text()


def test_mixed_task_versions_are_reported(synth, tmp_path):
    run_dir = _copy(synth[0], tmp_path)
    shutil.rmtree(run_dir / "results/m2")
    d = run_dir / "results/m1/random_seed2"
    meta = json.loads((d / EVAL_RECORD).read_text())
    shutil.rmtree(d)
    rows = {t: [(i, None, 1.0) for i in range(N_CSQA)] for t in CSQA}
    write_result(run_dir, "m1", "random_seed2", "random",
                 {**rows, MCQ: _mcq_rows({}), SAQ: _saq_rows("orig")}, seed=2, neurons=30,
                 versions={CSQA[0]: 2.0, CSQA[1]: 1.0, MCQ: 1.0, SAQ: 1.0,
                           "culnig_commonsenseqa": "1.0"})
    with pytest.raises(CulnigError, match=r'task commonsenseqa_paper_v1 version differs: .* vs "2.0" \(m1/random_seed2\)'):
        make_report(run_dir)
    assert meta["seed"] == 2


def test_tampered_results_and_leftovers(synth, tmp_path):
    run_dir = _copy(synth[0], tmp_path)
    res = next((run_dir / "results/m1/general").glob("results_*.json"))
    res.write_text(res.read_text().replace('"hf"', '"vllm"'))
    (run_dir / "results/m1/.random_seed5.tmp-123").mkdir()
    with pytest.raises(CulnigError, match="was changed after the evaluation"):
        make_report(run_dir)
    rep = make_report(run_dir, allow_mixed=True, resamples=50)
    assert any("temporary folder" in n for n in rep.notes)
    assert any("lm-eval backend differs" in m for m in rep.mixed)


def test_empty_run_dir_is_one_clear_line(tmp_path):
    assert "no results/ folder" in single_error(run_culnig("report", str(tmp_path)))


# --- rendering and figures ----------------------------------------------------------------------
def test_tables_format_cells_and_escape():
    df = pd.DataFrame({"name": ["a|b", "<c>"], "x": [0.12345, float("nan")], "n": [3, 4],
                       "ok": [True, False]})
    md = md_table(df, 2).splitlines()
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in md]
    assert cells[0] == ["name", "x", "n", "ok"]
    assert cells[2:] == [["a\\|b", "0.12", "3", "yes"], ["<c>", "—", "4", "no"]]
    assert md_table(df.iloc[:0]) == "_(nothing to show)_\n"
    page = html_table(df, 2, sortable=True, table_id="t")
    p = _Collect()
    p.feed(page)
    assert p.tables == {"t": 3} and 'class="dataframe sortable"' in page
    assert "&lt;c&gt;" in page and "<c>" not in page and "<td>0.12</td>" in page
    md_page, html_page = render_page("a <b>", [Section("S", "text", "<p>x</p>")], "intro & more")
    assert md_page.startswith("# a <b>\n\nintro & more\n\n## S\n\ntext")
    assert "<title>a &lt;b&gt;</title>" in html_page and "<p>intro &amp; more</p>" in html_page
    assert "<h2>S</h2>\n<p>x</p>" in html_page and "<script>" not in html_page


def test_layer_plot_from_records_equals_plot_of_the_sets(synth, tmp_path):
    """The report rebuilds each set from the per-layer counts in its record: the figure is the one
    `plot_layer_distribution` draws from the sets themselves (one random set shown)."""
    run = load_run(synth[0])
    got = recorded_layers_png(run.of_model("m1"))
    sets = {cp: NeuronSet(model={"n_layers": 2}, method="x", neurons={"gate": {0: np.arange(n)}})
            for cp, n in (("general", 30), ("random_seed0", 30), ("specific_uk", 7),
                          ("specific_usa", 7))}
    path = plot_layer_distribution(sets, tmp_path / "sub" / "layers.png")
    assert path == tmp_path / "sub" / "layers.png" and got == path.read_bytes()
    assert got[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_layer_distribution(sets, tmp_path / "layers.pdf").read_bytes()[:5] == b"%PDF-"


# --- damaged result folders: one line naming the file, never a silently missing checkpoint ---------
def test_unreadable_record_is_an_error_naming_it(synth, tmp_path):
    run_dir = _copy(synth[0], tmp_path)
    (run_dir / "results/m1/general/culnig_eval.json").write_text("{trunc")
    proc = run_culnig("report", str(run_dir))
    assert "m1/general: no readable culnig_eval.json" in single_error(proc)
    proc = run_culnig("report", str(run_dir), "--allow-mixed", "--resamples", "20")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "culnig: warning: results/m1/general: no readable" in proc.stderr
    assert "m1/general: no readable" in (run_dir / "report/report.md").read_text()


@pytest.mark.parametrize("content,message", [
    ('{"results": {', "not a readable lm-eval results file"),
    ("[]", "not an lm-eval results file"),
])
def test_damaged_results_file_is_one_line(synth, tmp_path, content, message):
    run_dir = _copy(synth[0], tmp_path)
    res = next((run_dir / "results/m1/general").glob("results_*.json"))
    res.write_text(content)
    rec_path = run_dir / "results/m1/general/culnig_eval.json"
    rec = json.loads(rec_path.read_text())
    rec["results_sha256"] = hashlib.sha256(res.read_bytes()).hexdigest()  # only the content is bad
    rec_path.write_text(json.dumps(rec))
    assert message in single_error(run_culnig("report", str(run_dir), "--allow-mixed"))


@pytest.mark.parametrize("damage,message", [("missing", "logged samples cannot be read"),
                                            ("truncated", "not a JSON sample")])
def test_damaged_samples_file_is_one_line(synth, tmp_path, damage, message):
    run_dir = _copy(synth[0], tmp_path)
    sample = next((run_dir / "results/m1/general").glob("samples_*.jsonl"))
    if damage == "missing":
        sample.unlink()
    else:
        sample.write_text(sample.read_text()[:-40])
    assert message in single_error(run_culnig("report", str(run_dir), "--allow-mixed"))
