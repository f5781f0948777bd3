"""Figure 5 (paper Sec. 4.5): score vs fine-tuning step, top-culture vs bottom-culture blocks.

``culnig report PATH`` draws it when PATH is a ``culnig finetune`` run folder (it holds
``finetune.json``) or a folder whose sub-folders are such runs. Each run's per-step result
folders are read like a sweep's (:func:`culnig.reports.runs.load_run`); outputs: ``figure5.csv``,
``figure5_<model>_<task>.png``, ``report.md`` and a self-contained ``report.html``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from culnig.errors import CulnigError
from culnig.reports import figures
from culnig.reports.render import (Image, OutputDir, Section, html_images, html_table, md_images,
                                   md_table, notice_section, render_page)
from culnig.reports.runs import bench_sort_key, bench_title, load_run

MANIFEST = "finetune.json"
COLUMNS = ["run", "model", "task", "which", "budget", "trainable_fraction", "step", "bench",
           "score", "n_docs"]
STYLE = {"top": dict(color="tab:red", marker="o", linestyle="-"),
         "bottom": dict(color="tab:blue", marker="s", linestyle="--")}


def find_runs(path: str | Path) -> list[Path]:
    """``path`` itself when it is a finetune run, else its sub-folders that are."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def is_finetune_dir(path: str | Path) -> bool:
    return bool(find_runs(path))


def run_scores(run_dir: Path, mixed: list[str], notes: list[str]) -> pd.DataFrame:
    """One row per (step, benchmark) of one finetune run."""
    manifest = json.loads((run_dir / MANIFEST).read_text())
    if not (run_dir / "results").is_dir():
        notes.append(f"{run_dir}: no evaluated steps yet (run `culnig finetune ... --resume` "
                     "without --no-eval)")
        return pd.DataFrame(columns=COLUMNS)
    try:
        run = load_run(run_dir)
    except CulnigError as exc:
        notes.append(f"{run_dir}: {exc}")
        return pd.DataFrame(columns=COLUMNS)
    mixed += [f"{run_dir.name}: {m}" for m in run.mixed]
    notes += [f"{run_dir.name}: {n}" for n in run.notes]
    rows = []
    for r in run.records:
        ft = r.meta.get("finetune") or {}
        if "step" not in ft:
            notes.append(f"{r.dir}: not a finetune step result (ignored)")
            continue
        for bench in run.benches:
            v = run.values.get((r.model, bench))
            if v is None or r.checkpoint not in v:
                continue
            rows.append({"run": run_dir.name, "model": r.model, "task": manifest["task"],
                         "which": manifest["which"], "budget": manifest["budget"],
                         "trainable_fraction": manifest["params"]["trainable_fraction"],
                         "step": int(ft["step"]), "bench": bench,
                         "score": float(v[r.checkpoint].mean()), "n_docs": int(len(v))})
    return pd.DataFrame(rows, columns=COLUMNS)


def figure5_data(runs: list[Path], mixed: list[str], notes: list[str]) -> pd.DataFrame:
    frames = [run_scores(r, mixed, notes) for r in runs]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["model", "task", "bench", "which", "run", "step"]).reset_index(drop=True)


def settings_differences(runs: list[Path]) -> list[str]:
    """Runs drawn in one figure must share their evaluation settings and training recipe."""
    by_group: dict[tuple, list[tuple[str, dict]]] = defaultdict(list)
    for r in runs:
        m = json.loads((r / MANIFEST).read_text())
        comparable = {"eval": (m.get("eval") or {}).get("settings"),
                      "training": dict((m.get("key") or {}).get("training", {})),
                      "budget": m.get("budget")}
        by_group[(m["model"]["name"], m["task"])].append((r.name, comparable))
    out = []
    for (model, task), items in by_group.items():
        ref_name, ref = items[0]
        for name, other in items[1:]:
            for k in sorted(set(ref) | set(other)):
                if ref.get(k) != other.get(k):
                    out.append(f"{model}/{task}: runs {ref_name} and {name} differ in {k} "
                               "settings, so their curves are not comparable")
    return out


def figure5_png(df: pd.DataFrame, model: str, task: str) -> bytes | None:
    """A panel per benchmark (the fine-tuned task first), one line per module choice."""
    sub = df[(df["model"] == model) & (df["task"] == task)]
    if sub.empty:
        return None
    target = task
    benches = sorted(set(sub["bench"]), key=lambda b: (b != target, bench_sort_key(b)))
    fig, axes = figures.plt().subplots(1, len(benches), figsize=(4.2 * len(benches), 3.4),
                                       squeeze=False)
    for ax, bench in zip(axes[0], benches):
        b = sub[sub["bench"] == bench]
        groups = sorted(b.groupby(["which", "run"]), key=lambda g: (g[0][0] != "top", g[0]))
        for (which, run), line in groups:
            line = line.sort_values("step")
            frac = float(line["trainable_fraction"].iloc[0])
            label = f"{which}-culture blocks ({frac:.1%} of params)"
            if b["run"].nunique() > b["which"].nunique():
                label += f" [{run}]"
            ax.plot(line["step"], line["score"] * 100, label=label,
                    **STYLE.get(which, dict(marker="^")))
        ax.set_title(bench_title(bench) + (" (fine-tuned task)" if bench == target else ""),
                     fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("score x100")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Figure 5 ({model}, fine-tuned on {task.upper()})")
    fig.tight_layout()
    return figures.png(fig)


def _run_row(run: Path) -> dict:
    m = json.loads((run / MANIFEST).read_text())
    t = m.get("training") or {}
    return {"run": run.name, "model": m["model"]["name"], "task": m["task"], "which": m["which"],
            "budget": m["budget"], "blocks": len(m.get("modules") or []),
            "trainable %": f"{100 * m['params']['trainable_fraction']:.3f}",
            "steps": t.get("steps"), "lr": f"{t.get('lr', float('nan')):g}",
            "batch_size": t.get("batch_size"),
            "saved_steps": ",".join(str(s) for s in m.get("completed_steps") or [])}


# --- sections ---------------------------------------------------------------------------------
def runs_section(runs: list[Path]) -> Section:
    table = pd.DataFrame([_run_row(r) for r in runs])
    return Section("Runs", md_table(table, 4), html_table(table, 4))


def figure5_section(df: pd.DataFrame, images: list[Image]) -> Section:
    table = df.pivot_table(index=["model", "task", "bench", "step"], columns="which",
                           values="score").reset_index()
    for c in ("top", "bottom"):
        if c in table:
            table[c] = table[c] * 100
    table.columns.name = None
    legend = ("Score x100 (benchmark = mean over its prompt variants) after each number of "
              "fine-tuning steps, training only the module blocks with the most (top) or the "
              "fewest (bottom) culture neurons under the same parameter budget; step 0 is the "
              "source model. Every value: figure5.csv.")
    return Section("Figure 5", f"{legend}\n\n" + md_images(images) + md_table(table, 1),
                   f"<p>{legend}</p>" + html_images(images) + html_table(table, 1))


# --- the report -------------------------------------------------------------------------------
@dataclass
class FinetuneReport:
    out: Path
    files: list[Path]
    mixed: list[str]
    notes: list[str]


def make_finetune_report(path: str | Path, out: str | Path | None = None, *,
                         allow_mixed: bool = False) -> FinetuneReport:
    """Figure 5 of the finetune run(s) at ``path``, written to ``out`` (default ``PATH/report``)."""
    path = Path(path)
    runs = find_runs(path)
    if not runs:
        raise CulnigError(f"{path}: no culnig finetune run ({MANIFEST}) here or in its sub-folders")
    mixed: list[str] = []
    notes: list[str] = []
    df = figure5_data(runs, mixed, notes)
    mixed += settings_differences(runs)
    if df.empty:
        raise CulnigError(f"{path}: no evaluated fine-tuning steps in {len(runs)} run(s)"
                          + (f" ({notes[0]})" if notes else ""))
    if mixed and not allow_mixed:
        shown = "; ".join(mixed[:3]) + (f"; ... ({len(mixed)} in all)" if len(mixed) > 3 else "")
        raise CulnigError(f"{path} mixes results that cannot be compared: {shown}. Pass "
                          "--allow-mixed to draw them anyway with the differences listed")
    dest = OutputDir(Path(out) if out is not None else path / "report")
    dest.save("figure5.csv", df.to_csv(index=False))
    images = []
    for (model, task), _ in df.groupby(["model", "task"], sort=True):
        png = figure5_png(df, model, task)
        if png:
            images.append(dest.image(f"figure5_{model}_{task}.png",
                                     f"Figure 5, {model}, fine-tuned on {task.upper()}", png))
    warn = [("Mixed results", m) for m in mixed] + [("Note", n) for n in notes]
    sections = ([notice_section("Warnings", warn)] if warn else []) + [
        runs_section(runs), figure5_section(df, images)]
    md, page = render_page(f"culnig report: {path.name}", sections,
                           heading=f"culnig report: {path.name} (fine-tuning)")
    dest.save("report.md", md)
    dest.save("report.html", page)
    return FinetuneReport(out=dest.path, files=dest.files, mixed=mixed, notes=notes)
