"""culnig.atomic: atomic files and folders, modes that follow the umask, leftovers, run locks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from culnig.atomic import (atomic_dir, atomic_file, atomic_write_text, clean_leftovers, run_lock,
                           umask)
from culnig.errors import CulnigError


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_file(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"y")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("z")
        assert umask() == 0o027
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.bin") == 0o640
    assert _mode(tmp_path / "d") == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "d"]


def test_interrupted_writes_leave_nothing(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old").write_text("kept")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "d", force=True) as tmp:
            (tmp / "new").write_text("half")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "f.bin"):
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d", "old"]


def test_leftovers_of_dead_processes_are_removed_or_restored(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f".ckpt.tmp-{dead}-x1").mkdir()            # a half-written folder: removed
    (tmp_path / f".out.old-{dead}").mkdir()                # the only copy of 'out': restored
    (tmp_path / "res").mkdir()
    (tmp_path / f".res.old-{dead}").mkdir()                # 'res' is there: the old copy goes
    (tmp_path / f".live.tmp-{os.getppid()}-y").mkdir()     # a live process's: kept
    clean_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", "res", f".live.tmp-{os.getppid()}-y"])


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    lock = tmp_path / ".run.lock"
    lock.write_text(str(os.getppid()))  # a live process
    with pytest.raises(CulnigError, match=r"another sweep \(pid \d+\) is running"):
        with run_lock(tmp_path, ".run.lock", what="sweep"):
            pass
    lock.write_text("999999999")  # no such process
    with run_lock(tmp_path, ".run.lock", what="sweep") as held:
        assert held.read_text() == str(os.getpid())
    assert not lock.exists()
