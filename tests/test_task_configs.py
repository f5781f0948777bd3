"""The task folders' YAMLs are exactly what ``culnig_tasks/_generate_configs.py`` writes."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import REPO

TASKS = REPO / "culnig_tasks"
HINT = "run `python -m culnig_tasks._generate_configs` and commit the result"


def test_committed_yamls_equal_a_fresh_generation(tmp_path):
    from culnig_tasks._generate_configs import write

    written = write(tmp_path)
    generated = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.yaml"))
    assert sorted(written) == generated and len(generated) == 76  # 59 leaves + 17 groups
    differ = [rel for rel in generated if not (TASKS / rel).is_file()
              or (TASKS / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert differ == [], f"{differ}: {HINT}"
    committed = sorted(p.relative_to(TASKS).as_posix() for p in TASKS.glob("*/*.yaml"))
    assert committed == generated, f"not generated: {sorted(set(committed) - set(generated))}; {HINT}"


def test_every_template_belongs_to_a_benchmark():
    from culnig_tasks._generate_configs import BENCHMARKS, PROTOCOLS

    used = {f"{b.folder}/{b.template_file(p)}" for b in BENCHMARKS for p in PROTOCOLS}
    templates = {p.relative_to(TASKS).as_posix() for p in TASKS.glob("*/_*_template_yaml")}
    assert templates and templates <= used, templates - used


def test_groups_follow_the_template(tmp_path):
    """Metrics and version of a group come from its template; leaves name their loaders."""
    from culnig_tasks._generate_configs import generate

    (tmp_path / "country_rc").mkdir()
    shutil.copy(TASKS / "country_rc" / "_paper_template_yaml", tmp_path / "country_rc")
    template = tmp_path / "country_rc" / "_paper_template_yaml"
    text = template.read_text()
    assert "  version: 1.0\n" in text and "  - metric: acc\n" in text
    template.write_text(text.replace("  version: 1.0\n", "  version: 2.5\n").replace(
        "  - metric: acc\n", "  - metric: f1\n"))
    files = generate(tmp_path)
    assert sorted(files) == sorted([*(f"country_rc/countryrc_paper_v{k}.yaml" for k in range(1, 5)),
                                    "country_rc/culnig_countryrc.yaml"])  # no loglik template here
    group = files["country_rc/culnig_countryrc.yaml"]
    assert "  - metric: f1\n" in group and "metric: acc" not in group and "version: 2.5\n" in group
    assert files["country_rc/countryrc_paper_v3.yaml"] == (
        "include: _paper_template_yaml\ntask: countryrc_paper_v3\n"
        "custom_dataset: !function utils.load_v3\n")


def test_every_function_reference_resolves():
    """Each ``!function`` of a template or leaf names a hook module beside it (or an importable
    module) that defines the function."""
    import importlib
    import importlib.util
    import re

    refs = set()
    for path in [*TASKS.glob("*/*.yaml"), *TASKS.glob("*/_*_template_yaml")]:
        refs |= {(path.parent, m) for m in re.findall(r"!function\s+(\S+)", path.read_text())}
    assert len(refs) > 60
    modules: dict[Path, object] = {}
    for folder, ref in sorted(refs):
        mod_name, _, fn = ref.rpartition(".")
        local = folder / f"{mod_name.replace('.', '/')}.py"
        if local.is_file():
            if local not in modules:
                spec = importlib.util.spec_from_file_location(f"hooks_{folder.name}_{local.stem}",
                                                              local)
                modules[local] = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(modules[local])
            module = modules[local]
        else:
            module = importlib.import_module(mod_name)
        assert callable(getattr(module, fn, None)), (folder.name, ref)
