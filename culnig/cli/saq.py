"""``culnig saq``: which judge runs per language, and re-judging logged BLEnD SAQ responses."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_judges(args: argparse.Namespace) -> int:
    from culnig_tasks import saq_judge

    tables = {s: saq_judge.judge_table(s) for s in saq_judge.JUDGE_SETS}
    print("lang  " + "".join(f"{s:26s}" for s in saq_judge.JUDGE_SETS).rstrip())
    for lang in saq_judge.LANGS:
        print(f"{lang:6s}" + "".join(f"{tables[s][lang]:26s}" for s in saq_judge.JUDGE_SETS).rstrip())
    return 0


def cmd_rejudge(args: argparse.Namespace) -> int:
    from culnig_tasks.saq_rejudge import TABLE, rejudge

    done = rejudge(args.run_dir, judges=args.judges, baseline=args.baseline, out=args.out,
                   force=args.force)
    sys.stdout.write((done.out / f"{TABLE}.md").read_text(encoding="utf-8"))
    print(f"culnig: wrote {done.out}", file=sys.stderr)
    return 0


def register(sub) -> None:
    from culnig_tasks.saq_judge import DEFAULT_JUDGES, JUDGE_SETS
    from culnig_tasks.saq_rejudge import LOGGED

    p = sub.add_parser("saq", help="BLEnD SAQ judging: the judges per language, re-judging",
                       description="BLEnD short-answer judging. Generation is the expensive "
                                   "part; judging reads the logged responses and never "
                                   "generates again.")
    ssub = p.add_subparsers(dest="saq_cmd", required=True, metavar="WHAT")
    q = ssub.add_parser("judges", help="the judge that runs per language in each judge set",
                        description="Print, per BLEnD language, the judge each judge set runs on "
                                    "this installation (a missing package falls back).")
    q.set_defaults(func=cmd_judges)
    q = ssub.add_parser("rejudge", help="re-judge logged SAQ responses with another judge set",
                        description="Judge the responses in the samples_blendsaq*.jsonl files "
                                    "under RUN_DIR (a result folder or a sweep run folder) with "
                                    "a judge set, and write per-language tables of the verdicts "
                                    "that changed (CSV and Markdown) to a new folder beside them.")
    q.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    q.add_argument("--judges", choices=JUDGE_SETS, default=DEFAULT_JUDGES,
                   help=f"judge set to apply (default {DEFAULT_JUDGES})")
    q.add_argument("--baseline", choices=(LOGGED,) + JUDGE_SETS, default=LOGGED,
                   help="compare with the logged verdicts (default) or another judge set")
    q.add_argument("--out", type=Path, help="output folder (default RUN_DIR/saq_rejudge-JUDGES"
                                            "[-vs-BASELINE])")
    q.add_argument("--force", action="store_true", help="replace an existing output folder")
    q.set_defaults(func=cmd_rejudge)
