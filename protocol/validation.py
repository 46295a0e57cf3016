"""How a pydantic refusal becomes one line of a typed error: the first problem's location and
message, never the offending value (peer bytes can be huge, settings can hold secrets)."""

from __future__ import annotations

from pydantic import ValidationError

MAX_PROBLEM_CHARS = 200


def first_problem(exc: ValidationError, default: str = "record") -> tuple[str, str]:
    """(dotted location, message) of the first problem; ``default`` names a top-level one."""
    first = exc.errors()[0]
    return ".".join(map(str, first["loc"])) or default, first["msg"]


def describe(exc: ValidationError, default: str = "record") -> str:
    """``where: message`` of the first problem, bounded to ``MAX_PROBLEM_CHARS``."""
    where, msg = first_problem(exc, default)
    return f"{where}: {msg}"[:MAX_PROBLEM_CHARS]
