"""Load a checkpoint (local folder or hub id) as a transformers model + tokenizer, with clear errors.

Only safetensors weights are ever loaded: a folder with pickle weights only (``.bin``, ``.pt``, ...)
is refused with one line, because unpickling can run arbitrary code. :func:`weights_stamp` is the
identity of a checkpoint's weights that score, set, statistics files and bake manifests record
beside the shape fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from culnig.errors import CulnigError
from culnig.registry import ModelLayout, layout_for

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}
LOAD_DTYPES = ("fp32", "bf16", "fp16")  # the short names the commands offer
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# The weights stamp reads each file's header and size and STAMP_WINDOWS windows of STAMP_WINDOW
# bytes spread evenly over its data (all of the data when it is no longer than that).
STAMP_WINDOW = 64 << 10
STAMP_WINDOWS = 64
_MAX_HEADER = 100 * 1024 * 1024


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[name])
    except KeyError:
        raise CulnigError(f"unknown dtype {name!r}; use one of: {', '.join(LOAD_DTYPES)}") from None


def _looks_like_hub_id(ref: str) -> bool:
    return ref.count("/") == 1 and not ref.startswith((".", "/", "~"))


def read_config(ref: str) -> dict[str, Any]:
    """The checkpoint's config.json as a dict (local folder, or hub id through transformers)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise CulnigError(f"{ref}: folder has no config.json; pass a Hugging Face checkpoint folder")
        try:
            data = json.loads(cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CulnigError(f"{cfg}: not JSON ({exc}); the checkpoint is damaged") from None
        if not isinstance(data, dict):
            raise CulnigError(f"{cfg}: not a config (a JSON object is expected)")
        return data
    if path.exists():
        raise CulnigError(f"{ref}: is a file; pass the checkpoint folder (with config.json)")
    if not _looks_like_hub_id(ref):
        raise CulnigError(
            f"{ref}: no such model folder; pass a checkpoint folder with config.json "
            "(e.g. from `culnig models demo`) or a hub id like org/name"
        )
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref).to_dict()
    except Exception as exc:  # network, auth, missing repo: one line for the user
        raise CulnigError(
            f"{ref}: not a local folder and the hub could not provide it ({type(exc).__name__}); "
            "download it first or pass a local checkpoint folder"
        ) from exc


def layout_of(ref: str) -> ModelLayout:
    """The layout of a checkpoint (folder or hub id) from its config alone: no weights read."""
    return layout_for(read_config(ref))


# --- safetensors only ----------------------------------------------------------------------------
def pickle_error(path: Path, found: list[str]) -> CulnigError:
    """The one line for a checkpoint folder that has pickle weights only."""
    shown = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "")
    return CulnigError(
        f"{path}: has only pickle weights ({shown}) and no safetensors; culnig does not load pickle "
        "checkpoints, because unpickling can run arbitrary code, and masks are baked by editing "
        "safetensors files tensor by tensor. Convert it once where you trust the file, e.g. "
        "`python -c \"from transformers import AutoModelForCausalLM as M; "
        "M.from_pretrained('SRC').save_pretrained('DST')\"` (writes safetensors), and use DST"
    )


def read_weight_index(folder: Path) -> dict[str, str] | None:
    """``tensor name -> file`` of ``model.safetensors.index.json``; None when there is no index."""
    index = Path(folder) / SAFETENSORS_INDEX
    if not index.is_file():
        return None
    try:
        wmap = json.loads(index.read_text())["weight_map"]
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise ValueError("weight_map must map tensor names to file names")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CulnigError(f"{index}: not a safetensors index ({type(exc).__name__}: {exc})") from None
    missing = sorted({f for f in wmap.values() if not (Path(folder) / f).is_file()})
    if missing:
        raise CulnigError(f"{index}: lists {missing[0]}, which is not in {folder}; the download "
                          "is incomplete")
    return dict(wmap)


def safetensors_files(folder: str | Path) -> list[str]:
    """The weight files of a safetensors checkpoint folder (names relative to it); a folder with
    pickle weights only, or with no weights, is a :class:`CulnigError`."""
    folder = Path(folder)
    wmap = read_weight_index(folder)
    if wmap is not None:
        return sorted(set(wmap.values()))
    if (folder / SAFETENSORS_SINGLE).is_file():
        return [SAFETENSORS_SINGLE]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise pickle_error(folder, pickles)
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    hint = f" (found {', '.join(others[:3])}, which are not the model's weights)" if others else ""
    raise CulnigError(f"{folder}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX}{hint}; pass a "
                      "Hugging Face checkpoint folder with safetensors weights")


# --- identity of the weights ---------------------------------------------------------------------
def weights_stamp(folder: str | Path, files: Iterable[str] | None = None) -> str:
    """16 hex digits that identify a checkpoint's weights, wherever the folder lies.

    Per weight file (sorted by name): its name, size, safetensors header and STAMP_WINDOWS windows
    of STAMP_WINDOW bytes spread evenly over its data (the whole data of smaller files) go into one
    sha256. Two trainings, seeds or fine-tunes of one architecture differ; a copy of the folder does
    not. It reads about 4 MiB per file, not the whole model.
    """
    folder = Path(folder)
    names = sorted(files) if files is not None else safetensors_files(folder)
    digest = hashlib.sha256()
    span = STAMP_WINDOW * STAMP_WINDOWS
    for name in names:
        with open(folder / name, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            n = max(0, min(n, size - 8, _MAX_HEADER))
            digest.update(f"{name}\0{size}\n".encode())
            digest.update(head)
            digest.update(fh.read(n))
            start = fh.tell()
            data_len = size - start
            if data_len <= span:
                digest.update(fh.read())
                continue
            step = (data_len - STAMP_WINDOW) / (STAMP_WINDOWS - 1)
            for i in range(STAMP_WINDOWS):
                fh.seek(start + int(i * step))
                digest.update(fh.read(STAMP_WINDOW))
    return digest.hexdigest()[:16]


def local_folder(ref: str) -> Path | None:
    """The folder holding ``ref``'s files: the folder itself, or a hub id's cached snapshot
    (never downloaded here); None when neither is there."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or not _looks_like_hub_id(ref):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # not cached (or no huggingface_hub): the stamp is unknown
        return None


def weights_stamp_of(ref: str) -> str | None:
    """:func:`weights_stamp` of a model reference, None when its files are not on this machine."""
    folder = local_folder(str(ref))
    if folder is None:
        return None
    if not Path(str(ref)).expanduser().is_dir():  # a hub cache may hold only some of the files
        try:
            return weights_stamp(folder)
        except (CulnigError, OSError):
            return None
    return weights_stamp(folder)


# --- loading -------------------------------------------------------------------------------------
def load_model(ref: str, dtype: str = "fp32", device_map: Any = None):
    """Return ``(model, tokenizer, layout)`` for a supported checkpoint, in eval mode."""
    cfg = read_config(ref)
    layout = layout_for(cfg)  # refuses unsupported architectures before loading weights
    if Path(ref).expanduser().is_dir():  # pickle-only folders: one line, before transformers
        safetensors_files(Path(ref).expanduser())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "use_safetensors": True}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if layout.arch.text_config_attr:  # multimodal wrapper: keep its own class and weight names
        from transformers import AutoModelForImageTextToText as auto_cls
    else:
        auto_cls = AutoModelForCausalLM
    try:
        model = auto_cls.from_pretrained(ref, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(ref)
    except OSError as exc:
        raise CulnigError(f"{ref}: could not load the checkpoint: {exc}".splitlines()[0]) from exc
    model.eval()
    return model, tokenizer, layout
