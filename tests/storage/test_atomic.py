"""atomic_write: the old file or the new one, never a mix, never a stray temporary, private by default."""

from __future__ import annotations

import os
import stat

import pytest

from storage.atomic import PRESERVE, atomic_path, atomic_write


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_new_files_private_and_creates_the_directory(tmp_path):
    path = tmp_path / "a" / "b" / "file.bin"
    atomic_write(path, b"one")
    assert path.read_bytes() == b"one"
    assert _mode(path) == 0o600
    assert os.listdir(path.parent) == ["file.bin"]


def test_replaces_and_sets_or_preserves_the_mode(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write(path, b"one", mode=0o644)
    assert _mode(path) == 0o644
    atomic_write(path, b"two", mode=PRESERVE)
    assert path.read_bytes() == b"two" and _mode(path) == 0o644
    atomic_write(path, b"three")
    assert path.read_bytes() == b"three" and _mode(path) == 0o600
    atomic_write(tmp_path / "new.bin", b"x", mode=PRESERVE)  # nothing to preserve: private
    assert _mode(tmp_path / "new.bin") == 0o600


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write(path, b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_a_path_writer_can_stream(tmp_path):
    path = tmp_path / "file.bin"
    with atomic_path(path) as tmp:
        with open(tmp, "ab") as fh:
            for chunk in (b"a", b"b", b"c"):
                fh.write(chunk)
        assert not path.exists()  # nothing is visible until the rename
    assert path.read_bytes() == b"abc"
