"""The demo's page: original vs culture-general masked vs random masked, culture vs general tasks.

Per scoring protocol a leaderboard (score, change from the original and its bootstrap interval,
chance level), the per-culture BLEnD MCQ heatmap and the selected neurons per layer:
``demo.md``, ``demo.html`` (self-contained), ``demo_leaderboard.csv`` and PNGs.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from culnig import stats
from culnig.protocols import bench_of
from culnig.reports import figures
from culnig.reports.render import (Image, OutputDir, Section, html_images, html_table, md_bold_to_html,
                                   md_images, md_table, render_page, text_table)
from culnig.reports.runs import (RunData, base_bench, bench_title, culture_order, load_run,
                                 protocol_of)

CHANCE = {"blendmcq": 0.25, "countryrc": 0.25, "commonsenseqa": 0.20, "qnli": 0.5, "mrpc": 0.5,
          "culturalbench": 0.25, "normad": 1 / 3}
CI_LEVEL = 0.95
AVERAGES = ("culture avg", "general avg")


def _ci(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - CI_LEVEL) / 2, 1 - (1 - CI_LEVEL) / 2])
    return float(lo), float(hi)


def _is_culture(bench: str, culture: set[str]) -> bool:
    return base_bench(bench) in culture


def _short_title(bench: str) -> str:
    """``CSQA`` for ``CSQA [paper]``: one protocol per table."""
    return bench_title(bench).rsplit(" [", 1)[0]


def _task_rows(run: RunData, model: str, benches: list[str], rng, resamples: int
               ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], np.ndarray]]:
    """Per task: the original's row and one per mask, with the resampled changes of each mask."""
    general = [r.checkpoint for r in run.of_model(model, "general")]
    randoms = [r.checkpoint for r in run.of_model(model, "random")]
    rows: list[dict[str, Any]] = []
    boot: dict[tuple[str, str], np.ndarray] = {}  # (row, bench) -> resampled changes
    for bench in benches:
        v = run.values.get((model, bench))
        if v is None or "orig" not in v or not len(v):
            continue
        n = len(v)
        idx = rng.integers(0, n, size=(resamples, n))
        orig = v["orig"].to_numpy()
        chance = CHANCE.get(base_bench(bench))
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
            changes = d[idx].mean(axis=1)  # the mean change in every resample (vectorised)
            lo, hi = _ci(changes)
            rows.append({"row": name, "bench": bench, "score": float(values.mean()),
                         "change": float(d.mean()), "ci_low": lo, "ci_high": hi, "spread": spread,
                         "n_docs": n, "chance": chance, "near_chance": False})
            boot[(name, bench)] = changes
    return rows, boot


def _average_rows(run: RunData, model: str, benches: list[str], culture: set[str],
                  rows: list[dict], boot: dict) -> list[dict[str, Any]]:
    """The culture and general averages: each task weighs the same; the interval resamples every
    task's documents independently."""
    randoms = [r.checkpoint for r in run.of_model(model, "random")]
    by_row: dict[str, list[dict]] = {}
    for r in rows:
        by_row.setdefault(r["row"], []).append(r)
    out = []
    for label, members in ((AVERAGES[0], [b for b in benches if _is_culture(b, culture)]),
                           (AVERAGES[1], [b for b in benches if not _is_culture(b, culture)])):
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
            out.append({"row": row_name, "bench": label, "score": score, "change": change,
                        "ci_low": lo, "ci_high": hi, "spread": spread,
                        "n_docs": sum(r["n_docs"] for r in got), "chance": None,
                        "near_chance": all(r["near_chance"] for r in got) if row_name == "original"
                        else False})
    return out


def leaderboard(run: RunData, model: str, benches: list[str], culture: set[str], *,
                resamples: int = stats.RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Long table: one row per (row kind, column) with score, change and its interval."""
    rows, boot = _task_rows(run, model, benches, np.random.default_rng(seed), resamples)
    return pd.DataFrame(rows + _average_rows(run, model, benches, culture, rows, boot))


def _cell(r: pd.Series, compact: bool = False) -> str:
    """``score (Δ change [interval])``; ``compact``: ``score Δchange [lo,hi]`` (the terminal)."""
    pm, comma = ("±", ",") if compact else (" ± ", ", ")
    score = f"{100 * r['score']:.1f}"
    if r["row"].startswith("random") and not math.isnan(r["spread"]):
        score += f"{pm}{100 * r['spread']:.1f}"
    if r["row"] == "original":
        mark = ("≈chance" if r["near_chance"] else
                "below chance" if r.get("below_chance") is True else "")
        return score + (f" {mark}" if compact else f" ({mark})") if mark else score
    ci = ("" if math.isnan(r["ci_low"]) else
          f" [{100 * r['ci_low']:+.1f}{comma}{100 * r['ci_high']:+.1f}]")
    change = f"{100 * r['change']:+.1f}"
    return f"{score} Δ{change}{ci}" if compact else f"{score} (Δ {change}{ci})"


def wide(long: pd.DataFrame, benches: list[str], compact: bool = False) -> pd.DataFrame:
    """Display form: rows original / culture-general / random (+ chance), a column per task."""
    if long.empty:
        return pd.DataFrame()
    cols = [b for b in benches if b in set(long["bench"])] + [
        c for c in AVERAGES if c in set(long["bench"])]
    key = {c: _short_title(c) if c in benches else c for c in cols}
    out: dict[str, list[str]] = {"": [], **{key[c]: [] for c in cols}}
    for name in dict.fromkeys(long["row"]):
        out[""].append(name)
        for c in cols:
            hit = long[(long["row"] == name) & (long["bench"] == c)]
            out[key[c]].append(_cell(hit.iloc[0], compact) if len(hit) else "—")
    out[""].append("chance (uniform guess)")
    for c in cols:
        ch = CHANCE.get(base_bench(c)) if c in benches else None
        out[key[c]].append("—" if ch is None else f"{100 * ch:.1f}")
    return pd.DataFrame(out)


def country_heatmap(run: RunData, model: str, bench: str) -> tuple[pd.DataFrame, bytes | None]:
    """Per-culture scores on ``bench``: original, and the masks' change (points)."""
    per = run.by_country(model, bench)
    if per is None or "orig" not in per:
        return pd.DataFrame(), None
    general = [r.checkpoint for r in run.of_model(model, "general") if r.checkpoint in per]
    rs = [r.checkpoint for r in run.of_model(model, "random") if r.checkpoint in per]
    table = pd.DataFrame({"original": per["orig"]})
    if general:
        table["culture-general Δ"] = per[general[0]] - per["orig"]
    if rs:
        table["random Δ (mean)"] = per[rs].mean(axis=1) - per["orig"]
    table = table.reindex(culture_order(table.index)) * 100
    m = table.T
    fig, ax = figures.plt().subplots(figsize=(max(6.0, 0.55 * m.shape[1] + 2), 0.6 * m.shape[0] + 2.2))
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
    ax.set_title(f"{bench_title(bench)} per culture: original score and change by masking "
                 "(points)", fontsize=9)
    fig.tight_layout()
    return table.reset_index(names="culture"), figures.png(fig)


def verdict(long: pd.DataFrame) -> str:
    """One sentence per protocol: does the culture mask cost culture tasks more than random?"""
    g = long[(long["bench"] == AVERAGES[0])]
    cult = g[g["row"] == "culture-general masked"]
    rand = g[g["row"].str.startswith("random")]
    orig = g[g["row"] == "original"]
    if cult.empty or rand.empty or orig.empty:
        return "not enough checkpoints to compare"
    c, r = float(cult["change"].iloc[0]), float(rand["change"].iloc[0])
    hi = float(cult["ci_high"].iloc[0])
    at_chance = bool(orig["near_chance"].iloc[0])
    if c >= r:
        what, sig = ("the culture-general mask does not lower the culture average more than "
                     "random masks"), ""
    elif hi < 0:
        what, sig = ("the culture-general mask lowers the culture average more than random "
                     "masks"), " (its 95 % interval excludes 0)"
    else:
        what, sig = ("the culture-general mask lowers the culture average more than random "
                     "masks by the point estimate only"), " (its 95 % interval includes 0)"
    chance = "; the original sits at chance on every culture task" if at_chance else ""
    return f"culture avg Δ {100 * c:+.1f} vs random {100 * r:+.1f} points: {what}{sig}{chance}"


# --- sections ---------------------------------------------------------------------------------
def leaderboard_section(protocol: str, long: pd.DataFrame, benches: list[str],
                        culture: set[str]) -> tuple[Section, str]:
    """The protocol's leaderboard section and the text the demo prints for it."""
    table = wide(long, benches)
    moves = verdict(long)
    what = ("first generated token = gold label (the paper)" if protocol == "paper" else
            "highest log-likelihood option label")
    legend = (f"Protocol **{protocol}** ({what}). Scores x100; masked cells: score (Δ from the "
              f"original [{int(CI_LEVEL * 100)} % bootstrap interval of Δ]). Culture tasks: "
              + ", ".join(_short_title(b) for b in benches if _is_culture(b, culture))
              + "; general tasks: "
              + ", ".join(_short_title(b) for b in benches if not _is_culture(b, culture))
              + f". Verdict: {moves}.")
    section = Section(f"Leaderboard, {protocol} protocol", legend + "\n\n" + md_table(table),
                      f"<p>{md_bold_to_html(legend)}</p>" + html_table(table))
    return section, f"== {protocol} protocol ==\n" + text_table(printed(long, benches)) + \
        "\n" + textwrap.fill(moves, 100) + "\n"


def printed(long: pd.DataFrame, benches: list[str]) -> pd.DataFrame:
    """The terminal's form of :func:`wide`: a row per task, compact cells (fits 100 columns)."""
    table = wide(long, benches, compact=True)
    if table.empty:
        return table
    names = [n.replace(" masked", "").replace(" (uniform guess)", "") for n in table[""]]
    out = table.set_index("").T.reset_index()
    out.columns = ["", *names]
    return out


def pictures_section(images: list[Image]) -> Section:
    return Section("Per culture and per layer", md_images(images), html_images(images))


def timings_section(timings: dict[str, tuple[float | None, float | None]]) -> Section:
    t = pd.DataFrame({"step": list(timings),
                      "first run (s)": [timings[k][0] for k in timings],
                      "last run (s)": [timings[k][1] for k in timings]})
    return Section("Timings", md_table(t, 1), html_table(t, 1))


def settings_section(settings: dict) -> Section:
    s = pd.DataFrame({"setting": list(settings),
                      "value": [json.dumps(v, default=str) for v in settings.values()]})
    return Section("Settings", md_table(s), html_table(s))


# --- the page ---------------------------------------------------------------------------------
def write_demo_report(runs: dict[str, str | Path], out: str | Path, *,
                      settings: dict | None = None,
                      timings: dict[str, tuple[float | None, float | None]] | None = None, culture=(),
                      general=(), model: str = "demo", resamples: int = stats.RESAMPLES,
                      seed: int = 0) -> Path:
    """``runs``: protocol (paper, loglik) -> sweep run dir holding that protocol's results."""
    loaded = {p: load_run(d) for p, d in runs.items()}
    dest = OutputDir(out)
    dest.path.mkdir(parents=True, exist_ok=True)
    culture_keys = {bench_of(t) or t for t in culture}
    sections: list[Section] = []
    csv_parts, printed = [], []
    for protocol in ("paper", "loglik"):
        run = loaded.get(protocol)
        if run is None:
            continue
        benches = [b for b in run.benches if protocol_of(b) == protocol]
        if not benches:
            continue
        long = leaderboard(run, model, benches, culture_keys, resamples=resamples, seed=seed)
        if long.empty:
            continue
        long.insert(0, "protocol", protocol)
        csv_parts.append(long)
        section, text = leaderboard_section(protocol, long, benches, culture_keys)
        sections.append(section)
        printed.append(text)
    if csv_parts:
        dest.save("demo_leaderboard.csv", pd.concat(csv_parts).to_csv(index=False))
    images = []
    for protocol, bench in (("loglik", "blendmcq_ll"), ("paper", "blendmcq")):
        if protocol not in loaded:
            continue
        table, png = country_heatmap(loaded[protocol], model, bench)
        if png:
            images.append(dest.image(f"demo_countries_{bench}.png",
                                     f"{bench_title(bench)} per culture", png))
            dest.save(f"demo_countries_{bench}.csv", table.to_csv(index=False))
    layers = figures.recorded_layers_png(next(iter(loaded.values())).of_model(model))
    if layers:
        images.append(dest.image("demo_layers.png", "Selected neurons per layer (culture-general "
                                                    "and one count-matched random set)", layers))
    sections.append(pictures_section(images))
    if timings:
        sections.append(timings_section(timings))
    if settings:
        sections.append(settings_section(settings))
    title = "culnig demo: culture-general neurons vs random neurons"
    intro = ("Original model, the model with its culture-general neurons masked, and the same "
             "number of random neurons masked. Full sweep reports (all tables, answer-label "
             "distributions): " + ", ".join(f"{p}/report.html" for p in loaded) + " in this folder.")
    md, page = render_page(title, sections, intro)
    dest.save("demo.md", md)
    dest.save("demo.html", page)
    print("\n".join(printed))
    return dest.path / "demo.html"
