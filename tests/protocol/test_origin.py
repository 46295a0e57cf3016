"""protocol.origin: the run's origin record, read strictly from the owner's (hostile-until-parsed) bytes."""

from __future__ import annotations

import json

import pytest

from protocol.hparams import load_hparams
from protocol.origin import MAX_ORIGIN_BYTES, OriginError, RunOrigin, check_origin, hparams_digest, origin_key

HP = load_hparams("tiny")


def record(**overrides) -> dict:
    base = {"version": 1, "start_block": 5_000_000, "hparams_digest": hparams_digest(HP), "data_digest": "ab" * 32,
            "data_url": "https://pub-x.r2.dev/data", "tokenizer": "stdlib-bpe-2048"}
    return base | overrides


def test_a_record_round_trips_as_canonical_bytes():
    origin = RunOrigin.model_validate(record())
    assert RunOrigin.parse(origin.to_bytes()) == origin
    assert origin.to_bytes() == RunOrigin.parse(json.dumps(record(), indent=2).encode()).to_bytes()
    assert check_origin(origin, HP) is origin
    assert origin_key(HP.run_id) == f"{HP.run_id}/origin.json"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "Invalid JSON"),
        (b"\xff\xfe{}", "Invalid JSON"),
        (b"[1, 2]", "object"),
        (b"x" * (MAX_ORIGIN_BYTES + 1), "more than"),
        (b"{" * 100_000, "more than"),  # a nesting bomb is refused by size before parsing
        (json.dumps(record(start_block="5000000")).encode(), "start_block"),  # no coercion
        (json.dumps(record(start_block=True)).encode(), "start_block"),
        (json.dumps(record(start_block=-1)).encode(), "start_block"),
        (json.dumps(record(start_block=2**32)).encode(), "start_block"),
        (json.dumps(record(start_block=5e6)).encode(), "start_block"),
        (json.dumps(record(version=2)).encode(), "version"),
        (json.dumps(record(hparams_digest="AB" * 32)).encode(), "hparams_digest"),
        (json.dumps(record(data_digest="x" * 129)).encode(), "data_digest"),
        (json.dumps(record(data_url="http://a b")).encode(), "data_url"),
        (json.dumps(record(data_url="h" * 513)).encode(), "data_url"),
        (json.dumps(record(tokenizer="")).encode(), "tokenizer"),
        (json.dumps(record(tokenizer="tök")).encode(), "tokenizer"),
        (json.dumps(record(extra=1)).encode(), "extra"),
        (json.dumps({k: v for k, v in record().items() if k != "start_block"}).encode(), "start_block"),
        (b'{"start_block": NaN}', "start_block"),
    ],
)
def test_hostile_records_are_refused_with_a_typed_error_naming_the_field(data, match):
    with pytest.raises(OriginError, match=match):
        RunOrigin.parse(data)


def test_a_record_for_other_hparams_is_refused_with_the_fix():
    other = HP.model_copy(update={"seed": HP.seed + 1})
    with pytest.raises(OriginError, match="start the node with the network's hparams file"):
        check_origin(RunOrigin.model_validate(record()), other)


def test_a_bad_run_id_is_refused():
    with pytest.raises(OriginError, match="run id"):
        origin_key("../etc")
