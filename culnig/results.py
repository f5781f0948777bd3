"""Result folders and their record (``culnig_eval.json``): the one place that writes and judges
them, for sweeps and fine-tuning alike.

A result folder only ever appears complete: lm-eval writes into a hidden temporary sibling, the
record (checkpoint key, settings, task versions, file hashes) is written last, then the folder is
renamed into place. It is *complete* when the record is readable, its results file has the
recorded hash, its samples files exist, and key, settings and task versions equal the request.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from culnig import __version__, evaluate
from culnig.atomic import TMP_MARK, atomic_write_text, now_iso
from culnig.errors import CulnigError
from culnig.hashing import sha256_file
from culnig.settings import DEFAULT_ISOLATION, EvalSettings, json_roundtrip
from culnig_tasks.lmeval import version_str

EVAL_RECORD = "culnig_eval.json"
EVAL_FORMAT = "culnig-eval/1"


def read_record(result_dir: Path) -> dict | None:
    """The record of ``result_dir``, or None when it is missing, unreadable or of another format."""
    try:
        data = json.loads((Path(result_dir) / EVAL_RECORD).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == EVAL_FORMAT else None


def first_difference(have: Any, want: Any, prefix: str = "") -> str:
    """``a.b: recorded X, now Y`` for the first differing (nested) key of two mappings."""
    if isinstance(have, dict) and isinstance(want, dict):
        for k in sorted(set(have) | set(want)):
            if have.get(k) != want.get(k):
                return first_difference(have.get(k), want.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.') or 'value'}: recorded {have!r}, now {want!r}"


def result_state(result_dir: Path, key: dict, settings: dict, versions: dict) -> tuple[str, str]:
    """``("complete", "")``, ``("absent", "")`` or ``("stale", why)`` for a result folder."""
    result_dir = Path(result_dir)
    if not result_dir.exists():
        return "absent", ""
    rec = read_record(result_dir)
    if rec is None:
        return "stale", f"{result_dir} has no readable {EVAL_RECORD}"
    res = result_dir / str(rec.get("results_file", ""))
    if not res.is_file() or sha256_file(res) != rec.get("results_sha256"):
        return "stale", f"{res} is missing or was changed after the evaluation"
    for f in (rec.get("samples_files") or {}).values():
        if not (result_dir / f).is_file():
            return "stale", f"{result_dir / f} is missing"
    checks = (("checkpoint", rec.get("checkpoint_key"), key),
              ("settings", rec.get("settings"), settings),
              ("task versions", rec.get("versions"), versions))
    for what, have, want in checks:
        have, want = json_roundtrip(have), json_roundtrip(want)
        if have != want:
            return "stale", f"{result_dir} was evaluated with other {what} ({first_difference(have, want)})"
    return "complete", ""


def _collect_outputs(tmp: Path) -> tuple[str, dict[str, str], dict]:
    """Move lm-eval's results and samples from ``tmp/lm_eval/<model>/`` to ``tmp``."""
    results = sorted((tmp / "lm_eval").rglob("results_*.json"))
    if len(results) != 1:
        raise CulnigError(f"lm-eval wrote {len(results)} results files under {tmp / 'lm_eval'}, "
                          "expected 1")
    res = results[0]
    data = json.loads(res.read_text())
    res.rename(tmp / res.name)
    samples: dict[str, str] = {}
    for f in sorted(res.parent.glob("samples_*.jsonl")):
        task = f.name[len("samples_"):].rsplit("_", 1)[0]
        f.rename(tmp / f.name)
        samples[task] = f.name
    shutil.rmtree(tmp / "lm_eval")
    return res.name, samples, data


def evaluate_into(result_dir: Path, model_path: Path, settings: EvalSettings, *,
                  versions: dict[str, str], record: dict[str, Any], batch_size: str = "auto",
                  isolation: str = DEFAULT_ISOLATION, recorded_settings: dict | None = None,
                  engines: Any = None, base: Path | None = None) -> dict:
    """Evaluate ``model_path`` with lm-eval into ``result_dir`` (which must not exist) and write
    its record: ``record`` (identity fields: model, checkpoint, kind, checkpoint_key, ...) plus
    the settings (``recorded_settings``, default ``settings.record()``: what :func:`result_state`
    is later given), versions, file hashes, the isolation and timings. Returns the record written.

    Isolation ``engine`` evaluates on ``engines`` (a :class:`culnig.engine.holder.EngineHolder`
    kept by the caller; without one, an engine for this checkpoint only), starting from ``base``
    (default: a bake's source); the record keeps the swap's proof under ``engine``."""
    result_dir = Path(result_dir)
    parent = result_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{result_dir.name}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    started = time.time()
    label = f"{record.get('model')}/{record.get('checkpoint')}"
    proof = None
    try:
        if isolation == "engine":
            proof = _engine_evaluate(engines, model_path, tmp, settings, batch_size, base)
        else:
            evaluate.evaluate_checkpoint(model_path, tmp / "lm_eval", settings,
                                         batch_size=batch_size, isolation=isolation,
                                         log_path=tmp / "eval.log")
        results_file, samples, data = _collect_outputs(tmp)
        got = {k: version_str(v) for k, v in (data.get("versions") or {}).items()}
        if got != versions:
            raise CulnigError(f"lm-eval recorded task versions {got} for {label}, expected "
                              f"{versions}; did the tasks change during the run?")
        full = {
            "format": EVAL_FORMAT, "culnig_version": __version__, **record,
            "evaluated_path": str(model_path), "settings": settings.record() if recorded_settings is None else recorded_settings,
            "versions": versions, "results_file": results_file,
            "results_sha256": sha256_file(tmp / results_file), "samples_files": samples,
            "batch_size": batch_size, "isolation": isolation,
            **({"engine": proof} if proof is not None else {}),
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "finished": now_iso(), "seconds": round(time.time() - started, 1),
        }
        atomic_write_text(tmp / EVAL_RECORD, json.dumps(full, indent=1) + "\n")
        tmp.rename(result_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return full



def _engine_evaluate(engines: Any, model_path: Path, tmp: Path, settings: EvalSettings,
                     batch_size: str, base: Path | None) -> dict:
    from culnig.engine.holder import EngineHolder

    kw = dict(batch_size=batch_size, log_path=tmp / "eval.log", base=base)
    if engines is not None:
        return engines.evaluate(model_path, tmp / "lm_eval", settings, **kw)
    with EngineHolder() as holder:
        return holder.evaluate(model_path, tmp / "lm_eval", settings, **kw)
