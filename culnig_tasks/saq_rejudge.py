"""Re-judge logged BLEnD SAQ responses with another judge set, without generating again.

Reads the lm-eval ``samples_blendsaq*.jsonl`` files under a result folder or a sweep run folder
(``results/<model>/<checkpoint>/``), judges every logged response with a judge set of
:mod:`culnig_tasks.saq_judge`, compares with the logged verdicts (or another set) and writes, in
a new folder beside the results, a per-language table (CSV and Markdown) and the changed samples.
"""

from __future__ import annotations

import json
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from culnig.atomic import atomic_dir, atomic_write_text
from culnig.errors import CulnigError
from culnig_tasks import saq_judge

if TYPE_CHECKING:
    import pandas as pd

SAMPLES_GLOB = "samples_blendsaq*.jsonl"
LOGGED = "logged"
WIDTH = 100
TABLE = "by_language"
CHANGED = "changed.csv"


@dataclass
class Rejudged:
    """What :func:`rejudge` wrote: the output folder, the per-language table, the changed rows."""

    out: Path
    table: pd.DataFrame
    changed: pd.DataFrame
    build_s: float
    judge_s: float


def find_samples(run_dir: Path) -> list[Path]:
    """SAQ samples files under ``run_dir`` (hidden and temporary folders skipped), sorted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CulnigError(f"{run_dir}: not a folder; give a result folder or a sweep run folder")
    files = sorted(p for p in run_dir.rglob(SAMPLES_GLOB)
                   if not any(part.startswith(".") for part in p.relative_to(run_dir).parts))
    if not files:
        raise CulnigError(f"{run_dir}: no {SAMPLES_GLOB} files; run `culnig eval --tasks "
                          "blendsaq_paper_v1` with logged samples (the default) first")
    return files


def _response(sample: dict) -> str:
    resp = sample.get("filtered_resps") or sample.get("resps") or [""]
    while isinstance(resp, list):
        resp = resp[0] if resp else ""
    return str(resp)


def read_samples(path: Path, source: str) -> list[dict]:
    """One row per logged SAQ document: what the judge needs and the logged verdict."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
                doc = s["doc"]
                answers = doc["answers"]
                rows.append({
                    "source": source, "doc_id": s.get("doc_id"), "ID": doc.get("ID", ""),
                    "country": doc["country"], "language": doc["language"],
                    "answers": list(answers) if not isinstance(answers, str) else [answers],
                    "response": _response(s), "logged_judge": doc.get("judge", ""),
                    "logged": bool(float(s["acc"])),
                })
            except (ValueError, KeyError, TypeError) as exc:
                raise CulnigError(f"{path}:{n}: not a BLEnD SAQ sample ({exc}); re-judge only "
                                  "samples that culnig's blendsaq task logged") from exc
    return rows


def _run_seconds(samples: Path) -> float | None:
    """lm-eval's ``total_evaluation_time_seconds`` of the run that logged ``samples``."""
    for res in samples.parent.glob("results_*.json"):
        date = res.stem.removeprefix("results_")
        if samples.stem.endswith("_" + date):
            try:
                return float(json.loads(res.read_text(encoding="utf-8"))
                             ["total_evaluation_time_seconds"])
            except (ValueError, KeyError, TypeError, OSError):
                return None
    return None


def _judge(rows: list[dict], judges: str) -> tuple[list[bool], list[str], dict[str, float], float]:
    """Verdicts, judge names, judging seconds per language, and the seconds spent loading."""
    first = {}
    for r in rows:
        first.setdefault(r["language"], r)
    # Load every analyser, and the dictionaries it reads on first use, before the timed loop.
    t0 = time.perf_counter()
    for lang, r in sorted(first.items()):
        saq_judge.is_correct(r["response"], r["answers"], lang, judges)
    build_s = time.perf_counter() - t0
    verdicts, names, seconds = [], [], dict.fromkeys(first, 0.0)
    for r in rows:
        t = time.perf_counter()
        verdicts.append(saq_judge.is_correct(r["response"], r["answers"], r["language"], judges))
        seconds[r["language"]] += time.perf_counter() - t
        names.append(saq_judge.judge_name(r["language"], judges))
    return verdicts, names, seconds, build_s


def _check_out(out: Path, files: list[Path]) -> None:
    o = out.resolve()
    for f in files:
        if o == f.resolve().parent or o in f.resolve().parents:
            raise CulnigError(f"{out}: holds the logged results ({f.name}); choose a new folder")


def default_out(run_dir: Path, judges: str, baseline: str = LOGGED) -> Path:
    suffix = "" if baseline == LOGGED else f"-vs-{baseline}"
    return Path(run_dir) / f"saq_rejudge-{judges}{suffix}"


def rejudge(run_dir: Path, judges: str = saq_judge.DEFAULT_JUDGES, baseline: str = LOGGED,
            out: Path | None = None, force: bool = False) -> Rejudged:
    """Judge every logged SAQ response under ``run_dir`` with ``judges``; compare with
    ``baseline`` (the logged verdicts, or another judge set); write the tables to ``out``."""
    run_dir = Path(run_dir)
    for name in (judges,) + (() if baseline == LOGGED else (baseline,)):
        if name not in saq_judge.JUDGE_SETS:
            raise CulnigError(f"SAQ judge set {name!r}: unknown; choose one of "
                              f"{', '.join(saq_judge.JUDGE_SETS)}")
    if baseline == judges:
        raise CulnigError(f"--baseline {baseline}: the same as --judges; compare two sets")
    files = find_samples(run_dir)
    out = Path(out) if out is not None else default_out(run_dir, judges, baseline)
    _check_out(out, files)
    import pandas as pd

    rows = [r for f in files for r in read_samples(f, str(f.relative_to(run_dir)))]
    frame = pd.DataFrame(rows)
    if baseline == LOGGED:
        frame["before"], frame["judge_before"] = frame["logged"], frame["logged_judge"]
    else:
        frame["before"], frame["judge_before"], _, _ = _judge(rows, baseline)
    after, names, seconds, build_s = _judge(rows, judges)
    frame["after"], frame["judge_after"] = after, names
    table = per_language(frame, seconds)
    changed = frame[frame["before"] != frame["after"]].copy()
    changed["answers"] = changed["answers"].map(" | ".join)
    changed = changed[["source", "country", "language", "ID", "doc_id", "judge_before",
                       "judge_after", "before", "after", "answers", "response"]]
    timing = {"build_s": build_s, "judge_s": sum(seconds.values()),
              "run_s": {f.relative_to(run_dir).as_posix(): _run_seconds(f) for f in files}}
    md = markdown(table, changed, judges, baseline, timing)
    with atomic_dir(out, force=force) as tmp:
        atomic_write_text(tmp / f"{TABLE}.csv", table.to_csv(index=False))
        atomic_write_text(tmp / f"{TABLE}.md", md)
        atomic_write_text(tmp / CHANGED, changed.to_csv(index=False))
    return Rejudged(out, table, changed, build_s, timing["judge_s"])


def per_language(frame: pd.DataFrame, seconds: dict[str, float]) -> pd.DataFrame:
    """One row per (samples file, language): judges, accuracies and verdicts that changed."""
    f = frame.assign(to_correct=~frame["before"] & frame["after"],
                     to_wrong=frame["before"] & ~frame["after"])
    g = f.groupby(["source", "language"], sort=True)
    table = g.agg(countries=("country", lambda c: ", ".join(sorted(set(c)))),
                  n=("after", "size"),
                  judge_before=("judge_before", lambda j: ", ".join(sorted(set(j)))),
                  judge_after=("judge_after", lambda j: ", ".join(sorted(set(j)))),
                  acc_before=("before", "mean"), acc_after=("after", "mean"),
                  to_correct=("to_correct", "sum"), to_wrong=("to_wrong", "sum")).reset_index()
    table["changed"] = table["to_correct"] + table["to_wrong"]
    per_lang_n = frame.groupby("language").size()
    table["judge_s_per_1k"] = [1000 * seconds.get(lang, 0.0) / per_lang_n[lang]
                               for lang in table["language"]]
    return table[["source", "language", "countries", "n", "judge_before", "judge_after",
                  "acc_before", "acc_after", "changed", "to_correct", "to_wrong",
                  "judge_s_per_1k"]]


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit(text: str, width: int = WIDTH) -> str:
    """``text`` on one line, cut with an ellipsis to at most ``width`` display columns."""
    text = " ".join(text.split())
    if _width(text) <= width:
        return text
    out, used = [], 1
    for c in text:
        w = _width(c)
        if used + w > width:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(_width(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(str(c) + " " * (w - _width(str(c)))
                                 for c, w in zip(cells, widths)) + " |"
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + \
        [line(r) for r in rows]


def markdown(table: pd.DataFrame, changed: pd.DataFrame, judges: str, baseline: str,
             timing: dict) -> str:
    """The per-language tables and two changed examples per language, lines <= 100 columns."""
    lines = [f"# BLEnD SAQ re-judged: {judges} vs {baseline}", ""]
    judge_s, n = timing["judge_s"], int(table["n"].sum())
    lines.append(fit(f"{n} responses judged in {judge_s:.2f} s "
                     f"({1000 * judge_s / max(n, 1):.2f} s per 1,000; analysers loaded in "
                     f"{timing['build_s']:.1f} s)."))
    for source, part in table.groupby("source", sort=True):
        run_s = timing["run_s"].get(Path(source).as_posix())
        lines += ["", fit(f"## {source}"), ""]
        if run_s:
            lines += [fit(f"lm-eval run time of these samples: {run_s:.0f} s"), ""]
        lines += _md_table(["lang", "countries", "judge before", "judge after"],
                           [[r.language, r.countries, r.judge_before, r.judge_after]
                            for r in part.itertuples()])
        lines.append("")
        lines += _md_table(["lang", "n", "acc before", "acc after", "changed", "to correct",
                            "to wrong", "judge s/1k"],
                           [[r.language, r.n, f"{r.acc_before:.3f}", f"{r.acc_after:.3f}",
                             r.changed, r.to_correct, r.to_wrong, f"{r.judge_s_per_1k:.2f}"]
                            for r in part.itertuples()])
        mine = changed[changed["source"] == source]
        if len(mine):
            lines += ["", "Changed verdicts, two per language (all in changed.csv):", ""]
            for _, group in mine.groupby("language", sort=True):
                for r in group.head(2).itertuples():
                    verdict = "wrong -> correct" if r.after else "correct -> wrong"
                    lines.append(fit(f"- {r.language} {r.ID} {verdict}; answers: {r.answers}"))
                    lines.append("  " + fit(f"response: {r.response}", WIDTH - 2))
    return "\n".join(lines) + "\n"
