"""Replacing a local file so that a kill at any moment leaves the old file or the new one, never a mix.

Every file a node rewrites (its state, the validator's score book, the validator secret) goes
through here: the new content is written to a temporary file in the same directory (so the rename
cannot cross file systems), flushed and fsynced, given its permissions, renamed over the target
with ``os.replace`` (atomic on POSIX), and the directory is fsynced so the rename itself survives
a power loss. A failure removes the temporary file and re-raises.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PRIVATE = 0o600  # default: state, scores and secrets are the node's own business
PRESERVE = None  # keep the replaced file's permission bits (PRIVATE when there is none yet)


def atomic_write(path: str | Path, data: bytes, mode: int | None = PRIVATE) -> None:
    """Replace ``path`` with ``data`` atomically; ``mode`` is the new file's permissions or PRESERVE."""
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


@contextmanager
def atomic_path(path: str | Path, mode: int | None = PRIVATE) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new content to (for writers that want a path,
    e.g. streaming safetensors); on a clean exit it is fsynced and renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path, mode)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _mode_for(path: Path, mode: int | None) -> int:
    if mode is not PRESERVE:
        return mode
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return PRIVATE


def _fsync_file(tmp: Path, mode: int) -> None:
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; skipped where a directory cannot be opened (not POSIX)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)
