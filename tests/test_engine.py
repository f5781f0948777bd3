"""Isolation ``engine``: one engine per model, the masked checkpoints' weights swapped in.

original -> masked A -> masked B -> original on one kept engine must give the per-sample
responses of evaluating each checkpoint on its own (``inprocess`` on HF: the same lm-eval CLI run
as ``subprocess``, without a process start per checkpoint; ``subprocess`` on vLLM, whose engine
can only be freed by ending its process), for a generate_until and a multiple_choice task.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from culnig.errors import CulnigError
from culnig.neuron_sets import NeuronSet
from culnig.loading import layout_of
from culnig.results import EVAL_RECORD, evaluate_into
from culnig.settings import EvalSettings
from culnig.testing.tiny_models import ARCH_NAMES, save_tiny_checkpoint
from culnig_tasks.lmeval import resolve_tasks

GEN, MC = "commonsenseqa_paper_v1", "commonsenseqa_loglik_v1"


@pytest.fixture(autouse=True, scope="module")
def _task_index_once():
    """The in-process references build lm-eval's task index once, as the engine's process does
    (a memo of parsing the unchanged task YAMLs: 10-40 s per evaluation on 2 cores otherwise)."""
    from lm_eval.tasks._index import TaskIndex

    from culnig.engine.server import cache_task_index

    build = TaskIndex.__dict__["build"]
    cache_task_index()
    yield
    TaskIndex.build = build


def _random_set(layout, seed: int, per_site: int = 6) -> NeuronSet:
    """``per_site`` neurons of every module in every layer (different ones per seed)."""
    rng = np.random.default_rng(seed)
    neurons = {m: {layer: rng.choice(s.size, size=min(per_site, s.size), replace=False).tolist()
                   for layer in range(layout.n_layers)} for m, s in layout.sites.items()}
    return NeuronSet.from_indices(layout, "random", neurons, params={"seed": seed})


def _bake_variants(model: Path, root: Path) -> dict[str, Path]:
    from masking.bake import bake

    layout = layout_of(str(model))
    out = {"orig": model}
    for name, seed in (("A", 1), ("B", 2)):
        _random_set(layout, seed).save(root / f"set_{name}.json")
        out[name] = bake(str(model), root / f"set_{name}.json", root / name).out
    return out


def _samples(result_dir: Path) -> dict[str, list]:
    rec = json.loads((result_dir / EVAL_RECORD).read_text())
    out = {}
    for task, f in rec["samples_files"].items():
        rows = [json.loads(line) for line in (result_dir / f).read_text().splitlines()]
        out[task] = [(r["doc_id"], r["resps"], r["filtered_resps"]) for r in
                     sorted(rows, key=lambda r: r["doc_id"])]
    return out


def _evaluate(result_dir: Path, model: Path, settings: EvalSettings, versions: dict, isolation: str,
              engines=None, base: Path | None = None) -> dict:
    return evaluate_into(result_dir, model, settings, versions=versions,
                         record={"model": "m", "checkpoint": result_dir.name}, batch_size="auto",
                         isolation=isolation, engines=engines, base=base)


def _settings(backend: str, limit: int, **kw) -> tuple[EvalSettings, dict]:
    tasks, versions = resolve_tasks((GEN, MC))
    return EvalSettings(tasks=tuple(tasks), backend=backend, limit=limit, dtype="float32", **kw), \
        versions


def _same(got: dict, ref: dict, atol: float) -> bool:
    """Per-sample responses equal: generated texts and greedy flags exactly, log-likelihoods
    within ``atol`` (0 on HF; vLLM's batches depend on timing, changing the last digits)."""
    if got.keys() != ref.keys():
        return False
    for task in got:
        if [d for d, _, _ in got[task]] != [d for d, _, _ in ref[task]]:
            return False
        for (_, a, fa), (_, b, fb) in zip(got[task], ref[task]):
            if atol == 0 or task == GEN:
                if (a, fa) != (b, fb):
                    return False
                continue
            la, lb = (np.array([[float(x[0][0]), x[0][1] == "True"] for x in r]) for r in (a, b))
            if la.shape != lb.shape or not (la[:, 1] == lb[:, 1]).all() or \
                    np.abs(la[:, 0] - lb[:, 0]).max() > atol or la[:, 0].argmax() != lb[:, 0].argmax():
                return False
    return True


def _check_sequence(variants: dict[str, Path], tmp: Path, settings: EvalSettings, versions: dict,
                    reference: str, atol: float = 0.0) -> dict:
    from culnig.engine.holder import EngineHolder

    ref = {}
    for name in ("orig", "A", "B"):
        _evaluate(tmp / "ref" / name, variants[name], settings, versions, reference)
        ref[name] = _samples(tmp / "ref" / name)
    # the masks change the options' log-likelihoods: a swap that did nothing could not pass
    assert not _same(ref["A"], ref["orig"], 1e-2) and not _same(ref["B"], ref["A"], 1e-2)
    got, records = {}, {}
    with EngineHolder() as engines:
        for i, name in enumerate(("orig", "A", "B", "orig")):
            out = tmp / "engine" / f"{i}_{name}"
            records[i] = _evaluate(out, variants[name], settings, versions, "engine", engines,
                                   base=variants["orig"])
            got[i] = _samples(out)
        assert engines.starts == 1  # one engine for the whole sequence
    for i, name in enumerate(("orig", "A", "B", "orig")):
        assert _same(got[i], ref[name], atol), f"engine {name} (step {i}) differs from {reference}"
        assert records[i]["isolation"] == "engine"
    assert _same(got[3], got[0], atol)  # back to the original: nothing stale
    assert records[0]["engine"]["loaded"] == 0 and records[1]["engine"]["verified"] > 0
    assert records[3]["engine"]["loaded"] == records[2]["engine"]["loaded"]  # B's tensors restored
    return records


# By default the layouts that differ most (q/k/v biases, the multimodal wrapper, fused Phi-3);
# the others with --run-slow (llama also runs in the tests below).
DEFAULT_ARCHS = ("qwen2", "gemma3", "phi3")


@pytest.mark.parametrize("arch", [a if a in DEFAULT_ARCHS else pytest.param(a, marks=pytest.mark.slow)
                                  for a in ARCH_NAMES])
def test_hf_engine_sequence_equals_inprocess(arch, use_data, tmp_path):
    model = save_tiny_checkpoint(arch, tmp_path / "model", shards=2)
    variants = _bake_variants(model, tmp_path)
    settings, versions = _settings("hf", 3)
    _check_sequence(variants, tmp_path, settings, versions, "inprocess")


def test_broken_bake_replaces_the_engine(use_data, tmp_path):
    from culnig.engine.holder import EngineHolder
    from masking.manifest import read_manifest

    model = save_tiny_checkpoint("llama", tmp_path / "model", shards=2)
    variants = _bake_variants(model, tmp_path)
    settings, versions = _settings("hf", 3)
    _evaluate(tmp_path / "ref_B", variants["B"], settings, versions, "inprocess")
    rewritten = read_manifest(variants["A"])["shards"]["rewritten"]
    (variants["A"] / rewritten[0]).unlink()
    res = tmp_path / "results"
    with EngineHolder() as engines:
        _evaluate(res / "orig", variants["orig"], settings, versions, "engine", engines)
        with pytest.raises(CulnigError) as err:
            _evaluate(res / "A", variants["A"], settings, versions, "engine", engines, base=model)
        assert rewritten[0] in str(err.value) and "engine was discarded" in str(err.value)
        assert not (res / "A").exists()  # not recorded, not even half
        assert not list(res.glob(".A.tmp-*"))
        _evaluate(res / "B", variants["B"], settings, versions, "engine", engines, base=model)
        assert engines.starts == 2  # the failed engine was replaced
    assert _samples(res / "B") == _samples(tmp_path / "ref_B")


@pytest.mark.vllm
def test_vllm_engine_sequence_equals_subprocess(demo_model, use_data, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    variants = _bake_variants(demo_model, tmp_path)
    settings, versions = _settings("vllm", 4, max_model_len=1024)
    records = _check_sequence(variants, tmp_path, settings, versions, "subprocess", atol=1e-4)
    assert "worker" in records[1]["engine"]["method"]


def test_other_checkpoints_on_a_kept_engine(use_data, tmp_path):
    """A checkpoint with the base's tensor names (another seed: every tensor differs, as after
    fine-tuning) is swapped in whole; one of another architecture gets an engine of its own."""
    from culnig.engine.holder import EngineHolder

    model = save_tiny_checkpoint("llama", tmp_path / "model")
    other = save_tiny_checkpoint("llama", tmp_path / "seed1", seed=1)
    foreign = save_tiny_checkpoint("qwen2", tmp_path / "qwen2")
    settings, versions = _settings("hf", 3)
    res = tmp_path / "results"
    with EngineHolder() as engines:
        _evaluate(res / "orig", model, settings, versions, "engine", engines)
        rec = _evaluate(res / "seed1", other, settings, versions, "engine", engines, base=model)
        assert engines.starts == 1 and rec["engine"]["verified"] == rec["engine"]["loaded"] > 20
        rec = _evaluate(res / "qwen2", foreign, settings, versions, "engine", engines, base=model)
        assert engines.starts == 2 and rec["engine"]["loaded"] == 0
    for name, path in (("seed1", other), ("qwen2", foreign)):
        _evaluate(tmp_path / f"ref_{name}", path, settings, versions, "inprocess")
        assert _samples(res / name) == _samples(tmp_path / f"ref_{name}"), name
