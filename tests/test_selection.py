"""Neuron selection on hand-made score tensors with known answers, random baselines, set files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attribution.scores import Scores
from attribution.selection import random_like, select_general, select_specific, top_percent
from culnig.errors import CulnigError
from culnig.neuron_sets import ModelShape, NeuronSet, model_block
from tests.conftest import run_culnig, single_error

SIZES = {"gate": 10, "up": 10, "q": 5, "k": 5, "v": 5}
L = 2
META = {"arch": "llama", "fingerprint": "f" * 16, "n_layers": L, "n_neurons": SIZES,
        "modules": ["gate", "q", "k", "v"], "aggregations": ["max"], "model": "hand"}
SHAPE = ModelShape.from_meta(META, "test")


def scores(values: dict[str, torch.Tensor], countries=("US",), data="a") -> Scores:
    """values[module]: [countries + 1, L, N]; missing modules are zeros."""
    C = len(countries)
    tensors = {f"max.{m}": values.get(m, torch.zeros(C + 1, L, SIZES[m])).float()
               for m in ("gate", "q", "k", "v")}
    return Scores(tensors=tensors, countries=list(countries), count=torch.ones(C + 1),
                  sum_p=torch.ones(C + 1), meta={**META, "data_sha256": data})


def as_sets(chosen):
    return {m: {l: a.tolist() for l, a in d.items()} for m, d in chosen.items() if d}


def test_top_percent_rounding_and_ties():
    v = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    assert top_percent(v, 40).tolist() == [1, 2]  # 2 of 5; ties by lower index
    assert top_percent(v, 100).tolist() == [1, 2, 4, 3, 0]
    assert top_percent(v, 9).tolist() == []  # round(0.45) = 0


def test_general_known_answer():
    gate = torch.zeros(2, L, 10)
    gate[-1, 1, 7] = 9.0  # best
    gate[-1, 0, 2] = 8.0  # second; removed by the CRC filter below
    gate[-1, 0, 5] = 7.0  # third
    gate[-1, 1, 0] = 7.0  # ties with (0, 5): (0, 5) comes first in flat order
    ctrl_gate = torch.zeros(2, L, 10)
    ctrl_gate[-1, 1, 7] = 10.0  # the control row cancels the best one: d = -1
    q = torch.zeros(2, L, 5)
    q[-1, 0, 4] = 5.0
    k = torch.zeros(2, L, 5)
    k[-1, 1, 1] = 6.0
    crc_gate = torch.zeros(2, L, 10)
    crc_gate[-1, 0, 2] = 100.0
    crc_q = torch.zeros(2, L, 5)
    crc_q[-1, 1, 2] = 50.0  # the CRC pool's top 2 of 30 attention neurons: both unselected ones
    crc_v = torch.zeros(2, L, 5)
    crc_v[-1, 0, 0] = 40.0
    neur = scores({"gate": gate, "q": q, "k": k}, data="n")
    ctrl = scores({"gate": ctrl_gate}, data="c")
    crc = scores({"gate": crc_gate, "q": crc_q, "v": crc_v}, data="r")
    # MLP pool: 20 gate neurons, 15% -> 3: (0,2)=8, (0,5)=7, (1,0)=7 ; CRC top 5% -> 1: (0,2) dropped
    # attention pool: 30, 10% -> 3: k(1,1)=6, q(0,4)=5, then the first zero in flat order q(0,0);
    # CRC top 5% of 30 -> 2: q(1,2), v(0,0), neither selected
    chosen = select_general(SHAPE, neur, ctrl, crc, t_mlp=15, t_attn=10, r=5)
    assert as_sets(chosen) == {"gate": {0: [5], 1: [0]}, "q": {0: [0, 4]}, "k": {1: [1]}}
    no_crc = select_general(SHAPE, neur, ctrl, None, t_mlp=15, t_attn=10, r=5)
    assert as_sets(no_crc)["gate"] == {0: [2, 5], 1: [0]}
    no_ctrl = select_general(SHAPE, neur, None, None, t_mlp=5, t_attn=10, r=5)
    assert as_sets(no_ctrl)["gate"] == {1: [7]}


def test_specific_z_score_filter():
    countries = ("China", "Spain", "US")
    gate = torch.zeros(4, L, 10)
    # neuron (0,1): high only for Spain -> z(Spain) = 1.41; neuron (0,3): high everywhere -> z = 0
    gate[1, 0, 1] = 5.0
    gate[:3, 0, 3] = 6.0
    gate[1, 0, 6] = 4.0  # also Spain-only, lower
    neur = scores({"gate": gate}, countries=countries, data="n")
    ctrl = scores({}, countries=countries, data="c")
    # pool of 20 gate neurons (modules=gate only); 15% -> 3: (0,3)=6, (0,1)=5, (0,6)=4
    chosen = select_specific(SHAPE, neur, ctrl, None, "Spain", t=15, modules=("gate",))
    assert as_sets(chosen) == {"gate": {0: [1, 6]}}  # (0,3) fails z >= 0.5
    unfiltered = select_specific(SHAPE, neur, ctrl, None, "Spain", t=15, z_min=None, modules=("gate",))
    assert as_sets(unfiltered) == {"gate": {0: [1, 3, 6]}}
    with pytest.raises(CulnigError, match="unknown country 'Japan'"):
        select_specific(SHAPE, neur, ctrl, None, "Japan", modules=("gate",))


@pytest.mark.parametrize("bad", [0, -1, 100.5])
def test_thresholds_outside_range(bad):
    neur = scores({}, data="n")
    with pytest.raises(CulnigError, match=r"percentage in \(0, 100\]"):
        select_general(SHAPE, neur, None, None, t_mlp=bad)


def test_mixed_models_and_same_data_refused():
    neur = scores({}, data="n")
    other = scores({}, data="c")
    other.meta["fingerprint"] = "0" * 16
    with pytest.raises(CulnigError, match="different models"):
        select_general(SHAPE, neur, other, None)
    with pytest.raises(CulnigError, match="same data file"):
        select_general(SHAPE, neur, scores({}, data="n"), None)


def reference_set() -> NeuronSet:
    return NeuronSet(model=model_block(SHAPE, "hand"), method="culnig-general",
                     neurons={"gate": {0: np.array([1, 2, 3]), 1: np.array([4])}, "q": {1: np.array([0, 2])}})


def test_random_sets_match_counts_and_are_deterministic():
    ref = reference_set()
    a = NeuronSet(model=ref.model, method="random", neurons=random_like(SHAPE, ref, 0))
    b = NeuronSet(model=ref.model, method="random", neurons=random_like(SHAPE, ref, 0))
    c = NeuronSet(model=ref.model, method="random", neurons=random_like(SHAPE, ref, 1))
    assert a.counts() == ref.counts()
    assert a.to_json()["neurons"] == b.to_json()["neurons"]
    assert a.to_json()["neurons"] != c.to_json()["neurons"]
    a.validate(SHAPE)
    # uniform over layers: over many seeds both layers of q get drawn about equally
    hits = np.zeros(L)
    for s in range(200):
        for layer, idx in random_like(SHAPE, ref, s)["q"].items():
            hits[layer] += idx.size
    assert 0.4 < hits[0] / hits.sum() < 0.6


def test_select_cli_roundtrip(tmp_path):
    gate = torch.zeros(2, L, 10)
    gate[-1, 1, 3] = 5.0
    paths = {}
    for name, vals in (("neur", {"gate": gate}), ("ctrl", {}), ("crc", {})):
        paths[name] = scores(vals, data=name).save(tmp_path / f"{name}.safetensors")
    out = tmp_path / "general.json"
    proc = run_culnig("select", "general", "--neur", str(paths["neur"]), "--ctrl", str(paths["ctrl"]),
                      "--crc", str(paths["crc"]), "--out", str(out), "--t-mlp", "5", "--t-attn", "10", "--r", "1")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["neurons"]["gate"] == {"1": [3]} and data["counts"]["gate"] == 1
    assert data["model"]["fingerprint"] == "f" * 16 and data["method"] == "culnig-general"
    assert set(data["sources"]) == {"neur", "ctrl", "crc"} and data["params"]["t_mlp"] == 5
    rnd = tmp_path / "rand"
    proc = run_culnig("select", "random", "--like", str(out), "--seeds", "0-2", "--out", str(rnd))
    assert proc.returncode == 0, proc.stderr
    files = sorted(rnd.glob("random_seed*.json"))
    assert len(files) == 3
    assert all(json.loads(f.read_text())["counts"] == data["counts"] for f in files)
    show = run_culnig("sets", "show", str(out), "--plot", str(tmp_path / "layers.png"))
    assert show.returncode == 0 and "total" in show.stdout and (tmp_path / "layers.png").stat().st_size > 1000
    cmp = run_culnig("sets", "compare", str(out), str(out))
    assert cmp.returncode == 0 and "1.000" in cmp.stdout
    again = run_culnig("select", "general", "--neur", str(paths["neur"]), "--ctrl", str(paths["ctrl"]),
                       "--crc", str(paths["crc"]), "--out", str(out))
    assert "already exists" in single_error(again)
    bad = run_culnig("select", "general", "--neur", str(paths["neur"]), "--ctrl", str(paths["ctrl"]),
                     "--crc", str(paths["crc"]), "--out", str(tmp_path / "x.json"), "--t-mlp", "0")
    assert "percentage" in single_error(bad)
    assert not (tmp_path / "x.json").exists()


def test_modules_for_finetuning(tmp_path):
    """Hand-checked on a tiny Llama: per-block parameter counts from the headers, budget, order."""
    from attribution.finetune_modules import choose_modules, tensor_shapes
    from culnig.loading import layout_of
    from culnig.testing import save_tiny_checkpoint

    path = save_tiny_checkpoint("llama", tmp_path / "m", seed=0)
    layout = layout_of(path)
    sizes = tensor_shapes(path)
    H, I, q, kv = layout.hidden_size, layout.intermediate_size, layout.n_neurons("q"), layout.n_neurons("k")
    ns = NeuronSet.from_indices(layout, "hand", {"gate": {1: range(10), 0: [1]}, "q": {0: [0, 1, 2]}})
    choice = choose_modules(layout, ns, sizes, budget=1.0, which="top")
    order = [(u.layer, u.kind, u.n_selected) for u in choice.units]
    assert order[:3] == [(1, "mlp", 10), (0, "attn", 3), (0, "mlp", 1)]
    mlp = next(u for u in choice.units if u.kind == "mlp")
    attn = next(u for u in choice.units if u.kind == "attn")
    assert mlp.n_params == 3 * H * I
    assert attn.n_params == H * (q + 2 * kv) + q * H
    total = sum(sizes.values())
    budget = (3 * H * I + 1) / total  # room for exactly one MLP block
    top = choose_modules(layout, ns, sizes, budget=budget, which="top")
    assert [(u.layer, u.kind) for u in top.units] == [(1, "mlp")]
    assert top.fraction == pytest.approx(3 * H * I / total)
    bottom = choose_modules(layout, ns, sizes, budget=budget, which="bottom")
    assert all(u.n_selected == 0 for u in bottom.units)
    with pytest.raises(CulnigError, match="smaller than any module block"):
        choose_modules(layout, ns, sizes, budget=1e-6, which="top")
    proc = run_culnig("modules", "--model", str(path), "--set", str(ns.save(tmp_path / "s.json")),
                      "--budget", "0.5", "--which", "top")
    assert proc.returncode == 0 and "model.layers.1.mlp." in proc.stdout, proc.stderr
