from __future__ import annotations

import pytest

from protocol.keys import (
    ObjectKeyError,
    checkpoint_key,
    checkpoint_prefix,
    fingerprint_key,
    fingerprint_prefix,
    payload_key,
    payload_prefix,
    window_of_key,
)


def test_keys_live_under_their_prefixes():
    assert payload_key("run-1", 12, 3).startswith(payload_prefix("run-1", 12))
    assert payload_prefix("run-1", 12).startswith(payload_prefix("run-1"))
    assert fingerprint_key("run-1", 12, 3).startswith(fingerprint_prefix("run-1", 12))
    assert checkpoint_key("run-1", 12).startswith(checkpoint_prefix("run-1"))
    assert payload_key("run-1", 12, 3) != payload_key("run-2", 12, 3) != payload_key("run-1", 12, 4)


@pytest.mark.parametrize("window", [0, 7, 10, 123_456, 9_999_999_999])
def test_window_parses_back_from_every_kind_of_key(window):
    for key in (payload_key("r", window, 5), fingerprint_key("r", window, 5), checkpoint_key("r", window)):
        assert window_of_key(key) == window


def test_lexical_order_is_window_order():
    keys = [checkpoint_key("r", w) for w in (9, 10, 100, 2)]
    assert [window_of_key(k) for k in sorted(keys)] == [2, 9, 10, 100]


@pytest.mark.parametrize("bad", ["", "a/b", "has space", "-lead"])
def test_bad_run_ids_are_refused(bad):
    with pytest.raises(ObjectKeyError):
        payload_key(bad, 1, 1)


def test_out_of_range_and_foreign_keys_are_refused():
    with pytest.raises(ObjectKeyError):
        payload_key("r", -1, 0)
    with pytest.raises(ObjectKeyError):
        payload_key("r", 0, 100_000)
    with pytest.raises(ObjectKeyError):
        window_of_key("somebody/else/file.bin")
