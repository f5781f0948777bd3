"""``culnig report RUN_DIR``: the paper's Table 2, Figure 4 and Table 15 from a sweep's run dir.

Input: the result folders ``RUN_DIR/results/<model>/<checkpoint>/`` written by ``culnig sweep``
(``culnig_eval.json`` + lm-eval's ``results_*.json`` and ``samples_<task>_*.jsonl``). Every score
is recomputed from the logged samples (per-sample metric ``acc``; ``score_c`` for
WorldValuesBench), checked against lm-eval's own aggregate, and:

- a benchmark's score is the unweighted mean over its prompt variants (its lm-eval group);
  per document, the metric averaged over the variants is the unit the bootstrap resamples;
- Table 2: per model, rows orig / cult / rand (mean and population std over the random seeds),
  columns per benchmark, neuron counts; ``*`` marks a culture-mask reduction that is significant
  (both bootstrap p-values < 0.05, :mod:`culnig.stats`);
- Figure 4: score reduction (masked - original) per neuron culture (specific masks) x evaluation
  culture (``doc["country"]``) for BLEnD MCQ, CulturalBench and NormAd;
- Table 15: rank (1 = largest drop) of each evaluation culture's drop among the 16 BLEnD
  cultures (BLEnD MCQ), per neuron culture, averaged over models;
- both scoring protocols side by side: paper-protocol groups ``culnig_x`` are benchmark ``x``,
  option log-likelihood groups ``culnigll_x`` are ``x_ll``; every table names the protocol;
- the answer-label distribution (share of A/B/C/D... predicted vs gold) per checkpoint;
- BLEnD SAQ accuracy per culture (orig / cult / rand), neuron counts and per-layer distributions,
  and a leaderboard with one row per checkpoint (sortable in the HTML page).

Outputs (``RUN_DIR/report`` by default): ``report.md``, ``report.html`` (self-contained: images
embedded as base64, a few lines of JavaScript sort the leaderboard), CSV files and PNG figures.

Results made with different task versions or settings (limit, seed, backend, tasks, lm-eval
version, ...) in one run dir are an error naming what differs; ``--allow-mixed`` writes the report
anyway with the differences listed in a warning section at the top.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from culnig import stats
from culnig.errors import CulnigError
from culnig.hashing import sha256_file
from culnig.sweep import EVAL_FORMAT, EVAL_RECORD, PAPER_COUNTRIES, _umask, version_str

BENCH_ORDER = ("blendmcq", "blendsaq", "culturalbench", "normad", "worldvaluesbench", "countryrc",
               "commonsenseqa", "qnli", "mrpc")
BENCH_TITLES = {"blendmcq": "BLEnD MCQ", "blendsaq": "BLEnD SAQ", "culturalbench": "CulturalBench",
                "normad": "NormAd", "worldvaluesbench": "WVB", "countryrc": "CountryRC",
                "commonsenseqa": "CSQA", "qnli": "QNLI", "mrpc": "MRPC"}
METRIC = {"worldvaluesbench": "score_c"}  # everything else: acc
LL_SUFFIX = "_ll"  # benchmark key of the option log-likelihood protocol: qnli_ll (culnigll_qnli)
FIG4_BENCHES = ("blendmcq", "culturalbench", "normad")
FIG4_BENCHES = FIG4_BENCHES + tuple(b + LL_SUFFIX for b in FIG4_BENCHES)
RANK_BENCH = "blendmcq"
SAQ_BENCH = "blendsaq"
_LEAF = re.compile(r"^(?P<bench>.+)_(?P<protocol>paper|loglik)_v\d+$")


def base_bench(bench: str) -> str:
    return bench.removesuffix(LL_SUFFIX)


def protocol_of(bench: str) -> str:
    """``loglik`` (option log-likelihood, ``culnigll_*``) or ``paper`` (first token, ``culnig_*``)."""
    return "loglik" if bench.endswith(LL_SUFFIX) else "paper"


def metric_of(bench: str) -> str:
    return METRIC.get(base_bench(bench), "acc")


def bench_title(bench: str) -> str:
    """Every table names the protocol: ``CSQA [paper]``, ``CSQA [loglik]``."""
    base = base_bench(bench)
    return f"{BENCH_TITLES.get(base, base)} [{protocol_of(bench)}]"


def _bench_sort_key(bench: str):
    base = base_bench(bench)
    return (BENCH_ORDER.index(base) if base in BENCH_ORDER else len(BENCH_ORDER), base,
            protocol_of(bench) != "paper")


# --- loading ----------------------------------------------------------------------------------
@dataclass
class Record:
    model: str
    checkpoint: str
    kind: str
    seed: int | None
    country: str | None
    dir: Path
    meta: dict
    results: dict

    @property
    def label(self) -> str:
        return f"{self.model}/{self.checkpoint}"

    @property
    def neurons(self) -> int:
        s = self.meta.get("set") or {}
        return int((s.get("counts") or {}).get("total", 0))

    def leaf_benches(self) -> dict[str, str]:
        """leaf task -> benchmark key (``culnig_x`` group -> ``x``, ``culnigll_x`` -> ``x_ll``)."""
        group_of = {}
        for group, leaves in (self.results.get("group_subtasks") or {}).items():
            for leaf in leaves:
                group_of[leaf] = group
        out = {}
        for task in self.results.get("versions", {}):
            if task in (self.results.get("group_subtasks") or {}):
                continue
            if task in group_of and group_of[task].startswith("culnigll_"):
                bench = group_of[task].removeprefix("culnigll_") + LL_SUFFIX
            elif task in group_of:
                bench = group_of[task].removeprefix("culnig_")
            else:
                m = _LEAF.match(task)
                bench = (m.group("bench") + (LL_SUFFIX if m.group("protocol") == "loglik" else "")
                         if m else task)
            out[task] = bench
        return out


@dataclass
class RunData:
    run_dir: Path
    records: list[Record]
    benches: list[str]
    values: dict[tuple[str, str], pd.DataFrame]    # (model, bench) -> docs x checkpoints
    countries: dict[tuple[str, str], pd.Series]    # (model, bench) -> doc -> country
    leaf_scores: pd.DataFrame
    mixed: list[str] = field(default_factory=list)   # settings/versions that differ
    notes: list[str] = field(default_factory=list)   # other warnings

    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.records))

    def of_model(self, model: str, kind: str | None = None) -> list[Record]:
        return [r for r in self.records if r.model == model and (kind is None or r.kind == kind)]


def _read_samples(path: Path, metric: str) -> pd.DataFrame:
    ids, countries, vals = [], [], []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if metric not in obj:
                raise CulnigError(f"{path}:{n}: sample has no per-sample metric {metric!r}")
            doc = obj.get("doc") if isinstance(obj.get("doc"), dict) else {}
            ids.append(obj["doc_id"])
            countries.append(doc.get("country"))
            vals.append(float(obj[metric]))
    return pd.DataFrame({"country": countries, "value": vals}, index=pd.Index(ids, name="doc_id"))


def load_records(run_dir: Path, notes: list[str], mixed: list[str]) -> list[Record]:
    root = run_dir / "results"
    if not root.is_dir():
        raise CulnigError(f"{run_dir}: no results/ folder; run `culnig sweep CONFIG` first (or pass "
                          "the run_dir of a sweep)")
    records: list[Record] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for d in sorted(p for p in model_dir.iterdir() if p.is_dir()):
            if d.name.startswith("."):
                notes.append(f"{d.relative_to(run_dir)}: an interrupted evaluation's temporary folder "
                             "(ignored; the next sweep removes it)")
                continue
            try:
                meta = json.loads((d / EVAL_RECORD).read_text())
            except (OSError, json.JSONDecodeError):
                meta = None
            if not isinstance(meta, dict) or meta.get("format") != EVAL_FORMAT:
                notes.append(f"{d.relative_to(run_dir)}: no readable {EVAL_RECORD} (ignored)")
                continue
            res_path = d / meta["results_file"]
            if not res_path.is_file():
                mixed.append(f"{d.relative_to(run_dir)}: its results file {meta['results_file']} is missing")
                continue
            if sha256_file(res_path) != meta.get("results_sha256"):
                mixed.append(f"{d.relative_to(run_dir)}: {meta['results_file']} was changed after the "
                             "evaluation (hash differs from culnig_eval.json)")
            results = json.loads(res_path.read_text())
            records.append(Record(model=meta["model"], checkpoint=meta["checkpoint"],
                                  kind=meta["kind"], seed=meta.get("seed"),
                                  country=meta.get("country"), dir=d, meta=meta, results=results))
            extra = sorted(f.name for f in d.glob("results_*.json") if f.name != meta["results_file"])
            if extra:
                notes.append(f"{d.relative_to(run_dir)}: other results files ignored: {', '.join(extra)}")
    if not records:
        raise CulnigError(f"{run_dir}: no complete results (results/<model>/<checkpoint>/"
                          f"{EVAL_RECORD}); run `culnig sweep` first")
    return records


def _differences(records: list[Record]) -> list[str]:
    """One line per setting or task version that is not the same for every record."""
    fields: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))

    def put(name: str, value: Any, rec: Record) -> None:
        fields[name][json.dumps(value, sort_keys=True, default=str)].append(rec.label)

    all_tasks = set()
    for r in records:
        for k, v in (r.meta.get("settings") or {}).items():
            put(f"setting {k}", v, r)
        cfg = r.results.get("config") or {}
        put("lm-eval limit", cfg.get("limit"), r)
        put("lm-eval random_seed", cfg.get("random_seed"), r)
        put("lm-eval backend", cfg.get("model"), r)
        put("lm-eval version", r.results.get("lm_eval_version"), r)
        all_tasks |= set(r.results.get("versions") or {})
    for task in sorted(all_tasks):
        for r in records:
            v = (r.results.get("versions") or {}).get(task)
            put(f"task {task} version", None if v is None else version_str(v), r)
    lines = []
    for name, by_value in fields.items():
        if len(by_value) > 1:
            parts = []
            for value, labels in by_value.items():
                shown = ", ".join(labels[:3]) + (f", ... ({len(labels)} in all)" if len(labels) > 3
                                                 else "")
                if value == "null" and name.startswith("task"):
                    value = "absent"
                parts.append(f"{value} ({shown})")
            lines.append(f"{name} differs: " + " vs ".join(parts))
    for r in records:
        rec_v = {k: version_str(v) for k, v in (r.meta.get("versions") or {}).items()}
        res_v = {k: version_str(v) for k, v in (r.results.get("versions") or {}).items()}
        if rec_v != res_v:
            lines.append(f"{r.label}: task versions in {EVAL_RECORD} differ from its results file")
    return lines


def load_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    notes: list[str] = []
    mixed: list[str] = []
    records = load_records(run_dir, notes, mixed)
    order = {k: i for i, k in enumerate(("orig", "general", "random", "specific"))}
    records.sort(key=lambda r: (r.model, order.get(r.kind, 9), r.seed if r.seed is not None else -1,
                                r.country or "", r.checkpoint))
    mixed += _differences(records)

    per_doc: dict[tuple[str, str], dict[str, pd.DataFrame]] = defaultdict(dict)
    leaf_rows = []
    for r in records:
        leaves = r.leaf_benches()
        by_bench: dict[str, list[str]] = defaultdict(list)
        for leaf, bench in leaves.items():
            by_bench[bench].append(leaf)
        samples = r.meta.get("samples_files") or {}
        for bench, leaf_list in by_bench.items():
            if bench.startswith("culnig_ppl_"):
                continue  # perplexity tasks: `culnig report-lape` (culnig/lape_report.py)
            metric = metric_of(bench)
            cols, country = {}, None
            for leaf in sorted(leaf_list):
                if leaf not in samples:
                    mixed.append(f"{r.label}: no logged samples for {leaf}")
                    continue
                df = _read_samples(r.dir / samples[leaf], metric)
                if df.index.has_duplicates:
                    raise CulnigError(f"{r.dir / samples[leaf]}: a document appears twice")
                cols[leaf] = df["value"]
                country = df["country"] if country is None else country
                agg = (r.results.get("results") or {}).get(leaf, {}).get(f"{metric},none")
                mean = float(df["value"].mean()) if len(df) else float("nan")
                leaf_rows.append({"model": r.model, "checkpoint": r.checkpoint, "bench": bench,
                                  "task": leaf, "metric": metric, "n_docs": len(df),
                                  "samples_mean": mean, "lm_eval_value": agg})
                if agg is not None and not math.isclose(mean, float(agg), rel_tol=1e-9, abs_tol=1e-9):
                    mixed.append(f"{r.label}: {leaf} {metric} from samples ({mean:.6f}) differs from "
                                 f"lm-eval's results ({float(agg):.6f})")
            if not cols:
                continue
            table = pd.DataFrame(cols)
            if table.isna().any().any():
                mixed.append(f"{r.label}: the prompt variants of {bench} cover different documents")
                table = table.dropna()
            per_doc[(r.model, bench)][r.checkpoint] = pd.DataFrame(
                {"value": table.mean(axis=1), "country": country.reindex(table.index)})

    values: dict[tuple[str, str], pd.DataFrame] = {}
    countries: dict[tuple[str, str], pd.Series] = {}
    for key, by_cp in per_doc.items():
        common = None
        for df in by_cp.values():
            common = df.index if common is None else common.intersection(df.index)
        for cp, df in by_cp.items():
            if len(df.index) != len(common):
                mixed.append(f"{key[0]}/{cp}: {key[1]} was evaluated on other documents than the "
                             f"model's other checkpoints ({len(df.index)} vs {len(common)} shared)")
        common = common.sort_values()
        values[key] = pd.DataFrame({cp: df["value"].reindex(common) for cp, df in by_cp.items()})
        first = next(iter(by_cp.values()))
        countries[key] = first["country"].reindex(common)
    benches = sorted({b for _, b in values}, key=_bench_sort_key)
    return RunData(run_dir=run_dir, records=records, benches=benches, values=values,
                   countries=countries, leaf_scores=pd.DataFrame(leaf_rows), mixed=mixed, notes=notes)


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
            _pct(r["orig"]), _pct(r["cult"]) + mark,
            _pct(r["rand_mean"]) + ("" if not r["n_seeds"] or r["n_seeds"] < 2
                                    else f" ± {_pct(r['rand_std'])}")]
    if len(sub):
        r0 = sub.iloc[0]
        out["#neurons"] = ["0", _int(r0["neurons_cult"]), _int(r0["neurons_rand"])]
    return pd.DataFrame(out)


def leaderboard(run: RunData) -> pd.DataFrame:
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


def _by_country(run: RunData, model: str, bench: str) -> pd.DataFrame | None:
    """Mean score per evaluation culture (rows) for every checkpoint (columns)."""
    v = run.values.get((model, bench))
    if v is None:
        return None
    c = run.countries[(model, bench)]
    if c.isna().all():
        return None
    return v.groupby(c.fillna("?")).mean()


def figure4_data(run: RunData) -> pd.DataFrame:
    rows = []
    for model in run.models():
        specific = run.of_model(model, "specific")
        for bench in FIG4_BENCHES:
            per = _by_country(run, model, bench)
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
    from culnig_tasks.countries import BLEND_COUNTRIES

    rows = []
    for model in run.models():
        per = _by_country(run, model, RANK_BENCH)
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
    avg = avg.reindex(index=_culture_order(avg.index))
    avg["own"] = [avg.loc[c, c] if c in avg.columns else float("nan") for c in avg.index]
    return avg, long


def _culture_order(names) -> list[str]:
    names = list(names)
    return ([c for c in PAPER_COUNTRIES if c in names]
            + sorted(c for c in names if c not in PAPER_COUNTRIES))


def saq_table(run: RunData) -> pd.DataFrame:
    rows = []
    for model in run.models():
        per = _by_country(run, model, SAQ_BENCH)
        if per is None or "orig" not in per:
            continue
        general = [r.checkpoint for r in run.of_model(model, "general") if r.checkpoint in per]
        rs = [r.checkpoint for r in run.of_model(model, "random") if r.checkpoint in per]
        v = run.values[(model, SAQ_BENCH)]
        c = run.countries[(model, SAQ_BENCH)].fillna("?")
        counts = c.value_counts()
        for culture in _culture_order(per.index):
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
    from culnig.registry import MODULES

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


def _answer_labels(obj: dict) -> tuple[str, str, list[str] | None]:
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


OTHER_LABEL = "other"


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
                            pred, gold, labels = _answer_labels(json.loads(line))
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
                     **{lab: _pct(first["gold"].get(lab, 0.0)) for lab in labels}})
        for cp, c in sub.groupby("checkpoint", sort=False):
            c = c.set_index("label")
            rows.append({"model": model, "benchmark": bench_title(bench), "checkpoint": cp,
                         **{lab: _pct(c["predicted"].get(lab, 0.0)) for lab in labels}})
    return pd.DataFrame(rows).fillna("")


# --- figures ----------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def figure4_png(fig4: pd.DataFrame, model: str) -> bytes | None:
    sub = fig4[fig4["model"] == model]
    benches = [b for b in FIG4_BENCHES if b in set(sub["bench"])]
    if not benches:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(benches), figsize=(5.2 * len(benches), 4.6), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        b = sub[sub["bench"] == bench]
        m = b.pivot_table(index="neuron_culture", columns="eval_culture", values="reduction")
        rows = _culture_order(m.index)
        shared = [c for c in rows if c in m.columns]
        cols = shared if shared else _culture_order(m.columns)
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
    return _png(fig)


class _RecordedSet:
    """What :func:`attribution.select_cli.plot_layer_distribution` reads from a set, rebuilt from
    the per-layer counts recorded in ``culnig_eval.json`` (the set file may be gone)."""

    def __init__(self, info: dict, n_layers: int):
        self.model = {"n_layers": n_layers}
        self._per_layer = info.get("per_layer") or {}
        self._counts = info.get("counts") or {}

    def per_layer_counts(self, n_layers: int) -> dict[str, list[int]]:
        from culnig.registry import MODULES

        return {m: list(self._per_layer.get(m, [0] * n_layers)) for m in MODULES}

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


def layers_png(run: RunData, model: str) -> bytes | None:
    from attribution.select_cli import plot_layer_distribution

    sets = {}
    for r in run.of_model(model):
        info = r.meta.get("set")
        if not info or (r.kind == "random" and any(k.startswith("random") for k in sets)):
            continue  # one random set is enough to show
        per_layer = info.get("per_layer") or {}
        n_layers = len(next(iter(per_layer.values()), []))
        if n_layers:
            sets[r.checkpoint] = _RecordedSet(info, n_layers)
    if not sets:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_layer_distribution(sets, Path(tmp) / "layers.png")
        return path.read_bytes()


# --- formatting -------------------------------------------------------------------------------
def _pct(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "—" if math.isnan(x) else f"{100 * x:.1f}"


def _int(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "—" if math.isnan(x) else f"{x:.0f}"


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "—" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def md_table(df: pd.DataFrame, digits: int = 3, index: bool = False) -> str:
    if df.empty:
        return "_(nothing to show)_\n"
    if index:
        df = df.reset_index()
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, digits).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame, digits: int = 3, sortable: bool = False, index: bool = False,
               table_id: str | None = None) -> str:
    if df.empty:
        return "<p><em>(nothing to show)</em></p>"
    if index:
        df = df.reset_index()
    attrs = (f' id="{html.escape(table_id)}"' if table_id else "") + (' class="sortable"' if sortable else "")
    out = [f"<table{attrs}><thead><tr>"]
    out += [f"<th>{html.escape(str(c))}</th>" for c in df.columns]
    out.append("</tr></thead><tbody>")
    for row in df.itertuples(index=False):
        out.append("<tr>")
        for v in row:
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            data = f' data-v="{float(v)!r}"' if num and not math.isnan(float(v)) else ""
            out.append(f"<td{data}>{html.escape(_fmt(v, digits))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


SORT_JS = """
function cellKey(td) {
  var v = td.getAttribute("data-v");
  return v === null ? td.textContent.trim() : v;
}
function compareKeys(a, b, asc) {
  var x = parseFloat(a), y = parseFloat(b);
  var nx = a !== "" && isFinite(a) && !isNaN(x), ny = b !== "" && isFinite(b) && !isNaN(y);
  var r;
  if (nx && ny) { r = x - y; }
  else if (nx !== ny) { return nx ? -1 : 1; }  // numbers before text and empty cells
  else { r = a < b ? -1 : (a > b ? 1 : 0); }
  return asc ? r : -r;
}
function makeSortable(table) {
  var heads = table.querySelectorAll("th");
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute("data-dir") !== "asc";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", asc ? "asc" : "desc");
      rows.sort(function (a, b) { return compareKeys(cellKey(a.cells[col]), cellKey(b.cells[col]), asc); });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
}
Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), makeSortable);
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; }
table.sortable th { cursor: pointer; }
table.sortable th[data-dir="asc"]::after { content: " \\25B2"; }
table.sortable th[data-dir="desc"]::after { content: " \\25BC"; }
td:first-child, th:first-child { text-align: left; }
.warn { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; }
img { max-width: 100%; }
"""


# --- writing ----------------------------------------------------------------------------------
def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


@dataclass
class Report:
    out: Path
    files: list[Path]
    mixed: list[str]
    notes: list[str]


def make_report(run_dir: str | Path, out: str | Path | None = None, *, allow_mixed: bool = False,
                resamples: int = stats.RESAMPLES, seed: int = 0) -> Report:
    run = load_run(run_dir)
    if run.mixed and not allow_mixed:
        shown = "; ".join(run.mixed[:3]) + (f"; ... ({len(run.mixed)} in all)" if len(run.mixed) > 3 else "")
        raise CulnigError(f"{run.run_dir} mixes results that cannot be compared: {shown}. Re-run the "
                          "sweep in a fresh run_dir, or pass --allow-mixed to write the report with "
                          "these differences listed at the top")
    out = Path(out) if out is not None else run.run_dir / "report"
    files: list[Path] = []

    def save(name: str, data: bytes | str) -> str:
        _write(out / name, data)
        files.append(out / name)
        return name

    t2 = table2(run, resamples=resamples, seed=seed)
    lb = leaderboard(run)
    fig4 = figure4_data(run)
    t15, t15_long = table15(run)
    saq = saq_table(run)
    counts = counts_table(run)
    labels = label_distribution(run)
    save("labels.csv", labels.to_csv(index=False))
    save("table2.csv", t2.to_csv(index=False))
    save("leaderboard.csv", lb.to_csv(index=False))
    save("figure4.csv", fig4.to_csv(index=False))
    save("table15.csv", t15.to_csv())
    save("table15_per_model.csv", t15_long.to_csv(index=False))
    save("saq.csv", saq.to_csv(index=False))
    save("counts.csv", counts.to_csv(index=False))
    save("scores_per_task.csv", run.leaf_scores.to_csv(index=False))

    images: dict[str, list[tuple[str, str, bytes]]] = defaultdict(list)  # section -> (file, caption, png)
    for model in run.models():
        png = figure4_png(fig4, model) if not fig4.empty else None
        if png:
            images["fig4"].append((save(f"figure4_{model}.png", png), f"Figure 4, {model}", png))
        png = layers_png(run, model)
        if png:
            images["layers"].append((save(f"layers_{model}.png", png), f"Neurons per layer, {model}", png))

    lb_show = lb.copy()
    for b in run.benches + ["mean"]:
        lb_show[b] = lb_show[b] * 100
    lb_show = lb_show.rename(columns={b: bench_title(b) for b in run.benches})
    pv = t2[["model", "bench", "protocol", "n_docs", "drop_cult", "drop_rand", "p_mean", "p_single",
             "significant"]].copy() if not t2.empty else pd.DataFrame()
    if not pv.empty:
        pv["drop_cult"] *= 100
        pv["drop_rand"] *= 100
    saq_show = saq.copy()
    for c in ("orig", "cult", "rand_mean", "rand_std"):
        if c in saq_show:
            saq_show[c] = saq_show[c] * 100
    settings = _settings_summary(run)

    sections: list[tuple[str, str, str]] = []  # (title, markdown, html)
    if run.mixed or run.notes:
        items = [("Mixed results", m) for m in run.mixed] + [("Note", n) for n in run.notes]
        sections.append(("Warnings",
                         "\n".join(f"- **{k}:** {v}" for k, v in items) + "\n",
                         '<div class="warn"><ul>' + "".join(
                             f"<li><b>{html.escape(k)}:</b> {html.escape(v)}</li>" for k, v in items)
                         + "</ul></div>"))
    sections.append(("Settings", md_table(settings), html_table(settings)))
    t2_md, t2_html = [], []
    for model in run.models():
        wide = table2_wide(t2, model) if not t2.empty else pd.DataFrame()
        t2_md.append(f"**{model}**\n\n" + md_table(wide))
        t2_html.append(f"<h3>{html.escape(model)}</h3>" + html_table(wide))
    legend = ("Scores x100; benchmark = mean over its prompt variants. rand = mean ± std (population) "
              f"over random seeds. * = culture-mask reduction significant: both bootstrap p-values "
              f"< {stats.ALPHA} ({resamples} resamples over documents, seed {seed}; p = P(random "
              "reduction >= culture reduction), against the mean of the seeds and against one "
              "uniformly drawn seed).")
    sections.append(("Table 2", legend + "\n\n" + "\n".join(t2_md),
                     f"<p>{html.escape(legend)}</p>" + "".join(t2_html)))
    sections.append(("Bootstrap p-values", "Drops in points (original - masked).\n\n" + md_table(pv),
                     "<p>Drops in points (original - masked).</p>" + html_table(pv)))
    sections.append(("Leaderboard", "One row per checkpoint (scores x100).\n\n"
                     + md_table(lb_show, 1),
                     "<p>One row per checkpoint (scores x100). Click a column header to sort.</p>"
                     + html_table(lb_show, 1, sortable=True, table_id="leaderboard")))
    fig_md = _md_images(images["fig4"]) or ("_(no culture-specific masks on BLEnD MCQ, "
                                            "CulturalBench or NormAd)_\n")
    fig_html = _html_images(images["fig4"]) or "<p><em>(no culture-specific masks)</em></p>"
    fig_legend = ("Score reduction (masked - original, points) per neuron culture (row: the "
                  "culture-specific mask) and evaluation culture (column). Every value: figure4.csv.")
    sections.append(("Figure 4", fig_legend + "\n\n" + fig_md,
                     f"<p>{html.escape(fig_legend)}</p>" + fig_html))
    t15_legend = ("Rank of each evaluation culture's drop (original - masked, "
                  f"{bench_title(RANK_BENCH)}) among the BLEnD cultures, 1 = largest drop, per neuron culture, averaged over "
                  "models; 'own' = the neuron culture's own rank.")
    sections.append(("Table 15", t15_legend + "\n\n" + md_table(t15, 2, index=True),
                     f"<p>{html.escape(t15_legend)}</p>" + html_table(t15, 2, index=True)))
    lab_legend = ("Share of answers per option label (%, all prompt variants pooled): the "
                  "'gold' row is the answer key, the other rows what each checkpoint predicted "
                  "('other': a paper-protocol first token that is no option label). A row far "
                  "from 'gold' shows position or label bias. Long form: labels.csv.")
    lab_show = label_table(labels)
    sections.append(("Answer labels", lab_legend + "\n\n" + md_table(lab_show),
                     f"<p>{html.escape(lab_legend)}</p>" + html_table(lab_show)))
    sections.append(("BLEnD SAQ per culture", "Accuracy x100.\n\n" + md_table(saq_show, 1),
                     "<p>Accuracy x100.</p>" + html_table(saq_show, 1)))
    lay_md, lay_html = _md_images(images["layers"]), _html_images(images["layers"])
    sections.append(("Neuron counts and layers", md_table(counts) + "\n" + lay_md,
                     html_table(counts) + lay_html))

    md, page = render_pages(f"culnig report: {run.run_dir.name}", sections)
    save("report.md", md)
    save("report.html", page)
    return Report(out=out, files=files, mixed=run.mixed, notes=run.notes)


def render_pages(title: str, sections: list[tuple[str, str, str]], intro: str = "") -> tuple[str, str]:
    """(Markdown, self-contained HTML) of a titled page from (heading, markdown, html) sections."""
    md = f"# {title}\n\n" + (f"{intro}\n\n" if intro else "") + "\n".join(
        f"## {t}\n\n{m}" for t, m, _ in sections)
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>" + (f"<p>{html.escape(intro)}</p>" if intro else "")
            + "".join(f"<h2>{html.escape(t)}</h2>{h}" for t, _, h in sections)
            + f"<script>{SORT_JS}</script></body></html>\n")
    return md, page


def _md_images(images: list[tuple[str, str, bytes]]) -> str:
    return "".join(f"![{cap}]({name})\n\n" for name, cap, _ in images)


def _html_images(images: list[tuple[str, str, bytes]]) -> str:
    return "".join(f'<figure><img alt="{html.escape(cap)}" src="data:image/png;base64,'
                   f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(cap)}</figcaption>'
                   "</figure>" for _, cap, png in images)


def _settings_summary(run: RunData) -> pd.DataFrame:
    rows: dict[str, set] = defaultdict(set)
    for r in run.records:
        for k, v in (r.meta.get("settings") or {}).items():
            rows[k].add(json.dumps(v, default=str))
        rows["lm-eval version"].add(json.dumps(r.results.get("lm_eval_version")))
        for t, v in (r.results.get("versions") or {}).items():
            rows[f"version {t}"].add(version_str(v))
    rows["checkpoints"] = {str(len(run.records))}
    rows["models"] = {", ".join(run.models())}
    return pd.DataFrame({"setting": list(rows), "value": [" | ".join(sorted(v)) for v in rows.values()]})
