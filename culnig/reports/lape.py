"""``culnig report-lape``: the LAPE/CAPE comparison pieces of the paper (App. F).

The Δ-perplexity matrix (Fig. 23) from a sweep's ``culnig_ppl_<name>`` results (masked minus
original, per mask and evaluation corpus), neuron counts (Table 16), layer distributions side by
side (Fig. 11) and the Jaccard overlap between CULNIG and LAPE/CAPE sets.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from culnig.errors import CulnigError
from culnig.neuron_sets import NeuronSet
from culnig.registry import MODULES
from culnig.reports import figures
from culnig.reports.render import (Image, OutputDir, Section, html_images, html_table, md_images,
                                   md_table, notice_section, render_page)
from culnig.reports.runs import Record, load_records
from culnig_tasks.ppl import task_corpus

PPL_METRICS = ("byte_perplexity", "word_perplexity", "bits_per_byte")
PPL_COLUMNS = ["model", "checkpoint", "mask", "eval", "metric", "neurons", "orig", "masked",
               "delta", "relative"]


# --- Δ perplexity ------------------------------------------------------------------------------
def _mask_label(rec: Record) -> str:
    params = (rec.meta.get("set") or {}).get("params") or {}
    if params.get("corpus"):
        return str(params["corpus"])
    if params.get("name"):
        return str(params["name"])
    return rec.checkpoint


def _ppl_values(records: list[Record], metric: str) -> dict[tuple[str, str], dict[str, float]]:
    """(model, checkpoint) -> evaluation corpus -> the metric, for records with perplexity tasks."""
    values = {}
    for r in records:
        per = {}
        for task, res in (r.results.get("results") or {}).items():
            corpus = task_corpus(task)
            if corpus is not None and f"{metric},none" in res:
                per[corpus] = float(res[f"{metric},none"])
        if per:
            values[(r.model, r.checkpoint)] = per
    return values


def ppl_long(run_dir: str | Path, metric: str = "byte_perplexity") -> tuple[pd.DataFrame, list[str]]:
    """One row per (masked checkpoint, evaluation corpus) with the original's value; notes."""
    if metric not in PPL_METRICS:
        raise CulnigError(f"unknown perplexity metric {metric!r}; use one of {', '.join(PPL_METRICS)}")
    records, notes, mixed = load_records(Path(run_dir))
    notes += mixed
    values = _ppl_values(records, metric)
    if not values:
        raise CulnigError(f"{run_dir}: no perplexity results (tasks culnig_ppl_*); evaluate them with "
                          "`culnig sweep` (see `culnig tasks ppl --help`)")
    origs: dict[str, tuple[str, str]] = {}
    for r in records:
        if r.kind == "orig" and (r.model, r.checkpoint) in values:
            origs.setdefault(str(r.meta.get("model_path")), (r.model, r.checkpoint))
    rows = []
    for r in records:
        if r.kind == "orig" or (r.model, r.checkpoint) not in values:
            continue
        base = origs.get(str(r.meta.get("model_path")))
        if base is None:
            notes.append(f"{r.label}: no original result of {r.meta.get('model_path')} with "
                         "perplexity tasks; left out")
            continue
        ref = values[base]
        for corpus, v in values[(r.model, r.checkpoint)].items():
            if corpus not in ref:
                notes.append(f"{r.label}: the original has no {corpus} result")
                continue
            o = ref[corpus]
            rows.append({"model": base[0], "checkpoint": f"{r.model}/{r.checkpoint}",
                         "mask": _mask_label(r), "eval": corpus, "metric": metric,
                         "neurons": r.neurons, "orig": o, "masked": v, "delta": v - o,
                         "relative": v / o - 1 if o else float("nan")})
    return pd.DataFrame(rows, columns=PPL_COLUMNS), notes


def ppl_matrix(long: pd.DataFrame, model: str, value: str = "delta") -> pd.DataFrame:
    """Rows: masks, columns: evaluation corpora (corpora that are also masks first, same order)."""
    sub = long[long["model"] == model]
    m = sub.pivot_table(index="mask", columns="eval", values=value, aggfunc="mean")
    masks = sorted(m.index)
    cols = [c for c in masks if c in m.columns] + sorted(c for c in m.columns if c not in masks)
    return m.reindex(index=masks, columns=cols)


def own_vs_other(long: pd.DataFrame, value: str = "relative") -> pd.DataFrame:
    """Per mask whose name is also an evaluation corpus ("own" language): its own change, compared
    along its row (the same mask on the other corpora) and along its column (the other masks on
    the own corpus: the same text, so the fairer comparison)."""
    rows = []
    for model, sub in long.groupby("model"):
        m = sub.pivot_table(index="mask", columns="eval", values=value, aggfunc="mean")
        for mask in m.index:
            if mask not in m.columns:
                continue
            own = float(m.loc[mask, mask])
            row = m.loc[mask].drop(mask).dropna()
            col = m[mask].drop(mask).dropna()
            rows.append({"model": model, "mask": mask, "own": own,
                         "row_others_mean": float(row.mean()) if len(row) else float("nan"),
                         "largest_in_row": bool(len(row) == 0 or own > row.max()),
                         "column_others_mean": float(col.mean()) if len(col) else float("nan"),
                         "column_top_other": str(col.idxmax()) if len(col) else "",
                         "largest_in_column": bool(len(col) == 0 or own > col.max())})
    return pd.DataFrame(rows, columns=["model", "mask", "own", "row_others_mean", "largest_in_row",
                                       "column_others_mean", "column_top_other",
                                       "largest_in_column"])


def heatmap_png(matrix: pd.DataFrame, title: str, fmt: str = "{:.2f}") -> bytes:
    h, w = matrix.shape
    fig, ax = figures.plt().subplots(figsize=(1.0 + 0.75 * max(w, 2), 1.0 + 0.55 * max(h, 2)))
    data = matrix.to_numpy(dtype=float)
    finite = data[~pd.isna(data)]
    lim = float(abs(finite).max()) if finite.size else 1.0
    im = ax.imshow(data, cmap="RdBu_r", vmin=-lim or -1, vmax=lim or 1, aspect="auto")
    ax.set_xticks(range(w), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(h), matrix.index)
    ax.set_xlabel("evaluation corpus")
    ax.set_ylabel("masked neurons of")
    for i in range(h):
        for j in range(w):
            v = data[i, j]
            if not math.isnan(v):
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * lim else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return figures.png(fig)


# --- sets --------------------------------------------------------------------------------------
def parse_set_args(values: list[str] | None) -> dict[str, NeuronSet]:
    """``NAME=FILE``, ``FILE`` (name: its stem) or a folder (every ``*.json`` set in it)."""
    out: dict[str, NeuronSet] = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = "", v
        p = Path(path)
        if p.is_dir():
            files = sorted(p.glob("*.json"))
            if not files:
                raise CulnigError(f"{p}: folder holds no neuron set (*.json)")
            for f in files:
                out[f"{name}{'/' if name else ''}{f.stem}"] = NeuronSet.load(f)
        else:
            out[name or p.stem] = NeuronSet.load(p)
    return out


def _per_layer_totals(ns: NeuronSet) -> list[int]:
    n_layers = int(ns.model.get("n_layers", 0))
    per = ns.per_layer_counts(n_layers)
    return [sum(per[m][layer] for m in MODULES) for layer in range(n_layers)]


def counts_table(sets: dict[str, NeuronSet]) -> pd.DataFrame:
    """Table 16: neurons per set and module, share of the model's gate neurons, layer span."""
    rows = []
    for name, ns in sets.items():
        c = ns.counts()
        n_layers = int(ns.model.get("n_layers", 0))
        total_per_layer = _per_layer_totals(ns)
        gate_total = int((ns.model.get("n_neurons") or {}).get("gate", 0)) * n_layers
        used = [layer for layer, n in enumerate(total_per_layer) if n]
        mean_layer = (sum(layer * n for layer, n in enumerate(total_per_layer)) / c["total"]
                      if c["total"] else float("nan"))
        rows.append({"set": name, "method": ns.method, "corpus": ns.params.get("corpus", ""),
                     **{m: c[m] for m in MODULES}, "total": c["total"],
                     "gate_share_%": 100.0 * c["gate"] / gate_total if gate_total else float("nan"),
                     "layers": f"{used[0]}-{used[-1]}" if used else "",
                     "mean_layer": mean_layer})
    return pd.DataFrame(rows)


def _flat(ns: NeuronSet, module: str | None = None) -> set:
    return {(m, layer, int(i)) for m, layer, idx in ns.items() if module in (None, m) for i in idx}


def overlap_table(culnig: dict[str, NeuronSet], lape: dict[str, NeuronSet]) -> pd.DataFrame:
    """Jaccard index of every CULNIG set with every LAPE/CAPE set (all neurons, gate only)."""
    rows = []
    for an, a in culnig.items():
        for bn, b in lape.items():
            if a.model.get("fingerprint") != b.model.get("fingerprint"):
                raise CulnigError(f"{an} and {bn} are sets of different models")
            sa, sb = _flat(a), _flat(b)
            ga, gb = _flat(a, "gate"), _flat(b, "gate")
            union, gunion = len(sa | sb), len(ga | gb)
            rows.append({"culnig": an, "lape": bn, "culnig_n": len(sa), "lape_n": len(sb),
                         "shared": len(sa & sb), "jaccard": len(sa & sb) / union if union else 0.0,
                         "gate_culnig_n": len(ga), "gate_shared": len(ga & gb),
                         "jaccard_gate": len(ga & gb) / gunion if gunion else 0.0})
    return pd.DataFrame(rows)


def layers_table(sets: dict[str, NeuronSet]) -> pd.DataFrame:
    cols = {name: _per_layer_totals(ns) for name, ns in sets.items()}
    n = max((len(v) for v in cols.values()), default=0)
    return pd.DataFrame({k: v + [0] * (n - len(v)) for k, v in cols.items()},
                        index=pd.RangeIndex(n, name="layer"))


def layers_png(culnig: dict[str, NeuronSet], lape: dict[str, NeuronSet]) -> bytes:
    """Fig. 11: per-layer neuron counts, CULNIG sets left, LAPE/CAPE sets right."""
    groups = [(t, s) for t, s in (("CULNIG", culnig), ("LAPE / CAPE", lape)) if s]
    fig, axes = figures.plt().subplots(1, len(groups), figsize=(6 * len(groups), 3.6), squeeze=False)
    for ax, (title, sets) in zip(axes[0], groups):
        table = layers_table(sets)
        for name in table.columns:
            ax.plot(table.index, table[name], marker="o", markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_ylabel("neurons")
        ax.legend(fontsize=7, ncol=2 if len(table.columns) > 6 else 1)
    fig.tight_layout()
    return figures.png(fig)


# --- sections ----------------------------------------------------------------------------------
def ppl_section(long: pd.DataFrame, metric: str, dest: OutputDir) -> Section:
    """Fig. 23: the Δ and relative matrices per model (CSV, heatmap) and the own-language check."""
    dest.save("delta_ppl.csv", long.to_csv(index=False))
    own = own_vs_other(long)
    dest.save("delta_ppl_own.csv", own.to_csv(index=False))
    own_show = own.copy()
    for c in ("own", "row_others_mean", "column_others_mean"):
        own_show[c] = own_show[c] * 100
    md, hm = [], []
    for model in sorted(set(long["model"])):
        mat = ppl_matrix(long, model)
        rel = ppl_matrix(long, model, "relative") * 100
        dest.save(f"delta_ppl_{model}.csv", mat.to_csv())
        png = heatmap_png(rel, f"{metric}: masked / original − 1 (%), {model}", "{:.1f}")
        imgs = [dest.image(f"delta_ppl_{model}.png", f"Relative change of {metric} (%), {model}", png)]
        md.append(f"**{model}**: Δ {metric}\n\n" + md_table(mat, 3, index=True)
                  + "\nRelative change (%)\n\n" + md_table(rel, 1, index=True) + "\n"
                  + md_images(imgs))
        hm.append(f"<h3>{html.escape(model)}</h3>" + html_table(mat, 3, index=True)
                  + "<p>Relative change (%)</p>" + html_table(rel, 1, index=True)
                  + html_images(imgs))
    legend = (f"{metric} of each masked checkpoint minus the original's, per evaluation corpus "
              "(column); rows are masks, labelled by their LAPE corpus. Every value: "
              "delta_ppl.csv.")
    own_legend = ("Own language (relative change, %): a mask's change on its own corpus against "
                  "the same mask on the other corpora (row) and against the other masks on its "
                  "own corpus (column; the same text, the fairer comparison). "
                  "delta_ppl_own.csv.")
    return Section("Δ perplexity (Fig. 23)",
                   legend + "\n\n" + "\n".join(md) + "\n" + own_legend + "\n\n"
                   + md_table(own_show, 1),
                   f"<p>{html.escape(legend)}</p>" + "".join(hm)
                   + f"<p>{html.escape(own_legend)}</p>" + html_table(own_show, 1))


def counts_section(sets: dict[str, NeuronSet], dest: OutputDir) -> Section:
    counts = counts_table(sets)
    dest.save("counts.csv", counts.to_csv(index=False))
    return Section("Neuron counts (Table 16)", md_table(counts, 2), html_table(counts, 2))


def layers_section(culnig: dict[str, NeuronSet], lape: dict[str, NeuronSet],
                   dest: OutputDir) -> Section:
    dest.save("layers.csv", layers_table({**culnig, **lape}).to_csv())
    imgs: list[Image] = [dest.image("layers.png", "Neurons per layer: CULNIG (left), LAPE/CAPE "
                                                  "(right)", layers_png(culnig, lape))]
    return Section("Layer distributions (Fig. 11)", md_images(imgs), html_images(imgs))


def overlap_section(culnig: dict[str, NeuronSet], lape: dict[str, NeuronSet],
                    dest: OutputDir) -> Section:
    ov = overlap_table(culnig, lape)
    dest.save("overlap.csv", ov.to_csv(index=False))
    legend = ("Jaccard = |A∩B| / |A∪B| over (module, layer, index); jaccard_gate over gate "
              "neurons only.")
    return Section("Overlap CULNIG vs LAPE/CAPE", legend + "\n\n" + md_table(ov, 3),
                   f"<p>{html.escape(legend)}</p>" + html_table(ov, 3))


# --- the report --------------------------------------------------------------------------------
@dataclass
class LapeReport:
    out: Path
    files: list[Path]
    notes: list[str]


def make_lape_report(out: str | Path, *, run_dir: str | Path | None = None,
                     lape: dict[str, NeuronSet] | None = None,
                     culnig: dict[str, NeuronSet] | None = None,
                     metric: str = "byte_perplexity") -> LapeReport:
    """The pieces that the given run dir and/or sets allow, written to ``out``."""
    lape, culnig = dict(lape or {}), dict(culnig or {})
    if run_dir is None and not lape and not culnig:
        raise CulnigError("nothing to report: give a run dir with perplexity results and/or "
                          "--lape / --culnig neuron sets")
    dest = OutputDir(out)
    notes: list[str] = []
    sections: list[Section] = []
    if run_dir is not None:
        long, n = ppl_long(run_dir, metric)
        notes += n
        sections.append(ppl_section(long, metric, dest))
    if culnig or lape:
        sections.append(counts_section({**culnig, **lape}, dest))
        sections.append(layers_section(culnig, lape, dest))
    if culnig and lape:
        sections.append(overlap_section(culnig, lape, dest))
    if notes:
        sections.insert(0, notice_section("Notes", [(None, n) for n in notes]))
    md, page = render_page("culnig LAPE / CAPE report", sections)
    dest.save("report.md", md)
    dest.save("report.html", page)
    return LapeReport(out=dest.path, files=dest.files, notes=notes)
