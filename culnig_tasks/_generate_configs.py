"""Write the leaf and group YAMLs of every benchmark folder from the folder's templates.

    python -m culnig_tasks._generate_configs            # rewrite them in culnig_tasks/
    python -m culnig_tasks._generate_configs --out DIR  # write them under DIR instead

Hand-written per folder: one ``_<protocol>_template_yaml`` per benchmark and protocol (dataset,
split, output type, metrics, version) and the Python hooks; everything ending in ``.yaml`` is
written here. ``tests/test_task_configs.py`` fails when the committed files differ.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import yaml

from culnig.protocols import LOGLIK_GROUP, PAPER_GROUP

ROOT = Path(__file__).resolve().parent
# protocol -> (group prefix, loader prefix of its leaves)
PROTOCOLS = {"paper": (PAPER_GROUP, "load_v"), "loglik": (LOGLIK_GROUP, "load_ll_v")}


@dataclass(frozen=True)
class Benchmark:
    name: str               # task-name stem: culnig_<name>, <name>_paper_v<k>, <name>_loglik_v<k>
    folder: str             # its folder under culnig_tasks/
    hooks: str = "utils"    # the folder's module with the loaders (``!function <hooks>.<fn>``)
    variants: int = 4       # prompt variants, one leaf each
    template: str = ""      # template prefix in a folder shared by two benchmarks ("mcq_")
    paper_leaf: str = "custom_dataset: !function {hooks}.load_v{k}"  # a paper leaf's own key

    def template_file(self, protocol: str) -> str:
        return f"_{self.template}{protocol}_template_yaml"

    def leaf(self, protocol: str, k: int) -> str:
        return f"{self.name}_{protocol}_v{k}"


# The paper's order (Tables 4-11).
BENCHMARKS = (
    Benchmark("blendmcq", "blend", hooks="mcq", variants=1, template="mcq_"),
    Benchmark("blendsaq", "blend", hooks="saq", variants=1, template="saq_"),
    Benchmark("culturalbench", "culturalbench"),
    Benchmark("normad", "normad"),
    Benchmark("worldvaluesbench", "worldvaluesbench"),
    Benchmark("countryrc", "country_rc"),
    Benchmark("commonsenseqa", "commonsense_qa",
              paper_leaf="doc_to_text: !function {hooks}.doc_to_text_v{k}"),
    Benchmark("qnli", "glue", hooks="qnli"),
    Benchmark("mrpc", "glue", hooks="mrpc"),
)


class _TemplateLoader(yaml.SafeLoader):
    """Reads a template's plain keys; ``!function`` values stay strings (not imported)."""


_TemplateLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _template(root: Path, bench: Benchmark, protocol: str) -> dict | None:
    path = root / bench.folder / bench.template_file(protocol)
    if not path.is_file():
        return None
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_TemplateLoader)


def _leaf_text(bench: Benchmark, protocol: str, k: int) -> str:
    own = (bench.paper_leaf if protocol == "paper"
           else "custom_dataset: !function {hooks}." + PROTOCOLS[protocol][1] + "{k}")
    return (f"include: {bench.template_file(protocol)}\ntask: {bench.leaf(protocol, k)}\n"
            + own.format(hooks=bench.hooks, k=k) + "\n")


def _group_text(bench: Benchmark, protocol: str, template: dict) -> str:
    """The unweighted mean over the variants of every metric the template lists."""
    lines = [f"group: {PROTOCOLS[protocol][0]}{bench.name}", "task:"]
    lines += [f"  - {bench.leaf(protocol, k)}" for k in range(1, bench.variants + 1)]
    lines.append("aggregate_metric_list:")
    for m in template["metric_list"]:
        lines += [f"  - metric: {m['metric']}", "    aggregation: mean",
                  "    weight_by_size: false"]
    lines += ["metadata:", f"  version: {template['metadata']['version']}"]
    return "\n".join(lines) + "\n"


def generate(root: Path = ROOT) -> dict[str, str]:
    """Relative path -> text of every generated file, from the templates under ``root``."""
    files: dict[str, str] = {}
    for bench in BENCHMARKS:
        for protocol, (group_prefix, _) in PROTOCOLS.items():
            template = _template(root, bench, protocol)
            if template is None:  # e.g. BLEnD SAQ: generated text, no loglik form
                continue
            for k in range(1, bench.variants + 1):
                leaf = f"{bench.folder}/{bench.leaf(protocol, k)}.yaml"
                files[leaf] = _leaf_text(bench, protocol, k)
            group = f"{bench.folder}/{group_prefix}{bench.name}.yaml"
            files[group] = _group_text(bench, protocol, template)
    return files


def stale(root: Path = ROOT, files: dict[str, str] | None = None) -> list[str]:
    """YAML files in the benchmark folders that the generator does not write."""
    files = generate(root) if files is None else files
    found = [p.relative_to(root).as_posix()
             for folder in sorted({b.folder for b in BENCHMARKS})
             for p in sorted((root / folder).glob("*.yaml"))]
    return [rel for rel in found if rel not in files]


def write(out: Path, root: Path = ROOT) -> list[str]:
    """Write the generated files under ``out``; in place (``out == root``) also delete stale ones.
    Returns the relative paths that changed."""
    files = generate(root)
    changed = []
    for rel, text in files.items():
        path = out / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(rel)
    if out.resolve() == root.resolve():
        for rel in stale(root, files):
            (root / rel).unlink()
            changed.append(rel)
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT,
                        help="folder to write into (default: culnig_tasks/ itself)")
    args = parser.parse_args(argv)
    changed = write(args.out)
    print(f"{len(generate())} files, {len(changed)} changed" + "".join(f"\n  {c}" for c in changed))


if __name__ == "__main__":
    main()
