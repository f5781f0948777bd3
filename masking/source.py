"""Find a source checkpoint's folder and its safetensors weight files, refusing pickle weights.

``resolve_source(ref)`` turns a local folder or a hub id into a :class:`Source`: the real folder
(for a hub id, the snapshot that ``huggingface_hub.snapshot_download`` keeps in its cache), the
revision when it is known, and the weight map (tensor name -> safetensors file), without loading any
tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from culnig.errors import CulnigError
from culnig.loading import (PICKLE_SUFFIXES, SAFETENSORS_INDEX, SAFETENSORS_SINGLE,  # noqa: F401
                            read_weight_index, safetensors_files, weights_stamp)

# Weight formats that would put unmasked weights beside the masked ones if copied to the output
# (besides the pickle suffixes).
OTHER_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")
# Files a hub download needs for a servable safetensors checkpoint (no pickle, no other formats).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Source:
    ref: str  # as the user gave it
    path: Path  # the real checkpoint folder
    revision: str | None  # commit of a hub snapshot, when known
    weight_map: dict[str, str]  # tensor name -> file name (relative to path)
    index_file: str | None  # model.safetensors.index.json when sharded

    @property
    def weight_files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def stamp(self) -> str:
        """:func:`culnig.loading.weights_stamp` of the weight files: the weights' identity."""
        return weights_stamp(self.path, self.weight_files)


def _looks_like_hub_id(ref: str) -> bool:
    return ref.count("/") == 1 and not ref.startswith((".", "/", "~"))


def _download(ref: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise CulnigError(f"{ref}: huggingface_hub is not installed; pass a local checkpoint folder") from None
    try:
        return Path(snapshot_download(ref, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # offline, auth, missing repo, network: one line for the user
        detail = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise CulnigError(
            f"{ref}: not a local folder and the Hugging Face hub could not provide it "
            f"({type(exc).__name__}{': ' + detail[:160] if detail else ''}); download it first "
            "(e.g. `hf download ORG/NAME --local-dir DIR`) or pass a local checkpoint folder"
        ) from exc


def _revision_of(path: Path) -> str | None:
    """The commit of a hub cache snapshot folder (``.../snapshots/<commit>``), else None."""
    if path.parent.name == "snapshots" and _COMMIT.match(path.name):
        return path.name
    return None


def resolve_folder(ref: str, revision: str | None = None) -> tuple[Path, str | None]:
    path = Path(ref).expanduser()
    if path.is_dir():
        real = path.resolve()
        return real, revision or _revision_of(path.absolute()) or _revision_of(real)
    if path.exists():
        raise CulnigError(f"{ref}: is a file; pass the checkpoint folder (with config.json)")
    if not _looks_like_hub_id(ref):
        raise CulnigError(f"{ref}: no such model folder; pass a checkpoint folder with config.json "
                          "or a hub id like org/name")
    snap = _download(ref, revision)
    return snap, _revision_of(snap) or revision


def weight_map(path: Path) -> tuple[dict[str, str], str | None]:
    """``(tensor name -> file, index file or None)`` of a safetensors checkpoint folder; pickle-only
    folders and folders without weights are refused (:func:`culnig.loading.safetensors_files`)."""
    wmap = read_weight_index(path)
    if wmap is not None:
        return wmap, SAFETENSORS_INDEX
    files = safetensors_files(path)  # the single file, or the one-line refusal
    from masking.safetensors_io import read_header

    return {name: files[0] for name in read_header(path / files[0]).tensors}, None


def resolve_source(ref: str, revision: str | None = None) -> Source:
    path, rev = resolve_folder(ref, revision)
    if not (path / "config.json").is_file():
        raise CulnigError(f"{ref}: folder has no config.json; pass a Hugging Face checkpoint folder")
    wmap, index = weight_map(path)
    return Source(ref=ref, path=path, revision=rev, weight_map=wmap, index_file=index)
