"""The paper's six model shapes on CPU (gemma-3-12b-it, gemma-3-27b-it, phi-4, Falcon3-10B-Instruct,
Qwen3-14B, Llama-3.1-8B-Instruct) from their published configs (tests/fixtures/configs).

Fast: the published configs give the published parameter counts, neuron counts and fused offsets,
through transformers and through the registry. Slow (``--run-slow``; times in docs/paper-scale.md):
random-weight models at the real widths, head counts, head_dim, norms and fusing, reduced as
``SHAPES`` says, attribute two real BLEnD items (one question, one control) exactly as the float64
per-item reference does on every hooked module, with a memory plan within 25 % of the measured
CPU peak; select + bake gives a checkpoint whose logits equal the hook-masked model's; vLLM (also
marked ``vllm``) serves the baked folder with transformers' greedy tokens. A wrong fused offset
in a copy of the Phi-4 layout fails the Phi-4 check.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import time
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from attribution.engine import AttributionOptions, attribute
from attribution.items import Item
from attribution.memory_plan import (accumulator_bytes, activation_bytes, batch_shapes,
                                     token_lengths)
from culnig.registry import MODULES, ModelLayout, Site, layout_for
from culnig.testing.paper_configs import (PAPER_MODELS, config_object, cpu_peak_bytes,
                                          paper_model, parameter_count, published_config,
                                          reduced_config, save_checkpoint)
from tests.conftest import run_culnig
from tests.test_attribution import AGGS, reference_scores
from tests.test_masking import logits

# Per model: the depth kept (and Gemma-3's attention kinds). Everything not listed stays as
# published, except the vocabulary (-> 384, the offline test tokenizer's) with the token ids, and
# Gemma-3's vision tower (27 -> 1 layer, widths kept). One layer where a second would not fit the
# memory of a shared 2-core CI machine in float64 (gemma-3-27b-it: 3.3 GB a layer).
SHAPES = {
    "gemma-3-12b-it": dict(layers=2, layer_types=["sliding_attention", "full_attention"]),
    "gemma-3-27b-it": dict(layers=1),
    "phi-4": dict(layers=1),
    "Falcon3-10B-Instruct": dict(layers=1),
    "Qwen3-14B": dict(layers=1),
    "Llama-3.1-8B-Instruct": dict(layers=2),
}
# Published sizes, by hand from the model cards and configs: layers, intermediate size, query
# heads x head_dim, key/value heads x head_dim, parameters (billions, as the cards round them).
PUBLISHED = {
    "gemma-3-12b-it": (48, 15360, 16 * 256, 8 * 256, 12.2),
    "gemma-3-27b-it": (62, 21504, 32 * 128, 16 * 128, 27.4),
    "phi-4": (40, 17920, 40 * 128, 10 * 128, 14.7),
    "Falcon3-10B-Instruct": (40, 23040, 12 * 256, 4 * 256, 10.3),
    "Qwen3-14B": (40, 17408, 40 * 128, 8 * 128, 14.8),
    "Llama-3.1-8B-Instruct": (32, 14336, 32 * 128, 8 * 128, 8.03),
}
ATTR_TOL = 1e-6  # relative to each (aggregation, module) tensor's largest score, as test_attribution
PLAN_TOL = 0.25


# --- an oracle for the neuron sites, independent of the registry -------------------------------
def oracle_layout(config, registry_layout: ModelLayout) -> ModelLayout:
    """Where the neurons are, written from transformers' modeling code, not from the registry:
    Phi3Attention slices ``qkv_proj``'s output as q = [:H*d], k = [H*d : H*d + K*d], v = the rest;
    Phi3MLP chunks ``gate_up_proj``'s output into gate (first half) and up (second half); every
    other family has one linear per module, rows from 0."""
    text = getattr(config, "text_config", None) or config
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    q, kv, inter = heads * head_dim, kv_heads * head_dim, text.intermediate_size
    if config.model_type == "phi3":
        sites = {"q": Site("q", "self_attn.qkv_proj", 0, q),
                 "k": Site("k", "self_attn.qkv_proj", q, kv),
                 "v": Site("v", "self_attn.qkv_proj", q + kv, kv),
                 "gate": Site("gate", "mlp.gate_up_proj", 0, inter),
                 "up": Site("up", "mlp.gate_up_proj", inter, inter)}
    else:
        sizes = {"q": q, "k": kv, "v": kv, "gate": inter, "up": inter}
        paths = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                 "gate": "mlp.gate_proj", "up": "mlp.up_proj"}
        sites = {m: Site(m, paths[m], 0, sizes[m]) for m in MODULES}
    return dataclasses.replace(registry_layout, sites=sites)


def shifted(layout: ModelLayout, module: str, by: int) -> ModelLayout:
    """A copy of ``layout`` whose ``module`` starts ``by`` rows later (a wrong fused offset)."""
    site = layout.site(module)
    return dataclasses.replace(layout, sites={**layout.sites, module: dataclasses.replace(
        site, offset=site.offset + by)})


# --- fast: the published configs ---------------------------------------------------------------
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_published_config_gives_the_published_sizes(name):
    layers, inter, q, kv, billions = PUBLISHED[name]
    layout = layout_for(config_object(published_config(name)))
    assert layout.n_layers == layers
    assert {m: layout.n_neurons(m) for m in MODULES} == {"gate": inter, "up": inter, "q": q,
                                                         "k": kv, "v": kv}
    assert abs(parameter_count(name) / 1e9 - billions) / billions < 0.01
    oracle = oracle_layout(config_object(published_config(name)), layout)
    assert {m: (s.path, s.rows) for m, s in layout.sites.items()} == \
        {m: (s.path, s.rows) for m, s in oracle.sites.items()}


def test_phi4_fused_offsets_are_the_published_split():
    layout = layout_for(config_object(published_config("phi-4")))
    assert [(m, layout.site(m).offset, layout.site(m).size) for m in ("q", "k", "v")] == \
        [("q", 0, 5120), ("k", 5120, 1280), ("v", 6400, 1280)]  # qkv_proj: 7680 rows
    assert [(m, layout.site(m).offset) for m in ("gate", "up")] == [("gate", 0), ("up", 17920)]


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_registry_reads_the_published_config_json_as_transformers_does(name):
    """The config.json a user downloads, as a dict (what `culnig bake` and a local folder give the
    registry), resolves like transformers' config object; Gemma-3's leaves head_dim and
    vocab_size at the class defaults (256, 262208)."""
    raw = published_config(name)
    want = layout_for(config_object(raw))
    got = layout_for(raw)
    assert got.fingerprint == want.fingerprint
    assert got.neuron_counts() == want.neuron_counts()


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_reduced_config_keeps_every_width(name):
    config, red = reduced_config(name, **SHAPES[name])
    full = config_object(published_config(name))
    text, full_text = (getattr(c, "text_config", None) or c for c in (config, full))
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "rms_norm_eps", "tie_word_embeddings", "sliding_window",
                "query_pre_attn_scalar", "hidden_act", "hidden_activation"):
        assert getattr(text, key, None) == getattr(full_text, key, None), key
    assert config.model_type == full.model_type and type(config) is type(full)
    changed = {k for k in text.to_dict() if text.to_dict()[k] != full_text.to_dict().get(k)}
    allowed = {"num_hidden_layers", "vocab_size", "layer_types", "bos_token_id", "eos_token_id",
               "pad_token_id", "dtype", "_name_or_path"}
    assert changed <= allowed, changed - allowed
    assert red["num_hidden_layers"] == (full_text.num_hidden_layers, SHAPES[name]["layers"])
    if full.model_type == "gemma3":
        assert config.vision_config.hidden_size == full.vision_config.hidden_size == 1152


# --- slow: attribution, plan, bake, vLLM at the real widths ------------------------------------
@lru_cache(maxsize=1)
def blend_pair() -> tuple[Item, ...]:
    """Two real BLEnD identification items: a question (Spain) and a control row (China)."""
    from attribution.identification import blend_items

    neur, ctrl, _ = blend_items(countries=["Spain", "China"], max_per_country=1, seed=0)
    rows = [next(r for r in neur if r["country"] == "Spain"),
            next(r for r in ctrl if r["country"] == "China")]
    keys = ("id", "dataset", "country", "answer", "prompt", "answer_prefix", "control")
    return tuple(Item(**{k: r[k] for k in keys}) for r in rows)


_REFERENCE: dict[str, tuple] = {}  # name -> (countries, float64 reference), kept for the phi-4 fail
_ARTIFACTS: dict[str, dict] = {}  # name -> checkpoint, set and baked folders for the vLLM test


def check_attribution(name, model, tok, items, layout: ModelLayout, oracle: ModelLayout) -> dict:
    """Engine scores on ``layout`` == the float64 per-item reference on ``oracle``; returns the
    scores, the engine's measured CPU peak and its plan."""
    opts = AttributionOptions(aggregations=AGGS, batch_size=len(items))
    t0 = time.perf_counter()
    scores, peak = cpu_peak_bytes(attribute, model, tok, list(items), layout, opts)
    engine_s = time.perf_counter() - t0
    if name not in _REFERENCE:
        # Only the input embeddings keep requires_grad: the graph still reaches every projection
        # output (whose gradients the reference reads), but no weight gradient is computed.
        emb = model.get_input_embeddings().weight
        frozen = [p for p in model.parameters() if p.requires_grad and p is not emb]
        for p in frozen:
            p.requires_grad_(False)
        try:
            _REFERENCE[name] = reference_scores(model, tok, list(items), oracle)
        finally:
            for p in frozen:
                p.requires_grad_(True)
    countries, ref = _REFERENCE[name]
    assert scores.countries == countries
    for (agg, m), want in ref.items():
        got = scores.tensors[f"{agg}.{m}"].double()
        scale = float(want.abs().max())
        assert scale > 0, (agg, m)
        torch.testing.assert_close(got, want, rtol=ATTR_TOL, atol=ATTR_TOL * scale,
                                   msg=lambda text, key=f"{name} {agg}.{m}": f"{key}: {text}")
    (n_items, length), = batch_shapes(token_lengths(items, tok, opts), opts.batch_size)
    act = activation_bytes(model.config, layout, n_items, length, "fp64", opts.modules)
    plan = act.total + accumulator_bytes(layout, len(countries), opts.modules, opts.aggregations)
    return {"scores": scores, "peak": peak, "plan": plan, "engine_s": engine_s}


def _bake_and_compare(name, model, tok, layout, oracle, scores, root: Path) -> dict:
    """Select from the scores, bake a bf16 checkpoint of ``model``, compare with the hooks."""
    from attribution.selection import select_general
    from culnig.loading import load_model
    from culnig.neuron_sets import NeuronSet
    from masking.bake import bake
    from masking.hooks import masked

    src = save_checkpoint(model.to(torch.bfloat16), tok, root / "src")
    del model
    neurons = select_general(layout, scores, None, None, t_mlp=1.0, t_attn=2.0,
                             mlp_modules=("gate", "up"))
    assert all(neurons.get(m) for m in MODULES), {m: len(neurons.get(m, {})) for m in MODULES}
    set_path = root / "set.json"
    NeuronSet.from_indices(layout, "culnig-general", neurons, name_or_path=str(src)).save(set_path)
    baked_dir = bake(str(src), set_path, root / "baked").out
    original, tok2, _ = load_model(str(src), dtype="fp32")
    ns = NeuronSet.load(set_path)
    plain = logits(original, tok2)
    with masked(original, ns, oracle, scale=0.0):  # the oracle's rows, not the registry's
        hooked = logits(original, tok2)
    del original
    from_bake = logits(load_model(str(baked_dir), dtype="fp32")[0], tok2)
    assert float((hooked - from_bake).abs().max()) <= 1e-5
    assert float((plain - from_bake).abs().max()) > 1e-3  # the mask changes the model
    return {"src": src, "set": set_path, "baked": baked_dir}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_shapes")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_shape_attribution_plan_and_bake(name, shapes_root, shared_data):
    items = blend_pair()
    model, tok, red = paper_model(name, dtype=torch.float64, **SHAPES[name])
    layout = layout_for(model.config)
    oracle = oracle_layout(model.config, layout)
    got = check_attribution(name, model, tok, items, layout, oracle)
    ratio = got["plan"] / got["peak"]
    print(f"\n{name}: reductions {json.dumps(red, default=str)}")
    print(f"{name}: engine {got['engine_s']:.1f} s; CPU peak {got['peak'] / 2**20:.1f} MiB, plan "
          f"{got['plan'] / 2**20:.1f} MiB (plan / measured {ratio:.2f})")
    assert abs(ratio - 1) <= PLAN_TOL, ratio
    _ARTIFACTS[name] = _bake_and_compare(name, model, tok, layout, oracle, got["scores"],
                                         shapes_root / name)


def _vllm_can_serve(name: str) -> str | None:
    if published_config(name)["model_type"] == "gemma3":
        try:
            if importlib.util.find_spec("torchvision") is None:
                return "torchvision is not installed"
            import torchvision  # noqa: F401
        except Exception as exc:
            return f"torchvision does not import ({type(exc).__name__})"
    return None


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_shape_baked_folder_serves_in_vllm(name, shapes_root, shared_data):
    why = _vllm_can_serve(name)
    if why:  # vLLM's Gemma3ForConditionalGeneration imports transformers' image processor
        pytest.skip(f"vLLM cannot load the Gemma-3 multimodal class here: {why} (the CPU torch "
                    "2.13.0+cpu has no torchvision build on PyPI; GPU installs have it)")
    if name not in _ARTIFACTS:
        test_shape_attribution_plan_and_bake(name, shapes_root, shared_data)
    art = _ARTIFACTS[name]
    report = shapes_root / name / "verify.json"
    proc = run_culnig("verify", "--model", str(art["src"]), "--set", str(art["set"]), "--masked",
                      str(art["baked"]), "--vllm", "--report", str(report),
                      env={"VLLM_CPU_KVCACHE_SPACE": "1"}, timeout=1500)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    data = json.loads(report.read_text())
    assert data["ok"] and data["vllm_tokens"] == data["hf_tokens"]
    assert data["vllm_token_matches"] == data["prompts"] >= 5
    shutil.rmtree(shapes_root / name, ignore_errors=True)


@pytest.mark.slow
def test_wrong_fused_offset_fails_the_phi4_check(shared_data):
    """The Phi-4 check with k read one head too late in qkv_proj (a registry copy's mistake)."""
    items = blend_pair()
    model, tok, _ = paper_model("phi-4", dtype=torch.float64, **SHAPES["phi-4"])
    layout = layout_for(model.config)
    wrong = shifted(layout, "k", layout.head_dim)
    assert wrong.site("k").rows != layout.site("k").rows
    with pytest.raises(AssertionError, match=r"phi-4 \w+\.k"):
        check_attribution("phi-4", model, tok, items, wrong, oracle_layout(model.config, layout))
