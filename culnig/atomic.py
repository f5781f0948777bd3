"""Atomic outputs: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from culnig.errors import CulnigError


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


@contextlib.contextmanager
def atomic_dir(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; on success rename it to ``final``.

    An existing ``final`` is refused unless ``force``; with ``force`` it is replaced only after the
    new directory is complete. On any exception the temporary directory is removed and ``final``
    is left as it was.
    """
    final = Path(final)
    if final.exists() and not force:
        raise CulnigError(f"{final} already exists; pass --force to replace it")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as exc:
        raise CulnigError(f"cannot write under {final.parent}: {exc.strerror}") from exc
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
