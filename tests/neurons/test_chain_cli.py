from __future__ import annotations

import json

from neurons.cli import main
from protocol.devchain import DevChain


def test_create_register_stake_show(tmp_path, capsys):
    db, wallets = str(tmp_path / "c.db"), str(tmp_path / "wallets")
    assert main(["chain", "create", "--path", db, "--block-time", "0.05", "--netuid", "4"]) == 0
    common = ["--path", db, "--wallet.path", wallets, "--create-wallet"]
    assert main(["chain", "register", "--wallet.name", "val", "--wallet.hotkey", "h", "--stake", "50", *common]) == 0
    assert main(["chain", "register", "--wallet.name", "miner", *common]) == 0
    assert main(["chain", "stake", "--path", db, "--wallet.path", wallets, "--wallet.name", "miner", "--amount", "2"]) == 0
    capsys.readouterr()
    assert main(["chain", "show", "--path", db, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["netuid"] == 4
    assert [(n["uid"], n["stake"], n["validator_permit"]) for n in shown["neurons"]] == [(0, 50.0, True), (1, 2.0, True)]
    assert [n.hotkey for n in DevChain(db).metagraph().neurons] == [n["hotkey"] for n in shown["neurons"]]
    assert main(["chain", "show", "--path", db]) == 0
    assert "netuid 4" in capsys.readouterr().out


def test_errors_are_one_line_with_status_1(tmp_path, capsys):
    db = str(tmp_path / "c.db")
    assert main(["chain", "show", "--path", db]) == 1
    assert "tessera chain create" in capsys.readouterr().err
    assert main(["chain", "create", "--path", db]) == 0
    assert main(["chain", "create", "--path", db]) == 1
    assert main(["chain", "register", "--path", db, "--wallet.name", "ghost", "--wallet.path", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--create-wallet" in err[-1]


def test_wallet_create(tmp_path, capsys):
    assert main(["chain", "wallet-create", "--wallet.name", "w", "--wallet.path", str(tmp_path)]) == 0
    assert "hotkey 5" in capsys.readouterr().out
    assert (tmp_path / "w" / "hotkeys" / "default").is_file()
