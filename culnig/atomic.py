"""Atomic outputs and run locks: nothing half-written is ever left under a final name.

Files are written through a temporary sibling and a rename; their mode follows the umask, as a
plain ``open`` would give. Folders are built in a hidden ``.NAME.tmp-*`` sibling and renamed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from culnig.errors import CulnigError

TMP_MARK, OLD_MARK = ".tmp-", ".old-"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)")


def umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (what every record writes)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_new_output(out: Path, *, force: bool = False) -> Path:
    """Refuse an existing ``out`` (unless ``force``) and a missing or read-only parent folder:
    the checks a long run makes before it starts, so it cannot fail at the very end."""
    out = Path(out)
    if out.exists() and not force:
        raise CulnigError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise CulnigError(f"{out.parent}: output folder does not exist")
    if not os.access(out.parent, os.W_OK):
        raise CulnigError(f"{out.parent}: output folder is not writable")
    return out


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(folder: Path) -> None:
    """Remove hidden temporary siblings (``.NAME.tmp-PID*``, ``.NAME.old-PID``) that an
    interrupted process left in ``folder``; those of a process still running are kept. An
    ``.NAME.old-PID`` whose ``NAME`` is missing (stopped between the two renames of a replace) is
    the only copy of the previous output: it is renamed back, not deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        m = _LEFTOVER.match(p.name)
        if m is None:
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        final = folder / m.group("name")
        if m.group("kind") == "old" and not (final.exists() or final.is_symlink()):
            p.rename(final)
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; on success rename it to ``final``.

    An existing ``final`` is refused unless ``force``; with ``force`` it is replaced only after the
    new directory is complete. On any exception (Ctrl-C included) the temporary directory is
    removed and ``final`` is left as it was.
    """
    final = Path(final)
    if final.exists() and not force:
        raise CulnigError(f"{final} already exists; pass --force to replace it")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TMP_MARK}{os.getpid()}-",
                                    dir=final.parent))
        os.chmod(tmp, 0o777 & ~umask())
    except OSError as exc:
        raise CulnigError(f"cannot write under {final.parent}: {exc.strerror}") from exc
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}{OLD_MARK}{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; follow the umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that needs a file name (safetensors,
    torch.save); rename it to ``path`` on success, remove it on any exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def run_lock(folder: Path, name: str = ".culnig.lock", *, what: str = "run") -> Iterator[Path]:
    """Hold ``folder/name`` (holding this process's pid) for the ``with`` block; a lock left by a
    process that is gone is taken over, one of a live process is an error naming it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if _pid_alive(pid) and pid != os.getpid():
                raise CulnigError(f"another {what} (pid {pid}) is running in {folder}; wait for it "
                                  f"or remove {lock} if it is gone") from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)
