"""Bench a sweep's isolation: ``engine`` (one engine per model, weights swapped in) against
``subprocess`` (a process and an engine per checkpoint), side by side in one run.

SmolLM2 (``culnig models smollm2``), the demo's sweeps (culnig/demo.py ``Demo.sweep_config``:
its tasks, document counts, backends and protocols) over 1 + 4 checkpoints: the original, a
"general" set (``--fraction`` of each module's neurons, drawn at random: throughput does not
depend on which neurons) and 3 count-matched random sets, as the demo's sweep has. Every masked
checkpoint is baked before the clock starts; each protocol's sweep runs with ``engine`` and then
with ``subprocess`` into separate run folders. Printed: wall seconds per sweep, the number of
samples (per checkpoint, task and document: lm-eval's responses) that are identical in both, and
on the last line the wall time ratio engine / subprocess (target <= 0.5 on 2 CPU cores).

    python bench/sweep.py [--out DIR] [--size full|tiny] [--protocol both|paper|loglik]
                          [--docs-scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ISOLATIONS = ("engine", "subprocess")


def general_set(model: Path, path: Path, fraction: float, seed: int = 0) -> Path:
    """A set of ``fraction`` of each module's neurons over all layers (a stand-in for the
    demo's attribution-selected culture-general set)."""
    import numpy as np

    from culnig.neuron_sets import NeuronSet
    from culnig.loading import layout_of

    if path.is_file():
        return path
    layout = layout_of(str(model))
    rng = np.random.default_rng(seed)
    neurons = {}
    for m, site in layout.sites.items():
        flat = rng.choice(layout.n_layers * site.size, size=max(1, int(fraction * layout.n_layers
                                                                      * site.size)), replace=False)
        layers, idx = np.divmod(flat, site.size)
        neurons[m] = {int(l): idx[layers == l] for l in np.unique(layers)}
    path.parent.mkdir(parents=True, exist_ok=True)
    NeuronSet.from_indices(layout, "culnig-general", neurons, name_or_path=str(model)).save(path)
    return path


def samples_of(run_dir: Path) -> dict[tuple, object]:
    """(checkpoint, task, doc_id) -> (resps, filtered_resps) of every result under ``run_dir``."""
    from culnig.results import read_record

    out = {}
    for rec_dir in sorted((run_dir / "results").glob("*/*")):
        rec = read_record(rec_dir)
        for task, f in (rec.get("samples_files") or {}).items():
            for line in (rec_dir / f).read_text().splitlines():
                row = json.loads(line)
                out[(rec_dir.name, task, row["doc_id"])] = (row["resps"], row["filtered_resps"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/culnig-bench-sweep"))
    ap.add_argument("--size", default="full", choices=("full", "tiny"))
    ap.add_argument("--protocol", default="both", choices=("both", "paper", "loglik"))
    ap.add_argument("--docs-scale", type=float, default=1.0,
                    help="documents per task x this (1: the demo's; 0.25: the demo before 4x)")
    ap.add_argument("--fraction", type=float, default=0.01,
                    help="share of each module's neurons in the general set")
    args = ap.parse_args()

    import yaml

    from culnig.demo import Demo, DemoSettings
    from culnig.models import prepare
    from culnig.sweep import load_config, run_sweep
    from culnig.sweep.run import plan
    from masking.bake import bake

    model = prepare("smollm2")
    general = general_set(model, args.out / "sets" / "general.json", args.fraction)
    demo = Demo(DemoSettings(model=str(model), out=args.out, size=args.size, protocol=args.protocol))
    demo.model_path = str(model)
    configs = {}
    for protocol in demo.sweeps:
        for iso in ISOLATIONS:
            cfg = demo.sweep_config(protocol)
            cfg["models"][0]["general"] = str(general)
            meta = cfg["task_metadata"]
            for key in ("culnig_max_docs", "blend_mcq_max_docs", "blend_saq_max_docs"):
                meta[key] = max(1, round(meta[key] * args.docs_scale))
            cfg.update(run_dir=str(args.out / "run" / f"{protocol}-{iso}"), isolation=iso)
            path = args.out / f"sweep-{protocol}-{iso}.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            configs[protocol, iso] = path
    first = load_config(next(iter(configs.values())))
    for p in plan(first):  # bake now, so that neither timed sweep pays for it
        if p.ckpt_dir is not None:
            bake(str(p.model.path), p.cp.set_path, p.ckpt_dir, scale=first.settings.scale,
                 force=True, skip_if_matching=True)

    seconds: dict[tuple, float] = {}
    for (protocol, iso), path in configs.items():
        cfg = load_config(path)
        t0 = time.perf_counter()
        summary = run_sweep(cfg, progress=False)
        seconds[protocol, iso] = time.perf_counter() - t0
        print(f"{protocol:6s} {cfg.settings.backend:4s} {iso:10s}: {summary.total} checkpoints, "
              f"{summary.evaluated} evaluated, {seconds[protocol, iso]:.1f} s", flush=True)
        if summary.evaluated != summary.total:
            print(f"  note: {summary.total - summary.evaluated} result(s) were already in "
                  f"{cfg.run_dir}; use a fresh --out for timings", flush=True)
    same = total = 0
    for protocol in demo.sweeps:
        a, b = (samples_of(Path(load_config(configs[protocol, i]).run_dir)) for i in ISOLATIONS)
        total += len(a)
        same += sum(1 for k, v in a.items() if b.get(k) == v)
        ratio = seconds[protocol, "engine"] / seconds[protocol, "subprocess"]
        print(f"{protocol}: engine / subprocess wall time {ratio:.2f}", flush=True)
    print(f"identical samples engine vs subprocess: {same} of {total}")
    engine = sum(v for (_, iso), v in seconds.items() if iso == "engine")
    sub = sum(v for (_, iso), v in seconds.items() if iso == "subprocess")
    print(f"engine / subprocess wall time: {engine / sub:.2f} ({engine:.0f} s / {sub:.0f} s; "
          f"identical samples {same}/{total})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
