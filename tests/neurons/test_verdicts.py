"""Say why: the validator's verdict line per miner and its weights line; the miner's own standing;
events keep the rejection detail as one bounded line."""

from __future__ import annotations

from neurons.events import EventLog, WindowRecord, read_event_log
from neurons.fetch import FetchedPayload
from neurons.gather import WindowGather
from neurons.standing import chain_weight, own_upload
from neurons.verdicts import miner_verdict, rejection_details, weights_line, window_verdicts
from protocol.acceptance import RejectReason, Stage1Result
from protocol.chain import Metagraph, NeuronInfo
from protocol.gather_set import GatherSet
from protocol.hparams import load_hparams
from scoring.state import MinerRecord, ScoreBook
from scoring.weights import GatePolicy, Unpaid, payment_gate

GATE = GatePolicy(stale_windows=2, min_sync=0.5, evidence_threshold=2.33)
W = 10


def record(uid: int = 5, **values) -> MinerRecord:
    rec = MinerRecord(uid=uid, hotkey=f"hk{uid}", first_window=0)
    defaults = {"last_evaluated_window": W, "sync": 1.0, "loss_ema": 0.01, "evidence_sum": 1.2, "evidence_weight": 1.0}
    for name, value in {**defaults, **values}.items():
        setattr(rec, name, value)
    return rec


def test_a_paid_miner_shows_its_share_and_score():
    line = miner_verdict(3, Stage1Result.accept(3), record(3), W, score=4.123, weight=0.25, gate=GATE)
    assert line == "uid 3: paid 0.250 (score 4.12)"


def test_each_unpaid_reason_comes_with_its_numbers():
    cases = {
        Unpaid.WEAK_EVIDENCE: (record(), "(Z 1.20 <= 2.33)"),
        Unpaid.NO_IMPROVEMENT: (record(loss_ema=-0.002), "(LossScore EMA -0.002 <= 0)"),
        Unpaid.OUT_OF_SYNC: (record(sync=0.25), "(sync 0.25 < 0.50)"),
        Unpaid.NOT_EVALUATED: (record(last_evaluated_window=6), "(last evaluated in window 6, 4 ago)"),
    }
    for reason, (rec, numbers) in cases.items():
        assert payment_gate(rec, W, GATE) is reason
        line = miner_verdict(5, Stage1Result.accept(5), rec, W, score=0.0, weight=0.0, gate=GATE)
        assert line == f"uid 5: 0 — {reason.value} {numbers}"
    never = record(last_evaluated_window=None)
    assert miner_verdict(5, None, never, W, 0.0, 0.0, GATE).endswith("(never evaluated)")


def test_the_gate_reasons_still_read_as_their_words():
    assert payment_gate(record(sync=0.1), W, GATE) == "out of sync"  # callers comparing strings keep working


def test_a_rejection_names_its_reason_and_detail_on_one_line():
    hostile = "bucket unreachable: 403 AccessDenied\nuid 9: paid 1.000\x1b[2J" + "x" * 500
    result = Stage1Result.reject(7, RejectReason.MISSING, hostile)
    line = miner_verdict(7, result, record(7), W, score=0.0, weight=0.0, gate=GATE)
    assert line.startswith("uid 7: rejected missing — bucket unreachable: 403 AccessDenied uid 9")
    assert "\n" not in line and "\x1b" not in line and len(line) < 260
    still = miner_verdict(7, result, record(7), W, score=2.0, weight=0.1, gate=GATE)
    assert still.endswith("; still paid 0.100 (score 2) from earlier windows")


def test_window_verdicts_cover_every_judged_miner_in_uid_order():
    book = ScoreBook({3: record(3), 5: record(5)})
    stage1 = {5: Stage1Result.accept(5), 3: Stage1Result.accept(3), 7: Stage1Result.reject(7, RejectReason.LATE, "12 s late")}
    lines = window_verdicts(W, stage1, book, {3: 4.0, 5: 0.0}, {3: 0.5, 0: 0.5}, GATE)
    assert list(lines) == [3, 5, 7]
    assert lines[3] == "uid 3: paid 0.500 (score 4)"
    assert lines[5].startswith("uid 5: 0 — not enough unique-data evidence yet")
    assert lines[7] == "uid 7: rejected late — 12 s late"
    assert rejection_details(stage1) == {7: "12 s late"}


def test_weights_line_says_what_happened():
    weights = {3: 0.375, 4: 0.125, 0: 0.5}
    assert weights_line("set", "3 weights set at block 120", weights, 0) == (
        "weights: 3 weights set at block 120: uid 0 0.500 (burn), uid 3 0.375, uid 4 0.125")
    assert weights_line("idle", "", {}, 0) == "weights: not due this window (scores give none earned)"
    refused = weights_line("refused", "rate limit 100 blocks since block 20", weights, 0)
    assert refused.startswith("weights: refused — rate limit 100 blocks since block 20 (scores give uid 0 0.500")


def test_events_keep_the_rejection_detail_and_verdicts(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.append(WindowRecord("validator-1", "validator", 1, W, "fp", [3], rejected={7: "missing"},
                            rejected_detail={7: "bucket unreachable: 403"}, verdicts={3: "uid 3: paid 0.500 (score 4)"}))
    (record_json,) = read_event_log(tmp_path / "events.jsonl").records
    assert record_json["rejected_detail"] == {"7": "bucket unreachable: 403"}
    assert record_json["verdicts"] == {"3": "uid 3: paid 0.500 (score 4)"}


def test_events_refuse_a_verdict_that_is_not_text(tmp_path):
    path = tmp_path / "events.jsonl"
    good = '{"node": "v", "role": "validator", "uid": 1, "window": 1, "fingerprint": "f", "gathered": []'
    path.write_text(good + ', "verdicts": {"3": 7}}\n' + good + ', "rejected_detail": ["x"]}\n' + good + "}\n")
    contents = read_event_log(path)
    assert len(contents.records) == 1 and [s.line for s in contents.skipped] == [1, 2]


# --- the miner's side --------------------------------------------------------------------------


def gathered(accepted: list[int], fetched: dict[int, FetchedPayload]) -> WindowGather:
    return WindowGather(W, GatherSet(sorted(fetched), []), accepted, fetched)


def test_a_miner_learns_whether_its_upload_was_gathered_and_why_not():
    late = FetchedPayload(4, Stage1Result.reject(4, RejectReason.LATE, "3 s after the slot"))
    assert own_upload(4, gathered([], {4: late})) == "our upload was not gathered: late — 3 s after the slot"
    assert own_upload(4, gathered([4], {})) == "our upload was gathered"
    assert own_upload(4, gathered([], {})).startswith("our upload was not looked at")


def test_a_miner_reads_its_stake_weighted_chain_weight():
    hp = load_hparams("tiny")
    stake = max(hp.roles.validator_min_stake, 1.0)
    neurons = (
        NeuronInfo(1, "v1", "c", 3 * stake, True, weights={4: 0.5, 5: 0.5}),
        NeuronInfo(2, "v2", "c", stake, True, weights={4: 0.1, 5: 0.9}),
        NeuronInfo(4, "m4", "c", 0.0, False, incentive=0.25),
    )
    line = chain_weight(Metagraph(1, 100, neurons), 4, hp)
    assert line == "chain weight 0.400 from 2 validator(s), incentive 0.250"
    assert chain_weight(Metagraph(1, 100, neurons[2:]), 4, hp) == "no validator has set weights yet (incentive 0.250)"
