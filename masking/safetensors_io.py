"""Read safetensors headers and write a copy of a file with some tensor rows scaled.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (per tensor: dtype,
shape, ``data_offsets`` into the data block; optional ``__metadata__``) and the data block. Masking
changes the values of a few rows and nothing else, so a rewritten shard is the source file copied
in the kernel (``copy_file_range``, as ``cp`` does) with the edited rows patched in place through a
memory map:
the header (metadata such as ``{"format": "pt"}`` included), the tensor order and every byte of
every other tensor stay exactly as they were, and an edited tensor keeps its dtype and shape.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from culnig.errors import CulnigError

# safetensors dtype -> torch dtype name; only floating point weights can be scaled.
FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets within the data block
    end: int


@dataclass(frozen=True)
class Header:
    path: Path
    data_start: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] | None


def read_header(path: str | Path) -> Header:
    """Parse a safetensors header; a truncated or foreign file is a one-line :class:`CulnigError`."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CulnigError(f"{path}: not a safetensors file (only {len(head)} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CulnigError(f"{path}: not a safetensors file (header length {n} for a file of "
                              f"{size} bytes); the file is corrupt or truncated")
        raw = fh.read(n)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CulnigError(f"{path}: not a safetensors file (its header is not JSON)") from None
    meta = data.pop("__metadata__", None)
    tensors: dict[str, TensorInfo] = {}
    data_len = size - 8 - n
    try:
        for name, entry in data.items():
            begin, end = (int(x) for x in entry["data_offsets"])
            info = TensorInfo(str(entry["dtype"]), tuple(int(s) for s in entry["shape"]), begin, end)
            if not 0 <= begin <= end <= data_len:
                raise ValueError(f"tensor {name} lies outside the file")
            tensors[name] = info
    except (KeyError, TypeError, ValueError) as exc:
        raise CulnigError(f"{path}: malformed safetensors header ({exc}); the file is corrupt or "
                          "truncated") from None
    return Header(path=path, data_start=8 + n, tensors=tensors, metadata=meta)


def clone_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` inside the kernel (``copy_file_range``; reflinks where supported)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        remaining = os.fstat(fin.fileno()).st_size
        try:
            while remaining > 0:
                done = os.copy_file_range(fin.fileno(), fout.fileno(), min(remaining, 1 << 30))
                if done == 0:
                    break
                remaining -= done
        except OSError:
            remaining = -1
        if remaining != 0:  # not supported here (or cut short): plain copy from the start
            fin.seek(0)
            fout.seek(0)
            fout.truncate()
            shutil.copyfileobj(fin, fout, 16 << 20)


def link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link ``src`` (its target, for a symlink) to ``dst``; copy where the filesystem refuses.
    Returns ``"linked"`` or ``"copied"``."""
    try:
        os.link(src, dst)
        return "linked"
    except OSError:
        shutil.copy2(src, dst)
        return "copied"


def _torch_dtype(path: Path, name: str, info: TensorInfo):
    import torch

    if info.dtype not in FLOAT_DTYPES:
        raise CulnigError(f"{path}: tensor {name} has dtype {info.dtype}; only floating point "
                          "weights can be masked (quantised checkpoints are not supported)")
    return getattr(torch, FLOAT_DTYPES[info.dtype])


def write_scaled(src: Path, dst: Path, rows: Mapping[str, np.ndarray], scale: float,
                 header: Header | None = None) -> None:
    """Write ``src`` to ``dst`` with ``rows[name]`` of each named tensor multiplied by ``scale``.

    ``scale == 0`` writes exact zeros. Rows index the tensor's first dimension (a 1-D bias: its
    entries); every other byte of the file is copied unchanged.
    """
    import torch

    header = header or read_header(src)
    todo = []
    for name, idx in rows.items():
        info = header.tensors.get(name)
        if info is None:
            raise CulnigError(f"{src}: has no tensor {name}")
        dtype = _torch_dtype(src, name, info)
        if not info.shape or (idx.size and int(idx.max()) >= info.shape[0]):
            raise CulnigError(f"{src}: tensor {name} has shape {list(info.shape)}; row "
                              f"{int(idx.max()) if idx.size else '?'} does not exist")
        todo.append((name, info, dtype, torch.from_numpy(np.asarray(idx, dtype=np.int64))))
    clone_file(src, dst)
    if not any(idx.numel() for *_, idx in todo):
        return
    # Patch the rows through a shared memory map of the copy: only their pages are touched.
    with open(dst, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mm:
        for name, info, dtype, idx in todo:
            if idx.numel() == 0:
                continue
            raw = np.frombuffer(mm, dtype=np.uint8, count=info.end - info.begin,
                                offset=header.data_start + info.begin)
            t = torch.from_numpy(raw).view(dtype).view(info.shape)  # writes go to the file
            if scale == 0:
                t.index_fill_(0, idx, 0)
            else:
                t.index_copy_(0, idx, t.index_select(0, idx) * scale)
            del t, raw  # release the map's buffer before it closes
