"""Small file mechanisms shared by the services and the tools."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "create_new"]


def atomic_write(path: Path, data: bytes | str, *, private: bool = False) -> Path:
    """Writes ``data`` to ``path`` atomically (a temporary file in the same directory, fsynced, then renamed
    over it), creating the directory. A private file is created 0600 and never exists with wider
    permissions; others are 0644. Readers see the old content or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def create_new(path: Path, data: bytes | str, *, mode: int = 0o600) -> bool:
    """Creates ``path`` holding ``data`` unless a file is there already; True if this call created it.

    A temporary file in the same directory (0600, then ``mode``), written and fsynced, is hard-linked into place
    (a link never replaces a file), the directory fsynced, the temporary file removed. Whoever reads ``path``, a
    process that crashed in the middle included, sees no file or the whole of one, never an empty or a partial
    one; of concurrent creators exactly one wins and the others leave its file as it is (False)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Makes a new name in ``directory`` durable (its entry, not only the file's data)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
