"""A stage miner's check of its neighbour's handshake (``neurons.stage_miner.hello_problem``).

The listening port of a stage is open to whoever reaches it; the Hello is the first thing a
stranger can send. It must be signed by the hotkey it names, that hotkey must hold the uid it
claims on the subnet, and a stage 0 must train on its own uid's data.
"""

from __future__ import annotations

import pytest

from neurons.stage_miner import hello_problem
from pipeline.transport import Hello
from protocol.chain import Metagraph, NeuronInfo
from protocol.signing import HotkeySigner

ALICE, BOB = HotkeySigner.from_uri("//Alice"), HotkeySigner.from_uri("//Bob")
METAGRAPH = Metagraph(netuid=1, block=100, neurons=(
    NeuronInfo(uid=4, hotkey=ALICE.hotkey, coldkey="c", stake=0.0, validator_permit=False),
    NeuronInfo(uid=5, hotkey=BOB.hotkey, coldkey="c", stake=0.0, validator_permit=False),
))


def _hello(signer: HotkeySigner, uid: int, stage: int = 0, data_uid: int | None = 4, after: dict | None = None) -> Hello:
    """A Hello signed by ``signer``; ``after`` changes fields once it is signed."""
    hello = Hello(run_id="r", group="g0", stage=stage, n_stages=2, window=7, data_uid=data_uid,
                  uid=uid, hotkey=signer.hotkey)
    return hello.model_copy(update={"signature": signer.sign(hello.signing_bytes()).hex(), **(after or {})})


def test_a_registered_neighbour_signing_its_own_hello_is_accepted():
    assert hello_problem(_hello(ALICE, 4), METAGRAPH) is None
    assert hello_problem(_hello(BOB, 5, stage=1, data_uid=None), METAGRAPH) is None


@pytest.mark.parametrize(
    ("hello", "words"),
    [
        (Hello(run_id="r", group="g0", stage=0, n_stages=2, window=7, data_uid=4), "names no uid"),
        (_hello(ALICE, 4, after={"signature": "zz"}), "not hex"),
        (_hello(ALICE, 4, after={"signature": ""}), "not signed"),
        (_hello(ALICE, 4, after={"window": 8}), "not signed"),  # changed after signing: another window
        (_hello(ALICE, 4, after={"data_uid": 5}), "not signed"),  # ... or another group's data
        (_hello(BOB, 4, after={"hotkey": ALICE.hotkey}), "not signed"),  # Bob's signature, Alice's name
        (_hello(BOB, 4), "does not hold uid 4"),  # Bob signs as himself but claims Alice's uid
        (_hello(HotkeySigner.from_uri("//Mallory"), 6), "does not hold uid 6"),  # not registered
        (_hello(ALICE, 4, data_uid=None), "names uid None's data"),
        (_hello(BOB, 5, data_uid=4), "names uid 4's data"),  # a stage 0 on someone else's data
    ],
)
def test_a_hello_is_refused_with_the_reason(hello: Hello, words: str):
    problem = hello_problem(hello, METAGRAPH)
    assert problem is not None and words in problem
