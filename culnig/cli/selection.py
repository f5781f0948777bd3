"""``culnig select``, ``culnig sets`` and ``culnig modules``: score files -> neuron set files,
and looking at sets."""

from __future__ import annotations

import argparse
from pathlib import Path

from attribution.selection import (jaccard_table, parse_modules, parse_seeds, random_set_like,
                                   select_to_file)
from attribution.finetune_modules import WHICH
from culnig.errors import CulnigError
from culnig.neuron_sets import NeuronSet
from culnig.registry import MODULES


def cmd_select(args: argparse.Namespace) -> int:
    if args.method == "random":
        ref = NeuronSet.load(args.like)
        seeds = parse_seeds(args.seeds)
        outs = []
        for seed in seeds:
            out = Path(args.out)
            if len(seeds) > 1:
                out = out / f"random_seed{seed}.json"
            ns = random_set_like(ref, args.like, seed)
            outs.append(ns.save(out, force=args.force))
        print("\n".join(map(str, outs)))
        return 0

    if not args.no_control and not args.ctrl:
        raise CulnigError("--ctrl is required (or pass --no-control for the ablation without it)")
    if not args.no_crc and not args.crc:
        raise CulnigError("--crc is required (or pass --no-crc for the ablation without it)")
    common = dict(neur=args.neur, ctrl=None if args.no_control else args.ctrl,
                  crc=None if args.no_crc else args.crc, agg=args.agg, r=args.r, force=args.force)
    if args.method == "general":
        ns = select_to_file("general", args.out, t_mlp=args.t_mlp, t_attn=args.t_attn,
                            mlp_modules=parse_modules(args.mlp_modules), **common)
    else:
        ns = select_to_file("specific", args.out, country=args.country, t=args.t, z_min=args.z_min,
                            modules=parse_modules(args.modules), **common)
    counts = ns.counts()
    print(f"{args.out}: {counts['total']} neurons ("
          + ", ".join(f"{m} {counts[m]}" for m in MODULES if counts[m]) + ")")
    return 0


def cmd_sets(args: argparse.Namespace) -> int:
    if args.sets_cmd == "show":
        ns = NeuronSet.load(args.set)
        n_layers = int(ns.model["n_layers"])
        per_layer = ns.per_layer_counts(n_layers)
        counts = ns.counts()
        print(f"{args.set}: method {ns.method}, model {ns.model.get('arch')} "
              f"({ns.model.get('fingerprint')}), {counts['total']} neurons")
        mods = [m for m in MODULES if counts[m]]
        print("layer  " + "  ".join(f"{m:>6s}" for m in mods))
        for layer in range(n_layers):
            print(f"{layer:5d}  " + "  ".join(f"{per_layer[m][layer]:6d}" for m in mods))
        print("total  " + "  ".join(f"{counts[m]:6d}" for m in mods))
        if args.plot:
            from culnig.reports.figures import plot_layer_distribution

            plot_layer_distribution({Path(args.set).stem: ns}, args.plot)
            print(f"plot: {args.plot}")
        return 0
    a, b = NeuronSet.load(args.a), NeuronSet.load(args.b)
    if a.model.get("fingerprint") != b.model.get("fingerprint"):
        raise CulnigError(f"{args.a} and {args.b} are sets of different models")
    print(f"{'module':8s} {'|A|':>7s} {'|B|':>7s} {'|A∩B|':>7s} {'Jaccard':>8s}")
    for m, na, nb, inter, jac in jaccard_table(a, b):
        print(f"{m:8s} {na:7d} {nb:7d} {inter:7d} {jac:8.3f}")
    return 0


def cmd_modules(args: argparse.Namespace) -> int:
    from attribution.finetune_modules import choose_modules, tensor_shapes
    from culnig.loading import layout_of

    layout = layout_of(args.model)
    ns = NeuronSet.load(args.set)
    choice = choose_modules(layout, ns, tensor_shapes(args.model), budget=args.budget, which=args.which)
    print(f"{'block':32s} {'selected':>8s} {'params':>12s}")
    for u in choice.units:
        print(f"{u.prefix:32s} {u.n_selected:8d} {u.n_params:12,d}")
    print(f"{len(choice.units)} blocks, {choice.n_params:,} of {choice.total_params:,} parameters "
          f"({choice.fraction:.2%}; budget {args.budget:.0%}, {args.which})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("select", help="select neurons from score files (general, specific, random) "
                                      "or activation statistics (lape)",
                       description="Select neurons from score files (lape: from activation "
                                   "statistics) only, without recomputation, and write neuron set "
                                   "files (JSON).")
    ssub = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name, text in (("general", "culture-general: top t%% of d = s(neur) - s(ctrl), minus the top r%% by s(CRC)"),
                       ("specific", "culture-specific for one country, with the z-score filter")):
        q = ssub.add_parser(name, help=text, description=text.replace("%%", "%"))
        q.add_argument("--neur", required=True, help="scores on BLEnD_neur")
        q.add_argument("--ctrl", help="scores on BLEnD_ctrl (the same rows without the question)")
        q.add_argument("--crc", help="scores on CountryRC identification rows")
        q.add_argument("--out", required=True, help="neuron set file to write (JSON)")
        q.add_argument("--agg", default="max", help="score aggregation to use: max (paper), mean, norm")
        q.add_argument("--r", type=float, default=1.0, help="drop the top r%% by s(CRC) (default 1)")
        q.add_argument("--no-control", action="store_true", help="ablation: no ctrl subtraction")
        q.add_argument("--no-crc", action="store_true", help="ablation: no CountryRC filter")
        q.add_argument("--force", action="store_true", help="replace an existing set file")
        if name == "general":
            q.add_argument("--t-mlp", type=float, default=1.0, help="top %% of MLP neurons (default 1)")
            q.add_argument("--t-attn", type=float, default=0.2, help="top %% of q/k/v neurons (default 0.2)")
            q.add_argument("--mlp-modules", default="gate", help="MLP modules pooled (default gate)")
        else:
            q.add_argument("--country", required=True, help="country as in the score files")
            q.add_argument("--t", type=float, default=0.3, help="top %% over MLP and attention (default 0.3)")
            q.add_argument("--z-min", type=float, default=0.5, help="minimum z-score across countries (0.5)")
            q.add_argument("--modules", default="gate,q,k,v", help="modules pooled (default gate,q,k,v)")
    q = ssub.add_parser("random", help="count-matched random sets (uniform per module over all layers)")
    q.add_argument("--like", required=True, help="the set whose per-module counts to match")
    q.add_argument("--seeds", default="0-9", help="seeds, e.g. 0-9 or 0,3 (default 0-9)")
    q.add_argument("--out", required=True, help="set file (one seed) or folder (several seeds)")
    q.add_argument("--force", action="store_true")
    from culnig.cli.lape import add_select_lape, add_sets_combine

    add_select_lape(ssub)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("sets", help="show a neuron set, compare two, or combine sets (and, or, minus)")
    ssub = p.add_subparsers(dest="sets_cmd", required=True, metavar="WHAT")
    q = ssub.add_parser("show", help="counts by module and layer; --plot writes a PNG")
    q.add_argument("set")
    q.add_argument("--plot", help="write the per-layer distribution plot here (PNG)")
    q = ssub.add_parser("compare", help="overlap of two sets (Jaccard per module)")
    q.add_argument("a")
    q.add_argument("b")
    add_sets_combine(ssub)
    p.set_defaults(func=cmd_sets)

    p = sub.add_parser("modules", help="modules to fine-tune from a set under a parameter budget",
                       description="Rank each layer's MLP block (gate brings up/down) and attention "
                                   "block (q/k/v bring o) by the number of the set's neurons they hold "
                                   "and take them while their parameters fit the budget (paper Sec. 4.5).")
    p.add_argument("--model", required=True, help="local checkpoint folder (for parameter counts)")
    p.add_argument("--set", required=True, help="neuron set file (e.g. culture-general)")
    p.add_argument("--budget", type=float, default=0.10, help="fraction of all parameters (0.10)")
    p.add_argument("--which", choices=WHICH, default="top",
                   help="top: blocks with the most selected neurons; bottom: the fewest")
    p.set_defaults(func=cmd_modules)
