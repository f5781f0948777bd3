"""``culnig data build`` (identification items for attribution) and ``culnig data wvs-majority``
(WorldValuesBench majority answers)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

from culnig.errors import CulnigError


@contextlib.contextmanager
def _data_root(data_dir: str | None, blend_dir: str | None, countryrc_file: str | None):
    """Point the data layer at the user's files: ``--data-dir`` directly, ``--blend-dir`` /
    ``--countryrc-file`` through a temporary root of symbolic links in the expected layout."""
    saved = os.environ.get("CULNIG_DATA_DIR")
    try:
        if blend_dir or countryrc_file:
            with tempfile.TemporaryDirectory(prefix="culnig-data-") as tmp:
                base = Path(data_dir) if data_dir else None
                for name, given, rel in (("blend", blend_dir, "blend"),
                                         ("countryrc", countryrc_file, "countryrc/data.json")):
                    src = Path(given) if given else (base / rel if base else None)
                    if given and not src.exists():
                        raise CulnigError(f"{given}: no such {'folder' if name == 'blend' else 'file'}")
                    if src is not None and src.exists():
                        dst = Path(tmp) / rel
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        dst.symlink_to(src.resolve())
                os.environ["CULNIG_DATA_DIR"] = tmp
                yield
        else:
            if data_dir:
                if not Path(data_dir).is_dir():
                    raise CulnigError(f"{data_dir}: no such data folder")
                os.environ["CULNIG_DATA_DIR"] = data_dir
            yield
    finally:
        if saved is None:
            os.environ.pop("CULNIG_DATA_DIR", None)
        else:
            os.environ["CULNIG_DATA_DIR"] = saved


def _list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_build(args: argparse.Namespace) -> int:
    from attribution.identification import build, counts_by_country
    from culnig_tasks.data import DataUnavailable

    variants = [int(v) for v in args.crc_variants.split(",")]
    with _data_root(args.data_dir, args.blend_dir, args.countryrc_file):
        try:
            paths = build(Path(args.out), source=args.source, countries=_list(args.countries),
                          crc_countries=_list(args.crc_countries), crc_variants=variants,
                          max_per_country=args.max_per_country, seed=args.seed, force=args.force)
        except DataUnavailable as exc:
            raise CulnigError(str(exc)) from None
    import json

    meta = json.loads((Path(args.out) / "items_meta.json").read_text())
    print(f"BLEnD MCQ source: {meta['blend_source']}", file=sys.stderr)
    for name, path in paths.items():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        per = counts_by_country(rows)
        print(f"{name:11s} {len(rows):6d} items  " + ", ".join(f"{c} {n}" for c, n in sorted(per.items())),
              file=sys.stderr)
        print(path)
    return 0


def add_build_parser(dsub) -> None:
    q = dsub.add_parser(
        "build", help="identification items (BLEnD neur/ctrl, CountryRC) for `culnig attribute`",
        description="Write blend_neur.jsonl, blend_ctrl.jsonl and crc_neur.jsonl into --out: BLEnD "
                    "MCQ identification rows (Food, Work life, Sport; <= 5 per country and question "
                    "id), their control form without the question, and CountryRC records 0-24 for "
                    "the target countries and prompt variants. BLEnD MCQ comes from a local hub "
                    "file, else an offline build from the annotations (an approximation of the hub "
                    "file), else the hub.")
    q.add_argument("--out", required=True, help="folder for the items files")
    q.add_argument("--data-dir", help="local data root (default $CULNIG_DATA_DIR or ../shared/data)")
    q.add_argument("--blend-dir", help="BLEnD folder (annotations/, questions/, prompts/ or the MCQ file)")
    q.add_argument("--countryrc-file", help="CountryRC data.json")
    q.add_argument("--source", choices=("auto", "local", "offline", "hub"), default="auto",
                   help="where BLEnD MCQ rows come from (default auto)")
    q.add_argument("--countries", help="BLEnD countries to keep, comma list (default all 16)")
    q.add_argument("--crc-countries", help="CountryRC target countries (default the paper's 8)")
    q.add_argument("--crc-variants", default="1,2,3,4", help="CountryRC prompt variants (default 1-4)")
    q.add_argument("--max-per-country", type=int, help="subsample to at most N items per country "
                   "and file (seeded), e.g. for a CPU-sized run")
    q.add_argument("--seed", type=int, default=0, help="subsampling seed")
    q.add_argument("--force", action="store_true", help="replace existing items files")


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "build":
        return cmd_build(args)
    if args.data_cmd == "wvs-majority":
        from culnig_tasks import worldvaluesbench

        if args.wvb_dir:
            base = Path(args.wvb_dir) / args.split
            values = base / f"{args.split}_value_qa.tsv"
            demographic = base / f"{args.split}_demographic_qa.tsv"
        else:
            values, demographic = Path(args.values), Path(args.demographic)
        for path in (values, demographic):
            if not path.is_file():
                raise CulnigError(f"{path}: no such file; pass --wvb-dir (the WorldValuesBench "
                                  "folder) or --values and --demographic")
        metadata = worldvaluesbench.question_metadata(args.metadata) if args.metadata else None
        records = worldvaluesbench.build_majority(values, demographic, metadata=metadata,
                                     min_answers=args.min_answers)
        out = worldvaluesbench.write_majority(records, args.out)
        counts = {}
        for r in records:
            counts[r["country"]] = counts.get(r["country"], 0) + 1
        for country, n in counts.items():
            print(f"{country:14s} {n} questions", file=sys.stderr)
        print(out)
        return 0
    raise AssertionError(args.data_cmd)


def register(sub) -> None:
    p = sub.add_parser("data", help="build identification items and benchmark data",
                       description="Build identification items for attribution, and benchmark "
                                   "inputs from files the user provides.")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="WHAT")
    add_build_parser(dsub)
    q = dsub.add_parser(
        "wvs-majority", help="per-country majority answers from the WorldValuesBench TSVs",
        description="Join <split>_value_qa.tsv and <split>_demographic_qa.tsv on D_INTERVIEW, keep "
                    "the 7 paper countries (B_COUNTRY), questions with >= 10 answers, the majority "
                    "answer and the KL ranking (top 40 = identification). Writes JSONL for the "
                    "worldvaluesbench tasks: put it at $CULNIG_DATA_DIR/worldvaluesbench/"
                    "country_majority.jsonl or point CULNIG_WVB_MAJORITY at it.")
    q.add_argument("--wvb-dir", help="WorldValuesBench folder holding <split>/<split>_*_qa.tsv")
    q.add_argument("--split", default="full", help="full (the paper), train, valid or test")
    q.add_argument("--values", help="value TSV (instead of --wvb-dir)")
    q.add_argument("--demographic", help="demographic TSV (instead of --wvb-dir)")
    q.add_argument("--metadata", help="question_metadata.json (default: the data folder's)")
    q.add_argument("--min-answers", type=int, default=10)
    q.add_argument("--out", required=True, help="output JSONL")
    p.set_defaults(func=cmd_data)
