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


@pytest.mark.parametrize("role", ["miner", "validator"])
def test_node_help_names_the_secret_variables_and_the_defaults(role, capsys):
    with pytest.raises(SystemExit):
        cli.main([role, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for secret in ("TESSERA_BUCKET_WRITE_KEY_ID", "TESSERA_BUCKET_WRITE_SECRET", "TESSERA_BUCKET_READ_SECRET"):
        assert secret in out
    for default in ("default ~/.tessera/<role>", "TESSERA_WALLET_HOTKEY, default default", "TESSERA_DEVICE, default cpu",
                    "TESSERA_BUCKET_REGION, default auto", "tessera doctor"):
        assert default in out


def test_log_level_is_accepted_after_the_command(capsys):
    assert cli.main(["chain", "show", "--path", "x", "--log-level", "LOUD"]) == 2
    assert "LOUD" in capsys.readouterr().err
    argv = cli.hoist_log_level(["chain", "show", "--path", "x", "--log-level", "DEBUG"])
    assert cli.build_parser(argv).parse_args(argv).log_level == "DEBUG"
    argv = ["--log-level", "WARNING", "miner", "--netuid", "1"]
    assert cli.build_parser(argv).parse_args(argv).log_level == "WARNING"  # the command's absent option keeps it
    argv = ["miner", "--netuid", "1", "--log-level", "ERROR"]
    assert cli.build_parser(argv).parse_args(argv).log_level == "ERROR"  # a node command's own option


def test_a_typed_start_up_error_is_one_line_on_stderr_with_its_fix(monkeypatch, capsys):
    from protocol.chain import NotRegisteredError

    module = type(sys)("failing_cmd")

    def configure(parser):
        def fail(args):
            raise NotRegisteredError("hotkey 5F.. is not registered on netuid 3\n(second line)")

        parser.set_defaults(func=fail)

    module.configure = configure
    monkeypatch.setitem(sys.modules, "failing_cmd", module)
    monkeypatch.setitem(cli.COMMANDS, "fails", ("failing_cmd", "always fails"))
    assert cli.main(["fails"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("tessera fails: error: hotkey 5F.. is not registered on netuid 3 (second line) -- fix: register")
