"""``culnig attribute --plan``: counts, bytes and the fit verdict from a config alone, the
activation estimate against the measured CPU peak, and the command line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from attribution.engine import AttributionOptions, Attributor, attribute
from attribution.memory_plan import (GIB, WIDTH, accumulator_bytes, activation_bytes,
                                     batch_shapes, make_plan, token_lengths)
from attribution.items import Item
from culnig.registry import MODULES, layout_for
from culnig.testing import tiny_model
from culnig.testing.paper_configs import CONFIG_DIR, cpu_peak_bytes, parameter_count
from tests.conftest import run_culnig, single_error
from tests.test_attribution import make_items, write_items


@pytest.fixture
def gemma12b(tmp_path):
    """A folder with gemma-3-12b-it's published config.json and nothing else (no weights, no
    tokenizer)."""
    folder = tmp_path / "gemma-3-12b-it"
    folder.mkdir()
    shutil.copy(CONFIG_DIR / "gemma-3-12b-it.json", folder / "config.json")
    return folder


def test_plan_reads_the_config_only(gemma12b, monkeypatch):
    import safetensors
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the plan must not load weights")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", refuse)
    (gemma12b / "model.safetensors").write_bytes(b"not weights")  # never opened
    items = make_items()
    opts = AttributionOptions(modules=MODULES, aggregations=("max", "mean"), batch_size=4)
    plan = make_plan(str(gemma12b), items, opts, dtype="bf16", gpu_memory_gib=80)
    # gemma-3-12b-it per layer: gate/up 15360, q 16 x 256, k/v 8 x 256; 48 layers.
    per_layer = 2 * 15360 + 4096 + 2 * 2048
    countries = len({it.country for it in items})
    assert plan.accumulators == 8 * 48 * per_layer * (countries + 1) * 2
    assert plan.n_parameters == parameter_count("gemma-3-12b-it")
    assert abs(plan.weights - 12.2e9 * 2) / (12.2e9 * 2) < 0.01  # 12.2B parameters in bf16
    assert "estimated" in plan.lengths_from  # no tokenizer files: 4 characters a token
    lines = plan.lines()
    assert all(len(line) <= WIDTH for line in lines)
    table = {ln.split()[0]: ln.split()[1:3] for ln in lines if ln.split()[:1] and ln.split()[0] in MODULES}
    assert table == {"gate": ["15,360", "737,280"], "up": ["15,360", "737,280"],
                     "q": ["4,096", "196,608"], "k": ["2,048", "98,304"], "v": ["2,048", "98,304"]}
    assert any(ln.startswith("gpu memory:") and ln.endswith(": fits") for ln in lines)


def test_fit_verdict_follows_the_gpu_memory(gemma12b):
    items = make_items()
    opts = AttributionOptions(batch_size=8)
    small = make_plan(str(gemma12b), items, opts, dtype="bf16", gpu_memory_gib=24)
    big = make_plan(str(gemma12b), items, opts, dtype="bf16", gpu_memory_gib=80)
    none = make_plan(str(gemma12b), items, opts, dtype="bf16")
    assert small.peak == big.peak == none.peak
    assert 24 * GIB < big.peak < 80 * GIB  # 24.4 GB of bf16 weights alone
    assert small.fits is False and big.fits is True and none.fits is None
    assert any("does NOT fit" in ln for ln in small.lines())
    assert not any(ln.startswith("gpu memory:") for ln in none.lines())


def test_batches_are_the_engines_batches():
    """batch_shapes forms the batches the engine forms: same items, same padded lengths."""
    model, tok = tiny_model("llama")
    items = make_items()
    opts = AttributionOptions(batch_size=3)
    att = Attributor(model, tok, layout_for(model.config), opts)
    seen = []
    original = att._collate

    def spy(encs, its, index):
        batch = original(encs, its, index)
        seen.append(tuple(batch.input_ids.shape))
        return batch

    att._collate = spy
    att.run(items, progress=False)
    assert seen == batch_shapes(token_lengths(items, tok, opts), 3)


# Reduced widths (not the paper's: those run in test_paper_shapes, slow) with the paper's ratios:
# intermediate 3 x hidden, grouped-query attention 4:1, head_dim != hidden / heads.
MEDIUM = dict(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=2,
              num_hidden_layers=2)


@pytest.mark.parametrize("arch,dtype,n", [("phi3", "fp32", 4), ("gemma3", "fp32", 4),
                                          ("qwen3", "bf16", 2)])
def test_activation_estimate_within_25_percent_of_the_measured_cpu_peak(arch, dtype, n, shared_data):
    from attribution.identification import blend_items

    kw = dict(MEDIUM)
    if arch != "phi3":
        kw["head_dim"] = 64
    if arch == "gemma3":
        kw.update(query_pre_attn_scalar=64, layer_types=["sliding_attention", "full_attention"])
    model, tok = tiny_model(arch, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype], **kw)
    layout = layout_for(model.config)
    neur, _, _ = blend_items(countries=["Spain", "China"], max_per_country=2, seed=0)
    keys = ("id", "dataset", "country", "answer", "prompt", "answer_prefix", "control")
    items = [Item(**{k: r[k] for k in keys}) for r in neur[:n]]
    opts = AttributionOptions(batch_size=n)
    _, measured = cpu_peak_bytes(attribute, model, tok, items, layout, opts)
    (b, length), = batch_shapes(token_lengths(items, tok, opts), n)
    est = (activation_bytes(model.config, layout, b, length, dtype, opts.modules).total
           + accumulator_bytes(layout, 2, opts.modules, opts.aggregations))
    assert abs(est / measured - 1) <= 0.25, (est / 2**20, measured / 2**20)


def test_estimate_grows_with_tokens_and_layers():
    model, _ = tiny_model("llama")
    layout = layout_for(model.config)
    a = activation_bytes(model.config, layout, 4, 100, "bf16")
    b = activation_bytes(model.config, layout, 8, 100, "bf16")
    assert b.projections == 2 * a.projections and b.mlp == 2 * a.mlp
    assert activation_bytes(model.config, layout, 4, 100, "fp32").projections == 2 * a.projections
    only_gate = activation_bytes(model.config, layout, 4, 100, "bf16", ("gate",))
    assert only_gate.projections < a.projections  # unhooked q/k/v outputs are not kept


# --- command line ---------------------------------------------------------------------------------
def test_cli_plan_needs_no_out_and_prints_the_plan(gemma12b, tmp_path):
    data = write_items(tmp_path / "items.jsonl", make_items())
    proc = run_culnig("attribute", "--plan", "--model", str(gemma12b), "--data", str(data),
                      "--dtype", "bf16", "--batch-size", "16", "--gpu-memory", "80")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"plan:        {gemma12b}"
    assert lines[1].startswith("shape:       gemma3, 48 layers, hidden 3840, 16/8 heads of 256")
    assert any(ln.startswith("weights:") and "12.19B" in ln for ln in lines)
    assert lines[-2].startswith("gpu memory:") or lines[-1].startswith("note:")
    assert all(len(ln) <= WIDTH for ln in lines)
    assert not list(tmp_path.glob("*.safetensors*"))


def test_cli_without_plan_still_needs_out(gemma12b, tmp_path):
    data = write_items(tmp_path / "items.jsonl", make_items())
    proc = run_culnig("attribute", "--model", str(gemma12b), "--data", str(data))
    assert "--out" in single_error(proc)


def test_cli_plan_of_an_unreachable_hub_id_is_one_line(tmp_path):
    data = write_items(tmp_path / "items.jsonl", make_items())
    proc = run_culnig("attribute", "--plan", "--model", "culnig-nonexistent/no-such-model",
                      "--data", str(data), env={"HF_HUB_OFFLINE": "1"})
    assert "culnig-nonexistent/no-such-model" in single_error(proc)


def test_plan_with_a_tokenizer_counts_real_tokens(tmp_path):
    """A checkpoint folder with a tokenizer: lengths are the engine's own encodings."""
    from culnig.testing import save_tiny_checkpoint

    folder = save_tiny_checkpoint("qwen3", tmp_path / "q")
    items = make_items()
    opts = AttributionOptions(batch_size=3)
    plan = make_plan(str(folder), items, opts)
    model, tok = tiny_model("qwen3")
    assert plan.batches == batch_shapes(token_lengths(items, tok, opts), 3)
    assert plan.lengths_from.startswith("from the tokenizer")
    cfg = json.loads((folder / "config.json").read_text())
    assert plan.layout.n_layers == cfg["num_hidden_layers"]
