"""What a weight swap loads and how it is proven: the tensors of a checkpoint that differ from the
engine's base checkpoint, completed to whole fused layers for vLLM, and their expected digests.

A baked checkpoint (``culnig_mask.json``) differs from its source only inside the shards the
manifest lists as rewritten; those are compared tensor by tensor with the source's bytes. Another
checkpoint with the same tensor names (a fine-tuning step) is compared in full. A checkpoint that
is neither (other names, another source) cannot be swapped in: :class:`Unrelated`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from culnig.errors import CulnigError
from culnig.registry import ATTN_MODULES, ModelLayout
from masking.manifest import read_manifest
from masking.safetensors_io import Header, read_header
from masking.source import weight_map


# config.json keys that do not change what a model computes
CONFIG_NOISE = {"_name_or_path", "transformers_version"}


class Unrelated(Exception):
    """The checkpoint is not a variant of the engine's base: start an engine on it instead."""


class SwapError(CulnigError):
    """A swap failed or could not be proven: the engine must be discarded."""


@dataclass(frozen=True)
class Weights:
    """A checkpoint folder's tensors: name -> file, and each file's header."""

    folder: Path
    files: dict[str, str]
    headers: dict[str, Header]

    @classmethod
    def of(cls, folder: str | Path) -> "Weights":
        folder = Path(folder).resolve()
        files, _ = weight_map(folder)
        headers = {f: read_header(folder / f) for f in sorted(set(files.values()))}
        for name, f in files.items():
            if name not in headers[f].tensors:
                raise SwapError(f"{folder / f}: has no tensor {name}, although the index says so")
        return cls(folder, files, headers)

    def info(self, name: str):
        return self.headers[self.files[name]].tensors[name]

    def view(self, name: str) -> np.ndarray:
        """The raw bytes of one tensor (a read-only memory map)."""
        f = self.files[name]
        h, info = self.headers[f], self.info(name)
        return np.memmap(self.folder / f, dtype=np.uint8, mode="r",
                         offset=h.data_start + info.begin, shape=(info.end - info.begin,))


def base_of(folder: str | Path) -> Path:
    """The checkpoint an engine for ``folder`` starts from: a bake's source, else the folder."""
    manifest = read_manifest(folder)
    if manifest is not None:
        source = Path(str((manifest.get("source") or {}).get("path", "")))
        if (source / "config.json").is_file():
            return source.resolve()
    return Path(folder).resolve()


def _config(folder: Path) -> dict:
    import json

    cfg = json.loads((folder / "config.json").read_text())
    return {k: v for k, v in cfg.items() if k not in CONFIG_NOISE}


def changed_tensors(folder: Weights, base: Weights) -> set[str]:
    """Names of the tensors of ``folder`` whose bytes, dtype or shape differ from ``base``'s."""
    if folder.folder == base.folder:
        return set()
    if set(folder.files) != set(base.files):
        raise Unrelated(f"{folder.folder} has other tensors than {base.folder}")
    if _config(folder.folder) != _config(base.folder):  # the engine was built from base's config
        raise Unrelated(f"{folder.folder} has another config.json than {base.folder}")
    manifest = read_manifest(folder.folder)
    if manifest is not None and Path(str(manifest["source"]["path"])).resolve() == base.folder:
        files = set(manifest.get("shards", {}).get("rewritten", []))
    else:
        files = set(folder.files.values())
    out = set()
    for name in sorted(n for n, f in folder.files.items() if f in files):
        a, b = folder.info(name), base.info(name)
        if (a.dtype, a.shape) != (b.dtype, b.shape) or not np.array_equal(folder.view(name),
                                                                           base.view(name)):
            out.add(name)
    return out


def tensor_sites(layout: ModelLayout, names) -> dict[str, tuple[int, str, str]]:
    """``tensor name -> (layer, site path, weight|bias)`` of the registry's projections."""
    names = set(names)
    out = {}
    for layer in range(layout.n_layers):
        for module in layout.sites:
            for kind in ("weight", "bias"):
                for name in layout.tensor_names(layer, module, kind):
                    if name in names:
                        out[name] = (layer, layout.site(module).path, kind)
    return out


def fused_complete(names: set[str], layout: ModelLayout, sites: dict) -> set[str]:
    """``names`` plus every other tensor of each touched layer's attention (q, k, v) or MLP
    (gate, up) projections: vLLM fuses them (``qkv_proj``, ``gate_up_proj``) and rebuilds a
    touched fused layer from empty memory, so a partial layer would hold garbage."""
    attn_paths = {layout.site(m).path for m in ATTN_MODULES}
    block = {n: (layer, path in attn_paths) for n, (layer, path, _) in sites.items()}
    touched = set()
    for n in names:
        if n not in sites:
            raise Unrelated(f"tensor {n} is not a q/k/v/gate/up projection; vLLM swaps only those")
        touched.add(block[n])
    return set(names) | {n for n, b in block.items() if b in touched}


def expected_digests(weights: Weights, names, dtype) -> dict[str, str]:
    """sha256 of each named tensor of ``weights`` cast to ``dtype`` (what the engine must hold)."""
    from safetensors import safe_open

    from culnig.engine.vllm_worker import digest

    by_file: dict[str, list[str]] = {}
    for n in sorted(names):
        by_file.setdefault(weights.files[n], []).append(n)
    out = {}
    for f, group in by_file.items():
        with safe_open(str(weights.folder / f), framework="pt") as fh:
            for n in group:
                out[n] = digest(fh.get_tensor(n).to(dtype))
    return out


def check_digests(got: dict[str, str], want: dict[str, str], folder: Path) -> None:
    bad = sorted(n for n in want if got.get(n) != want[n])
    if bad:
        raise SwapError(f"{folder}: after the swap the engine holds other values than the "
                        f"checkpoint for {len(bad)} of {len(want)} tensor(s), e.g. {bad[0]}; the "
                        "engine was discarded")
