"""Command line of the LAPE/CAPE baseline: ``culnig activations``, ``culnig select lape``,
``culnig sets combine``, ``culnig tasks ppl``, ``culnig corpora blend`` and
``culnig report-lape``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from culnig.errors import CulnigError
from culnig.loading import LOAD_DTYPES
from culnig.models import resolve_model_ref


# --- culnig activations -------------------------------------------------------------------------
def cmd_activations(args: argparse.Namespace) -> int:
    from attribution.activations import run_activations
    from culnig_tasks.corpora import parse_corpora

    corpora = parse_corpora(args.corpus, text_field=args.text_field)
    out = run_activations(resolve_model_ref(args.model), corpora, args.out,
                          chunk_tokens=args.chunk_tokens, max_tokens=args.max_tokens,
                          batch_size=args.batch_size, dtype=args.dtype, resume=args.resume,
                          force=args.force, checkpoint_every=args.checkpoint_every,
                          device=args.device)
    from attribution.activations import ActivationStats

    stats = ActivationStats.load(out)
    for n in stats.names:
        print(f"{n:16s} {stats.tokens[n]:10d} tokens", file=sys.stderr)
    print(out)
    return 0


# --- culnig select lape -------------------------------------------------------------------------
def cmd_select_lape(args: argparse.Namespace) -> int:
    from attribution.activations import ActivationStats, check_zero_at_zero
    from attribution.lape import ACTIVATION_DEFINED, lape_select, member_to_neurons
    from culnig.neuron_sets import NeuronSet, file_sha256, model_block

    stats = ActivationStats.load(args.stats)
    names = None
    if args.corpora:
        names = [c.strip() for c in args.corpora.split(",") if c.strip()]
    names = stats.select(names, source=str(args.stats))
    check_zero_at_zero(str(stats.meta.get("hidden_act", "unknown")),
                       f"{args.stats} (model {stats.meta.get('model', {}).get('name_or_path', '?')})")
    shape = stats.shape
    probs = stats.probabilities(names, source=str(args.stats))
    res = lape_select(probs, top=args.top, filter_percentile=args.filter_percentile,
                      bar_percentile=args.bar_percentile)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CulnigError(f"--out {out} is a file; pass a folder (one set file per corpus)")
    targets = {n: out / f"{args.prefix}{n}.json" for n in names}
    existing = [p for p in targets.values() if p.exists()]
    if existing and not args.force:
        raise CulnigError(f"{existing[0]} already exists; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    info = res.info()
    sha = file_sha256(args.stats)
    for c, name in enumerate(names):
        params = {"corpus": name, "corpora": names, "top": args.top,
                  "filter_percentile": args.filter_percentile,
                  "bar_percentile": args.bar_percentile, "tokens": stats.tokens[name],
                  "hidden_act": stats.meta.get("hidden_act"), ACTIVATION_DEFINED: True, **info}
        ns = NeuronSet(model=model_block(shape, (stats.meta.get("model") or {}).get("name_or_path", "")),
                       method="lape", neurons=member_to_neurons(res.member[c]), params=params,
                       sources={"stats": sha})
        ns.validate(shape, source=str(targets[name]))
        ns.save(targets[name], force=True)
        print(f"{targets[name]}: {ns.counts()['total']} neurons")
    print(f"lape: {info['selected']} lowest-entropy neurons of {info['target']} wanted "
          f"({info['eligible']} pass the filter {info['filter_value']:.4g}); {info['assigned']} "
          f"assigned to a corpus (bar {info['bar_value']:.4g})", file=sys.stderr)
    return 0


def add_select_lape(ssub) -> None:
    """Register ``culnig select lape`` (called by :func:`culnig.cli.selection.register`)."""
    text = ("language/culture-specific neurons by activation entropy (LAPE, Tang et al. 2024)")
    q = ssub.add_parser(
        "lape", help=text,
        description="LAPE on a statistics file of `culnig activations`: per neuron the activation "
                    "probabilities of the chosen corpora, normalised over them, and their entropy. "
                    "A neuron whose highest probability is not above the --filter-percentile of "
                    "all probabilities is excluded; of the rest the --top % of all neurons with "
                    "the lowest entropy are kept and assigned to every corpus whose probability is "
                    "above the --bar-percentile of all probabilities (a neuron may belong to "
                    "several). Percentiles are order statistics: the k-th smallest value with "
                    "k = round(n * p / 100). Writes OUT/<prefix><corpus>.json per corpus (module "
                    "gate), ready for `culnig bake`.")
    q.add_argument("--stats", required=True, type=Path, help="statistics file of `culnig activations`")
    q.add_argument("--corpora", help="comma list of corpora to compare (default: all in the file)")
    q.add_argument("--out", required=True, type=Path, help="folder for the set files")
    q.add_argument("--prefix", default="", help="file name prefix, e.g. lape_ (default none)")
    q.add_argument("--top", type=float, default=1.0, help="%% of all neurons kept by entropy (1)")
    q.add_argument("--filter-percentile", type=float, default=95.0,
                   help="a neuron's highest probability must exceed this percentile (95)")
    q.add_argument("--bar-percentile", type=float, default=95.0,
                   help="probability percentile a corpus must exceed to own a neuron (95)")
    q.add_argument("--force", action="store_true", help="replace existing set files")
    q.set_defaults(func=cmd_select_lape)


# --- culnig sets combine -----------------------------------------------------------------------
def cmd_sets_combine(args: argparse.Namespace) -> int:
    from attribution.lape import ACTIVATION_DEFINED, evaluate_expression
    from culnig.neuron_sets import NeuronSet, file_sha256

    loaded: dict[str, NeuronSet] = {}

    def load(tok: str) -> NeuronSet:
        if tok not in loaded:
            loaded[tok] = NeuronSet.load(tok)
        return loaded[tok]

    result, operands = evaluate_expression(list(args.expr), load)
    params = {"expression": " ".join(args.expr), "name": args.name or Path(args.out).stem,
              "operands": [{"file": t, "method": loaded[t].method,
                            **({"corpus": loaded[t].params["corpus"]} if "corpus" in loaded[t].params
                               else {})} for t in dict.fromkeys(operands)]}
    if any(s.params.get(ACTIVATION_DEFINED) for s in loaded.values()):
        params[ACTIVATION_DEFINED] = True
    result.method = args.method
    result.params = params
    result.sources = {t: file_sha256(t) for t in dict.fromkeys(operands)}
    result.save(args.out, force=args.force)
    c = result.counts()
    print(f"{args.out}: {c['total']} neurons ("
          + (", ".join(f"{m} {c[m]}" for m in c if m != "total" and c[m]) or "empty") + ")")
    return 0


def add_sets_combine(ssub) -> None:
    """Register ``culnig sets combine`` (called by :func:`culnig.cli.selection.register`)."""
    q = ssub.add_parser(
        "combine", help="set algebra: A and B, A minus B, A or not B, intersect A B C ...",
        description="Combine neuron set files of one model. EXPR is evaluated left to right "
                    "(no precedence): FILE (and|or|minus) [not] FILE ..., or `intersect F1 F2 ...` "
                    "/ `union F1 F2 ...`. `not A` is every gate/up/q/k/v neuron of the model not "
                    "in A, so `A and not B` = `A minus B`. CAPE (Namazifard & Galke 2025): "
                    "compound = language and culture, pure = culture minus language, generic = "
                    "intersect of the pure sets.")
    q.add_argument("expr", nargs="+", metavar="EXPR", help="set files and operators")
    q.add_argument("--out", required=True, type=Path, help="neuron set file to write (JSON)")
    q.add_argument("--method", default="cape", help="method recorded in the file (default cape)")
    q.add_argument("--name", help="label recorded as params.name (default: the file stem); the "
                                  "reports use it")
    q.add_argument("--force", action="store_true", help="replace an existing file")
    q.set_defaults(func=cmd_sets_combine)


# --- culnig tasks ppl ----------------------------------------------------------------------------
def cmd_tasks(args: argparse.Namespace) -> int:
    from culnig_tasks.corpora import check_name
    from culnig_tasks.ppl import write_tasks

    corpora: dict[str, list[str]] = {}
    if not args.corpus:
        raise CulnigError("no corpus given; pass --corpus NAME=PATH (repeatable)")
    for spec in args.corpus:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise CulnigError(f"--corpus {spec!r}: use NAME=PATH (a text file, folder or glob)")
        corpora.setdefault(check_name(name.strip()), []).append(path.strip())
    files = write_tasks(corpora, args.out, split=args.split, force=args.force)
    for f in files:
        print(f)
    print(f"use: --include_path {args.out} --tasks "
          + ",".join(f"culnig_ppl_{n}" for n in corpora), file=sys.stderr)
    return 0


# --- culnig corpora blend -----------------------------------------------------------------------
BLEND_DEFAULT = ("USA", "South Korea", "China", "Iran", "Greece", "Spain", "Indonesia", "Ethiopia",
                 "Algeria", "Azerbaijan", "Assam", "Nigeria", "West Java")


def cmd_corpora(args: argparse.Namespace) -> int:
    from culnig_tasks.corpora import blend_local_corpora
    from culnig.paths import shared_data_dir

    blend = args.blend_dir
    if blend is None:
        base = shared_data_dir()
        blend = base / "blend" if base else None
    if blend is None or not Path(blend).is_dir():
        raise CulnigError("BLEnD data not found; pass --blend-dir (the folder with questions/ and "
                          "annotations/) or set CULNIG_DATA_DIR")
    countries = [c.strip() for c in args.countries.split(",")] if args.countries else list(BLEND_DEFAULT)
    out = blend_local_corpora(blend, args.out, countries, eval_fraction=args.eval_fraction)
    for slug, parts in out.items():
        print(f"{slug:12s} " + "  ".join(f"{k}: {v}" for k, v in parts.items()))
    return 0


# --- culnig report-lape --------------------------------------------------------------------------
def cmd_report_lape(args: argparse.Namespace) -> int:
    from culnig.reports.lape import make_lape_report, parse_set_args

    out = args.out or (Path(args.run_dir) / "report-lape" if args.run_dir else None)
    if out is None:
        raise CulnigError("pass --out (or a RUN_DIR, whose report-lape/ folder is the default)")
    rep = make_lape_report(out, run_dir=args.run_dir, lape=parse_set_args(args.lape),
                           culnig=parse_set_args(args.culnig), metric=args.metric)
    for n in rep.notes:
        print(f"culnig: note: {n}", file=sys.stderr)
    print(rep.out / "report.html")
    return 0


def register(sub) -> None:
    """Register the top-level commands (called by :func:`culnig.cli.build_parser`)."""
    p = sub.add_parser(
        "activations", help="LAPE statistics: how often each MLP neuron's act_fn(gate(x)) is > 0",
        description="Stream each corpus, tokenise it into fixed-length chunks (<bos> + "
                    "CHUNK_TOKENS-1 corpus tokens) and count, per MLP neuron and corpus, the tokens "
                    "at which act_fn(gate(x)) (the value multiplied with up(x)) is > 0, read by "
                    "forward hooks on each layer's activation module; <bos> and padding are not "
                    "counted. Writes a safetensors statistics file; checkpoints to OUT.partial and "
                    "continues with --resume. Refuses models whose MLP activation is not 0 at 0.")
    p.add_argument("--model", required=True, help="checkpoint folder, hub id, or demo/smollm2")
    p.add_argument("--corpus", action="append", metavar="NAME=PATH",
                   help="a corpus (repeatable; the same NAME twice pools sources): a text file, "
                        ".jsonl file, folder, glob pattern, or hf:DATASET_ID[:CONFIG[:SPLIT]]")
    p.add_argument("--out", required=True, type=Path, help="statistics file to write (.safetensors)")
    p.add_argument("--chunk-tokens", type=int, default=4096, help="tokens per chunk incl. <bos> (4096)")
    p.add_argument("--max-tokens", type=int, help="count at most N tokens per corpus (default: all)")
    p.add_argument("--batch-size", type=int, default=2, help="chunks per forward pass (2)")
    p.add_argument("--text-field", default="text", help="text field of .jsonl files and datasets")
    p.add_argument("--dtype", default="fp32", choices=LOAD_DTYPES)
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="batches between checkpoints (50)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--force", action="store_true", help="replace an existing statistics file")
    p.set_defaults(func=cmd_activations,
                   resume_hint="run the same command with --resume to continue from the last checkpoint")

    p = sub.add_parser("tasks", help="write lm-eval task files (perplexity on your corpora)",
                       description="Write lm-eval task definitions into a folder used as an "
                                   "lm-eval include path.")
    tsub = p.add_subparsers(dest="tasks_cmd", required=True, metavar="WHAT")
    q = tsub.add_parser(
        "ppl", help="culnig_ppl_<name>: loglikelihood_rolling perplexity of text files",
        description="Write OUT/culnig_ppl_<NAME>.yaml per corpus: an lm-eval loglikelihood_rolling "
                    "task over the corpus's documents (metrics word_perplexity, byte_perplexity, "
                    "bits_per_byte). The path, document split and sha256 are in the task's "
                    "metadata; the version is 1.0+<sha8>. Use OUT as include path: `lm_eval run "
                    "--include_path OUT --tasks culnig_ppl_en ...`, `culnig eval --tasks "
                    "'culnig_ppl_*' ... -- --include_path OUT`, or in a sweep config "
                    "`lm_eval_args: [--include_path, OUT]` with `tasks: ['culnig_ppl_*']` "
                    "(perplexity tasks only in that sweep).")
    q.add_argument("--corpus", action="append", metavar="NAME=PATH",
                   help="a corpus: text file, folder of .txt files or glob (repeatable)")
    q.add_argument("--out", required=True, type=Path, help="folder for the task files")
    q.add_argument("--split", choices=("paragraph", "line", "file"), default="paragraph",
                   help="documents: blank-line separated paragraphs (default), lines, or files")
    q.add_argument("--force", action="store_true", help="replace task files with other definitions")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("corpora", help="build small real multilingual corpora (BLEnD local language)",
                       description="Build text corpora from local data.")
    csub = p.add_subparsers(dest="corpora_cmd", required=True, metavar="WHAT")
    q = csub.add_parser(
        "blend", help="per-country local-language BLEnD questions + answers",
        description="Write OUT/train/<slug>.txt and OUT/eval/<slug>.txt per country: its BLEnD "
                    "questions in the local language, each followed by the local-language answers "
                    "(most votes first), 10 per paragraph; the last --eval-fraction of the "
                    "questions go to eval/. Slugs: south_korea, usa, ... (the sweep's {slug}).")
    q.add_argument("--out", required=True, type=Path, help="output folder")
    q.add_argument("--countries", help="comma list (default: 13 countries with 13 distinct "
                   "languages: " + ", ".join(BLEND_DEFAULT) + ")")
    q.add_argument("--blend-dir", type=Path, help="BLEnD folder (default: $CULNIG_DATA_DIR/blend or "
                   "../shared/data/blend)")
    q.add_argument("--eval-fraction", type=float, default=0.4, help="share of questions for eval/ (0.4)")
    p.set_defaults(func=cmd_corpora)

    p = sub.add_parser(
        "report-lape", help="LAPE/CAPE comparison: Δ-perplexity matrix, counts, layers, overlap",
        description="Δ-perplexity heatmap (masked minus original, per mask and evaluation corpus) "
                    "from a sweep's RUN_DIR with culnig_ppl_* tasks; neuron counts (Table 16), "
                    "layer distributions side by side (Fig. 11) and Jaccard overlap of the given "
                    "CULNIG and LAPE/CAPE sets. Writes Markdown, HTML, CSV and PNG.")
    p.add_argument("run_dir", nargs="?", type=Path, help="sweep run dir with perplexity results")
    p.add_argument("--out", type=Path, help="output folder (default RUN_DIR/report-lape)")
    p.add_argument("--lape", action="append", metavar="[NAME=]PATH",
                   help="LAPE/CAPE set file or folder of set files (repeatable)")
    p.add_argument("--culnig", action="append", metavar="[NAME=]PATH",
                   help="CULNIG set file or folder (general, specific; repeatable)")
    p.add_argument("--metric", default="byte_perplexity",
                   choices=("byte_perplexity", "word_perplexity", "bits_per_byte"),
                   help="perplexity metric of the Δ matrix (byte_perplexity)")
    p.set_defaults(func=cmd_report_lape)
