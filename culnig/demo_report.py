"""The demo's page: original vs culture-general masked vs random masked, culture vs general tasks.

Reads a sweep run dir (:func:`culnig.report.load_run`: per-document scores recomputed from
lm-eval's logged samples, a benchmark = the mean over its prompt variants) and writes
``demo.md``, ``demo.html`` (self-contained), ``demo_leaderboard.csv`` and PNGs:

- a leaderboard per scoring protocol. Rows: original, culture-general masked, random masked (the
  mean over seeds ± their population std). Columns: each task, then the culture and general
  averages. A masked cell shows the score, the change from the original and a 95 % bootstrap
  interval of that change (documents resampled, 2,000 times). The ``chance`` row gives the score
  of a uniform guess; an original score within two standard errors of it is marked ``≈chance``
  (more than two below: ``below chance``, the model mostly answers something that is no option):
  masking cannot take away what the model does not have;
- the per-culture BLEnD MCQ heatmap (original and the masks' change, per culture);
- the per-layer distribution of the selected neurons.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from culnig import report as rp
from culnig import stats

CHANCE = {"blendmcq": 0.25, "countryrc": 0.25, "commonsenseqa": 0.20, "qnli": 0.5, "mrpc": 0.5,
          "culturalbench": 0.25, "normad": 1 / 3}
CI_LEVEL = 0.95


def _bench_key(task: str) -> str:
    from culnig.protocols import bench_of

    return bench_of(task) or task


def _resampled_means(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Means of ``d`` over the resampled rows ``idx`` [R, n] (vectorised)."""
    return d[idx].mean(axis=1)


def _ci(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - CI_LEVEL) / 2, 1 - (1 - CI_LEVEL) / 2])
    return float(lo), float(hi)


def leaderboard(run: rp.RunData, model: str, benches: list[str], culture: set[str], *,
                resamples: int = stats.RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Long table: one row per (row kind, column) with score, change and its interval."""
    general = [r.checkpoint for r in run.of_model(model, "general")]
    randoms = [r.checkpoint for r in run.of_model(model, "random")]
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    boot: dict[tuple[str, str], np.ndarray] = {}  # (row, bench) -> resampled changes
    for bench in benches:
        v = run.values.get((model, bench))
        if v is None or "orig" not in v or not len(v):
            continue
        n = len(v)
        idx = rng.integers(0, n, size=(resamples, n))
        orig = v["orig"].to_numpy()
        base = rp.base_bench(bench)
        chance = CHANCE.get(base)
        score = float(orig.mean())
        se = math.sqrt(max(chance * (1 - chance), 1e-12) / n) if chance is not None else 0.0
        near = chance is not None and abs(score - chance) <= 2 * se
        below = chance is not None and score < chance - 2 * se
        rows.append({"row": "original", "bench": bench, "score": score, "change": 0.0,
                     "ci_low": float("nan"), "ci_high": float("nan"), "spread": float("nan"),
                     "n_docs": n, "chance": chance, "near_chance": near, "below_chance": below})
        masks = []
        if general and general[0] in v:
            masks.append(("culture-general masked", v[general[0]].to_numpy(), float("nan")))
        rs = [c for c in randoms if c in v]
        if rs:
            per_seed = [float(v[c].mean()) for c in rs]
            masks.append((f"random masked ({len(rs)} seeds)", v[rs].to_numpy().mean(axis=1),
                          stats.mean_std(per_seed)[1]))
        for name, values, spread in masks:
            d = values - orig
            changes = _resampled_means(d, idx)
            lo, hi = _ci(changes)
            rows.append({"row": name, "bench": bench, "score": float(values.mean()),
                         "change": float(d.mean()), "ci_low": lo, "ci_high": hi, "spread": spread,
                         "n_docs": n, "chance": chance, "near_chance": False})
            boot[(name, bench)] = changes
    # Averages over the culture and the general tasks (each task weighs the same; the interval
    # resamples every task's documents independently).
    by_row: dict[str, list[dict]] = {}
    for r in rows:
        by_row.setdefault(r["row"], []).append(r)
    for label, members in (("culture avg", [b for b in benches if _is_culture(b, culture)]),
                           ("general avg", [b for b in benches if not _is_culture(b, culture)])):
        for row_name, rs_ in by_row.items():
            got = [r for r in rs_ if r["bench"] in members]
            if not got:
                continue
            score = float(np.mean([r["score"] for r in got]))
            change = float(np.mean([r["change"] for r in got]))
            if row_name == "original":
                lo = hi = float("nan")
            else:
                lo, hi = _ci(np.mean([boot[(row_name, r["bench"])] for r in got], axis=0))
            spread = float("nan")
            if row_name.startswith("random"):
                per_seed = []
                for c in randoms:
                    vals = [float(run.values[(model, r["bench"])][c].mean()) for r in got
                            if c in run.values[(model, r["bench"])]]
                    if len(vals) == len(got):
                        per_seed.append(float(np.mean(vals)))
                spread = stats.mean_std(per_seed)[1] if per_seed else float("nan")
            rows.append({"row": row_name, "bench": label, "score": score, "change": change,
                         "ci_low": lo, "ci_high": hi, "spread": spread,
                         "n_docs": sum(r["n_docs"] for r in got), "chance": None,
                         "near_chance": all(r["near_chance"] for r in got) if row_name == "original"
                         else False})
    return pd.DataFrame(rows)


def _is_culture(bench: str, culture: set[str]) -> bool:
    return rp.base_bench(bench) in culture


def _cell(r: pd.Series) -> str:
    score = f"{100 * r['score']:.1f}"
    if r["row"].startswith("random") and not math.isnan(r["spread"]):
        score += f" ± {100 * r['spread']:.1f}"
    if r["row"] == "original":
        return score + (" (≈chance)" if r["near_chance"] else
                        " (below chance)" if r.get("below_chance") is True else "")
    ci = ("" if math.isnan(r["ci_low"]) else
          f" [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]")
    return f"{score} (Δ {100 * r['change']:+.1f}{ci})"


def wide(long: pd.DataFrame, benches: list[str]) -> pd.DataFrame:
    """Display form: rows original / culture-general / random (+ chance), a column per task."""
    if long.empty:
        return pd.DataFrame()
    cols = [b for b in benches if b in set(long["bench"])] + [
        c for c in ("culture avg", "general avg") if c in set(long["bench"])]
    out: dict[str, list[str]] = {"": []}
    row_names = list(dict.fromkeys(long["row"]))
    for c in cols:
        out[rp.bench_title(c).rsplit(" [", 1)[0] if c in benches else c] = []
    for name in row_names:
        out[""].append(name)
        for c in cols:
            hit = long[(long["row"] == name) & (long["bench"] == c)]
            out[rp.bench_title(c).rsplit(" [", 1)[0] if c in benches else c].append(
                _cell(hit.iloc[0]) if len(hit) else "—")
    out[""].append("chance (uniform guess)")
    for c in cols:
        ch = CHANCE.get(rp.base_bench(c)) if c in benches else None
        key = rp.bench_title(c).rsplit(" [", 1)[0] if c in benches else c
        out[key].append("—" if ch is None else f"{100 * ch:.1f}")
    return pd.DataFrame(out)


def country_heatmap(run: rp.RunData, model: str, bench: str) -> tuple[pd.DataFrame, bytes | None]:
    """Per-culture scores on ``bench``: original, and the masks' change (points)."""
    per = rp._by_country(run, model, bench)
    if per is None or "orig" not in per:
        return pd.DataFrame(), None
    general = [r.checkpoint for r in run.of_model(model, "general") if r.checkpoint in per]
    rs = [r.checkpoint for r in run.of_model(model, "random") if r.checkpoint in per]
    table = pd.DataFrame({"original": per["orig"]})
    if general:
        table["culture-general Δ"] = per[general[0]] - per["orig"]
    if rs:
        table["random Δ (mean)"] = per[rs].mean(axis=1) - per["orig"]
    table = table.reindex(rp._culture_order(table.index)) * 100
    plt = rp._plt()
    m = table.T
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * m.shape[1] + 2), 0.6 * m.shape[0] + 2.2))
    delta = m.iloc[1:].to_numpy() if m.shape[0] > 1 else np.zeros((0, m.shape[1]))
    lim = float(np.nanmax(np.abs(delta))) if delta.size and np.isfinite(delta).any() else 1.0
    shown = m.to_numpy().copy()
    # The first row (original score, 0-100) gets its own colour scale: draw it as a separate image.
    ax.imshow(np.vstack([np.full((1, m.shape[1]), np.nan), delta]), cmap="RdBu",
              vmin=-max(lim, 1e-9), vmax=max(lim, 1e-9), aspect="auto")
    ax.imshow(np.vstack([shown[:1], np.full((len(delta), m.shape[1]), np.nan)]), cmap="Greens",
              vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(m.shape[1]), list(m.columns), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(m.shape[0]), list(m.index), fontsize=8)
    for (i, j), val in np.ndenumerate(shown):
        if np.isfinite(val):
            dark = val > 60 if i == 0 else abs(val) > 0.6 * lim
            ax.text(j, i, f"{val:.0f}" if i == 0 else f"{val:+.0f}", ha="center", va="center",
                    fontsize=7, color="white" if dark else "black")
    ax.set_title(f"{rp.bench_title(bench)} per culture: original score and change by masking "
                 "(points)", fontsize=9)
    fig.tight_layout()
    return table.reset_index(names="culture"), rp._png(fig)


def _moves(long: pd.DataFrame) -> str:
    """One sentence per protocol: does the culture mask cost culture tasks more than random?"""
    g = long[(long["bench"] == "culture avg")]
    cult = g[g["row"] == "culture-general masked"]
    rand = g[g["row"].str.startswith("random")]
    orig = g[g["row"] == "original"]
    if cult.empty or rand.empty or orig.empty:
        return "not enough checkpoints to compare"
    c, r = float(cult["change"].iloc[0]), float(rand["change"].iloc[0])
    hi = float(cult["ci_high"].iloc[0])
    at_chance = bool(orig["near_chance"].iloc[0])
    verdict = ("the culture-general mask lowers the culture average more than random masks"
               if c < r else "the culture-general mask does not lower the culture average more "
               "than random masks")
    sig = " (its 95 % interval excludes 0)" if hi < 0 else " (its 95 % interval includes 0)"
    chance = "; the original sits at chance on every culture task" if at_chance else ""
    return f"culture avg Δ {100 * c:+.1f} vs random {100 * r:+.1f} points: {verdict}{sig}{chance}"


def write_demo_report(runs: dict[str, str | Path], out: str | Path, *,
                      settings: dict | None = None,
                      timings: dict[str, tuple[float | None, float | None]] | None = None, culture=(),
                      general=(), model: str = "demo", resamples: int = stats.RESAMPLES,
                      seed: int = 0) -> Path:
    """``runs``: protocol (paper, loglik) -> sweep run dir holding that protocol's results."""
    loaded = {p: rp.load_run(d) for p, d in runs.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    culture_keys = {_bench_key(t) for t in culture}
    sections: list[tuple[str, str, str]] = []
    csv_parts = []
    printed = []
    for protocol in ("paper", "loglik"):
        run = loaded.get(protocol)
        if run is None:
            continue
        benches = [b for b in run.benches if rp.protocol_of(b) == protocol]
        if not benches:
            continue
        long = leaderboard(run, model, benches, culture_keys, resamples=resamples, seed=seed)
        if long.empty:
            continue
        long.insert(0, "protocol", protocol)
        csv_parts.append(long)
        table = wide(long, benches)
        moves = _moves(long)
        what = ("first generated token = gold label (the paper)" if protocol == "paper" else
                "highest log-likelihood option label")
        legend = (f"Protocol **{protocol}** ({what}). Scores x100; masked cells: score (Δ from the "
                  f"original [{int(CI_LEVEL * 100)} % bootstrap interval of Δ]). Culture tasks: "
                  + ", ".join(rp.bench_title(b).rsplit(' [', 1)[0] for b in benches
                              if _is_culture(b, culture_keys))
                  + "; general tasks: "
                  + ", ".join(rp.bench_title(b).rsplit(' [', 1)[0] for b in benches
                              if not _is_culture(b, culture_keys)) + f". Verdict: {moves}.")
        sections.append((f"Leaderboard, {protocol} protocol", legend + "\n\n" + rp.md_table(table),
                         f"<p>{_md_bold(legend)}</p>" + rp.html_table(table)))
        printed.append(f"== {protocol} protocol ==\n" + _text_table(table) + f"\n{moves}\n")
    if csv_parts:
        rp._write(out / "demo_leaderboard.csv", pd.concat(csv_parts).to_csv(index=False))
    images = []
    for protocol, bench in (("loglik", "blendmcq_ll"), ("paper", "blendmcq")):
        if protocol not in loaded:
            continue
        table, png = country_heatmap(loaded[protocol], model, bench)
        if png:
            rp._write(out / f"demo_countries_{bench}.png", png)
            rp._write(out / f"demo_countries_{bench}.csv", table.to_csv(index=False))
            images.append((f"demo_countries_{bench}.png", f"{rp.bench_title(bench)} per culture", png))
    layers = rp.layers_png(next(iter(loaded.values())), model)
    if layers:
        rp._write(out / "demo_layers.png", layers)
        images.append(("demo_layers.png", "Selected neurons per layer (culture-general and one "
                                          "count-matched random set)", layers))
    sections.append(("Per culture and per layer", rp._md_images(images), rp._html_images(images)))
    if timings:
        t = pd.DataFrame({"step": list(timings),
                          "first run (s)": [timings[k][0] for k in timings],
                          "last run (s)": [timings[k][1] for k in timings]})
        sections.append(("Timings", rp.md_table(t, 1), rp.html_table(t, 1)))
    if settings:
        s = pd.DataFrame({"setting": list(settings),
                          "value": [json.dumps(v, default=str) for v in settings.values()]})
        sections.append(("Settings", rp.md_table(s), rp.html_table(s)))
    title = "culnig demo: culture-general neurons vs random neurons"
    intro = ("Original model, the model with its culture-general neurons masked, and the same "
             "number of random neurons masked. Full sweep reports (all tables, answer-label "
             "distributions): " + ", ".join(f"{p}/report.html" for p in loaded) + " in this folder.")
    md, page = rp.render_pages(title, sections, intro)
    rp._write(out / "demo.md", md)
    rp._write(out / "demo.html", page)
    print("\n".join(printed))
    return out / "demo.html"


def _md_bold(text: str) -> str:
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _text_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    widths = [max(len(str(c)), *(len(str(v)) for v in df[c])) for c in cols]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for _, r in df.iterrows():
        lines.append("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
    return "\n".join(lines)
