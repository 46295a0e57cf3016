"""A hostile neighbour stage, a hostile stranger on the listening port, and hostile stage payloads.

Everything a peer sends is hostile (DESIGN.md): no input may crash, stall or poison a node, and a
malformed input is a typed error naming the problem. Each test plays one attacker on loopback
against an honest stage (``pipeline.worker``/``pipeline.group``/``pipeline.transport``) or against
the validator's readers (``scoring.outliers``, ``scoring.copycheck``, ``neurons.validator``).

A test marked ``xfail(strict=True)`` is a weakness found and not fixed yet: it fails on the
current code for the reason given, and turns into a failure (XPASS) once the code is fixed, so
the marker must then go.
"""

from __future__ import annotations

import copy
import math
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest
import torch

from compression import DecodedPayload, PayloadManifest, StageClaim
from compression.sparse import SparseTensor
from neurons.fetch import FetchedPayload
from neurons.stage_groups import data_uid, stage_group_problems
from neurons.stage_miner import hello_problem
from pipeline import transport
from pipeline.codec import Boundary
from pipeline.group import WindowOutcome, run_window
from pipeline.stage import Stage, split_layers
from pipeline.subspace import EMBED_NAME, SubspaceConstraint
from pipeline.transport import (
    TAG_FRAME,
    TAG_HELLO,
    TAG_SCALAR,
    Hello,
    Link,
    StageLost,
    accept_upstream,
    connect_downstream,
)
from pipeline.window_basis import basis_bytes, decode_basis, encode_basis, principal_basis
from pipeline.wire import BoundaryError, FrameKind, encode_frame
from pipeline.worker import StageWorker
from protocol.acceptance import Stage1Result
from protocol.chain import Metagraph, NeuronInfo
from protocol.hparams import TrainingConfig
from protocol.signing import HotkeySigner
from scoring.copycheck import CopyMemory, CopyPolicy, Upload, find_copies, sketch_update
from scoring.outliers import norm_outliers, typical_norms, update_norm

from .conftest import SMALL

CFG = TrainingConfig(inner_steps=2, batch_size=4, seq_len=16, lr=2e-3, warmup_steps=1, total_steps=100)
N_MICRO, WINDOW = 2, 3
MICRO = (CFG.batch_size // N_MICRO, CFG.seq_len)


# --- loopback plumbing -----------------------------------------------------------------------


def _tcp_pair(timeout: float) -> tuple[Link, Link]:
    """(the honest stage's end, the attacker's end) of one loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return Link(accepted, "the attacker", timeout), Link(client, "the honest stage", timeout)


def _batches(seed: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, SMALL.vocab_size, (CFG.batch_size, CFG.seq_len), generator=gen)
            for _ in range(CFG.inner_steps)]


def _worker(model, index: int, constraint: SubspaceConstraint | None = None) -> StageWorker:
    worker = StageWorker(Stage(model, split_layers(SMALL.num_layers, 2)[index]), CFG, constraint, N_MICRO,
                         lambda _: CFG.lr)
    worker.begin_window(dict(model.named_parameters())[EMBED_NAME])
    return worker


Script = Callable[[Link], None]


def _against(
    worker: StageWorker, index: int, script: Script, timeout: float = 5.0, window_seconds: float | None = None
) -> tuple[WindowOutcome, float]:
    """Run the honest stage ``index``'s window with ``script`` as its neighbour; (outcome, seconds).
    ``window_seconds``: the time the window's work has (``run_window``'s deadline)."""
    honest, attacker = _tcp_pair(timeout)

    def play() -> None:
        try:
            script(attacker)
        except StageLost:  # the honest stage hung up on it: what the attacker does next is moot
            pass

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    up, down = (honest, None) if index == 1 else (None, honest)
    started = time.monotonic()
    deadline = started + window_seconds if window_seconds is not None else None
    outcome = run_window(worker, WINDOW, _batches(), 0, up, down, deadline=deadline)
    seconds = time.monotonic() - started
    honest.close()
    thread.join(timeout=10)
    attacker.close()
    return outcome, seconds


def _frame(kind: FrameKind, values: torch.Tensor, ids: torch.Tensor | None = None) -> bytes:
    return encode_frame(kind, Boundary(values, ids), SMALL.vocab_size)


def _fake_downstream(gradient: float, total: Callable[[float], float]) -> Script:
    """A stage 1 that answers every activation with a gradient of ``gradient`` everywhere and
    reports ``total(partial)`` as the group's squared gradient norm."""
    def script(link: Link) -> None:
        for _ in range(CFG.inner_steps):
            for _ in range(N_MICRO):
                link.recv_frame(1 << 24)
            for _ in range(N_MICRO):
                link.send_frame(_frame(FrameKind.GRADIENT, torch.full((*MICRO, SMALL.hidden_size), gradient)))
            link.send_scalar(total(link.recv_scalar()))
        link.recv_scalar()
        link.send_scalar(1.0)
    return script


def _fake_upstream(activation: float, partial: float, delay: float = 0.0, done: float = 1.0) -> Script:
    """A stage 0 that sends activations of ``activation`` times noise, ``partial`` as its share
    of the squared gradient norm and ``done`` at the end, waiting ``delay`` before each message."""
    gen = torch.Generator().manual_seed(5)

    def send(link: Link, send_one: Callable[[], None]) -> None:
        time.sleep(delay)
        send_one()

    def script(link: Link) -> None:
        for _ in range(CFG.inner_steps):
            for _ in range(N_MICRO):
                values = torch.randn(*MICRO, SMALL.hidden_size, generator=gen) * activation
                send(link, lambda v=values: link.send_frame(_frame(FrameKind.ACTIVATION, v)))
            for _ in range(N_MICRO):
                link.recv_frame(1 << 24)
            send(link, lambda: link.send_scalar(partial))
            link.recv_scalar()
        send(link, lambda: link.send_scalar(done))
        link.recv_scalar()
    return script


def _state_is_finite(worker: StageWorker) -> bool:
    tensors = list(worker.stage.params.values())
    tensors += [v for state in worker.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# --- the gradient-norm exchange --------------------------------------------------------------


@pytest.mark.parametrize(
    ("gradient", "total"),
    [(1e20, lambda partial: 0.0),  # "the group's norm is 0": no clipping, AdamW's second moment overflows
     (1e20, lambda partial: partial / 4),  # a smaller total than this stage's own share
     (1e30, lambda partial: 1.0)],
    ids=["total-zero", "total-below-own-share", "total-one"],
)
def test_a_downstream_that_under_reports_the_groups_gradient_norm_is_caught(small_model, gradient, total):
    """Stage 0 clips with the total its downstream neighbour reports. A neighbour that sends huge
    (finite) gradients and reports a small total turns clipping off; the huge gradients then
    overflow AdamW's float32 second moment to inf, and every later step of those parameters is 0:
    stage 0's optimizer is poisoned for good (it is saved with the miner's state). A total below
    what this stage alone contributed is impossible for an honest group, so the window is lost."""
    worker = _worker(copy.deepcopy(small_model), 0)
    before = {n: p.detach().clone() for n, p in worker.stage.params.items()}
    outcome, _ = _against(worker, 0, _fake_downstream(gradient, total))
    assert not outcome.trained and "gradient norm" in outcome.reason
    assert _state_is_finite(worker)
    assert all(torch.equal(p, before[n]) for n, p in worker.stage.params.items())


def test_an_honest_total_clips_huge_gradients_and_nothing_turns_non_finite(small_model):
    """The defence the check above protects: with the true total, stage 0 scales its gradients
    down to the clip norm, so 1e30 in every gradient coordinate leaves finite state."""
    worker = _worker(copy.deepcopy(small_model), 0)
    outcome, _ = _against(worker, 0, _fake_downstream(1e30, lambda partial: partial))
    assert outcome.trained
    assert _state_is_finite(worker)


@pytest.mark.parametrize("partial", [math.nan, math.inf, -math.inf, -1e-3, -1e300],
                         ids=["nan", "inf", "-inf", "slightly-negative", "hugely-negative"])
def test_an_impossible_partial_norm_from_upstream_loses_the_window(small_model, partial):
    """A sum of squares is finite and not negative: anything else from upstream (which could
    cancel this stage's own share and switch its clipping off) makes the stage skip, θ intact."""
    worker = _worker(copy.deepcopy(small_model), 1)
    before = {n: p.detach().clone() for n, p in worker.stage.params.items()}
    outcome, _ = _against(worker, 1, _fake_upstream(1.0, partial))
    assert not outcome.trained and "gradient norm" in outcome.reason
    assert all(torch.equal(p, before[n]) for n, p in worker.stage.params.items())
    assert not worker.optimizer.state


@pytest.mark.parametrize(("activation", "partial"), [(1e30, 0.0), (1.0, 1e300), (3e38, 0.0)],
                         ids=["huge-activations", "huge-partial-norm", "float32-max-activations"])
def test_huge_finite_boundary_values_never_leave_non_finite_state(small_model, activation, partial):
    """Huge but finite activations (or a huge partial norm, which clips this stage's step to
    nothing) may cost the window, but never leave a NaN or inf in θ or the optimizer."""
    worker = _worker(copy.deepcopy(small_model), 1)
    outcome, _ = _against(worker, 1, _fake_upstream(activation, partial))
    assert _state_is_finite(worker), outcome


# --- boundary frames and message order -------------------------------------------------------


def test_activations_carrying_token_ids_of_another_batch_are_refused(small_model, basis):
    """With subspace boundaries the token ids travel with the activations; a neighbour on another
    batch (another window's data, another group's) is caught at the first frame."""
    worker = _worker(copy.deepcopy(small_model), 1, SubspaceConstraint(basis))
    before = {n: p.detach().clone() for n, p in worker.stage.params.items()}
    other = _batches(seed=99)[0][: MICRO[0]]

    def script(link: Link) -> None:
        link.send_frame(_frame(FrameKind.ACTIVATION, torch.zeros(*MICRO, basis.shape[1]), other))
        link.recv_frame(1 << 24)

    outcome, _ = _against(worker, 1, script)
    assert not outcome.trained and "token ids of another batch" in outcome.reason
    assert all(torch.equal(p, before[n]) for n, p in worker.stage.params.items())


def test_a_bye_mid_step_makes_the_stage_skip_with_theta_and_optimizer_intact(small_model):
    worker = _worker(copy.deepcopy(small_model), 1)
    before = {n: p.detach().clone() for n, p in worker.stage.params.items()}

    def script(link: Link) -> None:
        link.send_frame(_frame(FrameKind.ACTIVATION, torch.randn(*MICRO, SMALL.hidden_size)))
        link.bye()
        link.recv_frame(1 << 24)

    outcome, seconds = _against(worker, 1, script)
    assert not outcome.trained and "left the window early" in outcome.reason
    assert seconds < 2.0  # at once, not at the deadline
    assert all(torch.equal(p, before[n]) for n, p in worker.stage.params.items())
    assert not worker.optimizer.state


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (struct.pack("<BI", TAG_SCALAR, 8) + struct.pack("<d", 1.0), "tag 3, expected 2"),  # a scalar for a frame
        (struct.pack("<BI", TAG_HELLO, 2) + b"{}", "tag 1, expected 2"),  # a second handshake mid-window
        (struct.pack("<BI", 9, 0), "tag 9, expected 2"),  # a tag that does not exist
        (struct.pack("<BI", TAG_FRAME, 0xFFFFFFFF), "announced 4294967295 bytes"),  # 4 GiB, refused unread
    ],
    ids=["scalar-for-frame", "hello-mid-window", "unknown-tag", "4GiB-frame"],
)
def test_a_message_out_of_turn_is_refused_naming_it(raw, words):
    honest, attacker = _tcp_pair(2.0)
    try:
        attacker.sock.sendall(raw)
        with pytest.raises(StageLost, match=words):
            honest.recv_frame(1 << 20)
    finally:
        honest.close()
        attacker.close()


@pytest.mark.parametrize("done", [math.nan, 0.0, 2.0], ids=["nan", "zero", "two"])
def test_a_done_that_is_not_done_loses_the_window(small_model, done):
    """The last message of a window is "done" (1.0); NaN, which equals nothing, is not done either."""
    worker = _worker(copy.deepcopy(small_model), 1)
    before = {n: p.detach().clone() for n, p in worker.stage.params.items()}
    outcome, _ = _against(worker, 1, _fake_upstream(1.0, 0.0, done=done))
    assert not outcome.trained and "did not finish the window" in outcome.reason
    assert all(torch.equal(p, before[n]) for n, p in worker.stage.params.items())


def test_a_slow_drip_message_ends_at_the_per_message_deadline():
    """One byte at a time, each well inside the socket timeout: the deadline is per message, not
    per byte, so the drip costs at most one timeout."""
    honest, attacker = _tcp_pair(0.5)
    stop = threading.Event()
    frame = struct.pack("<BI", TAG_FRAME, 64) + bytes(64)

    def drip() -> None:
        for byte in frame:
            if stop.wait(0.05):
                return
            try:
                attacker.sock.sendall(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(StageLost, match="stalled or gone"):
            honest.recv_frame(1 << 20)
        assert time.monotonic() - started < 1.0
    finally:
        stop.set()
        thread.join(timeout=5)
        honest.close()
        attacker.close()


def test_a_neighbour_answering_just_inside_the_deadline_cannot_stretch_the_window(small_model):
    """The per-message deadline restarts with every message, so without a window deadline a
    neighbour answering each one just inside --pipeline.timeout would hold the stage for about
    (H x (micro-batches + 1) + 2) x timeout: several windows. The window's deadline ends it."""
    worker = _worker(copy.deepcopy(small_model), 1)
    timeout = window = 1.0  # stretched: (2 x 3 + 2) messages x 0.8 s = 6.4 s; a loaded 2-core CI box
    outcome, seconds = _against(worker, 1, _fake_upstream(1.0, 0.0, delay=0.8 * timeout), timeout=timeout,
                                window_seconds=window)  # took 1.2 s at a 0.6 s window once, so 2 s of slack
    assert not outcome.trained and "time is up" in outcome.reason
    assert seconds < window + 2.0, f"the window took {seconds:.1f} s ({outcome.trained=}) at a {window} s deadline"


# --- the window's boundary basis -------------------------------------------------------------


@pytest.mark.parametrize("their_k", [2, 8])
def test_an_orthonormal_basis_of_another_k_is_refused(their_k):
    hidden, k = SMALL.hidden_size, 4
    theirs = principal_basis(torch.randn(64, hidden, generator=torch.Generator().manual_seed(1)), their_k)
    assert torch.allclose(theirs.T @ theirs, torch.eye(their_k), atol=1e-5)  # a valid basis, of another k
    honest, attacker = _tcp_pair(2.0)
    try:
        attacker.send_frame(encode_basis(theirs))
        if their_k > k:
            with pytest.raises(StageLost, match="more than the 1024 this boundary allows"):
                honest.recv_frame(basis_bytes(hidden, k))
        else:
            with pytest.raises(BoundaryError, match="expected 1024"):
                decode_basis(honest.recv_frame(basis_bytes(hidden, k)), hidden, k)
    finally:
        honest.close()
        attacker.close()


def test_a_basis_of_the_right_size_read_transposed_is_not_orthonormal():
    hidden, k = SMALL.hidden_size, 4
    basis = principal_basis(torch.randn(64, hidden, generator=torch.Generator().manual_seed(1)), k)
    with pytest.raises(BoundaryError, match="not orthonormal"):
        decode_basis(encode_basis(basis.T.contiguous()), hidden, k)


# --- the handshake on the listening port ------------------------------------------------------

ALICE, BOB, MALLORY = (HotkeySigner.from_uri(uri) for uri in ("//Alice", "//Bob", "//Mallory"))
METAGRAPH = Metagraph(netuid=1, block=100, neurons=(
    NeuronInfo(uid=4, hotkey=ALICE.hotkey, coldkey="c", stake=0.0, validator_permit=False),
    NeuronInfo(uid=5, hotkey=BOB.hotkey, coldkey="c", stake=0.0, validator_permit=False),
    NeuronInfo(uid=6, hotkey=MALLORY.hotkey, coldkey="c", stake=0.0, validator_permit=False),
))


def _hello(stage: int, **fields) -> Hello:
    return Hello(**{"run_id": "r", "group": "g0", "stage": stage, "n_stages": 2, "window": WINDOW, **fields})


def _signed(signer: HotkeySigner, uid: int, hello: Hello) -> Hello:
    hello = hello.model_copy(update={"uid": uid, "hotkey": signer.hotkey})
    return hello.model_copy(update={"signature": signer.sign(hello.signing_bytes()).hex()})


def _send_raw_hello(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(struct.pack("<BI", TAG_HELLO, len(body)) + body)
    return sock


def _partner_behind(strangers: list[socket.socket], server: socket.socket, timeout: float) -> dict:
    """With ``strangers`` already queued on ``server``, the honest stage 1 accepts (``keep_trying``,
    checking Hellos as ``StageMiner`` does) while the honest stage 0 connects. Returns what
    ``accept_upstream`` gave: {"link": Link} or {"error": whatever it raised}."""
    box: dict = {}

    def accept() -> None:
        try:
            box["link"] = accept_upstream(server, _signed(BOB, 5, _hello(1)), timeout, keep_trying=True,
                                          check=lambda h: hello_problem(h, METAGRAPH))
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, whatever it is
            box["error"] = exc

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        partner = connect_downstream("127.0.0.1", server.getsockname()[1], _signed(ALICE, 4, _hello(0, data_uid=4)),
                                     timeout, check=lambda h: hello_problem(h, METAGRAPH))
        partner.close()
    except StageLost:
        pass  # the partner's view; the listening end's outcome is what the tests judge
    finally:
        thread.join(timeout=10)
        for sock in strangers:
            sock.close()
    if "link" in box:
        box["link"].close()
    return box


@pytest.mark.parametrize("nesting", ["[" * 2048 + "]" * 2048, '{"run_id":' + "[" * 2000 + "]" * 2000 + "}"],
                         ids=["arrays", "in-a-field"])
def test_a_hello_of_deeply_nested_json_is_refused_and_the_partner_still_taken(nesting):
    """4 KiB of nested JSON is within the Hello cap; Python's json raises RecursionError on it (no
    ValueError), which escaped the handshake and ended the stage miner's process: anyone who
    reached the port could stop the stage with one connection, no key needed."""
    assert len(nesting) <= transport.MAX_HELLO_BYTES
    with socket.create_server(("127.0.0.1", 0)) as server:
        box = _partner_behind([_send_raw_hello(server.getsockname()[1], nesting.encode())], server, 5.0)
    assert "error" not in box, repr(box.get("error"))
    assert box["link"].hello.uid == 4


def test_a_hello_signed_over_other_bytes_is_refused_and_the_partner_still_taken():
    """A registered hotkey's real signature, over the Hello of another window: every field right
    for this window, the signature covering other bytes. Refused; the partner behind it is taken."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        old = _signed(MALLORY, 6, _hello(0, data_uid=6, window=WINDOW - 1))
        replayed = old.model_copy(update={"window": WINDOW})
        assert hello_problem(replayed, METAGRAPH) == f"its handshake is not signed by hotkey {MALLORY.hotkey[:16]}"
        box = _partner_behind([_send_raw_hello(port, replayed.model_dump_json().encode())], server, 5.0)
    assert "error" not in box, repr(box.get("error"))
    assert box["link"].hello.uid == 4


@pytest.mark.parametrize("hotkey", ["not-an-ss58-address", "5" * 48, ""], ids=["garbage", "base58-noise", "empty"])
def test_a_hello_naming_a_malformed_hotkey_is_refused_without_an_exception(hotkey):
    hello = _hello(0, data_uid=6, uid=6, hotkey=hotkey, signature="00" * 64)
    problem = hello_problem(hello, METAGRAPH)
    assert problem is not None and ("not signed" in problem or "names no uid" in problem)


def test_silent_connections_queued_ahead_of_the_partner_do_not_cost_the_window(monkeypatch):
    monkeypatch.setattr(transport, "HANDSHAKE_SECONDS", 0.5)  # the same race, at a test's pace
    timeout = 1.6
    with socket.create_server(("127.0.0.1", 0)) as server:
        silent = [socket.create_connection(("127.0.0.1", server.getsockname()[1])) for _ in range(4)]
        box = _partner_behind(silent, server, timeout)
    assert "error" not in box, repr(box.get("error"))


# --- stage payloads as validators read them --------------------------------------------------


def _half(update: dict[str, SparseTensor], prefix: str) -> dict[str, SparseTensor]:
    return {n: t for n, t in update.items() if n.startswith(prefix)}


def _full(seed: int, scale: float = 1.0) -> dict[str, SparseTensor]:
    """A whole-model update over two "stage 0" and two "stage 1" parameters."""
    gen = torch.Generator().manual_seed(seed)
    size, kept = 4096, 256
    return {f"{part}.{i}": SparseTensor((size,), torch.randperm(size, generator=gen)[:kept].sort().values,
                                        torch.randn(kept, generator=gen) * scale)
            for part in ("s0", "s1") for i in range(2)}


def test_a_lone_stage_0_does_not_take_a_boosted_full_replica_out_of_the_norm_rule():
    boosted, honest, lone_stage_0 = 1, 2, 3
    updates = {boosted: _full(1, scale=5.0), honest: _full(2), lone_stage_0: _half(_full(3), "s0")}
    norms = {uid: update_norm(u) for uid, u in updates.items()}
    # with a third full replica in place of the lone stage 0 the boost is caught
    whole = {**updates, lone_stage_0: _full(3)}
    assert set(norm_outliers({u: update_norm(x) for u, x in whole.items()}, typical_norms(whole))) == {boosted}
    assert boosted in norm_outliers(norms, typical_norms(updates))


def test_a_stage_that_uploads_the_matching_slice_of_a_full_replicas_update_is_a_copy():
    """Claiming a stage buys no way around copy detection: the slice of a full replica's payload,
    or a second uid's copy of one stage's payload, is contained in the original."""
    full, stage_1 = _full(1), _half(_full(2), "s1")
    uploads = [Upload(1, 10.0, sketch_update(full)), Upload(2, 10.0, sketch_update(stage_1)),
               Upload(3, 11.0, sketch_update(_half(full, "s1"))),  # the slice of uid 1's update
               Upload(4, 12.0, sketch_update(stage_1))]  # a second "stage 1" of the same group, a copy of uid 2
    found = find_copies(WINDOW, uploads, CopyMemory(3), CopyPolicy())
    assert {uid: f.original for uid, f in found.items()} == {3: 1, 4: 2}


def test_any_uid_may_claim_a_later_stage_on_an_honest_groups_data():
    """The documented limit (docs/pipeline.md "Limits"), pinned: a stranger's stage 1 naming an
    honest group's lead (same group name and layout) is grouped, so it is measured on that lead's
    data. That buys nothing the stranger could not compute (every assignment is a public function
    of seed, uid and window); its only way to a share of the group's work is a copy, caught above."""
    lead, honest_stage_1, stranger = 10, 11, 12

    def fetched(uid: int, index: int) -> FetchedPayload:
        claim = StageClaim(group="g0", index=index, n_stages=2, layer_start=index, layer_stop=index + 1, data_uid=lead)
        manifest = PayloadManifest(run_id="r", window=WINDOW, uid=uid, hotkey="hk", global_step=0, names_digest="",
                                   shapes=[], pipeline_stage=claim)
        return FetchedPayload(uid, Stage1Result.accept(uid), decoded=DecodedPayload(manifest, b"", {}))

    window = {uid: fetched(uid, index) for uid, index in ((lead, 0), (honest_stage_1, 1), (stranger, 1))}
    assert stage_group_problems(window, {u: f.result for u, f in window.items()}) == {}
    assert data_uid(window[stranger]) == lead
