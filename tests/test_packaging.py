"""The built wheel: it builds without warnings, holds every task file, and its installed copy
resolves the ``culnig_*`` tasks on its own (no checkout on ``sys.path``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCES = ("pyproject.toml", "README.md", "culnig", "culnig_tasks", "attribution", "masking")
PACKAGES = ("culnig", "culnig_tasks", "attribution", "masking")


def _task_files() -> list[str]:
    """Every file of the task folders a run needs: YAMLs, templates, JSON and Python."""
    root = REPO / "culnig_tasks"
    return sorted(p.relative_to(REPO).as_posix() for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts
                  and (p.suffix in (".yaml", ".json", ".py") or p.name.endswith("_yaml")))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """(wheel, pip's output): built offline from a copy of the sources, so no build/ folder or
    egg-info lands in the checkout and no stale file from an earlier build gets in."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    proc = subprocess.run([*pip, "-w", str(dist), str(src)], capture_output=True, text=True,
                          timeout=300, cwd=src)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    wheels = sorted(dist.glob("culnig-*.whl"))
    assert len(wheels) == 1, output[-3000:]
    return wheels[0], output


def test_wheel_builds_without_warnings(built):
    _, output = built
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings[:20])


def test_wheel_holds_every_task_file_and_module(built):
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _task_files()
    assert len(expected) > 80 and "culnig_tasks/country_rc/countryrc_paper_v1.yaml" in expected
    assert [f for f in expected if f not in names] == []
    modules = sorted(p.relative_to(REPO).as_posix() for pkg in PACKAGES
                     for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    assert [m for m in modules if m not in names] == []
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench", "scripts", "docs")]


CHECK = textwrap.dedent("""
    import json, sys
    import culnig_tasks
    from culnig.paths import tasks_dir
    from culnig_tasks.lmeval import resolve_tasks
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    groups, versions = resolve_tasks(("culnig_*", "culnigll_*"))
    out = {"package": culnig_tasks.__file__, "tasks_dir": str(tasks_dir()),
           "sys_path": sys.path, "groups": groups, "versions": versions,
           "paper": sorted(tm.match_tasks(["culnig_*"])),
           "loglik": sorted(tm.match_tasks(["culnigll_*"]))}
    if len(sys.argv) > 1:  # documents too: the hooks import the installed builders
        task = tm.load(["countryrc_paper_v3"])["tasks"]["countryrc_paper_v3"]
        doc = next(iter(task.eval_docs))
        out["prompt"] = task.doc_to_text(doc)
        out["builder"] = sys.modules["culnig_tasks.country_rc"].__file__
    print(json.dumps(out))
""")


def _run_check(python: Path, cwd: Path, env: dict, *args: str) -> dict:
    proc = subprocess.run([str(python), "-c", CHECK, *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_installed_copy_resolves_every_culnig_task(built, tmp_path):
    """A fresh venv holding only the wheel (dependencies from the project's venv through a path
    entry: its editable culnig is not loaded) finds every group and leaf in its own copy, and a
    task built there renders the same prompt as the checkout (with ../shared/data)."""
    from culnig.paths import shared_data_dir

    wheel, _ = built
    data = shared_data_dir()
    docs = ("--docs",) if data is not None and (data / "countryrc").is_dir() else ()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([str(python), "-c", purelib], capture_output=True, text=True,
                               check=True).stdout.strip())
    deps = Path(next(p for p in sys.path if p.endswith("site-packages")))
    (site / "culnig-test-deps.pth").write_text(f"{deps}\n")  # a plain path: its .pth are not run
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if docs:
        env["CULNIG_DATA_DIR"] = str(data)
    got = _run_check(python, cwd, env, *docs)
    assert Path(got["package"]).is_relative_to(site), got["package"]
    assert Path(got["tasks_dir"]) == site / "culnig_tasks"
    assert not docs or Path(got["builder"]).is_relative_to(site)
    assert not [p for p in got["sys_path"] if p and Path(p).resolve() == REPO.resolve()]
    # The same names and versions as the checkout.
    here = _run_check(Path(sys.executable), REPO, {**os.environ, **env}, *docs)
    assert Path(here["tasks_dir"]) == REPO / "culnig_tasks"
    for key in ("groups", "versions", "paper", "loglik", "prompt"):
        assert got.get(key) == here.get(key), key
    assert len(got["paper"]) == 9 and len(got["loglik"]) == 8
    assert len([v for v in got["versions"] if not v.startswith("culnig")]) == 59
    assert not docs or got["prompt"].startswith("From the information provided in the passage")
