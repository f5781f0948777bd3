"""`culnig finetune` (paper Sec. 4.5) on tiny seeded models with synthetic GLUE-schema rows, and
Figure 5 (`culnig report` on finetune runs).

Exact checks: only the chosen blocks' tensors change (every other tensor byte-identical to the
source checkpoint), the reported fraction is the real trainable fraction, and a run interrupted
and resumed ends with the same weights and AdamW state as an uninterrupted one (CPU, fixed seed).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from culnig.cli import main
from culnig.hashing import sha256_file
from tests.conftest import run_culnig, single_error


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores shared with other jobs: one thread keeps the tiny runs fast and steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows(task: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "culture food river family guest custom season village table story".split()
    rows = []
    for i in range(n):
        a = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
        b = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
        if task == "qnli":
            rows.append({"question": f"Which {a}?", "sentence": f"The {b}.", "label": i % 2, "idx": i})
        else:
            rows.append({"sentence1": f"The {a}.", "sentence2": f"A {b}.", "label": (i // 2) % 2,
                         "idx": i})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from culnig.neuron_sets import NeuronSet
    from culnig.loading import layout_of
    from culnig.testing import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("ft")
    out = {"root": root}
    for arch in ("llama", "gemma3_text", "phi3"):
        path = save_tiny_checkpoint(arch, root / arch, seed=1)
        layout = layout_of(path)
        ns = NeuronSet.from_indices(layout, "hand", {"gate": {1: range(10)}, "q": {0: [0, 1, 2]}})
        out[arch] = path
        out[f"{arch}_set"] = ns.save(root / f"{arch}_set.json")
    # a bfloat16 source: steps are saved in bfloat16 (training runs in fp32)
    out["llama_bf16"] = save_tiny_checkpoint("llama", root / "llama_bf16", seed=1, dtype=torch.bfloat16)
    out["llama_bf16_set"] = out["llama_set"]
    out["qnli"] = _write_jsonl(root / "qnli.jsonl", _rows("qnli", 24))
    out["mrpc"] = _write_jsonl(root / "mrpc.jsonl", _rows("mrpc", 24))
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


def _finetune(tiny, out: Path, *extra: str, arch: str = "llama", task: str = "qnli") -> int:
    return main(["finetune", "--model", str(tiny[arch]), "--set", str(tiny[f"{arch}_set"]),
                 "--task", task, "--train-file", str(tiny[task]), "--out", str(out),
                 "--batch-size", "4", "--lr", "1e-3", "--budget", "0.35", "--no-eval", *extra])


@pytest.mark.parametrize("arch,task,which", [("llama", "qnli", "top"), ("gemma3_text", "mrpc", "bottom"),
                                             ("phi3", "qnli", "top"), ("llama_bf16", "qnli", "top")])
def test_only_selected_blocks_change(tiny, tmp_path, capsys, arch, task, which):
    out = tmp_path / "run"
    assert _finetune(tiny, out, "--steps", "3", "--eval-every", "3", "--which", which,
                     arch=arch, task=task) == 0
    stdout = capsys.readouterr().out
    manifest = json.loads((out / "finetune.json").read_text())
    prefixes = [m["prefix"] for m in manifest["modules"]]
    assert prefixes and len(prefixes) < 2 * (3 if arch == "gemma3_text" else 2)
    if which == "top":
        assert prefixes[0] == "model.layers.1.mlp."
    else:
        assert all(m["n_selected"] == 0 for m in manifest["modules"])
    before, after = _tensors(tiny[arch]), _tensors(out / "steps" / "step-3")
    assert set(before) == set(after)
    changed = 0
    for name, t in before.items():
        if name.startswith(tuple(prefixes)):
            assert not torch.equal(t, after[name]), f"{name} was selected but did not change"
            changed += t.numel()
        else:
            assert t.dtype == after[name].dtype and t.shape == after[name].shape
            assert t.view(torch.uint8).numpy().tobytes() == \
                after[name].view(torch.uint8).numpy().tobytes(), f"{name} changed"
    # the reported fraction is the real one: parameters that changed / all model parameters
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "steps" / "step-3")
    total = sum(p.numel() for p in model.parameters())
    p = manifest["params"]
    assert p["trainable"] == changed and p["total"] == total
    assert p["trainable_fraction"] == changed / total == p["fraction_checkpoint"]
    assert p["trainable_fraction"] <= 0.35
    assert f"trainable fraction {changed / total:.6f}" in stdout
    cfg = json.loads((out / "steps/step-3/config.json").read_text())
    assert cfg["dtype"] == ("bfloat16" if arch.endswith("bf16") else "float32")
    assert all(t.dtype == before[n].dtype for n, t in after.items())
    assert (out / "steps/step-3/tokenizer.json").read_bytes() == (tiny[arch] / "tokenizer.json").read_bytes()
    state = json.loads((out / "steps/step-3/training_state/state.json").read_text())
    assert state["step"] == 3 and len(state["losses"]) == 3


def test_resume_equals_uninterrupted(tiny, tmp_path, monkeypatch, capsys):
    import culnig.finetune.run as ft

    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ("--steps", "6", "--eval-every", "2", "--seed", "3")
    assert _finetune(tiny, full, *args) == 0

    real, calls = ft.batch_loss, []

    def dies_at_step_5(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ft, "batch_loss", dies_at_step_5)
    assert _finetune(tiny, cut, *args) == 130
    assert ft.saved_steps(cut) == [2, 4]
    monkeypatch.setattr(ft, "batch_loss", real)

    # an existing run needs --resume (or --force); other settings are refused on resume
    assert _finetune(tiny, cut, *args) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert _finetune(tiny, cut, "--steps", "6", "--eval-every", "2", "--seed", "4", "--resume") == 2
    assert "seed" in capsys.readouterr().err

    resumed = []

    def counting(*a, **k):
        resumed.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ft, "batch_loss", counting)
    assert _finetune(tiny, cut, *args, "--resume") == 0
    assert len(resumed) == 2  # steps 5 and 6 only: it continued from step 4
    assert ft.saved_steps(cut) == [2, 4, 6]
    monkeypatch.setattr(ft, "batch_loss", real)
    for step in (4, 6):
        a, b = _tensors(full / f"steps/step-{step}"), _tensors(cut / f"steps/step-{step}")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        sa = _tensors(full / f"steps/step-{step}/training_state")
        sb = _tensors(cut / f"steps/step-{step}/training_state")
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    la = json.loads((full / "finetune.json").read_text())["losses"]
    lb = json.loads((cut / "finetune.json").read_text())["losses"]
    assert la == lb and len(la) == 6
    # --force starts again from scratch (and only ever deletes finetune runs)
    assert _finetune(tiny, cut, *args, "--force") == 0
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert _finetune(tiny, other, *args, "--force") == 2
    assert (other / "keep.txt").is_file()


def test_errors(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_culnig("finetune", "--model", str(tiny["llama"]), "--set", str(tiny["llama_set"]),
                      "--budget", "1e-6", "--train-file", str(tiny["qnli"]), "--out", str(out),
                      env={"OMP_NUM_THREADS": "1"})
    assert "smaller than any module block" in single_error(proc)
    assert not out.exists()
    # a set of another model
    assert main(["finetune", "--model", str(tiny["llama"]), "--set", str(tiny["gemma3_text_set"]),
                 "--train-file", str(tiny["qnli"]), "--out", str(out)]) == 2
    assert "was made for model" in capsys.readouterr().err and not out.exists()
    # bad training rows: file, line and field
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "label": 0}])
    assert main(["finetune", "--model", str(tiny["llama"]), "--set", str(tiny["llama_set"]),
                 "--budget", "0.35", "--train-file", str(bad), "--out", str(out), "--no-eval"]) == 2
    assert "bad.jsonl:1: missing field 'sentence'" in capsys.readouterr().err
    # no training split anywhere: say to pass --train-file (offline, no local copy)
    empty = tmp_path / "data"
    empty.mkdir()
    proc = run_culnig("finetune", "--model", str(tiny["llama"]), "--set", str(tiny["llama_set"]),
                      "--budget", "0.35", "--task", "mrpc", "--out", str(out), "--no-eval",
                      env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                           "CULNIG_DATA_DIR": str(empty), "OMP_NUM_THREADS": "1"})
    msg = single_error(proc)
    assert "MRPC training split" in msg and "--train-file" in msg


def _fake_step(run: Path, model: str, step: int, scores: dict[str, list[float]], settings: dict):
    """A result folder in the sweep's layout with known per-document values."""
    d = run / "results" / model / f"step-{step}"
    d.mkdir(parents=True)
    versions, groups, results, samples = {}, {}, {}, {}
    for bench, values in scores.items():
        group, leaf = f"culnig_{bench}", f"{bench}_paper_v1"
        versions[group], versions[leaf] = "1.0", 1.0
        groups[group] = [leaf]
        results[leaf] = {"acc,none": sum(values) / len(values)}
        samples[leaf] = f"samples_{leaf}_2026-01-01.jsonl"
        (d / samples[leaf]).write_text("".join(
            json.dumps({"doc_id": i, "doc": {"country": ""}, "acc": v}) + "\n"
            for i, v in enumerate(values)))
    res = {"results": results, "versions": versions, "group_subtasks": groups,
           "config": {"limit": 4, "random_seed": 0, "model": "hf"}, "lm_eval_version": "0.4.13"}
    (d / "results_2026-01-01.json").write_text(json.dumps(res))
    (d / "culnig_eval.json").write_text(json.dumps({
        "format": "culnig-eval/1", "model": model, "checkpoint": f"step-{step}", "kind": "finetune",
        "seed": None, "country": None, "set": None, "settings": settings,
        "versions": {k: str(v) for k, v in versions.items()},
        "results_file": "results_2026-01-01.json",
        "results_sha256": sha256_file(d / "results_2026-01-01.json"),
        "samples_files": samples, "finetune": {"step": step}}))


def _fake_run(parent: Path, which: str, per_step: dict[int, dict[str, list[float]]]) -> Path:
    run = parent / f"qnli-{which}"
    settings = {"tasks": ["culnig_qnli", "culnig_blendmcq"], "backend": "hf", "limit": 4.0}
    (run).mkdir(parents=True)
    (run / "finetune.json").write_text(json.dumps({
        "format": "culnig-finetune/1", "model": {"name": "tiny"}, "task": "qnli", "which": which,
        "budget": 0.1, "params": {"trainable_fraction": 0.09 if which == "top" else 0.08},
        "modules": [{"prefix": "x"}], "training": {"steps": 4}, "completed_steps": [2, 4],
        "key": {"training": {"steps": 4, "lr": 3e-5}}, "eval": {"settings": settings}}))
    for step, scores in per_step.items():
        _fake_step(run, "tiny", step, scores, settings)
    return run


def test_figure5_from_step_results(tmp_path, capsys):
    import pandas as pd

    parent = tmp_path / "ft"
    base = {"qnli": [1, 0, 0, 1], "blendmcq": [0, 1, 0, 0]}
    _fake_run(parent, "top", {0: base, 2: {"qnli": [1, 1, 0, 1], "blendmcq": [0, 0, 0, 0]},
                              4: {"qnli": [1, 1, 1, 1], "blendmcq": [0, 0, 0, 0]}})
    _fake_run(parent, "bottom", {0: base, 2: {"qnli": [0, 0, 0, 1], "blendmcq": [1, 1, 0, 0]},
                                 4: {"qnli": [1, 1, 0, 0], "blendmcq": [1, 1, 1, 0]}})
    assert main(["report", str(parent)]) == 0
    assert capsys.readouterr().out.strip() == str(parent / "report" / "report.html")
    df = pd.read_csv(parent / "report" / "figure5.csv")
    got = {(r.which, r.step, r.bench): r.score for r in df.itertuples()}
    assert got == {("top", 0, "qnli"): 0.5, ("top", 2, "qnli"): 0.75, ("top", 4, "qnli"): 1.0,
                   ("top", 0, "blendmcq"): 0.25, ("top", 2, "blendmcq"): 0.0,
                   ("top", 4, "blendmcq"): 0.0,
                   ("bottom", 0, "qnli"): 0.5, ("bottom", 2, "qnli"): 0.25,
                   ("bottom", 4, "qnli"): 0.5, ("bottom", 0, "blendmcq"): 0.25,
                   ("bottom", 2, "blendmcq"): 0.5, ("bottom", 4, "blendmcq"): 0.75}
    png = parent / "report" / "figure5_tiny_qnli.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Figure 5" in (parent / "report" / "report.html").read_text()
    # a single run folder works too; runs with other training settings are not mixed silently
    assert main(["report", str(parent / "qnli-top"), "--out", str(tmp_path / "one")]) == 0
    assert len(pd.read_csv(tmp_path / "one" / "figure5.csv")) == 6
    m = json.loads((parent / "qnli-bottom" / "finetune.json").read_text())
    m["key"]["training"]["lr"] = 1e-4
    (parent / "qnli-bottom" / "finetune.json").write_text(json.dumps(m))
    assert main(["report", str(parent), "--out", str(tmp_path / "mixed")]) == 2
    assert "training settings" in capsys.readouterr().err
    assert main(["report", str(parent), "--out", str(tmp_path / "mixed"), "--allow-mixed"]) == 0


def test_real_eval_per_step_read_by_report(tiny, tmp_path, shared_data):
    """One real run with lm-eval (HF backend, one kept engine, 2 documents): step 0 and
    the last step get sweep-layout result folders that `culnig report` turns into Figure 5."""
    import pandas as pd

    out = tmp_path / "ft" / "qnli-top"
    rc = main(["finetune", "--model", str(tiny["llama"]), "--set", str(tiny["llama_set"]),
               "--train-file", str(tiny["qnli"]), "--out", str(out), "--batch-size", "4",
               "--budget", "0.35", "--steps", "2", "--eval-every", "2",
               "--eval-tasks", "qnli_paper_v1", "--eval-backend", "hf", "--eval-limit", "2"])
    assert rc == 0
    for step in (0, 2):
        rec = json.loads((out / f"results/llama/step-{step}/culnig_eval.json").read_text())
        assert rec["kind"] == "finetune" and rec["finetune"]["step"] == step
        assert rec["settings"]["limit"] == 2.0
        # the default isolation: one engine for both steps, step 2's trained tensors swapped in
        assert rec["isolation"] == "engine"
        assert (rec["engine"]["loaded"] > 0) == (step == 2), rec["engine"]
    # resuming a finished run evaluates nothing again
    before = sha256_file(out / "results/llama/step-2/culnig_eval.json")
    assert main(["finetune", "--model", str(tiny["llama"]), "--set", str(tiny["llama_set"]),
                 "--train-file", str(tiny["qnli"]), "--out", str(out), "--batch-size", "4",
                 "--budget", "0.35", "--steps", "2", "--eval-every", "2",
                 "--eval-tasks", "qnli_paper_v1", "--eval-backend", "hf",
                 "--eval-isolation", "inprocess", "--eval-limit", "2", "--resume"]) == 0
    assert sha256_file(out / "results/llama/step-2/culnig_eval.json") == before
    assert main(["report", str(out.parent)]) == 0
    df = pd.read_csv(out.parent / "report" / "figure5.csv")
    assert sorted(df["step"]) == [0, 2] and set(df["bench"]) == {"qnli"}
    assert (df["n_docs"] == 2).all()
    shutil.rmtree(out / "steps")
