"""A node of two CPU processes (gloo on 127.0.0.1) gives the bytes and scores of one process.

Two ranks are spawned as torchrun would start them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*). The
leader runs two miner windows through ``LeaderTrainer`` with an outer step in between that only
the leader applies, then one stage 2 over three candidates split over both ranks. The follower
runs the node's own follower path (``neurons.node.follow_leader``) from other weights, so it must
receive θ, the optimizer state and the batches, and it must never open the chain or a bucket. The same
code in this process, one rank, must give byte-identical payloads and identical measurements.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from compression import ErrorFeedbackCompressor, PayloadManifest, encode_payload
from compression.sparse import SparseTensor
from neurons import node
from neurons.config import NodeConfig
from neurons.distributed import (
    STOP,
    Command,
    DistributedError,
    World,
    close_world,
    init_world,
    ordered_sum_,
    send,
)
from neurons.model import build_model
from neurons.parallel_eval import measure_candidates
from neurons.parallel_train import make_trainer
from neurons.train import InnerTrainer, MicroBatchError
from protocol.hparams import load_hparams
from scoring.lossscore import loss_score, sequence_losses
from tests.neurons.distributed_workers import ordered_sum_inputs, ordered_sum_main

WINDOWS = 2
RANKS = 2


def _batches(hp, window: int) -> list[torch.Tensor]:
    t = hp.training
    g = torch.Generator().manual_seed(1000 + window)
    return list(torch.randint(0, hp.model.vocab_size, (t.inner_steps, t.batch_size, t.seq_len), generator=g).unbind(0))


# micro-batches per window: one per rank, then two per rank (each rank accumulates its pair first)
MICRO_BATCHES = (RANKS, 2 * RANKS)


def _miner_windows(model, hp, world: World) -> list[bytes]:
    """What the miner does per window, minus chain and storage: train, Δ, compress, encode."""
    if world.distributed:
        trainer = make_trainer(model, hp.training, "cpu", world, micro_batches=RANKS)
        inner = trainer.inner
    else:  # one process computing what a world of RANKS ranks does
        trainer = inner = InnerTrainer(model, hp.training, "cpu", micro_batches=RANKS, groups=RANKS)
    codec = hp.codec
    compressor = ErrorFeedbackCompressor(
        {n: tuple(p.shape) for n, p in model.named_parameters()},
        chunk_size=codec.chunk_size, topk_per_chunk=codec.topk_per_chunk, beta=codec.ef_beta,
    )
    payloads = []
    for w in range(WINDOWS):
        inner.micro_batches = MICRO_BATCHES[w]
        base = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer.global_step = w * hp.training.inner_steps
        trainer.train_window(_batches(hp, w))
        with torch.no_grad():
            delta = {n: base[n] - p for n, p in model.named_parameters()}
            for n, p in model.named_parameters():
                p.copy_(base[n] - 0.5 * delta[n])  # an outer step only the leader takes
        message = compressor.compress(delta)
        manifest = PayloadManifest.for_message(
            message, run_id="tiny-0123456789ab", window=w, uid=3, hotkey="5" + "F" * 47, global_step=w,
            data_digest="d" * 64, base_fingerprint="f" * 64,
        )
        payloads.append(encode_payload(message, manifest, sign=lambda digest: bytes(64)))
    return payloads


def _stage2(model, hp, world: World) -> dict:
    """Three candidates' measurements (and LossScores) on θ with a reference update; uid 9 is
    measured next to uid 4's update (a pipeline stage's partner)."""
    g = torch.Generator().manual_seed(7)
    t = hp.training
    params = dict(model.named_parameters())
    updates = {}
    for uid in (4, 9, 11):
        updates[uid] = {}
        for name, p in params.items():
            idx = torch.randperm(p.numel(), generator=g)[: max(1, p.numel() // 64)].sort().values
            updates[uid][name] = SparseTensor(tuple(p.shape), idx, torch.randn(idx.numel(), generator=g) * 1e-2)
    own = {
        uid: list(torch.randint(0, hp.model.vocab_size, (2, 4, t.seq_len), generator=g).unbind(0)) for uid in updates
    }
    rand = list(torch.randint(0, hp.model.vocab_size, (2, 4, t.seq_len), generator=g).unbind(0))
    reference = {n: torch.randn(p.shape, generator=g) * 1e-3 for n, p in params.items()}
    before = sequence_losses(model, rand)
    measured = measure_candidates(world, model, updates, hp.outer.outer_lr, own, rand, before, reference,
                                  contexts={9: updates[4]})
    return {uid: (m, loss_score(m)) for uid, m in measured.items()}


class _BothRoles:
    """A runner whose followers take both roles' commands, as ``follow_leader`` asks a runner."""

    @staticmethod
    def follower_handlers(model, hparams, config, world):
        from neurons.miner import Miner
        from neurons.validator import Validator

        return {**Miner.follower_handlers(model, hparams, config, world),
                **Validator.follower_handlers(model, hparams, config, world)}


def _follower_config(state_dir: str) -> NodeConfig:
    """A follower's settings name a chain file and a bucket that do not exist: it must touch neither."""
    bucket = {"endpoint_url": "http://127.0.0.1:9", "name": "no-such-bucket", "write_key_id": "w", "write_secret": "w",
              "read_key_id": "r", "read_secret": "r"}
    return NodeConfig(role="miner", netuid=1, devchain=Path(state_dir) / "absent.sqlite", hparams="tiny",
                      bucket=bucket, state_dir=Path(state_dir), threads=1)


def _no_io(*args, **kwargs):
    raise AssertionError("a follower rank opened the chain or a bucket")


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(RANKS),
                      LOCAL_RANK=str(rank),
                      GLOO_SOCKET_IFNAME="lo")  # gloo's pairs on loopback whatever the hostname resolves to
    torch.set_num_threads(1)
    world = init_world("cpu")
    hp = load_hparams("tiny")
    # the follower starts from other weights (θ0 of another seed): θ must come from the leader
    model = build_model(hp.model, hp.seed)
    if not world.leader:
        node.build_model = lambda cfg, seed: build_model(cfg, seed + 1)
    try:
        if world.leader:
            result = {"payloads": _miner_windows(model, hp, world), "stage2": _stage2(model, hp, world)}
            send(Command(STOP), world)
            Path(out).write_bytes(pickle.dumps(result))
        else:  # the node's follower path: build the model (with the start-up checks), then follow
            node.open_chain = node.S3Store = node.open_run_data = _no_io
            assert node.follow_leader(_follower_config(str(Path(out).parent)), world, _BothRoles) == 0
    finally:
        close_world(world)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist") / "leader.pkl"
    mp.start_processes(_rank_main, args=(_free_port(), str(out)), nprocs=RANKS, start_method="spawn", join=True)
    return pickle.loads(out.read_bytes())


@pytest.fixture(scope="module")
def one_rank() -> dict:
    hp = load_hparams("tiny")
    model = build_model(hp.model, hp.seed)
    return {"payloads": _miner_windows(model, hp, World()), "stage2": _stage2(model, hp, World())}


def test_two_ranks_give_the_single_process_payload_bytes(two_ranks, one_rank):
    assert len(two_ranks["payloads"]) == WINDOWS
    for w, (multi, single) in enumerate(zip(two_ranks["payloads"], one_rank["payloads"], strict=True)):
        assert multi == single, f"window {w}: payloads differ"


def test_two_ranks_give_the_single_process_stage2_measurements(two_ranks, one_rank):
    assert sorted(two_ranks["stage2"]) == [4, 9, 11]  # every candidate measured once, on some rank
    assert two_ranks["stage2"] == one_rank["stage2"]
    assert all(m.own_reference for m, _ in two_ranks["stage2"].values())


def test_micro_batches_must_split_over_the_world_and_divide_the_batch():
    hp = load_hparams("tiny")
    model = build_model(hp.model, hp.seed)
    with pytest.raises(MicroBatchError, match="--micro-batches 2 does not split over 4 ranks"):
        InnerTrainer(model, hp.training, "cpu", micro_batches=2, world=World(0, 4, 0))
    with pytest.raises(MicroBatchError, match="batch_size 8 does not split into 3"):
        InnerTrainer(model, hp.training, "cpu", micro_batches=3)
    with pytest.raises(MicroBatchError, match="2 ranks make 2 micro-batch groups, not 4"):
        InnerTrainer(model, hp.training, "cpu", micro_batches=4, world=World(0, 2, 0), groups=4)


def test_groups_change_the_bits_only_when_a_group_holds_several_micro_batches():
    """k = 1: any grouping is plain accumulation. k = 2: (g0 + g1) + (g2 + g3) is its own rule,
    which is why a single process must be told the world's group count to reproduce it."""
    hp = load_hparams("tiny")
    batch = _batches(hp, 0)[:1]

    def theta(micro_batches, groups):
        model = build_model(hp.model, hp.seed)
        InnerTrainer(model, hp.training, "cpu", micro_batches=micro_batches, groups=groups).train_window(batch)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(theta(2, 1), theta(2, 2))
    assert not torch.equal(theta(4, 1), theta(4, 2))


def test_world_from_env():
    assert World.from_env({}) == World()
    assert World.from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(1, 4, 1)
    assert World(1, 4, 1).device("cuda") == "cuda:1"
    with pytest.raises(DistributedError, match="LOCAL_RANK not set"):
        World.from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="rank 2 of world size 2"):
        World.from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_ordered_sum_is_a_no_op_on_one_process():
    t = torch.arange(5.0)
    ordered_sum_([t], World())
    assert torch.equal(t, torch.arange(5.0))


def test_ordered_sum_adds_in_rank_order_on_three_ranks(tmp_path):
    """Three ranks (past two, addition order shows: (a + b) + c is not a + (b + c)): every tensor
    becomes (x_0 + x_1) + x_2, the order one process accumulates its micro-batches in."""
    ranks, out = 3, tmp_path / "sum.pkl"
    mp.start_processes(ordered_sum_main, args=(_free_port(), str(out), ranks), nprocs=ranks, start_method="spawn")
    got = pickle.loads(out.read_bytes())
    inputs = ordered_sum_inputs(ranks)
    for i, tensor in enumerate(got):
        expected = inputs[0][i].clone()
        for r in range(1, ranks):
            expected += inputs[r][i]
        assert torch.equal(tensor, expected)
    other_order = inputs[0][0] + (inputs[1][0] + inputs[2][0])
    assert not torch.equal(other_order, got[0])  # the inputs are such that the order shows


def test_the_local_subnet_starts_a_ranked_node_under_torchrun_on_loopback(tmp_path):
    from neurons.localnet.launcher import NodeSpec, node_command
    from neurons.localnet.seaweedfs import READ_ONLY, READ_WRITE, Identity

    keys = Identity.generate("w", READ_WRITE), Identity.generate("r", READ_ONLY)
    spec = NodeSpec("miner-1", "miner", 1, "bucket-1", *keys)
    assert node_command(spec, tmp_path, "http://127.0.0.1:1", "tiny", None)[1:4] == ["-m", "neurons.cli", "miner"]
    spec.ranks = 2
    cmd = node_command(spec, tmp_path, "http://127.0.0.1:1", "tiny", None)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert cmd[cmd.index("--master_addr") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--master_port") + 2: cmd.index("--master_port") + 5] == ["-m", "neurons.cli", "miner"]
