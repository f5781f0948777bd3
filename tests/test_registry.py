"""The architecture registry against real (tiny, random-weight) transformers models and checkpoints."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
import torch
from safetensors import safe_open

from culnig.errors import UnsupportedArchitecture
from culnig.registry import MODULES, layout_for, supported_model_types
from culnig.loading import layout_of
from culnig.testing import ARCH_NAMES, save_tiny_checkpoint, tiny_config, tiny_model, tiny_tokenizer

# Per-layer neuron counts of the tiny models, written out by hand from tiny_models' configs
# (gate = up = intermediate_size, q = heads * head_dim, k = v = kv_heads * head_dim; 4 heads, 2 kv heads).
EXPECTED_NEURONS = {
    "llama": dict(gate=80, up=80, q=48, k=24, v=24),  # head_dim 12 = 48 / 4
    "mistral": dict(gate=96, up=96, q=64, k=32, v=32),  # explicit head_dim 16
    "qwen2": dict(gate=72, up=72, q=48, k=24, v=24),  # no head_dim field: 48 / 4
    "qwen3": dict(gate=88, up=88, q=64, k=32, v=32),  # explicit head_dim 16
    "gemma3_text": dict(gate=96, up=96, q=64, k=32, v=32),  # head_dim 16
    "gemma3": dict(gate=64, up=64, q=80, k=40, v=40),  # text_config head_dim 20
    "phi3": dict(gate=80, up=80, q=48, k=24, v=24),  # fused; head_dim 48 / 4
}
EXPECTED_LAYERS = {"llama": 2, "mistral": 2, "qwen2": 2, "qwen3": 2, "gemma3_text": 3, "gemma3": 3, "phi3": 2}


@lru_cache(maxsize=None)
def _model(arch: str):
    return tiny_model(arch, seed=0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> directory of its saved tiny checkpoint (written once per module)."""
    root = tmp_path_factory.mktemp("tiny_ckpts")
    cache: dict[str, object] = {}

    def get(arch: str, shards: int = 1):
        key = f"{arch}-{shards}"
        if key not in cache:
            cache[key] = save_tiny_checkpoint(arch, root / key, seed=0, shards=shards)
        return cache[key]

    return get


def _checkpoint_keys(path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                shapes[k] = tuple(fh.get_slice(k).get_shape())
    return shapes


def _text_config(config):
    return config.text_config if config.model_type == "gemma3" else config


def _expected_from_config(config) -> dict[str, int]:
    text = _text_config(config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return dict(
        gate=text.intermediate_size,
        up=text.intermediate_size,
        q=text.num_attention_heads * head_dim,
        k=text.num_key_value_heads * head_dim,
        v=text.num_key_value_heads * head_dim,
    )


def test_arch_names_are_the_registry():
    from culnig.registry import ARCHITECTURES

    assert set(ARCH_NAMES) == set(ARCHITECTURES)
    assert len(ARCH_NAMES) == 7


# --- sizes of the loaded modules ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_neuron_counts_match_config_and_hand_numbers(arch):
    model, _ = _model(arch)
    layout = layout_for(model.config)
    assert layout.name == arch
    counts = {m: layout.n_neurons(m) for m in MODULES}
    assert counts == _expected_from_config(model.config)
    assert counts == EXPECTED_NEURONS[arch]
    assert layout.n_layers == EXPECTED_LAYERS[arch]
    assert layout.neuron_counts() == {m: EXPECTED_LAYERS[arch] * n for m, n in EXPECTED_NEURONS[arch].items()}
    # The tiny configs must keep the dimensions apart, or swapped-dimension bugs would not show.
    assert layout.intermediate_size != layout.hidden_size
    assert layout.n_kv_heads < layout.n_heads
    assert layout.vocab_size == len(tiny_tokenizer())


def test_gemma3_head_dim_is_not_hidden_over_heads():
    layout = layout_for(_model("gemma3")[0].config)
    assert (layout.head_dim, layout.hidden_size, layout.n_heads) == (20, 48, 4)
    assert layout.head_dim != layout.hidden_size // layout.n_heads


@pytest.mark.parametrize("arch", [a for a in ARCH_NAMES if a != "phi3"])
def test_unfused_sites_are_whole_linears(arch):
    model, _ = _model(arch)
    layout = layout_for(model.config)
    assert not layout.arch.fused
    for layer in range(layout.n_layers):
        for m in MODULES:
            lin = layout.linear(model, layer, m)
            assert isinstance(lin, torch.nn.Linear)
            site = layout.site(m)
            assert (site.offset, site.size) == (0, layout.n_neurons(m))
            assert lin.out_features == layout.n_neurons(m)
            assert lin.in_features == layout.hidden_size
            assert lin.weight.shape[0] == len(range(lin.out_features)[site.rows])
        # gate and up are different modules, q/k/v are three modules
        assert layout.linear(model, layer, "gate") is not layout.linear(model, layer, "up")
        assert len({id(layout.linear(model, layer, m)) for m in ("q", "k", "v")}) == 3


def test_phi3_slices_tile_the_fused_linears():
    model, _ = _model("phi3")
    layout = layout_for(model.config)
    assert layout.arch.fused
    for layer in range(layout.n_layers):
        gate_up = layout.linear(model, layer, "gate")
        assert gate_up is layout.linear(model, layer, "up")
        assert gate_up is layout.layers(model)[layer].mlp.gate_up_proj
        g, u = layout.site("gate"), layout.site("up")
        assert (g.offset, g.size, u.offset, u.size) == (0, 80, 80, 80)
        assert g.rows.stop == u.rows.start and u.rows.stop == gate_up.out_features == 160

        qkv = layout.linear(model, layer, "q")
        assert qkv is layout.linear(model, layer, "k") is layout.linear(model, layer, "v")
        assert qkv is layout.layers(model)[layer].self_attn.qkv_proj
        q, k, v = (layout.site(m) for m in ("q", "k", "v"))
        assert [(s.offset, s.size) for s in (q, k, v)] == [(0, 48), (48, 24), (72, 24)]
        assert q.rows.stop == k.rows.start and k.rows.stop == v.rows.start
        assert v.rows.stop == qkv.out_features == 96


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_layers_has_n_layers_entries(arch):
    model, _ = _model(arch)
    layout = layout_for(model.config)
    layers = layout.layers(model)
    assert len(layers) == layout.n_layers == _text_config(model.config).num_hidden_layers


def test_layers_on_the_wrong_model_class_is_a_clear_error():
    # A Gemma-3 multimodal config resolved against a text-only module tree.
    model, _ = _model("gemma3_text")
    layout = layout_for(_model("gemma3")[0].config)
    with pytest.raises(UnsupportedArchitecture, match="model.language_model.layers"):
        layout.layers(model)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_q_k_v_biases_only_for_qwen2(arch):
    model, _ = _model(arch)
    layout = layout_for(model.config)
    for layer in range(layout.n_layers):
        for m in ("q", "k", "v"):
            bias = layout.linear(model, layer, m).bias
            if arch == "qwen2":
                assert bias is not None and bias.shape == (layout.n_neurons(m),)
            else:
                assert bias is None
        for m in ("gate", "up"):
            assert layout.linear(model, layer, m).bias is None


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_qk_norm_flag_matches_modules(arch):
    model, _ = _model(arch)
    layout = layout_for(model.config)
    assert layout.arch.qk_norm == (arch in ("qwen3", "gemma3_text", "gemma3"))
    for layer in layout.layers(model):
        attn = layer.self_attn
        if layout.arch.qk_norm:
            assert attn.q_norm.weight.shape == (layout.head_dim,)
            assert attn.k_norm.weight.shape == (layout.head_dim,)
        else:
            assert not hasattr(attn, "q_norm") and not hasattr(attn, "k_norm")


# --- checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_checkpoint_tensor_names_resolve(arch, checkpoints):
    path = checkpoints(arch)
    shapes = _checkpoint_keys(path)
    layout = layout_of(str(path))
    assert layout.fingerprint == layout_for(_model(arch)[0].config).fingerprint
    for layer in range(layout.n_layers):
        for m in MODULES:
            present = [n for n in layout.tensor_names(layer, m) if n in shapes]
            assert len(present) == 1, (layer, m, layout.tensor_names(layer, m))
            name = present[0]
            if arch == "gemma3":
                assert name.startswith("language_model.model.layers.")
            else:
                assert name.startswith("model.layers.")
            rows = shapes[name][0]
            site = layout.site(m)
            assert site.rows.stop <= rows
            if not layout.arch.fused:
                assert rows == layout.n_neurons(m)
            assert shapes[name][1] == layout.hidden_size
        if arch == "qwen2":
            for m in ("q", "k", "v"):
                present = [n for n in layout.tensor_names(layer, m, kind="bias") if n in shapes]
                assert len(present) == 1 and shapes[present[0]] == (layout.n_neurons(m),)
    if layout.arch.fused:
        gu = layout.tensor_names(0, "gate")[0]
        qkv = layout.tensor_names(0, "q")[0]
        assert shapes[gu][0] == layout.n_neurons("gate") + layout.n_neurons("up")
        assert shapes[qkv][0] == sum(layout.n_neurons(m) for m in ("q", "k", "v"))


def test_gemma3_checkpoint_uses_hub_names_and_vision_never_matches(checkpoints):
    path = checkpoints("gemma3")
    keys = set(_checkpoint_keys(path))
    assert not any(k.startswith("model.") for k in keys), "not the hub (gemma-3-12b-it) spelling"
    assert "language_model.model.embed_tokens.weight" in keys
    vision = {k for k in keys if k.startswith("vision_tower.")}
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)
    assert any(k.startswith("multi_modal_projector.") for k in keys)
    # The vision tower has q/k/v projections in an encoder "layers.0" too; the registry must not
    # resolve to any of them.
    assert "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    layout = layout_of(str(path))
    candidates = {
        n for layer in range(layout.n_layers) for m in MODULES for kind in ("weight", "bias")
        for n in layout.tensor_names(layer, m, kind)
    }
    assert not candidates & vision
    assert not any("vision" in n for n in candidates)


@pytest.mark.parametrize("arch", ["gemma3", "phi3"])
def test_sharded_checkpoint_loads_back_identically(arch, checkpoints):
    import transformers

    path = checkpoints(arch, shards=3)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not (path / "model.safetensors").exists()
    shapes = _checkpoint_keys(path)
    assert set(index["weight_map"]) == set(shapes)
    layout = layout_of(str(path))
    for layer in range(layout.n_layers):
        for m in MODULES:
            assert any(n in index["weight_map"] for n in layout.tensor_names(layer, m))

    cls = transformers.AutoModelForImageTextToText if arch == "gemma3" else transformers.AutoModelForCausalLM
    loaded = cls.from_pretrained(path)
    model, tok = _model(arch)
    assert type(loaded) is type(model)
    batch = tok(["Answer: A", "{\"label\": \"B\"} 42"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    reloaded_tok = transformers.AutoTokenizer.from_pretrained(path)
    assert reloaded_tok("Answer: A {1}").input_ids == tok("Answer: A {1}").input_ids


# --- fingerprints and errors --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_fingerprint(arch):
    a = layout_for(tiny_config(arch))
    b = layout_for(tiny_config(arch))
    assert a.fingerprint == b.fingerprint
    assert layout_for(tiny_config(arch).to_dict()).fingerprint == a.fingerprint
    wider = layout_for(tiny_config(arch, intermediate_size=128))
    assert wider.intermediate_size == 128
    assert wider.fingerprint != a.fingerprint


def test_fingerprint_differs_between_architectures():
    prints = {layout_for(tiny_config(arch)).fingerprint for arch in ARCH_NAMES}
    assert len(prints) == len(ARCH_NAMES)


@pytest.mark.parametrize("config", ["gpt2", {"model_type": "bert", "architectures": ["BertModel"]}])
def test_unsupported_architecture(config):
    if config == "gpt2":
        from transformers import GPT2Config

        config, model_type = GPT2Config(), "gpt2"
    else:
        model_type = "bert"
    with pytest.raises(UnsupportedArchitecture) as exc:
        layout_for(config)
    msg = str(exc.value)
    assert repr(model_type) in msg
    for supported in supported_model_types():
        assert supported in msg
    if model_type == "bert":
        assert "BertModel" in msg


# --- the tiny tokenizer and models --------------------------------------------------------------


def test_tiny_tokenizer_basics():
    tok = tiny_tokenizer()
    assert tok.bos_token == "<bos>" and tok.eos_token == "<eos>"
    assert tok.pad_token == "<pad>" and tok.unk_token == "<unk>"
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    ids = tok("Hello world").input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.bos_token_id not in tok("Hello world", add_special_tokens=False).input_ids
    for label in list("ABCDE") + list("0123456789") + ["{", "}", '"', ":", ","]:
        ids = tok(label, add_special_tokens=False).input_ids
        assert len(ids) == 1, (label, ids)
        assert tok.decode(ids) == label
    text = 'Answer: {"label": "C", "n": 7}'
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    batch = tok(["A", "a longer sentence"], padding=True)
    assert batch.input_ids[0][-1] == tok.pad_token_id and batch.attention_mask[0][-1] == 0


def test_tiny_tokenizer_is_deterministic_and_fresh():
    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert a is not b
    assert a.get_vocab() == b.get_vocab()
    a.add_tokens(["<extra>"])
    assert len(a) == len(b) + 1
    assert len(tiny_tokenizer()) == len(b)


def test_tiny_chat_template():
    tok = tiny_tokenizer()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Pick A or B."}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><|system|>\nBe brief.<eos>\n<|user|>\nPick A or B.<eos>\n<|assistant|>\n"
    plain = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert plain == prompt.removesuffix("<|assistant|>\n")
    ids = tok(prompt, add_special_tokens=False).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.convert_tokens_to_ids("<|assistant|>") in ids


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_forward_gives_finite_logits(arch):
    model, tok = _model(arch)
    batch = tok(["Answer: A", "The capital is {B} 12"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    vocab = _text_config(model.config).vocab_size
    assert logits.shape == (2, batch.input_ids.shape[1], vocab)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0.1  # weights are drawn at a scale where activations are not tiny


def test_tiny_model_is_seeded():
    a, _ = tiny_model("llama", seed=0)
    b, _ = tiny_model("llama", seed=0)
    c, _ = tiny_model("llama", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.mlp.gate_proj.weight"], sc["model.layers.0.mlp.gate_proj.weight"])
    # norms are perturbed away from their defaults, so norm-handling bugs change outputs
    assert not torch.allclose(sa["model.layers.0.input_layernorm.weight"], torch.ones(48))
