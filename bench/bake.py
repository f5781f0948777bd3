"""Bench `culnig bake` on the demo model (Gemma-3 270M, fp32, one 1.07 GB safetensors file).

1. Time: bake of a small set (1% of the gate neurons of three layers, 16 q neurons of one layer)
   against `cp -r` of the same checkpoint, side by side in one run (alternating order, page cache
   warmed first), repeated; medians. Target: bake / cp <= 1.0.
2. Disk: the demo checkpoint re-saved as N safetensors shards; a set touching the layers of some
   shards only is baked, and the bytes of the output that are not hard links into the source are
   counted. Target: extra bytes / checkpoint bytes <= share of shards holding edited tensors.

    python bench/bake.py [--repeats 7] [--shards 6] [--workdir DIR]

The ratios are the last two lines. Bake is timed in-process (`masking.bake.bake`), without Python
and torch start-up, which do not grow with the checkpoint.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from culnig.models import prepare  # noqa: E402
from culnig.neuron_sets import NeuronSet  # noqa: E402
from culnig.loading import layout_of  # noqa: E402
from culnig.registry import ModelLayout  # noqa: E402
from masking.bake import bake  # noqa: E402


def demo_set(layout: ModelLayout, path: Path, gate_layers=(2, 8, 14), q_layer: int = 5) -> Path:
    rng = np.random.default_rng(0)
    n_gate = layout.n_neurons("gate")
    neurons = {"gate": {layer: rng.choice(n_gate, n_gate // 100, replace=False) for layer in gate_layers},
               "q": {q_layer: rng.choice(layout.n_neurons("q"), 16, replace=False)}}
    NeuronSet.from_indices(layout, "hand", neurons, name_or_path="demo").save(path, force=True)
    return path


def disk_bytes(folder: Path, exclude_inodes: set[tuple[int, int]] = frozenset()) -> int:
    """Allocated bytes of the files under ``folder``, not counting inodes in ``exclude_inodes``."""
    total = 0
    for f in folder.rglob("*"):
        st = f.stat()
        if f.is_file() and (st.st_dev, st.st_ino) not in exclude_inodes:
            total += st.st_blocks * 512
    return total


def inodes(folder: Path) -> set[tuple[int, int]]:
    return {(f.stat().st_dev, f.stat().st_ino) for f in folder.rglob("*") if f.is_file()}


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def reshard(src: Path, dst: Path, shards: int) -> dict[str, str]:
    """Re-save ``src``'s single safetensors file as about ``shards`` files, tensors in name order
    (as save_pretrained cuts them), with an index; other files copied."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, dst / f.name)
    with safe_open(str(src / "model.safetensors"), "pt") as fh:
        meta = fh.metadata()
        names = sorted(fh.keys(), key=_natural)
        sizes = {n: fh.get_slice(n).get_shape() for n in names}
        width = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
        nbytes = {n: int(np.prod(sizes[n])) * width.get(fh.get_slice(n).get_dtype(), 4) for n in names}
        total = sum(nbytes.values())
        # Tensors in name order; a tensor larger than total/shards (Gemma's 671 MB embedding) gets a
        # shard of its own, the others are cut into equal parts by cumulative size.
        big = [n for n in names if nbytes[n] > total / shards][:1]
        rest = [n for n in names if n not in big]
        parts = shards - len(big)
        per = sum(nbytes[n] for n in rest) / parts
        groups: list[list[str]] = [list(big)] if big else []
        groups += [[] for _ in range(parts)]
        running = 0
        for n in rest:
            groups[len(big) + min(parts - 1, int((running + nbytes[n] / 2) // per))].append(n)
            running += nbytes[n]
        groups = [g for g in groups if g]
        weight_map = {}
        for i, group in enumerate(groups):
            fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            save_file({n: fh.get_tensor(n) for n in group}, str(dst / fname), metadata=meta)
            weight_map.update(dict.fromkeys(group, fname))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return weight_map


def time_bake_vs_cp(demo: Path, set_path: Path, work: Path, repeats: int) -> tuple[float, float]:
    # Untimed warm-up: page cache, and the imports bake does on first use (torch).
    subprocess.run(["cp", "-r", str(demo), str(work / "warm-cp")], check=True)
    bake(str(demo), set_path, work / "warm-bake")
    shutil.rmtree(work / "warm-cp")
    shutil.rmtree(work / "warm-bake")
    t_cp, t_bake = [], []
    for i in range(repeats):
        for what in (("cp", "bake") if i % 2 == 0 else ("bake", "cp")):
            out = work / f"{what}-{i}"
            start = time.perf_counter()
            if what == "cp":
                subprocess.run(["cp", "-r", str(demo), str(out)], check=True)
                t_cp.append(time.perf_counter() - start)
            else:
                bake(str(demo), set_path, out, scale=0.0)
                t_bake.append(time.perf_counter() - start)
            shutil.rmtree(out)
        print(f"run {i + 1}: cp -r {t_cp[-1]:.3f} s, bake {t_bake[-1]:.3f} s", flush=True)
    return statistics.median(t_bake), statistics.median(t_cp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--workdir", type=Path, help="scratch folder on the same filesystem as the "
                    "demo checkpoint (default: a temporary folder beside it)")
    args = ap.parse_args(argv)

    demo = prepare("demo")
    layout = layout_of(demo)
    ckpt_bytes = disk_bytes(demo)
    with tempfile.TemporaryDirectory(prefix="culnig-bench-", dir=args.workdir or demo.parent) as tmp:
        work = Path(tmp)
        set_path = demo_set(layout, work / "set.json")
        print(f"demo checkpoint: {demo} ({ckpt_bytes / 1e9:.3f} GB on disk); set: "
              f"{NeuronSet.load(set_path).counts()['total']} neurons", flush=True)
        med_bake, med_cp = time_bake_vs_cp(demo, set_path, work, args.repeats)

        sharded = work / "sharded"
        weight_map = reshard(demo, sharded, args.shards)
        shard_files = sorted(set(weight_map.values()))
        # One gate layer in the first and one in the last shard that hold gate projections.
        gate_shards: dict[str, list[int]] = {}
        for n, f in weight_map.items():
            m = re.match(r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight$", n)
            if m:
                gate_shards.setdefault(f, []).append(int(m.group(1)))
        ordered = sorted(gate_shards)
        gate_layers = [min(gate_shards[ordered[0]]), max(gate_shards[ordered[-1]])]
        sharded_set = work / "sharded_set.json"
        rng = np.random.default_rng(1)
        n_gate = layout.n_neurons("gate")
        NeuronSet.from_indices(layout, "hand", {"gate": {layer: rng.choice(n_gate, n_gate // 100,
                                                                           replace=False)
                                                         for layer in gate_layers}},
                               name_or_path="demo").save(sharded_set)
        out = work / "sharded-masked"
        result = bake(str(sharded), sharded_set, out)
        sharded_bytes = disk_bytes(sharded)
        extra = disk_bytes(out, inodes(sharded))
        rewritten = result.manifest["shards"]["rewritten"]
        share = len(rewritten) / len(shard_files)
        edited_share = sum((sharded / f).stat().st_size for f in rewritten) / sum(
            (sharded / f).stat().st_size for f in shard_files)
        print(f"sharded copy: {len(shard_files)} shards, {sharded_bytes / 1e9:.3f} GB; set on gate "
              f"of layers {gate_layers}; rewritten {rewritten}, "
              f"linked {len(result.manifest['shards']['linked'])}")
        print(f"bake time / cp -r time: {med_bake / med_cp:.3f} (median bake {med_bake:.3f} s, "
              f"median cp -r {med_cp:.3f} s, {args.repeats} runs, single-file demo checkpoint, "
              f"target <= 1.0)")
        print(f"extra disk bytes / checkpoint bytes: {extra / sharded_bytes:.3f} ({extra / 1e6:.1f} MB "
              f"of {sharded_bytes / 1e6:.1f} MB; shards with edited tensors: {len(rewritten)}/"
              f"{len(shard_files)} = {share:.3f} of shards, {edited_share:.3f} of weight bytes; "
              f"target <= {share:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
