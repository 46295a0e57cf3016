from __future__ import annotations

import pytest

from protocol.signing import HotkeySigner, SigningError, create_wallet, verify_signature


def test_sign_and_verify_from_the_address_alone():
    signer = HotkeySigner.from_uri("//Alice")
    message = b"content hash"
    signature = signer.sign(message)
    assert verify_signature(signer.hotkey, message, signature)
    assert not verify_signature(signer.hotkey, b"other content", signature)
    assert not verify_signature(HotkeySigner.from_uri("//Bob").hotkey, message, signature)


@pytest.mark.parametrize(
    ("address", "signature"),
    [("not-an-address", b"\0" * 64), ("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", b"short"), ("", b"")],
)
def test_malformed_input_is_not_verified_and_does_not_raise(address, signature):
    assert verify_signature(address, b"m", signature) is False


def test_offline_wallet_signs_with_its_hotkey(tmp_path):
    wallet = create_wallet("cold", "hot", tmp_path)
    signer = HotkeySigner(wallet)
    assert signer.hotkey == wallet.hotkey.ss58_address != wallet.coldkeypub.ss58_address
    assert verify_signature(signer.hotkey, b"x", signer.sign(b"x"))
    # creating again keeps the existing keys
    assert HotkeySigner(create_wallet("cold", "hot", tmp_path)).hotkey == signer.hotkey


def test_missing_wallet_is_a_typed_error(tmp_path):
    import bittensor

    with pytest.raises(SigningError, match="cannot load hotkey"):
        HotkeySigner(bittensor.Wallet(name="absent", hotkey="h", path=str(tmp_path)))
