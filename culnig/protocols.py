"""Scoring protocols and the task names that carry them.

* ``paper`` (``culnig_<bench>`` groups, ``<bench>_paper_v<k>`` leaves): one greedy token, exact
  match with the gold label, as the paper evaluates.
* ``loglik`` (``culnigll_<bench>`` groups, ``<bench>_loglik_v<k>`` leaves): the log-likelihood of
  each option label after the same prompt; lm-eval ``multiple_choice`` (``acc``, ``acc_norm``).

``culnig eval --protocol`` and a sweep's ``protocol:`` rewrite task names written in the paper
form (groups, leaves and patterns such as ``culnig_*``); names already in the loglik form and tasks
that are not culnig's pass through unchanged. With ``both`` each loglik name comes before its
paper name: lm-eval sends the request types in the order it first sees them, so ``culnig-vllm``'s
one request per prompt carries the option tokens and the paper protocol's greedy token comes from
it (measured: docs/tasks.md).
"""

from __future__ import annotations

import re
from functools import lru_cache

from culnig.errors import CulnigError
from culnig.paths import tasks_dir

PROTOCOLS = ("paper", "loglik", "both")
PAPER_GROUP, LOGLIK_GROUP = "culnig_", "culnigll_"
_PAPER_LEAF = re.compile(r"^(?P<bench>.+)_paper_(?P<rest>v[\d*?\[\]]+|\*)$")
_LOGLIK_LEAF = re.compile(r"^(?P<bench>.+)_loglik_(?P<rest>v\d+)$")


@lru_cache(maxsize=1)
def loglik_names() -> frozenset[str]:
    """Group and leaf names of the loglik family, from the task folder's YAML file names."""
    root = tasks_dir()
    names = {p.stem for p in root.glob(f"*/{LOGLIK_GROUP}*.yaml")}
    names |= {p.stem for p in root.glob("*/*_loglik_v*.yaml")}
    return frozenset(names)


def protocol_of(task: str) -> str | None:
    """``paper``/``loglik`` for a culnig group or leaf name, None for anything else."""
    if task.startswith(LOGLIK_GROUP) or _LOGLIK_LEAF.match(task):
        return "loglik"
    if task.startswith(PAPER_GROUP) or _PAPER_LEAF.match(task):
        return "paper"
    return None


def bench_of(task: str) -> str | None:
    """Benchmark key of a culnig group or leaf (``culnigll_qnli`` -> ``qnli``)."""
    for prefix in (LOGLIK_GROUP, PAPER_GROUP):
        if task.startswith(prefix):
            return task[len(prefix):]
    m = _LOGLIK_LEAF.match(task) or _PAPER_LEAF.match(task)
    return m.group("bench") if m else None


def to_loglik(name: str) -> str | None:
    """The loglik form of a paper-form name or pattern; None when the benchmark has none."""
    is_pattern = any(c in name for c in "*?[")
    if name.startswith(PAPER_GROUP):
        out = LOGLIK_GROUP + name[len(PAPER_GROUP):]
    else:
        m = _PAPER_LEAF.match(name)
        if not m:
            return None
        out = f"{m.group('bench')}_loglik_{m.group('rest')}"
    if is_pattern:
        return out
    return out if out in loglik_names() else None


def apply(tasks: list[str], protocol: str) -> list[str]:
    """Task names for ``protocol`` (see the module docstring), order kept, duplicates dropped."""
    if protocol not in PROTOCOLS:
        raise CulnigError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    out: list[str] = []
    for name in tasks:
        kind = protocol_of(name)
        if protocol == "paper" or kind != "paper":
            out.append(name)
            continue
        ll = to_loglik(name)
        if protocol == "both":  # loglik first: see the module docstring
            if ll:
                out.append(ll)
            out.append(name)
        elif ll:
            out.append(ll)
        else:
            raise CulnigError(f"task {name!r} has no log-likelihood form (it is scored on generated "
                              "text); use --protocol paper or both for it")
    return list(dict.fromkeys(out))


def apply_str(tasks: str, protocol: str) -> str:
    return ",".join(apply([t.strip() for t in tasks.split(",") if t.strip()], protocol))
