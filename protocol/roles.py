"""Who is a miner and who is a validator: the network's rule, not the chain's permits.

The chain hands validator permits to the top-k neurons by stake, and k can exceed the number of
staked neurons; a miner's incentive is staked to its own hotkey. So a paid miner holds stake and,
at the next epoch, a permit. A role rule built on permits (or on stake alone) would drop a paid
miner from the gather set and from scoring the moment it earns.

The rule every node applies alone to the metagraph of a block:

- the subnet owner's uid is never a miner (it receives the burned share); it may validate;
- a **validator** is a uid that has set weights on other uids, holds a validator permit and at
  least ``roles.validator_min_stake`` stake; only validators' weights steer the gather set
  (``protocol.gather_set``), as only permit holders' weights count on chain;
- a **miner** is every other registered uid that has set no weights on other uids. Setting
  weights is the one thing a miner never does and the chain never does for it, so neither
  stake nor a permit can turn a miner into something else;
- a uid that sets weights without the permit or the stake is **none**: its weights do not count
  and it is not scored as a miner.

A staked validator counts as a miner until its first weights are on chain: it publishes no
payload, so it is scored "missing" and earns nothing. ``excluded_reason`` tells a running node
whether the rule puts it outside the role it runs as, in a sentence that names why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protocol.chain import Metagraph, NeuronInfo
from protocol.hparams import Hparams

Role = Literal["miner", "validator", "none"]


@dataclass(frozen=True)
class RoleVerdict:
    uid: int
    role: Role
    reason: str


def sets_weights(neuron: NeuronInfo) -> bool:
    """Whether ``neuron`` has weights on chain for some uid other than itself (a self-weight is
    what the chain lets any neuron set; it says nothing about validating)."""
    return any(w > 0 for uid, w in neuron.weights.items() if uid != neuron.uid)


def is_validator(neuron: NeuronInfo, validator_min_stake: float) -> bool:
    """Weights set, a permit, and the stake threshold: a neuron whose weights count."""
    return sets_weights(neuron) and neuron.validator_permit and neuron.stake >= validator_min_stake and neuron.stake > 0


def _verdict(neuron: NeuronInfo, min_stake: float, owner_uid: int | None) -> RoleVerdict:
    uid = neuron.uid
    if is_validator(neuron, min_stake):  # the owner may validate with its own hotkey
        return RoleVerdict(
            uid, "validator",
            f"uid {uid} sets weights with a permit and stake {neuron.stake:g} >= validator_min_stake {min_stake:g}: a validator",
        )
    if uid == owner_uid:
        return RoleVerdict(uid, "none", f"uid {uid} is the subnet owner's: never scored as a miner")
    if not sets_weights(neuron):
        return RoleVerdict(uid, "miner", f"uid {uid} sets no weights: a miner, whatever its stake ({neuron.stake:g}) or permit")
    missing = []
    if not neuron.validator_permit:
        missing.append("no validator permit")
    if neuron.stake < min_stake or neuron.stake <= 0:
        missing.append(f"stake {neuron.stake:g} < validator_min_stake {min_stake:g}")
    return RoleVerdict(
        uid, "none",
        f"uid {uid} sets weights but has {' and '.join(missing)}: its weights do not count and it is not scored as a miner",
    )


def role_of(metagraph: Metagraph, uid: int, hparams: Hparams, owner_uid: int | None) -> RoleVerdict:
    """The role the rule gives ``uid`` in ``metagraph`` ("none" when it is not registered)."""
    try:
        neuron = metagraph.by_uid(uid)
    except KeyError:
        return RoleVerdict(uid, "none", f"uid {uid} is not registered at block {metagraph.block}")
    return _verdict(neuron, hparams.roles.validator_min_stake, owner_uid)


def miner_uids(metagraph: Metagraph, hparams: Hparams, owner_uid: int | None) -> list[int]:
    """Every uid the rule makes a miner, ascending."""
    min_stake = hparams.roles.validator_min_stake
    return sorted(n.uid for n in metagraph.neurons if _verdict(n, min_stake, owner_uid).role == "miner")


def validator_uids(metagraph: Metagraph, hparams: Hparams) -> list[int]:
    """Every uid whose weights count (the gather set's voters), ascending."""
    min_stake = hparams.roles.validator_min_stake
    return sorted(n.uid for n in metagraph.neurons if is_validator(n, min_stake))


def excluded_reason(
    metagraph: Metagraph, uid: int | None, hparams: Hparams, owner_uid: int | None, running_as: Role
) -> str | None:
    """Why the rule leaves a node running as ``running_as`` out of that role, or None.

    A validator is not excluded for having set no weights yet (it will), only for what keeps its
    weights from counting once set: no registration, no permit, or stake below the threshold.
    """
    if uid is None:
        return f"this hotkey is not registered at block {metagraph.block}: it is neither mined nor scored"
    verdict = role_of(metagraph, uid, hparams, owner_uid)
    if running_as == "miner":
        if verdict.role == "miner":
            return None
        return f"running as a miner, but {verdict.reason}"
    if verdict.role == "validator":
        return None
    try:
        neuron = metagraph.by_uid(uid)
    except KeyError:
        return f"running as a validator, but {verdict.reason}"
    min_stake = hparams.roles.validator_min_stake
    problems = []
    if not neuron.validator_permit:
        problems.append("it holds no validator permit (the chain refuses or ignores its weights)")
    if neuron.stake < min_stake or neuron.stake <= 0:
        problems.append(
            f"its stake {neuron.stake:g} < validator_min_stake {min_stake:g} (its weights do not steer the gather set)"
        )
    if not problems:
        return None
    return f"running as a validator, but uid {uid}: " + "; ".join(problems)
