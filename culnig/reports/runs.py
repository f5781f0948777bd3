"""Reading a sweep's run dir for the reports: records, per-document scores, benchmark names.

:func:`load_run` reads every ``results/<model>/<checkpoint>/`` folder through its record
(:mod:`culnig.results`), recomputes each benchmark's per-document score from lm-eval's logged
samples (the mean over its prompt variants), checks it against lm-eval's aggregate and lists
every setting or task version that differs between the results.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from culnig.errors import CulnigError
from culnig.hashing import sha256_file
from culnig.results import EVAL_RECORD, read_record
from culnig_tasks.countries import PAPER_COUNTRIES
from culnig_tasks.lmeval import version_str
from culnig_tasks.ppl import TASK_PREFIX as PPL_PREFIX  # perplexity: culnig.reports.lape

# --- benchmark names --------------------------------------------------------------------------
BENCH_ORDER = ("blendmcq", "blendsaq", "culturalbench", "normad", "worldvaluesbench", "countryrc",
               "commonsenseqa", "qnli", "mrpc")
BENCH_TITLES = {"blendmcq": "BLEnD MCQ", "blendsaq": "BLEnD SAQ", "culturalbench": "CulturalBench",
                "normad": "NormAd", "worldvaluesbench": "WVB", "countryrc": "CountryRC",
                "commonsenseqa": "CSQA", "qnli": "QNLI", "mrpc": "MRPC"}
METRIC = {"worldvaluesbench": "score_c"}  # everything else: acc
LL_SUFFIX = "_ll"  # benchmark key of the option log-likelihood protocol: qnli_ll (culnigll_qnli)
KIND_ORDER = ("orig", "general", "random", "specific")
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


def bench_sort_key(bench: str):
    base = base_bench(bench)
    return (BENCH_ORDER.index(base) if base in BENCH_ORDER else len(BENCH_ORDER), base,
            protocol_of(bench) != "paper")


def culture_order(names) -> list[str]:
    """The paper's country order first, then the other cultures alphabetically."""
    names = list(names)
    return ([c for c in PAPER_COUNTRIES if c in names]
            + sorted(c for c in names if c not in PAPER_COUNTRIES))


# --- records ----------------------------------------------------------------------------------
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
        groups = self.results.get("group_subtasks") or {}
        group_of = {leaf: group for group, leaves in groups.items() for leaf in leaves}
        out = {}
        for task in self.results.get("versions", {}):
            if task in groups:
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

    def by_country(self, model: str, bench: str) -> pd.DataFrame | None:
        """Mean score per evaluation culture (rows) for every checkpoint (columns)."""
        v = self.values.get((model, bench))
        if v is None:
            return None
        c = self.countries[(model, bench)]
        if c.isna().all():
            return None
        return v.groupby(c.fillna("?")).mean()


def load_records(run_dir: Path) -> tuple[list[Record], list[str], list[str]]:
    """(records in folder order, notes, mixed) of every complete result folder of ``run_dir``."""
    root = run_dir / "results"
    if not root.is_dir():
        raise CulnigError(f"{run_dir}: no results/ folder; run `culnig sweep CONFIG` first (or pass "
                          "the run_dir of a sweep)")
    records: list[Record] = []
    notes: list[str] = []
    mixed: list[str] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for d in sorted(p for p in model_dir.iterdir() if p.is_dir()):
            where = d.relative_to(run_dir)
            if d.name.startswith("."):
                notes.append(f"{where}: an interrupted evaluation's temporary folder "
                             "(ignored; the next sweep removes it)")
                continue
            meta = read_record(d)
            if meta is None or not isinstance(meta.get("results_file"), str):
                mixed.append(f"{where}: no readable {EVAL_RECORD}; this checkpoint is left out "
                             "(evaluate it again with `culnig sweep`)")
                continue
            res_path = d / meta["results_file"]
            if not res_path.is_file():
                mixed.append(f"{where}: its results file {meta['results_file']} is missing")
                continue
            if sha256_file(res_path) != meta.get("results_sha256"):
                mixed.append(f"{where}: {meta['results_file']} was changed after the "
                             f"evaluation (hash differs from {EVAL_RECORD})")
            records.append(Record(model=meta["model"], checkpoint=meta["checkpoint"],
                                  kind=meta["kind"], seed=meta.get("seed"),
                                  country=meta.get("country"), dir=d, meta=meta,
                                  results=_read_results(res_path)))
            extra = sorted(f.name for f in d.glob("results_*.json") if f.name != meta["results_file"])
            if extra:
                notes.append(f"{where}: other results files ignored: {', '.join(extra)}")
    if not records:
        raise CulnigError(f"{run_dir}: no complete results (results/<model>/<checkpoint>/"
                          f"{EVAL_RECORD}); run `culnig sweep` first")
    return records, notes, mixed


def _read_results(path: Path) -> dict:
    """lm-eval's results file; a truncated or malformed one is one clear error naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CulnigError(f"{path}: not a readable lm-eval results file ({exc}); evaluate that "
                          "checkpoint again") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise CulnigError(f"{path}: not an lm-eval results file (no 'results' mapping); evaluate "
                          "that checkpoint again")
    return data


def _read_samples(path: Path, metric: str) -> pd.DataFrame:
    ids, countries, vals = [], [], []
    try:
        fh = open(path)
    except OSError as exc:
        raise CulnigError(f"{path}: logged samples cannot be read ({exc.strerror}); evaluate that "
                          "checkpoint again") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise CulnigError(f"{path}:{n}: not a JSON sample (the file is truncated or "
                                  "damaged); evaluate that checkpoint again") from None
            if not isinstance(obj, dict) or "doc_id" not in obj:
                raise CulnigError(f"{path}:{n}: not an lm-eval sample (no doc_id)")
            if metric not in obj:
                raise CulnigError(f"{path}:{n}: sample has no per-sample metric {metric!r}")
            doc = obj.get("doc") if isinstance(obj.get("doc"), dict) else {}
            ids.append(obj["doc_id"])
            countries.append(doc.get("country"))
            vals.append(float(obj[metric]))
    return pd.DataFrame({"country": countries, "value": vals}, index=pd.Index(ids, name="doc_id"))


def differences(records: list[Record]) -> list[str]:
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


def _record_scores(r: Record, mixed: list[str], leaf_rows: list[dict]
                   ) -> dict[str, pd.DataFrame]:
    """bench -> per-document ``value`` (mean over the prompt variants) and ``country``."""
    by_bench: dict[str, list[str]] = defaultdict(list)
    for leaf, bench in r.leaf_benches().items():
        by_bench[bench].append(leaf)
    samples = r.meta.get("samples_files") or {}
    out = {}
    for bench, leaf_list in by_bench.items():
        if bench.startswith(PPL_PREFIX):
            continue
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
        out[bench] = pd.DataFrame({"value": table.mean(axis=1),
                                   "country": country.reindex(table.index)})
    return out


def load_run(run_dir: str | Path) -> RunData:
    """Every complete result of ``run_dir`` with its per-document scores (see the module doc)."""
    run_dir = Path(run_dir)
    records, notes, mixed = load_records(run_dir)
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    records.sort(key=lambda r: (r.model, order.get(r.kind, 9), r.seed if r.seed is not None else -1,
                                r.country or "", r.checkpoint))
    mixed += differences(records)

    per_doc: dict[tuple[str, str], dict[str, pd.DataFrame]] = defaultdict(dict)
    leaf_rows: list[dict] = []
    for r in records:
        for bench, df in _record_scores(r, mixed, leaf_rows).items():
            per_doc[(r.model, bench)][r.checkpoint] = df

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
        countries[key] = next(iter(by_cp.values()))["country"].reindex(common)
    benches = sorted({b for _, b in values}, key=bench_sort_key)
    return RunData(run_dir=run_dir, records=records, benches=benches, values=values,
                   countries=countries, leaf_scores=pd.DataFrame(leaf_rows), mixed=mixed, notes=notes)


def settings_summary(run: RunData) -> pd.DataFrame:
    """One row per setting, lm-eval version and task version with every value seen."""
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
