"""A pipeline stage's payload through the acceptance path every reader runs (``judge_payload``):
honest stages are accepted with exactly their range's parameters; every hostile claim or body is
a typed rejection whose detail says why, never an exception; a whole-model payload is unchanged."""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable

import pytest
import torch

from compression import ErrorFeedbackCompressor, PayloadManifest, StageClaim, content_hash, encode_payload
from protocol.acceptance import AcceptanceRule, RejectReason, ValueBounds, judge_payload
from protocol.layers import LayerRange
from protocol.signing import HotkeySigner

RUN, WINDOW, UID = "tiny-aaaaaaaaaaaa", 4, 3
NUM_LAYERS = 3  # split into 2 stages: [0:2] with the embedding, [2:3] with the norm and head
EMBED, NORM, HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


def layer(i: int) -> dict[str, tuple[int, ...]]:
    return {f"model.layers.{i}.self_attn.o_proj.weight": (16, 16), f"model.layers.{i}.input_layernorm.weight": (16,)}


SHAPES = {EMBED: (32, 16), **layer(0), **layer(1), **layer(2), NORM: (16,), HEAD: (32, 16)}
STAGE0 = {EMBED: SHAPES[EMBED], **layer(0), **layer(1)}
STAGE1 = {**layer(2), NORM: SHAPES[NORM], HEAD: SHAPES[HEAD]}
CRASH = "unexpected"  # how ``contained`` words an exception that escaped a reader


@functools.cache
def signer() -> HotkeySigner:
    return HotkeySigner.from_uri("//StageClaimTest")


def claim(index: int, n_stages: int = 2, start: int | None = None, stop: int | None = None,
          data_uid: int = UID, group: str = "grp-1") -> StageClaim:
    """A claim; the range defaults to the canonical one for ``index`` of 2 stages of 3 layers."""
    canonical = [(0, 2), (2, 3)][index] if index < 2 else (0, 1)
    start, stop = (canonical[0] if start is None else start), (canonical[1] if stop is None else stop)
    return StageClaim(group=group, index=index, n_stages=n_stages, layer_start=start, layer_stop=stop,
                      data_uid=data_uid)


def payload(shapes: dict[str, tuple[int, ...]], stage: StageClaim | None = None) -> bytes:
    """A real signed payload over ``shapes`` whose manifest carries ``stage``."""
    compressor = ErrorFeedbackCompressor(shapes, chunk_size=8, topk_per_chunk=16)
    gen = torch.Generator().manual_seed(0)
    message = compressor.compress({n: torch.randn(s, generator=gen) * 0.01 for n, s in shapes.items()})
    fields = {"run_id": RUN, "window": WINDOW, "uid": UID, "hotkey": signer().hotkey, "global_step": 0,
              "pipeline_stage": stage}
    return encode_payload(message, PayloadManifest.for_message(message, **fields), sign=signer().sign)


def rewritten(data: bytes, edit: Callable[[dict], None], resign: bool = True) -> bytes:
    """``data`` with its manifest JSON edited by hand (sorted, compact) and, by default, signed
    again by the sender's key: what a hostile sender can write that pydantic would not."""
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    manifest = json.loads(header["__metadata__"]["manifest"])
    edit(manifest)
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    header["__metadata__"]["manifest"] = raw
    if resign:
        header["__metadata__"]["sig"] = signer().sign(content_hash(raw, {"update": body})).hex()
    out = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    out += b" " * (-len(out) % 8)
    return struct.pack("<Q", len(out)) + out + body


def manifest_json(data: bytes) -> str:
    """The manifest JSON exactly as the payload's header carries it."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])["__metadata__"]["manifest"]


def judge(data: bytes, num_layers: int | None = NUM_LAYERS):
    rule = AcceptanceRule(run_id=RUN, window=WINDOW, slot_start=0.0, slot_seconds=1.0, max_bytes=1 << 20,
                          bounds=ValueBounds(max_abs_value=0.5, max_update_ratio=1.0), num_layers=num_layers)
    return judge_payload(data, UID, signer().hotkey, rule, SHAPES)


def assert_rejected(data: bytes, reason: RejectReason, word: str, num_layers: int | None = NUM_LAYERS) -> None:
    verdict = judge(data, num_layers)
    assert not verdict.result.passed and verdict.decoded is None
    assert verdict.result.reason is reason, verdict.result.detail
    assert word in verdict.result.detail and CRASH not in verdict.result.detail, verdict.result.detail


@pytest.mark.parametrize(
    ("stage", "shapes", "names"),
    [
        (claim(0), STAGE0, {EMBED, *layer(0), *layer(1)}),
        (claim(1, data_uid=UID + 7), STAGE1, {*layer(2), NORM, HEAD}),  # a later stage names its lead's uid
    ],
)
def test_an_honest_stage_is_accepted_with_exactly_its_range(stage, shapes, names):
    verdict = judge(payload(shapes, stage))
    assert verdict.result.passed, verdict.result.detail
    assert set(verdict.decoded.update) == names
    assert verdict.decoded.manifest.pipeline_stage == stage


def test_the_rewriting_helper_alone_changes_nothing():
    """So that every rejection below comes from the edit, not from the helper."""
    assert judge(rewritten(payload(STAGE1, claim(1)), lambda m: None)).result.passed


@pytest.mark.parametrize(
    ("stage", "word"),
    [
        (claim(0, start=0, stop=1), "[0:2]"),  # too short for stage 0/2 of 3 layers
        (claim(0, start=0, stop=3), "[0:2]"),  # the whole depth as stage 0
        (claim(1, start=1, stop=3), "[2:3]"),  # overlaps stage 0's layers
        (claim(1, start=2, stop=4), "[2:3]"),  # past the last layer
        (claim(2, start=2, stop=3), "does not exist"),  # index == n_stages
        (claim(3, n_stages=4, start=2, stop=3), "does not exist"),  # more stages than layers
        (claim(0, data_uid=UID + 1), "own uid"),  # stage 0 naming another uid's data
    ],
)
def test_a_claim_other_than_the_canonical_split_is_refused(stage, word):
    # the body holds what the claimed range would own, so only the claim is wrong
    shapes = {n: s for n, s in SHAPES.items() if LayerRange(stage.layer_start, stage.layer_stop, NUM_LAYERS).owns(n)}
    assert_rejected(payload(shapes, stage), RejectReason.UNDECODABLE, word)


@pytest.mark.parametrize(
    "shapes",
    [
        {**STAGE1, **layer(1)},  # a parameter outside the range
        {n: s for n, s in STAGE1.items() if n != HEAD},  # one of the range's parameters missing
        SHAPES,  # the whole model under a stage's claim
        STAGE0,  # stage 0's parameters under stage 1's claim
    ],
)
def test_a_body_other_than_the_claimed_range_is_refused(shapes):
    assert_rejected(payload(shapes, claim(1)), RejectReason.UNDECODABLE, "names differ")


def test_a_whole_model_body_under_a_stage_0_claim_is_refused():
    assert_rejected(payload(SHAPES, claim(0)), RejectReason.UNDECODABLE, "names differ")


def test_an_explicit_null_stage_is_not_canonical():
    data = rewritten(payload(SHAPES), lambda m: m.update(pipeline_stage=None))
    assert '"pipeline_stage":null' in manifest_json(data)
    assert_rejected(data, RejectReason.UNDECODABLE, "canonical")


@pytest.mark.parametrize("group", ["grp 1", "../x", "grp/1", "gr\u00fcp", "", "g" * 65, "a\nb"])
def test_a_group_name_outside_the_allowed_alphabet_or_length_is_refused(group):
    data = rewritten(payload(STAGE1, claim(1)), lambda m: m["pipeline_stage"].update(group=group))
    assert_rejected(data, RejectReason.UNDECODABLE, "group")


@pytest.mark.parametrize(
    ("field", "value", "word"),
    [("index", -1, "index"), ("index", 64, "index"), ("n_stages", 1, "n_stages"), ("n_stages", 65, "n_stages"),
     ("data_uid", -2, "data_uid"), ("layer_stop", 0, "layer_stop"), ("index", 1.5, "index"), ("extra", 1, "extra"),
     # values pydantic would coerce to the honest ones still differ from the signed canonical form
     ("index", "1", "canonical"), ("index", 1.0, "canonical"), ("data_uid", True, "canonical")],
)
def test_a_malformed_claim_field_is_refused(field, value, word):
    data = rewritten(payload(STAGE1, claim(1)), lambda m: m["pipeline_stage"].update({field: value}))
    assert_rejected(data, RejectReason.UNDECODABLE, word)


@pytest.mark.parametrize("stage", [[], "stage 1", 1, {}])
def test_a_claim_that_is_no_object_is_refused(stage):
    data = rewritten(payload(STAGE1, claim(1)), lambda m: m.update(pipeline_stage=stage))
    assert_rejected(data, RejectReason.UNDECODABLE, "pipeline_stage")


def test_a_claim_rewritten_without_the_key_is_a_bad_signature():
    """Someone in the middle names another lead's data for an honest stage 1: valid, but unsigned."""
    edit = lambda m: m["pipeline_stage"].update(data_uid=UID + 9)  # noqa: E731
    assert judge(rewritten(payload(STAGE1, claim(1)), edit)).result.passed  # resigned by the sender: fine
    assert_rejected(rewritten(payload(STAGE1, claim(1)), edit, resign=False), RejectReason.BAD_SIGNATURE, "signature")


@pytest.mark.parametrize("stage", [claim(0), claim(1)])
def test_a_reader_without_the_layer_count_refuses_every_stage(stage):
    shapes = STAGE0 if stage.index == 0 else STAGE1
    assert_rejected(payload(shapes, stage), RejectReason.UNDECODABLE, "does not accept", num_layers=None)


def test_a_whole_model_payload_is_unchanged_by_the_stage_field():
    """Its manifest JSON holds exactly the fields it held before pipeline stages existed, so its
    bytes, content hash and signature are what an older writer produced; both readers accept it."""
    data = payload(SHAPES)
    manifest = json.loads(manifest_json(data))
    assert "pipeline_stage" not in manifest
    assert set(manifest) == {"format_version", "run_id", "window", "uid", "hotkey", "global_step", "codec",
                             "names_digest", "shapes", "blob_sizes", "data_digest", "base_fingerprint"}
    for num_layers in (None, NUM_LAYERS):
        verdict = judge(data, num_layers)
        assert verdict.result.passed and set(verdict.decoded.update) == set(SHAPES)
        assert verdict.decoded.manifest.pipeline_stage is None
