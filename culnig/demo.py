"""``culnig demo``: the whole pipeline on the embedded real model and the bundled real data.

Steps ``model -> data -> attribute -> select -> sweep -> report``, each through the libraries'
own functions; every step's output is kept under ``--out`` and reused, so a killed run resumes.
``--tiny`` runs the same steps on a tiny random-weight Llama (docs/demo.md).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from culnig.atomic import atomic_write_text, now_iso
from culnig.errors import CulnigError
from culnig.settings import DEFAULT_ISOLATION

# The packaged model that scores furthest above chance on BLEnD MCQ and CommonsenseQA with the
# paper's prompts (measured: docs/demo.md).
DEFAULT_MODEL = "smollm2"
# The first prompt variant of each benchmark: for the same compute, four times the documents of
# all four variants, so the intervals say something (the paper's 4-variant mean: culnig sweep).
CULTURE_TASKS = ("blendmcq_paper_v1", "countryrc_paper_v1", "blendsaq_paper_v1")
GENERAL_TASKS = ("commonsenseqa_paper_v1", "qnli_paper_v1", "mrpc_paper_v1")
STATE_FILE = "demo.json"
STATE_FORMAT = "culnig-demo/1"
STEPS = ("model", "data", "attribute", "select", "sweep", "report")


@dataclass(frozen=True)
class DemoSize:
    """How much of the real data each step uses."""

    items_per_country: int          # identification items per culture: BLEnD neur (ctrl the same
                                    # rows without the question) and CountryRC
    max_docs: int                   # evaluation documents per task and prompt variant
    blend_mcq_docs: int             # BLEnD MCQ documents (one prompt variant, 16 cultures)
    saq_countries: tuple[str, ...]  # BLEnD SAQ cultures evaluated
    saq_docs: int                   # BLEnD SAQ documents in all
    random_seeds: tuple[int, ...]   # count-matched random sets
    t_mlp: float = 1.0              # the paper's thresholds (culnig select general)
    t_attn: float = 0.2
    r: float = 1.0
    attribution_batch: int = 8


SIZES = {
    "full": DemoSize(items_per_country=6, max_docs=128, blend_mcq_docs=192,
                     saq_countries=("USA", "UK", "China", "Spain"), saq_docs=16,
                     random_seeds=(0, 1, 2)),
    "tiny": DemoSize(items_per_country=2, max_docs=4, blend_mcq_docs=8,
                     saq_countries=("USA", "Spain"), saq_docs=2, random_seeds=(0, 1, 2),
                     t_mlp=5.0, t_attn=2.0),
}


@dataclass
class DemoSettings:
    model: str
    out: Path
    size: str = "full"
    backend: str = "vllm"              # lm-eval backend of the sweep(s)
    loglik_backend: str | None = None  # another backend for the option log-likelihood protocol
    protocol: str = "both"
    dtype: str = "float32"
    seed: int = 0

    @property
    def sizes(self) -> DemoSize:
        return SIZES[self.size]

    def record(self, model_path: str) -> dict[str, Any]:
        """What decides the demo's numbers: a second run with other values needs another --out."""
        return {"model": self.model, "model_path": model_path, "size": self.size,
                "sizes": asdict(self.sizes), "backend": self.backend,
                "loglik_backend": self.loglik_backend or self.backend, "protocol": self.protocol,
                "dtype": self.dtype, "seed": self.seed,
                "culture_tasks": list(CULTURE_TASKS), "general_tasks": list(GENERAL_TASKS)}


@dataclass
class DemoState:
    path: Path
    settings: dict[str, Any] | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "DemoState":
        if not path.is_file():
            return cls(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CulnigError(f"{path}: unreadable demo state ({exc.msg}); move the folder away or "
                              "pass --force") from None
        if data.get("format") != STATE_FORMAT:
            raise CulnigError(f"{path}: not a culnig demo state file; use another --out")
        return cls(path, data.get("settings"), data.get("steps") or {})

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"format": STATE_FORMAT, "settings": self.settings,
                                                 "steps": self.steps}, indent=1) + "\n")


def _say(msg: str) -> None:
    print(f"[culnig demo] {msg}", file=sys.stderr, flush=True)


class Demo:
    def __init__(self, settings: DemoSettings):
        self.s = settings
        self.out = Path(settings.out)
        self.sz = settings.sizes
        self.state: DemoState | None = None
        self.model_path = ""

    # --- paths --------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    def score_path(self, name: str) -> Path:
        return self.out / "scores" / f"{name}.safetensors"

    @property
    def general_set(self) -> Path:
        return self.out / "sets" / "general.json"

    def run_dir(self, sweep: str) -> Path:
        return self.out / "run" / sweep

    @property
    def protocols(self) -> list[str]:
        return ["paper", "loglik"] if self.s.protocol == "both" else [self.s.protocol]

    @property
    def sweeps(self) -> dict[str, tuple[str, str]]:
        """Sweep name -> (protocol, backend). Both protocols on one backend are one sweep: one
        lm-eval run per checkpoint, where culnig-vllm answers the paper protocol's first token
        from the request that scores the options (docs/demo.md)."""
        loglik = self.s.loglik_backend or self.s.backend
        if self.s.protocol == "both" and loglik == self.s.backend:
            return {"both": ("both", self.s.backend)}
        return {p: (p, loglik if p == "loglik" else self.s.backend) for p in self.protocols}

    def runs(self) -> dict[str, Path]:
        """Protocol -> the run folder holding its results."""
        sweeps = self.sweeps
        return {p: self.run_dir("both" if "both" in sweeps else p) for p in self.protocols}

    @property
    def report_dir(self) -> Path:
        return self.out / "report"

    # --- driver ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = DemoState.load(self.out / STATE_FILE)
        actions: list[tuple[str, Callable[[], str]]] = [
            ("model", self.step_model), ("data", self.step_data), ("attribute", self.step_attribute),
            ("select", self.step_select), ("sweep", self.step_sweep), ("report", self.step_report)]
        timings = {}
        for name, fn in actions:
            t0 = time.perf_counter()
            _say(f"step {name} ...")
            detail = fn()
            secs = time.perf_counter() - t0
            timings[name] = secs
            first = (self.state.steps.get(name) or {}).get("first_seconds", round(secs, 1))
            self.state.steps[name] = {"seconds": round(secs, 1), "first_seconds": first,
                                      "finished": now_iso(), "detail": detail}
            self.state.save()
            _say(f"step {name}: {detail} ({secs:.1f} s)")
        return timings

    def _check_settings(self) -> None:
        want = json.loads(json.dumps(self.s.record(self.model_path)))
        have = self.state.settings
        if have is not None and have != want:
            diff = next(k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k))
            raise CulnigError(f"{self.out} holds a demo made with other settings ({diff}: "
                              f"{have.get(diff)!r}, now {want.get(diff)!r}); pass another --out, "
                              "or --force to move the old one aside")
        self.state.settings = want
        self.state.save()

    # --- 1. model -------------------------------------------------------------------------------
    def step_model(self) -> str:
        from culnig import models

        ref = self.s.model
        if ref == "tiny":
            from culnig.testing.tiny_models import save_tiny_checkpoint

            path = self.out / "model"
            if not (path / "config.json").is_file():
                tmp = self.out / ".model.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                save_tiny_checkpoint("llama", tmp, seed=self.s.seed)
                tmp.rename(path)
            self.model_path = str(path.resolve())
            what = "tiny random-weight Llama (culnig.testing.tiny_models)"
        elif ref in models.PACKAGED and not Path(ref).exists():
            self.model_path = str(models.prepare(ref))
            what = models.PACKAGED[ref].title
        else:
            from culnig.loading import read_config

            read_config(ref)
            self.model_path = str(Path(ref).resolve()) if Path(ref).exists() else ref
            what = ref
        self._check_settings()
        return f"{what} at {self.model_path}"

    # --- 2. data --------------------------------------------------------------------------------
    def step_data(self) -> str:
        from attribution.identification import build
        from culnig.paths import shared_data_dir

        meta_path = self.data_dir / "items_meta.json"
        if not meta_path.is_file():
            tmp = self.out / ".data.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp, max_per_country=self.sz.items_per_country, seed=self.s.seed)
            tmp.rename(self.data_dir)
        meta = json.loads(meta_path.read_text())
        counts = {k: sum(1 for _ in open(self.data_dir / f"{k}.jsonl")) for k in
                  ("blend_neur", "blend_ctrl", "crc_neur")}
        base = shared_data_dir()
        where = base / "blend" if base is not None and (base / "blend").is_dir() else "the hub"
        return (f"BLEnD {meta.get('blend_source')} (data from {where}); items: "
                + ", ".join(f"{k} {v}" for k, v in counts.items()))

    # --- 3. attribution -------------------------------------------------------------------------
    def step_attribute(self) -> str:
        from attribution.engine import AttributionOptions
        from attribution.run import run_attribution

        (self.out / "scores").mkdir(exist_ok=True)
        todo = [n for n in ("blend_neur", "blend_ctrl", "crc_neur") if not self.score_path(n).is_file()]
        if not todo:
            return "score files present (reused)"
        from culnig.loading import load_model

        model, tok, _ = load_model(self.model_path, "fp32")
        options = AttributionOptions(batch_size=self.sz.attribution_batch)
        for name in todo:
            out = self.score_path(name)
            resume = any(out.parent.glob(out.name + ".partial*"))
            _say(f"attribution on {name}{' (resuming)' if resume else ''}")
            run_attribution(self.model_path, self.data_dir / f"{name}.jsonl", out, options,
                            resume=resume, checkpoint_every=32, model=model, tokenizer=tok)
        del model
        return f"scored {', '.join(todo)}"

    # --- 4. selection ---------------------------------------------------------------------------
    def step_select(self) -> str:
        from culnig.neuron_sets import NeuronSet

        if not self.general_set.is_file():
            from attribution.selection import select_to_file

            self.general_set.parent.mkdir(exist_ok=True)
            select_to_file("general", self.general_set, neur=self.score_path("blend_neur"),
                           ctrl=self.score_path("blend_ctrl"), crc=self.score_path("crc_neur"),
                           t_mlp=self.sz.t_mlp, t_attn=self.sz.t_attn, r=self.sz.r)
        counts = NeuronSet.load(self.general_set).counts()
        return (f"culture-general set: {counts['total']} neurons ("
                + ", ".join(f"{m} {n}" for m, n in counts.items() if m != "total" and n) + ")")

    # --- 5. bake + evaluate -------------------------------------------------------------------------
    def sweep_config(self, sweep: str) -> dict[str, Any]:
        """The config of one of :attr:`sweeps`; sweeps bake into one checkpoint folder (a second
        sweep reuses the first's masked checkpoints). Isolation ``engine``: one engine per model,
        each masked checkpoint's rewritten tensors swapped in."""
        protocol, backend = self.sweeps[sweep]
        seeds = self.sz.random_seeds
        tasks = [*CULTURE_TASKS, *GENERAL_TASKS]
        if protocol == "loglik":
            tasks = [t for t in tasks if not t.startswith("blendsaq")]  # generated text: paper only
        return {
            "run_dir": str(self.run_dir(sweep)),
            "checkpoint_dir": str(self.out / "checkpoints"),
            "tasks": tasks,
            "protocol": protocol,
            "backend": backend,
            "seed": self.s.seed,
            "dtype": self.s.dtype,
            "chat_template": "auto",
            "isolation": DEFAULT_ISOLATION,
            "max_model_len": 2048,
            "task_metadata": {"culnig_max_docs": self.sz.max_docs,
                              "blend_mcq_max_docs": self.sz.blend_mcq_docs,
                              "culnig_sample_seed": self.s.seed,
                              "blend_saq_countries": list(self.sz.saq_countries),
                              "blend_saq_max_docs": self.sz.saq_docs},
            "models": [{"name": "demo", "model": self.model_path, "original": True,
                        "general": str(self.general_set),
                        "random": {"like": "general", "seeds": ",".join(map(str, seeds))}}],
        }

    def step_sweep(self) -> str:
        import yaml

        from culnig.sweep import load_config, run_sweep

        done = []
        for sweep in self.sweeps:
            path = self.out / f"sweep-{sweep}.yaml"
            cfg = self.sweep_config(sweep)
            text = ("# written by `culnig demo`; `culnig sweep` runs it again\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
            if not path.is_file() or path.read_text() != text:
                atomic_write_text(path, text)
            _say(f"sweep, {cfg['protocol']} protocol, {cfg['backend']} backend")
            summary = run_sweep(load_config(path))
            done.append(f"{cfg['protocol']} ({cfg['backend']}): {summary.total} checkpoints, "
                        f"{summary.skipped} reused, {summary.total - summary.skipped} evaluated")
        return "; ".join(done)

    # --- 6. report --------------------------------------------------------------------------------
    def step_report(self) -> str:
        from culnig.reports.demo import write_demo_report
        from culnig.reports.paper import make_report

        runs = self.runs()
        run_dirs = sorted(set(runs.values()))
        for run_dir in run_dirs:
            make_report(run_dir, self.report_dir / run_dir.name, allow_mixed=False)
        timings = {k: (v.get("first_seconds"), v.get("seconds"))
                   for k, v in (self.state.steps or {}).items()}
        page = write_demo_report(runs, self.report_dir, settings=self.state.settings,
                                 timings=timings, culture=CULTURE_TASKS, general=GENERAL_TASKS)
        return (f"{page} (full sweep reports: " + ", ".join(
            str(self.report_dir / d.name / "report.html") for d in run_dirs) + ")")


def move_aside(out: Path) -> Path | None:
    """``--force``: the old demo folder is renamed, never deleted."""
    if not out.exists():
        return None
    target = out.with_name(f"{out.name}.old-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    out.rename(target)
    return target


def run_demo(settings: DemoSettings, *, force: bool = False) -> tuple[Demo, dict[str, float]]:
    if settings.size not in SIZES:
        raise CulnigError(f"unknown demo size {settings.size!r}")
    if force:
        old = move_aside(Path(settings.out))
        if old:
            _say(f"--force: the previous demo folder is now {old}")
    demo = Demo(settings)
    return demo, demo.run()
