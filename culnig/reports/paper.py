"""``culnig report RUN_DIR``: the paper's tables and figures from a sweep's run dir.

Table 2 (orig / cult / rand per benchmark, bootstrap significance), Figure 4 (score change per
neuron culture x evaluation culture), Table 15 (rank of each culture's drop), BLEnD SAQ per
culture, answer-label distributions, neuron counts and layers, and a sortable leaderboard:
CSV files, PNG figures, ``report.md`` and a self-contained ``report.html``.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from culnig import stats
from culnig.errors import CulnigError
from culnig.registry import MODULES
from culnig.reports import figures
from culnig.reports.render import (Image, OutputDir, Section, html_images, html_table, md_images,
                                   md_table, notice_section, pct, render_page, whole)
from culnig.reports.runs import (LL_SUFFIX, RunData, base_bench, bench_title, culture_order,
                                 load_run, metric_of, protocol_of, settings_summary)
from culnig_tasks.countries import BLEND_COUNTRIES

FIG4_BENCHES = ("blendmcq", "culturalbench", "normad")
FIG4_BENCHES = FIG4_BENCHES + tuple(b + LL_SUFFIX for b in FIG4_BENCHES)
RANK_BENCH = "blendmcq"
SAQ_BENCH = "blendsaq"
OTHER_LABEL = "other"


# --- tables -----------------------------------------------------------------------------------
def table2(run: RunData, *, resamples: int = stats.RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """One row per (model, benchmark): orig, cult, rand mean/std, drops and bootstrap p-values."""
    rows = []
    for model in run.models():
        general = run.of_model(model, "general")
        randoms = run.of_model(model, "random")
        for bench in run.benches:
            v = run.values.get((model, bench))
            if v is None or "orig" not in v:
                continue
            row = {"model": model, "bench": bench, "protocol": protocol_of(bench),
                   "metric": metric_of(bench), "n_docs": len(v),
                   "orig": float(v["orig"].mean())}
            g = general[0].checkpoint if general and general[0].checkpoint in v else None
            rs = [r.checkpoint for r in randoms if r.checkpoint in v]
            row["cult"] = float(v[g].mean()) if g else float("nan")
            row["rand_mean"], row["rand_std"] = stats.mean_std([v[c].mean() for c in rs])
            row["n_seeds"] = len(rs)
            row["neurons_cult"] = general[0].neurons if general else float("nan")
            row["neurons_rand"] = (float(np.mean([r.neurons for r in randoms])) if randoms
                                   else float("nan"))
            if g and rs and len(v):
                b = stats.bootstrap_reduction(v["orig"].to_numpy(), v[g].to_numpy(),
                                              v[rs].to_numpy().T, resamples=resamples, seed=seed)
                row.update(drop_cult=b.drop_culture, drop_rand=b.drop_random, p_mean=b.p_mean,
                           p_single=b.p_single, significant=b.significant)
            else:
                row.update(drop_cult=float("nan"), drop_rand=float("nan"), p_mean=float("nan"),
                           p_single=float("nan"), significant=False)
            rows.append(row)
    return pd.DataFrame(rows)


def table2_wide(t2: pd.DataFrame, model: str) -> pd.DataFrame:
    """The paper's layout for one model: rows orig / cult / rand, a column per benchmark (x100)."""
    sub = t2[t2["model"] == model]
    out: dict[str, list[str]] = {"": ["orig", "cult", "rand"]}
    for _, r in sub.iterrows():
        mark = "*" if r["significant"] else ""
        out[bench_title(r["bench"])] = [
            pct(r["orig"]), pct(r["cult"]) + mark,
            pct(r["rand_mean"]) + ("" if not r["n_seeds"] or r["n_seeds"] < 2
                                   else f" ± {pct(r['rand_std'])}")]
    if len(sub):
        r0 = sub.iloc[0]
        out["#neurons"] = ["0", whole(r0["neurons_cult"]), whole(r0["neurons_rand"])]
    return pd.DataFrame(out)


def leaderboard(run: RunData) -> pd.DataFrame:
    """One row per checkpoint: its score on every benchmark and their mean."""
    rows = []
    for r in run.records:
        row: dict[str, Any] = {"model": r.model, "checkpoint": r.checkpoint, "kind": r.kind,
                               "country": r.country or "", "seed": "" if r.seed is None else r.seed,
                               "neurons": r.neurons}
        scores = []
        for bench in run.benches:
            v = run.values.get((r.model, bench))
            val = float(v[r.checkpoint].mean()) if v is not None and r.checkpoint in v else float("nan")
            row[bench] = val
            if not math.isnan(val):
                scores.append(val)
        row["mean"] = float(np.mean(scores)) if scores else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def figure4_data(run: RunData) -> pd.DataFrame:
    """Score reduction per (model, benchmark, neuron culture, evaluation culture)."""
    rows = []
    for model in run.models():
        specific = run.of_model(model, "specific")
        for bench in FIG4_BENCHES:
            per = run.by_country(model, bench)
            if per is None or "orig" not in per:
                continue
            for r in specific:
                if r.checkpoint not in per:
                    continue
                for culture, orig in per["orig"].items():
                    rows.append({"model": model, "bench": bench, "neuron_culture": r.country,
                                 "eval_culture": culture, "orig": orig,
                                 "masked": per.loc[culture, r.checkpoint],
                                 "reduction": per.loc[culture, r.checkpoint] - orig})
    return pd.DataFrame(rows, columns=["model", "bench", "neuron_culture", "eval_culture", "orig",
                                       "masked", "reduction"])


def table15(run: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ranks averaged over models: neuron culture x evaluation culture, plus 'own'), and the
    per-model long table. Rank 1 = the largest drop (original - masked) among the BLEnD cultures
    present; ties share their average rank."""
    rows = []
    for model in run.models():
        per = run.by_country(model, RANK_BENCH)
        if per is None or "orig" not in per:
            continue
        cultures = [c for c in BLEND_COUNTRIES if c in per.index]
        for r in run.of_model(model, "specific"):
            if r.checkpoint not in per:
                continue
            drops = (per.loc[cultures, "orig"] - per.loc[cultures, r.checkpoint]).to_numpy()
            for culture, drop, rank in zip(cultures, drops, stats.rank_drops(drops)):
                rows.append({"model": model, "neuron_culture": r.country, "eval_culture": culture,
                             "drop": drop, "rank": rank, "n_cultures": len(cultures)})
    long = pd.DataFrame(rows, columns=["model", "neuron_culture", "eval_culture", "drop", "rank",
                                       "n_cultures"])
    if long.empty:
        return pd.DataFrame(), long
    avg = long.pivot_table(index="neuron_culture", columns="eval_culture", values="rank",
                           aggfunc="mean")
    avg = avg.reindex(columns=[c for c in BLEND_COUNTRIES if c in avg.columns])
    avg = avg.reindex(index=culture_order(avg.index))
    avg["own"] = [avg.loc[c, c] if c in avg.columns else float("nan") for c in avg.index]
    return avg, long


def saq_table(run: RunData) -> pd.DataFrame:
    """BLEnD SAQ accuracy per culture (and ``all``): orig, cult, rand mean/std."""
    rows = []
    for model in run.models():
        per = run.by_country(model, SAQ_BENCH)
        if per is None or "orig" not in per:
            continue
        general = [r.checkpoint for r in run.of_model(model, "general") if r.checkpoint in per]
        rs = [r.checkpoint for r in run.of_model(model, "random") if r.checkpoint in per]
        v = run.values[(model, SAQ_BENCH)]
        c = run.countries[(model, SAQ_BENCH)].fillna("?")
        counts = c.value_counts()
        for culture in culture_order(per.index):
            mean, std = stats.mean_std(per.loc[culture, rs].to_numpy()) if rs else (float("nan"),) * 2
            rows.append({"model": model, "culture": culture, "n_docs": int(counts.get(culture, 0)),
                         "orig": per.loc[culture, "orig"],
                         "cult": per.loc[culture, general[0]] if general else float("nan"),
                         "rand_mean": mean, "rand_std": std})
        mean, std = stats.mean_std([v[x].mean() for x in rs]) if rs else (float("nan"),) * 2
        rows.append({"model": model, "culture": "all", "n_docs": len(v), "orig": v["orig"].mean(),
                     "cult": v[general[0]].mean() if general else float("nan"),
                     "rand_mean": mean, "rand_std": std})
    return pd.DataFrame(rows)


def counts_table(run: RunData) -> pd.DataFrame:
    """Neurons per module of every masked checkpoint's set."""
    rows = []
    for r in run.records:
        s = r.meta.get("set")
        if not s:
            continue
        counts = s.get("counts") or {}
        rows.append({"model": r.model, "checkpoint": r.checkpoint, "method": s.get("method"),
                     **{m: int(counts.get(m, 0)) for m in MODULES},
                     "total": int(counts.get("total", 0))})
    return pd.DataFrame(rows)


def answer_labels(obj: dict) -> tuple[str, str, list[str] | None]:
    """(predicted label, gold label, the document's option labels or None) of one logged sample.

    Option log-likelihood samples: the highest-scoring option (lm-eval's ``filtered_resps`` are
    ``(loglik, is_greedy)`` per option) and the gold index into ``doc["labels"]``. Paper samples:
    the generated first token as it was compared, and the gold string."""
    doc = obj.get("doc") if isinstance(obj.get("doc"), dict) else {}
    resps = obj.get("filtered_resps") or []
    labels = doc.get("labels")
    if labels and resps and isinstance(resps[0], (list, tuple)):
        lls = [float(r[0]) for r in resps]
        pred = labels[int(np.argmax(lls))]
        gold = labels[int(obj.get("target", doc.get("gold_index", 0)))]
        return pred, gold, list(labels)
    first = resps[0] if resps else ""
    while isinstance(first, (list, tuple)):
        first = first[0] if first else ""
    return str(first), str(obj.get("target", doc.get("gold", ""))), None


def label_distribution(run: RunData) -> pd.DataFrame:
    """Share of each answer label predicted vs gold, per checkpoint and benchmark (all variants
    pooled): position bias at a glance. Options are the documents' labels (loglik) or the gold
    labels seen (paper); a paper-protocol answer that is none of them counts as ``other``."""
    rows = []
    for r in run.records:
        samples = r.meta.get("samples_files") or {}
        by_bench: dict[str, list[str]] = defaultdict(list)
        for leaf, bench in r.leaf_benches().items():
            if leaf in samples and base_bench(bench) != SAQ_BENCH:
                by_bench[bench].append(leaf)
        for bench, leaves in by_bench.items():
            preds, golds, options = [], [], set()
            for leaf in sorted(leaves):
                with open(r.dir / samples[leaf]) as fh:
                    for line in fh:
                        if line.strip():
                            pred, gold, labels = answer_labels(json.loads(line))
                            preds.append(pred)
                            golds.append(gold)
                            options.update(labels or ())
            options.update(golds)
            n = len(preds)
            if not n:
                continue
            pred_counts = pd.Series([p if p in options else OTHER_LABEL for p in preds]).value_counts()
            gold_counts = pd.Series(golds).value_counts()
            order = sorted(options, key=lambda x: (len(x), x))
            if pred_counts.get(OTHER_LABEL, 0):
                order.append(OTHER_LABEL)
            for label in order:
                rows.append({"model": r.model, "checkpoint": r.checkpoint, "bench": bench,
                             "protocol": protocol_of(bench), "label": label, "n": n,
                             "predicted": float(pred_counts.get(label, 0)) / n,
                             "gold": float(gold_counts.get(label, 0)) / n})
    return pd.DataFrame(rows, columns=["model", "checkpoint", "bench", "protocol", "label", "n",
                                       "predicted", "gold"])


def label_table(dist: pd.DataFrame) -> pd.DataFrame:
    """Display form: one row per (benchmark, checkpoint) with the predicted share (%) per label,
    and a ``gold`` row per benchmark and model."""
    if dist.empty:
        return pd.DataFrame()
    rows = []
    for (model, bench), sub in dist.groupby(["model", "bench"], sort=False):
        labels = list(dict.fromkeys(sub["label"]))
        first = sub[sub["checkpoint"] == sub["checkpoint"].iloc[0]].set_index("label")
        rows.append({"model": model, "benchmark": bench_title(bench), "checkpoint": "gold",
                     **{lab: pct(first["gold"].get(lab, 0.0)) for lab in labels}})
        for cp, c in sub.groupby("checkpoint", sort=False):
            c = c.set_index("label")
            rows.append({"model": model, "benchmark": bench_title(bench), "checkpoint": cp,
                         **{lab: pct(c["predicted"].get(lab, 0.0)) for lab in labels}})
    return pd.DataFrame(rows).fillna("")


# --- figures ----------------------------------------------------------------------------------
def figure4_png(fig4: pd.DataFrame, model: str) -> bytes | None:
    """Figure 4 of one model: a heatmap per benchmark, neuron culture x evaluation culture."""
    sub = fig4[fig4["model"] == model]
    benches = [b for b in FIG4_BENCHES if b in set(sub["bench"])]
    if not benches:
        return None
    fig, axes = figures.plt().subplots(1, len(benches), figsize=(5.2 * len(benches), 4.6),
                                       squeeze=False)
    for ax, bench in zip(axes[0], benches):
        b = sub[sub["bench"] == bench]
        m = b.pivot_table(index="neuron_culture", columns="eval_culture", values="reduction")
        rows = culture_order(m.index)
        shared = [c for c in rows if c in m.columns]
        cols = shared if shared else culture_order(m.columns)
        m = m.reindex(index=rows, columns=cols) * 100
        lim = float(np.nanmax(np.abs(m.to_numpy()))) if m.size and np.isfinite(m.to_numpy()).any() else 1.0
        im = ax.imshow(m.to_numpy(), cmap="RdBu", vmin=-max(lim, 1e-9), vmax=max(lim, 1e-9))
        ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_xlabel("evaluation culture")
        ax.set_ylabel("neuron culture")
        ax.set_title(f"{bench_title(bench)}: masked - original (points)", fontsize=9)
        if len(rows) * len(cols) <= 100:
            for (i, j), val in np.ndenumerate(m.to_numpy()):
                if np.isfinite(val):
                    ax.text(j, i, f"{val:.1f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"Figure 4 ({model})")
    fig.tight_layout()
    return figures.png(fig)


# --- sections ---------------------------------------------------------------------------------
def warnings_section(run: RunData) -> Section | None:
    items = [("Mixed results", m) for m in run.mixed] + [("Note", n) for n in run.notes]
    return notice_section("Warnings", items) if items else None


def settings_section(run: RunData) -> Section:
    settings = settings_summary(run)
    return Section("Settings", md_table(settings), html_table(settings))


def table2_section(run: RunData, t2: pd.DataFrame, resamples: int, seed: int) -> Section:
    md, page = [], []
    for model in run.models():
        wide = table2_wide(t2, model) if not t2.empty else pd.DataFrame()
        md.append(f"**{model}**\n\n" + md_table(wide))
        page.append(f"<h3>{html.escape(model)}</h3>" + html_table(wide))
    legend = ("Scores x100; benchmark = mean over its prompt variants. rand = mean ± std (population) "
              f"over random seeds. * = culture-mask reduction significant: both bootstrap p-values "
              f"< {stats.ALPHA} ({resamples} resamples over documents, seed {seed}; p = P(random "
              "reduction >= culture reduction), against the mean of the seeds and against one "
              "uniformly drawn seed).")
    return Section("Table 2", legend + "\n\n" + "\n".join(md), f"<p>{html.escape(legend)}</p>" + "".join(page))


def pvalues_section(t2: pd.DataFrame) -> Section:
    pv = pd.DataFrame()
    if not t2.empty:
        pv = t2[["model", "bench", "protocol", "n_docs", "drop_cult", "drop_rand", "p_mean",
                 "p_single", "significant"]].copy()
        pv["drop_cult"] *= 100
        pv["drop_rand"] *= 100
    legend = "Drops in points (original - masked)."
    return Section("Bootstrap p-values", f"{legend}\n\n" + md_table(pv),
                   f"<p>{legend}</p>" + html_table(pv))


def leaderboard_section(run: RunData, lb: pd.DataFrame) -> Section:
    show = lb.copy()
    for b in run.benches + ["mean"]:
        show[b] = show[b] * 100
    show = show.rename(columns={b: bench_title(b) for b in run.benches})
    return Section("Leaderboard", "One row per checkpoint (scores x100).\n\n" + md_table(show, 1),
                   "<p>One row per checkpoint (scores x100). Click a column header to sort.</p>"
                   + html_table(show, 1, sortable=True, table_id="leaderboard"))


def figure4_section(images: list[Image]) -> Section:
    legend = ("Score reduction (masked - original, points) per neuron culture (row: the "
              "culture-specific mask) and evaluation culture (column). Every value: figure4.csv.")
    md = md_images(images) or ("_(no culture-specific masks on BLEnD MCQ, CulturalBench or "
                               "NormAd)_\n")
    page = html_images(images) or "<p><em>(no culture-specific masks)</em></p>"
    return Section("Figure 4", legend + "\n\n" + md, f"<p>{html.escape(legend)}</p>" + page)


def table15_section(t15: pd.DataFrame) -> Section:
    legend = ("Rank of each evaluation culture's drop (original - masked, "
              f"{bench_title(RANK_BENCH)}) among the BLEnD cultures, 1 = largest drop, per neuron "
              "culture, averaged over models; 'own' = the neuron culture's own rank.")
    return Section("Table 15", legend + "\n\n" + md_table(t15, 2, index=True),
                   f"<p>{html.escape(legend)}</p>" + html_table(t15, 2, index=True))


def labels_section(labels: pd.DataFrame) -> Section:
    legend = ("Share of answers per option label (%, all prompt variants pooled): the "
              "'gold' row is the answer key, the other rows what each checkpoint predicted "
              "('other': a paper-protocol first token that is no option label). A row far "
              "from 'gold' shows position or label bias. Long form: labels.csv.")
    show = label_table(labels)
    return Section("Answer labels", legend + "\n\n" + md_table(show),
                   f"<p>{html.escape(legend)}</p>" + html_table(show))


def saq_section(saq: pd.DataFrame) -> Section:
    show = saq.copy()
    for c in ("orig", "cult", "rand_mean", "rand_std"):
        if c in show:
            show[c] = show[c] * 100
    return Section("BLEnD SAQ per culture", "Accuracy x100.\n\n" + md_table(show, 1),
                   "<p>Accuracy x100.</p>" + html_table(show, 1))


def counts_section(counts: pd.DataFrame, images: list[Image]) -> Section:
    return Section("Neuron counts and layers", md_table(counts) + "\n" + md_images(images),
                   html_table(counts) + html_images(images))


# --- the report -------------------------------------------------------------------------------
@dataclass
class Report:
    out: Path
    files: list[Path]
    mixed: list[str]
    notes: list[str]


def make_report(run_dir: str | Path, out: str | Path | None = None, *, allow_mixed: bool = False,
                resamples: int = stats.RESAMPLES, seed: int = 0) -> Report:
    """Write every table, figure and page of ``run_dir`` to ``out`` (default ``RUN_DIR/report``);
    results that cannot be compared are an error unless ``allow_mixed``."""
    run = load_run(run_dir)
    if run.mixed and not allow_mixed:
        shown = "; ".join(run.mixed[:3]) + (f"; ... ({len(run.mixed)} in all)" if len(run.mixed) > 3 else "")
        raise CulnigError(f"{run.run_dir} mixes results that cannot be compared: {shown}. Re-run the "
                          "sweep in a fresh run_dir, or pass --allow-mixed to write the report with "
                          "these differences listed at the top")
    dest = OutputDir(Path(out) if out is not None else run.run_dir / "report")
    t2 = table2(run, resamples=resamples, seed=seed)
    lb = leaderboard(run)
    fig4 = figure4_data(run)
    t15, t15_long = table15(run)
    saq = saq_table(run)
    counts = counts_table(run)
    labels = label_distribution(run)
    dest.save("labels.csv", labels.to_csv(index=False))
    dest.save("table2.csv", t2.to_csv(index=False))
    dest.save("leaderboard.csv", lb.to_csv(index=False))
    dest.save("figure4.csv", fig4.to_csv(index=False))
    dest.save("table15.csv", t15.to_csv())
    dest.save("table15_per_model.csv", t15_long.to_csv(index=False))
    dest.save("saq.csv", saq.to_csv(index=False))
    dest.save("counts.csv", counts.to_csv(index=False))
    dest.save("scores_per_task.csv", run.leaf_scores.to_csv(index=False))

    fig4_images, layer_images = [], []
    for model in run.models():
        png = figure4_png(fig4, model) if not fig4.empty else None
        if png:
            fig4_images.append(dest.image(f"figure4_{model}.png", f"Figure 4, {model}", png))
        png = figures.recorded_layers_png(run.of_model(model))
        if png:
            layer_images.append(dest.image(f"layers_{model}.png", f"Neurons per layer, {model}", png))

    sections = [s for s in (warnings_section(run),) if s is not None] + [
        settings_section(run), table2_section(run, t2, resamples, seed), pvalues_section(t2),
        leaderboard_section(run, lb), figure4_section(fig4_images), table15_section(t15),
        labels_section(labels), saq_section(saq), counts_section(counts, layer_images)]
    md, page = render_page(f"culnig report: {run.run_dir.name}", sections, sortable=True)
    dest.save("report.md", md)
    dest.save("report.html", page)
    return Report(out=dest.path, files=dest.files, mixed=run.mixed, notes=run.notes)
