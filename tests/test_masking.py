"""Weight-baked masks (`culnig bake` / `culnig verify`, package `masking`) on tiny models of every
registered architecture, and on the real demo model in vLLM."""

from __future__ import annotations

import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from culnig.errors import CulnigError
from culnig.loading import load_model
from culnig.neuron_sets import NeuronSet, file_sha256
from culnig.registry import MODULES, ModelLayout
from culnig.loading import layout_of
from culnig.testing import ARCH_NAMES, save_tiny_checkpoint
from masking.bake import bake, is_baked, prepare_request
from masking.hooks import masked
from masking.manifest import MANIFEST, manifest_matches, read_manifest
from tests.conftest import run_culnig, single_error

TEXT = "Culture shapes how people greet each other, share food, and celebrate the seasons."


# --- helpers -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """``ckpt(arch, shards=1, dtype=fp32)`` -> tiny checkpoint folder, written once per module."""
    root = tmp_path_factory.mktemp("masking_src")
    cache: dict[tuple, Path] = {}

    def get(arch: str, shards: int = 1, dtype: torch.dtype = torch.float32) -> Path:
        key = (arch, shards, dtype)
        if key not in cache:
            name = f"{arch}-{shards}-{str(dtype).split('.')[-1]}"
            cache[key] = save_tiny_checkpoint(arch, root / name, seed=0, shards=shards, dtype=dtype)
        return cache[key]

    return get


def make_set(layout: ModelLayout, path: Path, *, modules=MODULES, layers=None, per_layer: int = 4,
             seed: int = 0, edges: bool = True) -> NeuronSet:
    """Random neurons per module and layer, plus the first and last index of each module (the
    boundaries of fused slices)."""
    rng = np.random.default_rng(seed)
    neurons: dict[str, dict[int, np.ndarray]] = {}
    for m in modules:
        n = layout.n_neurons(m)
        neurons[m] = {}
        for layer in (range(layout.n_layers) if layers is None else layers):
            idx = rng.choice(n, per_layer, replace=False)
            neurons[m][layer] = np.concatenate([idx, [0, n - 1]]) if edges else idx
    ns = NeuronSet.from_indices(layout, "hand", neurons, name_or_path=f"tiny {layout.name}")
    ns.save(path, force=True)
    return ns


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                out[k] = fh.get_tensor(k)
    return out


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def logits(model, tok) -> torch.Tensor:
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def expected_rows(layout: ModelLayout, ns: NeuronSet, names: set[str]) -> dict[str, np.ndarray]:
    """Tensor name -> rows a bake must scale, from the registry's names and offsets."""
    rows: dict[str, list] = {}
    for m, layer, idx in ns.items():
        for kind in ("weight", "bias"):
            hits = [n for n in layout.tensor_names(layer, m, kind) if n in names]
            if hits:
                rows.setdefault(hits[0], []).append(idx + layout.site(m).offset)
    return {k: np.unique(np.concatenate(v)) for k, v in rows.items()}


def no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@lru_cache(maxsize=None)
def _baked(src: str, scale: float, root: str) -> tuple[Path, Path]:
    layout = layout_of(src)
    set_path = Path(root) / f"{Path(src).name}-set.json"
    make_set(layout, set_path)
    out = Path(root) / f"{Path(src).name}-x{scale:g}"
    bake(src, set_path, out, scale=scale)
    return set_path, out


@pytest.fixture(scope="module")
def baked(ckpt, tmp_path_factory):
    """``baked(arch, scale=0.0, shards=1)`` -> (source, set file, output), baked once per module."""
    root = tmp_path_factory.mktemp("masking_out")

    def get(arch: str, scale: float = 0.0, shards: int = 1):
        src = ckpt(arch, shards)
        set_path, out = _baked(str(src), scale, str(root))
        return src, set_path, out

    yield get
    _baked.cache_clear()


# --- every architecture ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_hooked_logits_equal_baked_logits(arch, baked):
    src, set_path, out = baked(arch)
    ns = NeuronSet.load(set_path)
    model, tok, layout = load_model(str(src))
    baked_model, _, _ = load_model(str(out))
    plain = logits(model, tok)
    with masked(model, ns, layout, scale=0.0):
        hooked = logits(model, tok)
    after = logits(model, tok)
    from_bake = logits(baked_model, tok)
    assert float((hooked - from_bake).abs().max()) <= 1e-5
    assert float((plain - from_bake).abs().max()) > 1e-3  # the mask does change the model
    assert torch.equal(after, plain)  # hooks removed on exit
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_only_selected_rows_change_and_everything_else_is_byte_identical(arch, baked):
    src, set_path, out = baked(arch)
    layout = layout_of(src)
    before, after = tensors(src), tensors(out)
    assert before.keys() == after.keys()
    edit = expected_rows(layout, NeuronSet.load(set_path), set(before))
    assert edit  # the set does touch tensors
    for name, t in before.items():
        u = after[name]
        assert u.dtype == t.dtype and u.shape == t.shape, name
        if name not in edit:
            assert raw(u) == raw(t), name
            continue
        keep = np.setdiff1d(np.arange(t.shape[0]), edit[name])
        assert raw(u[keep]) == raw(t[keep]), name
        assert torch.count_nonzero(u[edit[name]]) == 0, name
    for f in src.glob("*.safetensors"):  # file metadata ({"format": "pt"}) kept
        with safe_open(str(f), "pt") as a, safe_open(str(out / f.name), "pt") as b:
            assert a.metadata() == b.metadata() == {"format": "pt"}
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (src / f).read_bytes()


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_scale_two_doubles_the_selected_activations(arch, baked):
    src, set_path, out = baked(arch, scale=2.0)
    ns = NeuronSet.load(set_path)
    model, tok, layout = load_model(str(src))
    baked_model, _, _ = load_model(str(out))
    layer, module = layout.n_layers - 1, "q"
    path = layout.site(module).path  # Phi-3: qkv_proj, which holds the k and v neurons too
    rows = np.unique(np.concatenate([ns.neurons[m][layer] + layout.site(m).offset
                                     for m in MODULES if layout.site(m).path == path]))
    ref = layout.linear(model, layer, module)

    def check(target):
        seen = {}
        handle = layout.linear(target, layer, module).register_forward_hook(
            lambda mod, args, output: seen.update(x=args[0], y=output))
        try:
            logits(target, tok)
        finally:
            handle.remove()
        with torch.no_grad():
            plain = torch.nn.functional.linear(seen["x"], ref.weight, ref.bias)
        keep = np.setdiff1d(np.arange(plain.shape[-1]), rows)
        torch.testing.assert_close(seen["y"][..., rows], 2 * plain[..., rows], rtol=0, atol=1e-6)
        torch.testing.assert_close(seen["y"][..., keep], plain[..., keep], rtol=0, atol=1e-6)
        assert float(plain[..., rows].abs().max()) > 1e-3

    check(baked_model)  # baked rows x2
    with masked(model, ns, layout, scale=2.0):  # hook: output dims x2
        check(model)
    with masked(model, ns, layout, scale=2.0):
        hooked = logits(model, tok)
    assert float((hooked - logits(baked_model, tok)).abs().max()) <= 1e-5


def test_qwen2_bias_entries_are_scaled_with_their_rows(baked):
    src, set_path, out = baked("qwen2")
    ns = NeuronSet.load(set_path)
    before, after = tensors(src), tensors(out)
    manifest = read_manifest(out)
    assert manifest["bias_tensors_edited"] == 3 * 2  # q/k/v biases of both layers
    for m in ("q", "k", "v"):
        for layer, idx in ns.neurons[m].items():
            name = f"model.layers.{layer}.self_attn.{m}_proj.bias"
            assert torch.count_nonzero(before[name][idx]) == idx.size  # were non-zero
            assert torch.count_nonzero(after[name][idx]) == 0
            keep = np.setdiff1d(np.arange(before[name].numel()), idx)
            assert torch.equal(after[name][keep], before[name][keep])


def test_phi3_fused_offsets_match_the_unfused_slices(baked):
    src, set_path, out = baked("phi3")
    ns = NeuronSet.load(set_path)
    cfg = json.loads((src / "config.json").read_text())
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    q, kv, inter = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["intermediate_size"]
    before, after = tensors(src), tensors(out)
    for layer in range(cfg["num_hidden_layers"]):
        for fused, parts in ((f"model.layers.{layer}.self_attn.qkv_proj.weight",
                              (("q", 0, q), ("k", q, kv), ("v", q + kv, kv))),
                             (f"model.layers.{layer}.mlp.gate_up_proj.weight",
                              (("gate", 0, inter), ("up", inter, inter)))):
            expected = []
            for module, start, size in parts:  # what masking unfused q/k/v or gate/up would give
                piece = before[fused][start:start + size].clone()
                piece[ns.neurons[module][layer]] = 0
                expected.append(piece)
            assert after[fused].shape[0] == sum(p.shape[0] for p in expected)
            assert torch.equal(after[fused], torch.cat(expected)), fused


@pytest.mark.parametrize("arch", ["gemma3_text", "qwen3"])
def test_qk_norm_zeroing_the_row_equals_zeroing_before_the_norm(arch, ckpt, tmp_path):
    src = ckpt(arch)
    model, tok, layout = load_model(str(src))
    set_path = tmp_path / "qk.json"
    ns = make_set(layout, set_path, modules=("q", "k"), per_layer=6)
    out = tmp_path / "out"
    bake(str(src), set_path, out)
    with masked(model, ns, layout):  # hooks on q_proj/k_proj: zeroed before q_norm/k_norm
        hooked = logits(model, tok)
    assert float((hooked - logits(load_model(str(out))[0], tok)).abs().max()) <= 1e-5
    # Not the same as zeroing after the norm: RMSNorm over head_dim sees the zero.
    norm = model.get_submodule(f"{layout.arch.layers_path}.0.self_attn.q_norm")
    x = torch.randn(3, layout.head_dim)
    x_zero = x.clone()
    x_zero[:, 1] = 0
    with torch.no_grad():
        before_norm, after_norm = norm(x_zero), norm(x)
        after_norm[:, 1] = 0
    assert torch.all(before_norm[:, 1] == 0)
    assert float((before_norm - after_norm).abs().max()) > 1e-4


# --- shards, dtypes, manifest --------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sharded_checkpoint_rewrites_only_shards_with_edits(arch, ckpt, tmp_path):
    src = ckpt(arch, shards=3)
    layout = layout_of(src)
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    layer = layout.n_layers - 1
    ns = make_set(layout, tmp_path / "s.json", modules=("gate",), layers=[layer])
    target = index[[n for n in layout.tensor_names(layer, "gate") if n in index][0]]
    out = tmp_path / "out"
    result = bake(str(src), tmp_path / "s.json", out)
    shards = sorted(set(index.values()))
    assert result.manifest["shards"]["rewritten"] == [target]
    assert sorted(result.manifest["shards"]["linked"]) == sorted(set(shards) - {target})
    for f in shards:
        same_inode = os.stat(out / f).st_ino == os.stat(src / f).st_ino
        assert same_inode == (f != target), f
    assert (out / "model.safetensors.index.json").read_bytes() == \
        (src / "model.safetensors.index.json").read_bytes()
    model, tok, _ = load_model(str(src))
    with masked(model, ns, layout):
        hooked = logits(model, tok)
    assert float((hooked - logits(load_model(str(out))[0], tok)).abs().max()) <= 1e-5


def test_bf16_keeps_dtype_and_doubles_exactly(ckpt, tmp_path):
    src = ckpt("llama", dtype=torch.bfloat16)
    layout = layout_of(src)
    ns = make_set(layout, tmp_path / "s.json", modules=("up", "v"))
    bake(str(src), tmp_path / "s.json", tmp_path / "out", scale=2.0)
    before, after = tensors(src), tensors(tmp_path / "out")
    for name, rows in expected_rows(layout, ns, set(before)).items():
        assert after[name].dtype == torch.bfloat16
        assert torch.equal(after[name][rows], before[name][rows] * 2)


def test_manifest_records_the_bake_and_matches_only_the_same_request(baked, tmp_path):
    src, set_path, out = baked("mistral")
    manifest = json.loads((out / MANIFEST).read_text())
    layout = layout_of(src)
    assert manifest["format"] == "culnig-mask/1"
    assert manifest["source"]["path"] == str(src.resolve())
    assert "revision" in manifest["source"] and manifest["source"]["revision"] is None
    assert manifest["model"]["fingerprint"] == layout.fingerprint
    assert manifest["set"]["sha256"] == file_sha256(set_path)
    assert manifest["method"] == "hand" and manifest["scale"] == 0.0
    assert manifest["counts"] == NeuronSet.load(set_path).counts()
    assert manifest["shards"] == {"rewritten": ["model.safetensors"], "linked": [], "copied": []}
    from culnig import __version__
    assert manifest["culnig_version"] == __version__

    assert is_baked(out, str(src), set_path, 0.0)
    assert not is_baked(out, str(src), set_path, 2.0)
    key = prepare_request(str(src), set_path, 0.0).key
    assert manifest_matches(out, key)
    again = bake(str(src), set_path, out, skip_if_matching=True)
    assert again.skipped and again.manifest == manifest
    other_set = tmp_path / "other.json"
    make_set(layout, other_set, seed=1)
    assert not is_baked(out, str(src), other_set, 0.0)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "model.safetensors").unlink()
    assert not manifest_matches(copy, key)  # incomplete folder
    assert not manifest_matches(tmp_path / "missing", key)


# --- command line and bad input ------------------------------------------------------------------
def test_cli_bake_then_refuses_existing_output_without_force(ckpt, tmp_path):
    src = ckpt("qwen3")
    make_set(layout_of(src), tmp_path / "s.json")
    out = tmp_path / "out"
    proc = run_culnig("bake", "--model", str(src), "--set", str(tmp_path / "s.json"),
                      "--out", str(out), "--scale", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(out)
    assert read_manifest(out)["counts"]["total"] > 0
    stamp = (out / MANIFEST).read_bytes()
    proc = run_culnig("bake", "--model", str(src), "--set", str(tmp_path / "s.json"),
                      "--out", str(out))
    assert "already exists" in single_error(proc) and "--force" in proc.stderr
    assert (out / MANIFEST).read_bytes() == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def _bad_bake(tmp_path, model: str, set_path: Path, out: Path, env: dict | None = None) -> str:
    proc = run_culnig("bake", "--model", model, "--set", str(set_path), "--out", str(out), env=env)
    line = single_error(proc)
    no_leftovers(out)
    return line


def test_cli_refuses_a_set_from_another_model(ckpt, tmp_path):
    make_set(layout_of(ckpt("llama")), tmp_path / "llama.json")
    line = _bad_bake(tmp_path, str(ckpt("mistral")), tmp_path / "llama.json", tmp_path / "out")
    assert "fingerprint" in line and "llama" in line and "mistral" in line


def test_cli_refuses_an_index_out_of_range_naming_module_layer_index(ckpt, tmp_path):
    src = ckpt("phi3")
    layout = layout_of(src)
    data = make_set(layout, tmp_path / "ok.json").to_json()
    n = layout.n_neurons("k")
    data["neurons"]["k"]["1"] = [0, n]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    line = _bad_bake(tmp_path, str(src), tmp_path / "bad.json", tmp_path / "out")
    assert f"module k layer 1 index {n} is out of range" in line


def test_cli_refuses_an_unwritable_output_location(ckpt, tmp_path):
    src = ckpt("llama")
    make_set(layout_of(src), tmp_path / "s.json")
    (tmp_path / "a-file").write_text("not a folder\n")
    out = tmp_path / "a-file" / "masked"
    proc = run_culnig("bake", "--model", str(src), "--set", str(tmp_path / "s.json"), "--out", str(out))
    assert "cannot write under" in single_error(proc)
    assert (tmp_path / "a-file").read_text() == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "s.json"]


def test_cli_refuses_pickle_only_checkpoints_and_says_why(ckpt, tmp_path):
    src = ckpt("llama")
    make_set(layout_of(src), tmp_path / "s.json")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(src / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    line = _bad_bake(tmp_path, str(pickled), tmp_path / "s.json", tmp_path / "out")
    assert "pickle" in line and "arbitrary code" in line and "safetensors" in line
    assert "save_pretrained" in line  # how to convert


def test_cli_hub_id_offline_is_a_clear_error(ckpt, tmp_path):
    make_set(layout_of(ckpt("llama")), tmp_path / "s.json")
    line = _bad_bake(tmp_path, "culnig-nonexistent/no-such-model", tmp_path / "s.json",
                     tmp_path / "out", env={"HF_HUB_OFFLINE": "1"})
    assert "culnig-nonexistent/no-such-model" in line and "hub" in line


def test_output_overlapping_the_source_is_refused(ckpt, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ckpt("llama"), src)
    make_set(layout_of(src), tmp_path / "s.json")
    with pytest.raises(CulnigError, match="overlaps the source"):
        bake(str(src), tmp_path / "s.json", src, force=True)
    with pytest.raises(CulnigError, match="overlaps the source"):
        bake(str(src), tmp_path / "s.json", src / "masked")
    assert (src / "model.safetensors").read_bytes() == (ckpt("llama") / "model.safetensors").read_bytes()


def test_crash_mid_bake_leaves_no_folder_and_keeps_an_existing_one(ckpt, tmp_path, monkeypatch):
    import masking.bake as bake_mod

    src = ckpt("llama", shards=3)
    make_set(layout_of(src), tmp_path / "s.json")
    real = bake_mod.write_scaled

    def crash(src_file, dst_file, *args, **kwargs):
        real(src_file, dst_file, *args, **kwargs)  # a shard is fully written, then the crash
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(bake_mod, "write_scaled", crash)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        bake(str(src), tmp_path / "s.json", out)
    no_leftovers(out)
    out.mkdir()
    (out / "previous.txt").write_text("old bake\n")
    with pytest.raises(RuntimeError, match="simulated crash"):
        bake(str(src), tmp_path / "s.json", out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_hooks_are_removed_when_the_block_raises(ckpt, tmp_path):
    model, tok, layout = load_model(str(ckpt("qwen2")))
    ns = make_set(layout, tmp_path / "s.json")
    with pytest.raises(ValueError, match="inside"):
        with masked(model, ns, layout):
            assert any(m._forward_hooks for m in model.modules())
            raise ValueError("inside")
    assert not any(m._forward_hooks for m in model.modules())


def test_cli_verify_passes_on_a_bake_and_refuses_another_sets_folder(baked, tmp_path):
    src, set_path, out = baked("gemma3", scale=2.0)
    report = tmp_path / "report.json"
    proc = run_culnig("verify", "--model", str(src), "--set", str(set_path), "--masked", str(out),
                      "--report", str(report))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verify:       OK" in proc.stdout
    data = json.loads(report.read_text())
    assert data["ok"] and data["scale"] == 2.0 and data["max_abs_diff"] <= 1e-5
    assert data["mask_effect"] > 1e-3 and data["vllm_tokens"] is None
    other = tmp_path / "other.json"
    make_set(layout_of(src), other, seed=3)
    proc = run_culnig("verify", "--model", str(src), "--set", str(other), "--masked", str(out))
    assert "baked from another set" in single_error(proc)


# --- the real demo model in vLLM -------------------------------------------------------------------
@pytest.mark.vllm
def test_baked_demo_model_matches_hooks_and_vllm_greedy_tokens(demo_model, tmp_path):
    """One vLLM engine: `culnig verify --vllm` on a baked demo checkpoint (1% of the gate neurons of
    three layers and 16 q neurons zeroed)."""
    layout = layout_of(demo_model)
    rng = np.random.default_rng(0)
    neurons = {"gate": {layer: rng.choice(layout.n_neurons("gate"), layout.n_neurons("gate") // 100,
                                          replace=False) for layer in (2, 8, 14)},
               "q": {5: rng.choice(layout.n_neurons("q"), 16, replace=False)}}
    set_path = tmp_path / "demo_set.json"
    NeuronSet.from_indices(layout, "hand", neurons, name_or_path=str(demo_model)).save(set_path)
    out = tmp_path / "masked"
    proc = run_culnig("bake", "--model", str(demo_model), "--set", str(set_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report_path = tmp_path / "report.json"
    proc = run_culnig("verify", "--model", str(demo_model), "--set", str(set_path), "--masked",
                      str(out), "--vllm", "--report", str(report_path),
                      env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    report = json.loads(report_path.read_text())
    assert report["ok"]
    assert report["max_abs_diff"] <= 1e-5  # hooked original == baked, transformers fp32
    assert report["mask_effect"] > 0.1  # the masked model really differs from the original
    assert report["vllm_tokens"] == report["hf_tokens"]
    assert report["vllm_token_matches"] == report["prompts"] >= 5
    assert report["vllm_logprob_diff"] <= 1e-3
