"""Figures shared by the reports (matplotlib, headless): PNG bytes of a figure, and the per-layer
distribution of neuron sets (the paper's Fig. 3), from set files or from what result records hold.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

from culnig.atomic import atomic_write_bytes
from culnig.neuron_sets import NeuronSet
from culnig.registry import MODULES


def plt():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def figure_bytes(fig, fmt: str = "png", *, tight: bool = True) -> bytes:
    """The figure rendered (100 dpi) and closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100, **({"bbox_inches": "tight"} if tight else {}))
    plt().close(fig)
    return buf.getvalue()


def png(fig) -> bytes:
    return figure_bytes(fig)


def layer_figure(sets: dict[str, NeuronSet]):
    """Per-layer neuron counts per module, one panel per set (stacked bars)."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(sets), figsize=(5 * len(sets), 3.2), squeeze=False)
    for ax, (name, ns) in zip(axes[0], sets.items()):
        n_layers = int(ns.model["n_layers"])
        per_layer = ns.per_layer_counts(n_layers)
        bottom = [0] * n_layers
        for m in MODULES:
            if any(per_layer[m]):
                ax.bar(range(n_layers), per_layer[m], bottom=bottom, label=m)
                bottom = [x + y for x, y in zip(bottom, per_layer[m])]
        ax.set_title(f"{name} ({ns.counts()['total']} neurons)")
        ax.set_xlabel("layer")
        ax.set_ylabel("neurons")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_layer_distribution(sets: dict[str, NeuronSet], path: str | Path) -> Path:
    """Per-layer neuron counts per module (like the paper's Fig. 3), one panel per set, written to
    ``path`` (its suffix picks the format, PNG by default)."""
    path = Path(path)
    data = figure_bytes(layer_figure(sets), path.suffix.lstrip(".").lower() or "png", tight=False)
    atomic_write_bytes(path, data)
    return path


class RecordedSet:
    """What :func:`layer_figure` reads from a set, rebuilt from the per-layer counts a result
    record holds (``culnig_eval.json`` ``set``: the set file itself may be gone)."""

    def __init__(self, info: dict, n_layers: int):
        self.model = {"n_layers": n_layers}
        self._per_layer = info.get("per_layer") or {}
        self._counts = info.get("counts") or {}

    def per_layer_counts(self, n_layers: int) -> dict[str, list[int]]:
        return {m: list(self._per_layer.get(m, [0] * n_layers)) for m in MODULES}

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


def recorded_layers_png(records: Iterable) -> bytes | None:
    """Layer distribution of the sets behind result records (objects with ``checkpoint``,
    ``kind`` and ``meta``); one random set is enough to show. None when no record has a set."""
    sets: dict[str, RecordedSet] = {}
    for r in records:
        info = r.meta.get("set")
        if not info or (r.kind == "random" and any(k.startswith("random") for k in sets)):
            continue
        per_layer = info.get("per_layer") or {}
        n_layers = len(next(iter(per_layer.values()), []))
        if n_layers:
            sets[r.checkpoint] = RecordedSet(info, n_layers)
    if not sets:
        return None
    return figure_bytes(layer_figure(sets), tight=False)
