from __future__ import annotations

import sys

import pytest

from neurons import cli


def test_help_lists_commands_without_importing_them(capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "neurons.chain_cli", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "chain" in capsys.readouterr().out
    assert "neurons.chain_cli" not in sys.modules


def test_a_registered_command_runs_with_its_own_flags(monkeypatch, capsys):
    module = type(sys)("fake_cmd")

    def configure(parser):
        parser.add_argument("--times", type=int, required=True)
        parser.set_defaults(func=lambda args: print("hi" * args.times) or 7)

    module.configure = configure
    monkeypatch.setitem(sys.modules, "fake_cmd", module)
    monkeypatch.setitem(cli.COMMANDS, "greet", ("fake_cmd", "say hi"))
    assert cli.main(["greet", "--times", "2"]) == 7
    assert capsys.readouterr().out.strip() == "hihi"


def test_unknown_command_and_bad_log_level(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["nonsense"])
    assert exc.value.code == 2
    assert cli.main(["--log-level", "LOUD", "chain", "show", "--path", "x"]) == 2
    assert "LOUD" in capsys.readouterr().err


@pytest.mark.parametrize("role", ["miner", "validator"])
def test_node_help_names_each_value_once(role, capsys):
    # argparse prints dest.upper() as the value name; with dest = the flag that read "--netuid --NETUID"
    with pytest.raises(SystemExit) as exc:
        cli.main([role, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for shown in ("--netuid NETUID", "--wallet.hotkey HOTKEY", "--bucket.read-key-id READ_KEY_ID", "--devchain DEVCHAIN"):
        assert shown in out
    assert " --NETUID" not in out and "--WALLET" not in out
