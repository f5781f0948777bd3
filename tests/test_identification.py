"""Identification data on the real files in ../shared/data, and the pipeline items -> scores ->
neuron set -> baked checkpoint on a tiny model."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.conftest import run_culnig, single_error


@pytest.fixture(scope="module")
def items_dir(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("items")
    proc = run_culnig("data", "build", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_counts_per_split_and_country(items_dir, shared_data):
    neur, ctrl, crc = (_read(items_dir / f) for f in ("blend_neur.jsonl", "blend_ctrl.jsonl", "crc_neur.jsonl"))
    # Offline build from the annotations (the hub file gives 12,701 / 10,331 in the paper).
    assert len(neur) == len(ctrl) == 13404
    per = {}
    for r in neur:
        per[r["country"]] = per.get(r["country"], 0) + 1
    assert len(per) == 16 and min(per.values()) == 824 and max(per.values()) == 847
    assert len(crc) == 25 * 8 * 4  # records 0-24 x the paper's 8 countries x 4 prompt variants
    from culnig_tasks import blend

    assert len(blend.mcq_docs("test")) == 9851


def test_no_test_question_in_identification(items_dir):
    from culnig_tasks import blend

    test_ids = {d["ID"] for d in blend.mcq_docs("test")}
    neur_ids = {r["id"].removeprefix("blend-").rsplit("_", 1)[0] for r in _read(items_dir / "blend_neur.jsonl")}
    assert neur_ids and not (neur_ids & test_ids)
    topics = blend.topics()
    assert {topics[i] for i in neur_ids} == {"Food", "Work life", "Sport"}


def test_ctrl_rows_are_neur_rows_without_the_question(items_dir):
    neur = _read(items_dir / "blend_neur.jsonl")
    ctrl = _read(items_dir / "blend_ctrl.jsonl")
    for n, c in zip(neur, ctrl):
        assert c["control"] is True and n["control"] is False
        assert (n["country"], n["answer"], n["answer_prefix"]) == (c["country"], c["answer"], c["answer_prefix"])
        question = n["prompt"].split(" Without any explanation")[0]
        assert question and question not in c["prompt"]
        assert c["prompt"].startswith("Without any explanation, choose only one")
        assert n["prompt"].endswith(c["prompt"])  # same instruction and options
        assert n["answer_prefix"] == '{"answer_choice":"'


def test_countryrc_options_hold_the_gold_once(items_dir):
    for r in _read(items_dir / "crc_neur.jsonl"):
        labels = re.findall(r"^([A-D1-4])\. (.+)$", r["prompt"], flags=re.M)
        assert len(labels) == 4
        names = [name for _, name in labels]
        assert names.count(r["country"]) == 1
        assert dict(labels)[r["answer"]] == r["country"]


def test_unknown_country_and_existing_output(items_dir, tmp_path, shared_data):
    proc = run_culnig("data", "build", "--out", str(tmp_path / "x"), "--countries", "Atlantis")
    assert "Atlantis" in single_error(proc)
    proc = run_culnig("data", "build", "--out", str(items_dir))
    assert "already exists" in single_error(proc)


def test_pipeline_items_scores_set_bake(shared_data, tmp_path):
    """Real identification items on a tiny model: attribute neur/ctrl/crc, select, bake, and the
    baked checkpoint equals the hook-masked model."""
    from culnig.testing import save_tiny_checkpoint

    model = save_tiny_checkpoint("qwen3", tmp_path / "m", seed=2)
    items = tmp_path / "items"
    assert run_culnig("data", "build", "--out", str(items), "--max-per-country", "2",
                      "--crc-variants", "1,3").returncode == 0
    scores = {}
    for name in ("blend_neur", "blend_ctrl", "crc_neur"):
        out = tmp_path / f"{name}.safetensors"
        proc = run_culnig("attribute", "--model", str(model), "--data", str(items / f"{name}.jsonl"),
                          "--out", str(out), "--batch-size", "8")
        assert proc.returncode == 0, proc.stderr[-2000:]
        scores[name] = out
    general = tmp_path / "general.json"
    proc = run_culnig("select", "general", "--neur", str(scores["blend_neur"]), "--ctrl",
                      str(scores["blend_ctrl"]), "--crc", str(scores["crc_neur"]), "--out", str(general),
                      "--t-mlp", "5", "--t-attn", "5")
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(general.read_text())["counts"]
    assert counts["gate"] > 0 and counts["q"] + counts["k"] + counts["v"] > 0
    specific = tmp_path / "spain.json"
    proc = run_culnig("select", "specific", "--country", "Spain", "--neur", str(scores["blend_neur"]),
                      "--ctrl", str(scores["blend_ctrl"]), "--crc", str(scores["crc_neur"]),
                      "--out", str(specific), "--t", "5")
    assert proc.returncode == 0, proc.stderr
    baked = tmp_path / "baked"
    proc = run_culnig("bake", "--model", str(model), "--set", str(general), "--out", str(baked))
    assert proc.returncode == 0, proc.stderr

    from culnig.loading import load_model
    from culnig.neuron_sets import NeuronSet
    from masking import masked

    orig, tok, layout = load_model(str(model))
    ns = NeuronSet.load(general)
    ids = torch.tensor([tok("Which country is this about? A. Spain B. China").input_ids])
    with torch.no_grad(), masked(orig, ns, layout, scale=0.0):
        hooked = orig(input_ids=ids).logits
    b, _, _ = load_model(str(baked))
    with torch.no_grad():
        torch.testing.assert_close(b(input_ids=ids).logits, hooked, rtol=0, atol=1e-5)
        assert (orig(input_ids=ids).logits - hooked).abs().max() > 1e-4
