"""Every ``--flag`` and ``TESSERA_*`` variable the operator docs (README.md, docs/*.md) mention
exists: a flag on a ``tessera ...`` command line is accepted by that very (sub)command's parser,
a flag on a ``scripts/X.py`` line by that script, a flag named on its own by some tessera command
or script; a variable appears in some tessera command's ``--help``. The parsers are built from
neurons.cli in-process (no subprocess per command), so a renamed flag fails here, not for an
operator.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from neurons.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:[._-][a-z0-9]+)*")
ENV = re.compile(r"\bTESSERA_[A-Z0-9]+(?:_[A-Z0-9]+)*\b")
FENCE = re.compile(r"^[ \t]*```.*?$(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)  # list items indent theirs
SPAN = re.compile(r"`([^`]+)`")  # inline code may wrap onto the next line


@dataclass(frozen=True)
class Mention:
    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


# --- the parsers -------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


@functools.cache
def _command(name: str) -> argparse.ArgumentParser:
    """The top-level parser with ``name`` configured (only the chosen command is imported)."""
    return build_parser([name])


def _all_parsers() -> list[argparse.ArgumentParser]:
    out = []
    for name in COMMANDS:
        stack = [_subparsers(_command(name))[name]]
        while stack:
            parser = stack.pop()
            out.append(parser)
            stack.extend(_subparsers(parser).values())
    return out


@functools.cache
def _every_tessera_flag() -> frozenset[str]:
    return frozenset(set().union(*(_options(p) for p in _all_parsers())) | _options(_command("chain")))


@functools.cache
def _every_help_text() -> str:
    return "\n".join(p.format_help() for p in _all_parsers())


@functools.cache
def _script_flags(script: str) -> frozenset[str]:
    """The option strings a scripts/*.py passes to add_argument (read from its source)."""
    tree = ast.parse((ROOT / script).read_text())
    return frozenset(
        arg.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
        for arg in node.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--")
    )


@functools.cache
def _every_script_flag() -> frozenset[str]:
    return frozenset().union(*(_script_flags(str(p.relative_to(ROOT))) for p in (ROOT / "scripts").glob("*.py")))


# --- the docs ----------------------------------------------------------------------------------


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _commands(block: str) -> list[tuple[int, str]]:
    """(line offset in block, command) for each shell command: continuations joined, split on
    ; && || |, comments dropped."""
    out, pending, start = [], "", 0
    for i, line in enumerate(block.splitlines()):
        line = line.strip()
        if not pending:
            start = i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        for part in re.split(r"&&|\|\||;|\|", pending + line):
            out.append((start, part.split(" #", 1)[0].strip()))
        pending = ""
    return out


def _tokens(command: str) -> list[str]:
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:  # an apostrophe in prose-like text
        tokens = command.split()
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        tokens.pop(0)  # VAR=value before the program
    return tokens


def _program(tokens: list[str]) -> tuple[str, list[str]] | None:
    """("tessera", args) / ("scripts/x.py", args) / None for any other program."""
    if not tokens:
        return None
    head, rest = tokens[0], tokens[1:]
    if re.search(r"(^|/)python3?(\.\d+)?$", head) and rest:
        if rest[0] == "-m" and len(rest) > 1 and rest[1].startswith("neurons."):
            module = rest[1].removeprefix("neurons.")
            return ("tessera", rest[2:]) if module == "cli" else ("tessera", [module, *rest[2:]])
        head, rest = rest[0], rest[1:]
    if head == "tessera" or head.endswith("/bin/tessera"):
        return "tessera", rest
    if re.fullmatch(r"(\./)?scripts/\w+\.py", head):
        return head.removeprefix("./"), rest
    return None


def _tessera_parser(args: list[str]) -> tuple[list[str], set[str]]:
    """The subcommand path the args name and the options accepted there (the top level's too)."""
    name = next((a for a in args if a in COMMANDS), None)
    top = _command(name) if name else build_parser([])
    accepted, path, parser = _options(top), [], top
    values = iter(args)
    for arg in values:
        if arg.startswith("-"):
            action = parser._option_string_actions.get(arg) or top._option_string_actions.get(arg)
            if action is not None and action.nargs != 0 and "=" not in arg:
                next(values, None)  # the option's value, not a subcommand
            continue
        children = _subparsers(parser)
        if arg not in children:
            break
        path.append(arg)
        parser = children[arg]
        accepted |= _options(parser)
    return path, accepted


def _doc_mentions() -> list[tuple[str, Mention]]:
    """("line", mention) for each command line, ("flag"/"env", mention) for each bare mention."""
    found: list[tuple[str, Mention]] = []
    for doc in DOCS:
        text, name = doc.read_text(), str(doc.relative_to(ROOT))
        command_spans: list[tuple[int, int]] = []
        for fence in FENCE.finditer(text):
            base = _line_of(text, fence.start(1))
            for offset, command in _commands(fence.group(1)):
                found.append(("line", Mention(name, base + offset, command)))
            command_spans.append(fence.span())
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep line numbers
        for span in SPAN.finditer(prose):
            tokens = _tokens(span.group(1).replace("\n", " "))
            # a span that starts with a word and goes on is a command line (ours are checked,
            # another program's flags are its own business); `--flag VALUE` stays a mention
            if len(tokens) > 1 and not tokens[0].startswith("-"):
                found.append(("line", Mention(name, _line_of(prose, span.start()), " ".join(tokens))))
                blank = re.sub(r"[^\n]", " ", span.group(0))  # keeps line numbers
                prose = prose[: span.start()] + blank + prose[span.end():]
        for match in FLAG.finditer(prose):
            found.append(("flag", Mention(name, _line_of(prose, match.start()), match.group(0))))
        for match in ENV.finditer(text):
            found.append(("env", Mention(name, _line_of(text, match.start()), match.group(0))))
    return found


def _bad_command_line(command: str) -> str | None:
    program = _program(_tokens(command))
    if program is None:
        return None
    name, args = program
    flags = [a.split("=", 1)[0] for a in args if FLAG.fullmatch(a.split("=", 1)[0])]
    if name == "tessera":
        words = [a for a in args if not a.startswith("-")]
        if not args or words[:1] in (["..."], ["…"]) or args[0].endswith(":"):
            return None  # the program named alone, an elided command line, or its output ("tessera doctor: error: ...")
        path, accepted = _tessera_parser(args)
        if not path:
            return f"no such tessera command: {words[:1]}"
        unknown = [f for f in flags if f not in accepted]
        where = "tessera " + " ".join(path)
    else:
        if not (ROOT / name).is_file():
            return f"no such script {name}"
        unknown = [f for f in flags if f not in _script_flags(name)]
        where = name
    return f"{where} has no {', '.join(unknown)}" if unknown else None


def test_every_documented_command_line_uses_real_flags() -> None:
    problems = [
        f"{mention} -> {why}"
        for kind, mention in _doc_mentions()
        if kind == "line" and (why := _bad_command_line(mention.text))
    ]
    assert not problems, "\n".join(problems)


def test_every_flag_named_in_prose_exists() -> None:
    known = _every_tessera_flag() | _every_script_flag()
    problems = [str(m) for kind, m in _doc_mentions() if kind == "flag" and m.text not in known]
    assert not problems, "flags no tessera command or script has:\n" + "\n".join(problems)


def test_every_environment_variable_is_in_some_help() -> None:
    help_text = _every_help_text()
    problems = [str(m) for kind, m in _doc_mentions() if kind == "env" and m.text not in help_text]
    assert not problems, "TESSERA_* variables no --help mentions:\n" + "\n".join(problems)


def test_the_docs_are_actually_read() -> None:
    # guards the extraction itself: a regex that matched nothing would pass everything above
    mentions = _doc_mentions()
    lines = [m.text for kind, m in mentions if kind == "line" and _program(_tokens(m.text))]
    assert any(line.startswith("tessera miner") for line in lines)
    assert {"--netuid", "--wallet.name"} <= {m.text for kind, m in mentions if kind == "flag"} | {
        f for line in lines for f in FLAG.findall(line)
    }
    assert any(m.text == "TESSERA_BUCKET_WRITE_SECRET" for kind, m in mentions if kind == "env")


@pytest.mark.parametrize(
    ("command", "wrong"),
    [
        ("tessera miner --netuid 1 --wallet.nmae w", "--wallet.nmae"),
        ("tessera chain register --path c.db --stake-amount 5", "--stake-amount"),
        ("tessera chain show --hparams tiny", "--hparams"),  # a miner flag, not chain show's
        ("TESSERA_NETUID=1 python -m neurons.validator --bucket.secret x", "--bucket.secret"),
        ("tessera minr --netuid 1", "minr"),
    ],
)
def test_a_wrong_flag_is_caught(command: str, wrong: str) -> None:
    why = _bad_command_line(command)
    assert why is not None and wrong in why


def test_a_right_command_line_passes() -> None:
    assert _bad_command_line(
        "TESSERA_BUCKET_READ_SECRET=x tessera --log-level INFO validator --netuid 1 --devchain c.db --threads=1"
    ) is None
    assert _bad_command_line("btcli wallet create --wallet miner --no-password") is None  # not ours
