"""LocalStore: the ObjectStore on a directory, for nodes sharing one machine.

Layout: ``<root>/objects/<percent-encoded key>`` plus ``<root>/tmp/`` for uploads in flight.
Keys are stored flat (every '/' encoded) so a key and a "directory" prefix can never collide,
deletes leave no empty directories behind, and no key can name a path outside the root.

A put writes a temporary file, fsyncs it, then ``os.link``s it to the final name: link fails
atomically if the name exists (no overwrite, even between processes) and readers never see a
half-written object. ``last_modified`` is the file's mtime, the closest analogue of a server's
LastModified (set when the upload finished).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from pathlib import Path
from urllib.parse import quote, unquote

from storage.errors import (
    AccessDenied,
    InvalidKey,
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
)
from storage.store import ObjectInfo, ObjectStore, check_deadline, validate_key, validate_max_bytes

_NAME_MAX = 255  # bytes per file name on ext4/xfs/btrfs/tmpfs


class LocalStore(ObjectStore):
    """Immutable objects in a local directory; safe for concurrent processes on one machine."""

    def __init__(self, root_dir: str | os.PathLike[str], *, concurrency: int = 8) -> None:
        self.root = Path(root_dir).resolve()
        self.concurrency = concurrency
        self._objects = self.root / "objects"
        self._tmp = self.root / "tmp"
        try:
            self._objects.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create LocalStore at {self.root}: {exc}") from exc

    def __repr__(self) -> str:
        return f"LocalStore(root_dir={str(self.root)!r})"

    def _path(self, key: str) -> Path:
        name = quote(validate_key(key), safe="")
        if len(name.encode()) > _NAME_MAX:
            raise InvalidKey(
                f"key too long for a LocalStore file name ({len(name)} > {_NAME_MAX}): {key[:64]!r}"
            )
        return self._objects / name

    def _fail(self, op: str, key: str, exc: OSError) -> StorageError:
        where = f"{op} {key!r} in {self.root}"
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFound(f"{where}: no such object")
        if isinstance(exc, PermissionError):
            return AccessDenied(f"{where}: permission denied")
        return StorageError(f"{where}: {exc}")

    def put(self, key: str, data: bytes) -> ObjectInfo:
        final = self._path(key)
        try:
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        except OSError as exc:
            raise self._fail("put", key, exc) from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp_name, final)
        except FileExistsError as exc:
            raise ObjectExists(f"put {key!r} in {self.root}: already exists") from exc
        except OSError as exc:
            raise self._fail("put", key, exc) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        return self.head(key)

    def head(self, key: str, *, deadline: float | None = None) -> ObjectInfo:
        check_deadline(deadline, f"head {key!r} in {self.root}")
        try:
            stat = os.stat(self._path(key))
        except OSError as exc:
            raise self._fail("head", key, exc) from exc
        return _info(key, stat)

    def get(self, key: str, max_bytes: int, *, deadline: float | None = None) -> bytes:
        # a local read is not slowed down by anyone; the deadline is checked before it starts
        check_deadline(deadline, f"get {key!r} in {self.root}")
        validate_max_bytes(max_bytes)
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > max_bytes:
                    raise ObjectTooLarge(
                        f"get {key!r} in {self.root}: {size} bytes > cap {max_bytes}",
                        size=size,
                        max_bytes=max_bytes,
                    )
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise self._fail("get", key, exc) from exc
        if len(data) > max_bytes:  # the file grew after fstat; objects are immutable, so refuse
            raise ObjectTooLarge(f"get {key!r}: grew past cap {max_bytes}", size=None, max_bytes=max_bytes)
        return data

    def list(self, prefix: str = "", *, deadline: float | None = None) -> list[ObjectInfo]:
        check_deadline(deadline, f"list {prefix!r} in {self.root}")
        found: list[ObjectInfo] = []
        try:
            entries = list(os.scandir(self._objects))
        except OSError as exc:
            raise self._fail("list", prefix, exc) from exc
        for entry in entries:
            key = unquote(entry.name)
            if not key.startswith(prefix):
                continue
            try:
                found.append(_info(key, entry.stat()))
            except FileNotFoundError:
                continue  # deleted between scandir and stat: it is simply gone
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fail("delete", key, exc) from exc


def _info(key: str, stat: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key, stat.st_size, dt.datetime.fromtimestamp(stat.st_mtime, tz=dt.UTC))
