"""`culnig sweep`: sets -> masked checkpoints -> lm-eval results, resumable; then `culnig report`.

One real sweep (tiny saved Llama, HF backend, commonsenseqa_paper_v1, --limit 4, original + general
+ 2 random sets) is interrupted on its 2nd checkpoint, resumed from the command line (each
evaluation in its own process) and reported; the other tests replace lm-eval by a fake evaluator
that writes lm-eval-shaped files, to check the bookkeeping quickly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

import culnig.sweep as sweep
import culnig.sweep.config as sweep_config
from culnig import evaluate
from culnig.results import EVAL_RECORD
from culnig_tasks.countries import PAPER_COUNTRIES
from culnig_tasks.lmeval import resolve_tasks
from culnig.errors import CulnigError
from culnig.neuron_sets import NeuronSet
from culnig.loading import layout_of
from tests.conftest import run_culnig, single_error

TASK = "commonsenseqa_paper_v1"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny Llama checkpoint and hand-made sets: general (6 neurons), 2 random, 2 specific."""
    from culnig.testing.tiny_models import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("sweep")
    model = save_tiny_checkpoint("llama", root / "tiny-llama")
    layout = layout_of(str(model))
    sets = root / "sets"
    sets.mkdir()
    NeuronSet.from_indices(layout, "culnig-general", {"gate": {0: [1, 2, 3], 1: [4]}, "q": {1: [0, 2]}},
                           name_or_path=str(model)).save(sets / "general.json")
    for seed, (l0, l1) in enumerate([([7, 9], [30, 31]), ([11], [12, 40, 41])]):
        NeuronSet.from_indices(layout, "random", {"gate": {0: l0, 1: l1}, "q": {0: [5, 6]}},
                               params={"seed": seed}).save(sets / f"random_seed{seed}.json")
    for i, country in enumerate(("usa", "uk")):
        NeuronSet.from_indices(layout, "culnig-specific", {"gate": {i: [20, 21]}},
                               params={"country": country}).save(sets / f"specific_{country}.json")
    return {"root": root, "model": model, "sets": sets}


def _config(tiny: dict, run_dir: Path, **over) -> Path:
    sets = tiny["sets"]
    cfg = {
        "run_dir": str(run_dir), "backend": "hf", "tasks": [TASK], "limit": 4,
        "isolation": "inprocess",
        "models": [{"name": "tiny", "model": str(tiny["model"]), "general": str(sets / "general.json"),
                    "random": {"files": str(sets / "random_seed{seed}.json"), "seeds": "0-1"}}],
    }
    models = over.pop("models", None)
    cfg.update(over)
    if models is not None:
        cfg["models"][0].update(models)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_real_sweep_interrupted_resumed_and_reported(tiny, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg_path = _config(tiny, run_dir)
    real = evaluate.evaluate_checkpoint
    calls = []

    def dies_on_second(model_path, out_dir, *args, **kwargs):
        calls.append(Path(model_path).name)
        if len(calls) == 2:
            (out_dir / "half").mkdir(parents=True)  # lm-eval had started writing
            raise KeyboardInterrupt  # the user pressed Ctrl-C
        return real(model_path, out_dir, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(sweep.load_config(cfg_path), progress=False)
    results = run_dir / "results" / "tiny"
    assert sorted(p.name for p in results.iterdir()) == ["orig"]  # nothing half-written
    assert (run_dir / "checkpoints/tiny/general/culnig_mask.json").is_file()  # baked before the kill
    orig_files = _hashes(results / "orig")
    assert {Path(f).suffix for f in orig_files} == {".json", ".jsonl", ".log"}  # log: lm-eval's output
    # a hard kill (no clean-up) leaves a temporary folder: the next run must not mistake it
    (results / ".general.tmp-99999" / "lm_eval").mkdir(parents=True)
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", real)

    # Resume from the command line, with the default isolation this time: one evaluator process
    # for the rest (isolation does not change results, so the finished one stays complete).
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["isolation"] = "engine"
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = run_culnig("sweep", str(cfg_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 checkpoint(s) over 1 model(s), 1 complete, 3 to evaluate" in proc.stderr
    assert "3 evaluated, 1 already complete, 2 baked" in proc.stderr  # general's bake was reused
    assert "4/4" in proc.stderr  # progress: checkpoints done / total (tqdm, with ETA)
    assert _hashes(results / "orig") == orig_files  # finished result untouched
    assert sorted(p.name for p in results.iterdir()) == ["general", "orig", "random_seed0",
                                                          "random_seed1"]
    for cp in ("orig", "general", "random_seed0", "random_seed1"):
        rec = json.loads((results / cp / EVAL_RECORD).read_text())
        assert rec["settings"]["limit"] == 4.0 and rec["settings"]["backend"] == "hf"
        assert rec["isolation"] == ("inprocess" if cp == "orig" else "engine")
        assert rec["versions"] == {TASK: "1.0"}
        assert (results / cp / rec["samples_files"][TASK]).is_file()
    gen = json.loads((results / "general" / EVAL_RECORD).read_text())
    assert gen["set"]["counts"]["total"] == 6 and gen["checkpoint_key"]["scale"] == 0.0
    assert (results / "general" / "eval.log").is_file()

    # A third run evaluates nothing.
    def must_not_run(*a, **k):
        raise AssertionError("a complete result was evaluated again")

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", must_not_run)
    summary = sweep.run_sweep(sweep.load_config(cfg_path), progress=False)
    assert (summary.skipped, summary.evaluated, summary.baked) == (4, 0, 0)
    all_files = _hashes(results)

    proc = run_culnig("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    t2 = pd.read_csv(run_dir / "report" / "table2.csv")
    row = t2.iloc[0]
    assert (row["bench"], row["n_docs"], row["n_seeds"], row["neurons_cult"]) == ("commonsenseqa", 4, 2, 6)
    assert 0.0 <= row["p_mean"] <= 1.0
    lb = pd.read_csv(run_dir / "report" / "leaderboard.csv")
    assert list(lb["checkpoint"]) == ["orig", "general", "random_seed0", "random_seed1"]
    per_task = pd.read_csv(run_dir / "report" / "scores_per_task.csv")
    assert (per_task["samples_mean"] == per_task["lm_eval_value"]).all()
    assert _hashes(results) == all_files  # the report reads only

    # Other settings in the same run dir: refused, nothing touched.
    cfg["limit"] = 3
    cfg_path.write_text(yaml.safe_dump(cfg))
    line = single_error(run_culnig("sweep", str(cfg_path)))
    assert "evaluated with other settings (limit: recorded 4.0, now 3.0)" in line and "--force" in line
    assert _hashes(results) == all_files


# --- bookkeeping with a fake evaluator ---------------------------------------------------------
def fake_evaluator(calls: list):
    """Writes what lm-eval writes (results + samples under out_dir/<model>/), instantly."""

    def evaluate(model_path, out_dir, settings, **kwargs):
        tasks = settings.tasks
        calls.append(Path(model_path).name)
        _, versions = resolve_tasks(tuple(tasks))
        d = out_dir / "fake_model"
        d.mkdir(parents=True)
        date = f"2026-01-01T00-00-{len(calls):02d}.000000"
        (d / f"results_{date}.json").write_text(json.dumps({
            "results": {t: {"acc,none": 0.5} for t in tasks}, "versions": {t: 1.0 for t in versions},
            "config": {"model": settings.backend, "limit": settings.limit, "random_seed": 0},
            "group_subtasks": {}, "lm_eval_version": "0.4.13"}))
        for t in tasks:
            (d / f"samples_{t}_{date}.jsonl").write_text(
                "".join(json.dumps({"doc_id": i, "doc": {}, "acc": float(i % 2)}) + "\n" for i in range(4)))

    return evaluate


def test_stale_results_force_and_delete_masked(tiny, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", fake_evaluator(calls))
    run_dir = tmp_path / "run"
    cfg = sweep.load_config(_config(tiny, run_dir, delete_masked=True))
    summary = sweep.run_sweep(cfg, progress=False)
    assert (summary.evaluated, summary.baked) == (4, 3)
    assert not any((run_dir / "checkpoints" / "tiny").iterdir())  # masked checkpoints deleted
    assert calls == ["tiny-llama", "general", "random_seed0", "random_seed1"]
    before = _hashes(run_dir / "results" / "tiny")

    # A changed set file makes its result stale: an error, unless --force sets it aside.
    ns = NeuronSet.load(tiny["sets"] / "random_seed1.json")
    changed = tmp_path / "random_seed1.json"
    ns.neurons["gate"][0] = ns.neurons["gate"][0] + 1
    ns.save(changed)
    cfg = sweep.load_config(_config(tiny, run_dir, delete_masked=True, models={"random": {
        "files": [str(tiny["sets"] / "random_seed0.json"), str(changed)]}}))
    with pytest.raises(CulnigError, match=r"random_seed1 was evaluated with other checkpoint \(set_sha256"):
        sweep.run_sweep(cfg, progress=False)
    assert _hashes(run_dir / "results" / "tiny") == before
    summary = sweep.run_sweep(cfg, force=True, progress=False)
    assert (summary.evaluated, summary.skipped, summary.stale_moved) == (1, 3, 1)
    (stale,) = (run_dir / "stale").glob("*/tiny/random_seed1")
    assert _hashes(stale) == {k.split("/", 1)[1]: v for k, v in before.items()
                              if k.startswith("random_seed1/")}
    after = _hashes(run_dir / "results" / "tiny")
    assert {k: v for k, v in after.items() if not k.startswith("random_seed1/")} == \
        {k: v for k, v in before.items() if not k.startswith("random_seed1/")}


def test_random_like_general_and_specific_sets_dry_run(tiny, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", fake_evaluator(calls))
    run_dir = tmp_path / "run"
    path = _config(tiny, run_dir, models={
        "random": {"like": "general", "seeds": "0-2"},
        "specific": {"path": str(tiny["sets"] / "specific_{slug}.json"), "countries": ["US", "UK"]}})
    cfg = sweep.load_config(path)
    names = [c.name for c in cfg.models[0].checkpoints]
    assert names == ["orig", "general", "random_seed0", "random_seed1", "random_seed2",
                     "specific_usa", "specific_uk"]
    assert [c.country for c in cfg.models[0].checkpoints[-2:]] == ["USA", "UK"]
    proc = run_culnig("sweep", str(path), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "7 checkpoint(s) over 1 model(s), 0 complete, 7 to evaluate" in proc.stderr
    assert not (run_dir / "results").exists() and not (run_dir / "checkpoints").exists()
    drawn = run_dir / "sets" / "tiny"
    general = NeuronSet.load(tiny["sets"] / "general.json").counts()
    for seed in range(3):
        ns = NeuronSet.load(drawn / f"random_seed{seed}.json")
        assert ns.counts() == general and ns.params["seed"] == seed
    first = _hashes(drawn)
    summary = sweep.run_sweep(sweep.load_config(path), progress=False)
    assert summary.evaluated == 7 and _hashes(drawn) == first  # the same draws
    rec = json.loads((run_dir / "results/tiny/specific_usa" / EVAL_RECORD).read_text())
    assert (rec["kind"], rec["country"]) == ("specific", "USA")


@pytest.mark.parametrize("edit,message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"backend": "tgi"}, "backend 'tgi': use vllm or hf"),
    ({"models": {"general": "/nonexistent/general.json"}}, "no such neuron set file"),
    ({"models": {"specific": {"Atlantis": "x.json"}}}, "unknown country 'Atlantis'"),
    ({"tasks": ["no_such_task"]}, "unknown task 'no_such_task'"),
])
def test_bad_configs_are_one_clear_line(tiny, tmp_path, edit, message):
    path = _config(tiny, tmp_path / "run", **edit)
    assert message in single_error(run_culnig("sweep", str(path), "--dry-run"))


@pytest.mark.parametrize("name,per_model", [("sweep-demo-cpu", 1 + 1 + 3 + 8),
                                            ("sweep-paper-gpu", 1 + 1 + 10 + 8)])
def test_example_configs_parse(name, per_model, tmp_path, monkeypatch):
    """The configs in harness_configs/ name valid keys, tasks and countries (models not needed)."""
    monkeypatch.setenv("CULNIG_MODELS", str(tmp_path))
    monkeypatch.setenv("CULNIG_SETS", str(tmp_path / "sets"))
    monkeypatch.setattr(sweep_config, "_resolve_model", lambda ref: tmp_path / Path(ref).name)
    cfg = sweep.load_config(Path(__file__).parent.parent / "harness_configs" / f"{name}.yaml")
    for m in cfg.models:
        assert len(m.checkpoints) == per_model
        assert {c.country for c in m.checkpoints if c.kind == "specific"} == set(PAPER_COUNTRIES)
        assert all(str(c.set_path).startswith(str(tmp_path)) for c in m.checkpoints
                   if c.kind == "specific" and name == "sweep-paper-gpu")
    tasks, versions = resolve_tasks(cfg.settings.tasks)
    assert tasks and all(t.startswith(("culnig_", "culnigll_")) for t in tasks)
    assert all(v == "1.0" for v in versions.values())
