"""``culnig_mask.json``: what a baked checkpoint was made from, and whether a request matches it.

A masked checkpoint folder records its source model (path, revision when known, the weights
stamp of :func:`culnig.loading.weights_stamp`), the config fingerprint, the set's own weights stamp
and whether other weights were allowed, the neuron set file's sha256 and selection method, the scale,
neuron counts per module, the culnig version and which shards were rewritten or linked.
:func:`manifest_matches` tells a sweep that an existing folder already holds exactly the requested
bake, so it can be skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from culnig import __version__
from culnig.atomic import now_iso

MANIFEST = "culnig_mask.json"
FORMAT = "culnig-mask/1"
EDIT = ("rows of the selected gate/up/q/k/v projection weights (and their bias entries) "
        "multiplied by scale")


@dataclass(frozen=True)
class MaskKey:
    """Everything that decides a baked checkpoint's bytes."""

    source_path: str
    source_revision: str | None
    weights_stamp: str
    fingerprint: str
    set_sha256: str
    scale: float


def build_manifest(key: MaskKey, *, source_ref: str, arch: str, n_layers: int, set_file: str,
                   set_method: str, set_model: dict, counts: dict[str, int], tensors_edited: int,
                   bias_tensors_edited: int, rewritten: list[str], linked: list[str],
                   copied: list[str], skipped: list[str], prepared_from: dict | None,
                   allow_other_weights: bool = False) -> dict[str, Any]:
    set_stamp = set_model.get("weights_stamp")
    source: dict[str, Any] = {"model": source_ref, "path": key.source_path,
                              "revision": key.source_revision, "weights_stamp": key.weights_stamp}
    if prepared_from is not None:
        source["prepared_from"] = prepared_from
    return {
        "format": FORMAT,
        "culnig_version": __version__,
        "created": now_iso(),
        "source": source,
        "model": {"arch": arch, "fingerprint": key.fingerprint, "n_layers": n_layers},
        "set": {"file": set_file, "sha256": key.set_sha256, "method": set_method,
                "made_for": set_model.get("name_or_path", ""), "weights_stamp": set_stamp,
                # True: selected on these weights; False: on others (allowed); None: unknown
                "same_weights": None if set_stamp is None else set_stamp == key.weights_stamp},
        "allow_other_weights": bool(allow_other_weights),
        "method": set_method,
        "edit": EDIT,
        "scale": key.scale,
        "counts": counts,
        "tensors_edited": tensors_edited,
        "bias_tensors_edited": bias_tensors_edited,
        "shards": {"rewritten": rewritten, "linked": linked, "copied": copied},
        "skipped_files": skipped,
    }


def key_of(manifest: dict[str, Any]) -> MaskKey | None:
    try:
        return MaskKey(
            source_path=manifest["source"]["path"],
            source_revision=manifest["source"].get("revision"),
            weights_stamp=manifest["source"]["weights_stamp"],
            fingerprint=manifest["model"]["fingerprint"],
            set_sha256=manifest["set"]["sha256"],
            scale=float(manifest["scale"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it has none (or an unreadable one)."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def manifest_matches(folder: str | Path, key: MaskKey) -> bool:
    """True when ``folder`` is a complete bake of exactly ``key`` (same source weights, set and scale)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or key_of(manifest) != key:
        return False
    shards = manifest.get("shards", {})
    files = ["config.json", *shards.get("rewritten", []), *shards.get("linked", []),
             *shards.get("copied", [])]
    return all((folder / f).is_file() for f in files)
