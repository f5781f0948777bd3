"""``culnig bake``: write a masked copy of a safetensors checkpoint.

Every selected neuron's weight row (and bias entry, where the projection has a bias) is multiplied
by ``scale``; nothing else changes. The model is never loaded: shards that hold edited tensors are
copied with those tensors patched (:mod:`masking.safetensors_io`), untouched shards are hard-linked
(copied where the filesystem refuses), as are other files of 1 MiB or more (tokenizer.json);
config, generation config, the index and other small files are copied. Pickle and other weight
formats are left out, so the output cannot serve unmasked weights by accident. Everything is
written into a temporary sibling folder that is renamed to the output only when complete
(:func:`culnig.atomic.atomic_dir`); interrupted, the folder is removed, and a rerun removes
those that killed bakes left. A set selected on other weights than the source's (same shape,
another weights stamp) is refused unless ``allow_other_weights``, which the manifest records.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from culnig.atomic import atomic_dir, clean_leftovers
from culnig.errors import CulnigError
from culnig.neuron_sets import NeuronSet, file_sha256
from culnig.registry import ModelLayout, layout_for
from masking.manifest import MANIFEST, MaskKey, build_manifest, manifest_matches, write_manifest
from masking.plan import EditPlan, plan_edits
from masking.safetensors_io import (FLOAT_DTYPES, Header, link_or_copy, read_header,
                                    write_scaled)
from masking.source import (OTHER_WEIGHT_SUFFIXES, PICKLE_SUFFIXES, SAFETENSORS_INDEX, Source,
                            resolve_source)

PREPARED_MARKER = "culnig_model.json"  # culnig.models' marker: describes the source, not the bake
# Other files from this size on (tokenizer.json, tokenizer.model, ...) are hard-linked like the
# untouched shards; smaller ones (config.json, generation_config.json, ...) are copied, so they can
# be edited in the output without touching the source.
LINK_ABOVE = 1 << 20


@dataclass(frozen=True)
class BakeRequest:
    """A resolved, checked bake: nothing has been written yet."""

    source: Source
    layout: ModelLayout
    neuron_set: NeuronSet
    set_path: Path
    plan: EditPlan
    headers: dict[str, Header]
    key: MaskKey
    allow_other_weights: bool = False


@dataclass(frozen=True)
class BakeResult:
    out: Path
    manifest: dict
    skipped: bool = False  # True when an existing output already matched the request


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not math.isfinite(scale):
        raise CulnigError(f"--scale must be a finite number, got {scale}")
    return scale


def _check_tensors(plan: EditPlan, source: Source) -> dict[str, Header]:
    """Read the edited shards' headers; refuse tensors whose shape or dtype contradict the config."""
    headers = {f: read_header(source.path / f) for f in plan.edited_files}
    for name, rows in plan.rows.items():
        info = headers[plan.files[name]].tensors.get(name)
        if info is None:
            raise CulnigError(f"{source.path / plan.files[name]}: has no tensor {name}, although the "
                              "index says so; the checkpoint is inconsistent")
        if info.dtype not in FLOAT_DTYPES:
            raise CulnigError(f"{name} has dtype {info.dtype}; only floating point weights can be "
                              "masked (quantised checkpoints are not supported)")
        expected = plan.expected_rows[name]
        if not info.shape or info.shape[0] != expected:
            raise CulnigError(f"{name} has shape {list(info.shape)} but config.json implies "
                              f"{expected} rows; the weights do not match the config")
    return headers


def _check_overlap(out: Path, source: Path) -> None:
    o, s = out.resolve(), source.resolve()
    if o == s or s in o.parents or o in s.parents:
        raise CulnigError(f"--out {out} overlaps the source checkpoint {source}; choose a folder "
                          "outside it")


def prepare_request(model: str, set_path: str | Path, scale: float = 0.0,
                    revision: str | None = None, *, allow_other_weights: bool = False) -> BakeRequest:
    """Resolve the source, load and validate the set, plan the edits. Writes nothing."""
    scale = _check_scale(scale)
    source = resolve_source(model, revision)
    try:
        config = json.loads((source.path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise CulnigError(f"{source.path / 'config.json'}: not JSON ({exc.msg}, line {exc.lineno})") from None
    layout = layout_for(config)
    set_path = Path(set_path)
    neuron_set = NeuronSet.load(set_path)
    neuron_set.validate(layout, source=str(set_path))
    stamp = source.stamp()
    neuron_set.check_weights(stamp, model, source=str(set_path), allow_other=allow_other_weights)
    plan = plan_edits(neuron_set, layout, source.weight_map)
    headers = _check_tensors(plan, source)
    key = MaskKey(source_path=str(source.path), source_revision=source.revision,
                  weights_stamp=stamp, fingerprint=layout.fingerprint,
                  set_sha256=file_sha256(set_path), scale=scale)
    return BakeRequest(source, layout, neuron_set, set_path, plan, headers, key,
                       allow_other_weights=allow_other_weights)


def is_baked(out: str | Path, model: str, set_path: str | Path, scale: float = 0.0,
             revision: str | None = None, *, allow_other_weights: bool = False) -> bool:
    """Whether ``out`` already holds exactly this bake (a sweep skips it then)."""
    if not (Path(out) / MANIFEST).is_file():
        return False
    req = prepare_request(model, set_path, scale, revision, allow_other_weights=allow_other_weights)
    return manifest_matches(out, req.key)


def _skip_reason(name: str, weight_files: set[str]) -> str | None:
    if name.startswith("."):
        return "hidden"
    if name in (MANIFEST, PREPARED_MARKER):
        return "culnig marker"
    if name in weight_files:
        return None
    lower = name.lower()
    if lower.endswith(PICKLE_SUFFIXES) or lower.endswith(OTHER_WEIGHT_SUFFIXES):
        return "weights in another file or format"
    if lower.endswith(".index.json") and name != SAFETENSORS_INDEX:
        return "index of weights in another format"
    return None


def _copy_tree(req: BakeRequest, src_dir: Path, dst_dir: Path, rel: str, log: dict[str, list[str]],
               scale: float) -> None:
    weight_files = set(req.source.weight_files) if rel == "" else set()
    edits = req.plan.by_file() if rel == "" else {}
    for entry in sorted(os.scandir(src_dir), key=lambda e: e.name):
        name = f"{rel}{entry.name}"
        reason = _skip_reason(entry.name, weight_files)
        if reason is not None:
            log["skipped"].append(name)
            continue
        src, dst = Path(entry.path), dst_dir / entry.name
        if entry.is_dir():
            dst.mkdir()
            _copy_tree(req, src, dst, f"{name}/", log, scale)
        elif entry.name in edits:
            write_scaled(src, dst, edits[entry.name], scale, req.headers[entry.name])
            log["rewritten"].append(name)
        elif entry.name in weight_files:
            log[link_or_copy(src, dst)].append(name)
        elif entry.stat().st_size >= LINK_ABOVE:
            link_or_copy(src, dst)
        else:
            shutil.copy2(src, dst)


def _prepared_from(source: Source) -> dict | None:
    marker = source.path / PREPARED_MARKER
    try:
        return json.loads(marker.read_text()) if marker.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def bake(model: str, set_path: str | Path, out: str | Path, *, scale: float = 0.0,
         force: bool = False, revision: str | None = None,
         skip_if_matching: bool = False, allow_other_weights: bool = False) -> BakeResult:
    """Write the masked checkpoint of ``model`` for the set at ``set_path`` to ``out``.

    An existing ``out`` is refused unless ``force`` (or, with ``skip_if_matching``, returned as is
    when its manifest matches this request). A set selected on other weights is refused unless
    ``allow_other_weights``.
    """
    out = Path(out)
    if out.exists() and not force and not skip_if_matching:
        raise CulnigError(f"{out} already exists; pass --force to replace it")
    req = prepare_request(model, set_path, scale, revision, allow_other_weights=allow_other_weights)
    if skip_if_matching and out.exists():
        if manifest_matches(out, req.key):
            return BakeResult(out=out, manifest=json.loads((out / MANIFEST).read_text()), skipped=True)
        if not force:
            raise CulnigError(f"{out} already exists and holds another bake; pass --force to replace it")
    _check_overlap(out, req.source.path)
    clean_leftovers(out.parent)  # hidden folders of bakes that were killed
    log: dict[str, list[str]] = {"rewritten": [], "linked": [], "copied": [], "skipped": []}
    with atomic_dir(out, force=force) as tmp:
        try:
            _copy_tree(req, req.source.path, tmp, "", log, req.key.scale)
            manifest = build_manifest(
                req.key, source_ref=model, arch=req.layout.name, n_layers=req.layout.n_layers,
                set_file=str(req.set_path.resolve()), set_method=req.neuron_set.method,
                set_model=req.neuron_set.model, counts=req.neuron_set.counts(),
                tensors_edited=len(req.plan.rows), bias_tensors_edited=req.plan.n_bias_tensors,
                rewritten=log["rewritten"], linked=log["linked"], copied=log["copied"],
                skipped=log["skipped"], prepared_from=_prepared_from(req.source),
                allow_other_weights=req.allow_other_weights,
            )
            write_manifest(tmp, manifest)
        except OSError as exc:  # disk full, a broken link in the source, ...: nothing is kept
            where = f" ({exc.filename})" if exc.filename else ""
            raise CulnigError(f"writing {out} failed: {exc.strerror or exc}{where}; nothing was "
                              "written") from exc
    return BakeResult(out=out, manifest=manifest)
