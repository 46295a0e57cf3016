"""The behaviour vocabulary, one name per attack, with what each one does in a line.

Kept free of torch so that a node's configuration can check the name before any work starts.
"""

from __future__ import annotations

HONEST = "honest"

# kind -> what the miner does instead of (or on top of) the honest window
DESCRIPTIONS: dict[str, str] = {
    HONEST: "trains on its assignment and publishes its compressed drift",
    "zeros": "publishes an all-zero update, trains nothing",
    "noise": "trains, then publishes random coordinates with the honest payload's value scale",
    "scaled": "publishes its honest payload with every value multiplied by a large factor",
    "sign_flip": "publishes its honest payload with every value negated",
    "copy": "publishes another miner's payload of this window, re-signed as its own",
    "noised_copy": "publishes another miner's payload of this window plus small noise",
    "stale": "publishes an older window's payload of its own, re-signed for this window",
    "prev_aggregate": "publishes the aggregate every node applied last window",
    "late_mean_copy": "publishes the mean of this window's other uploads at the end of the slot",
    "wrong_data": "trains honestly on data it was not assigned (another window's assignment)",
    "late": "publishes its honest payload after the upload slot has closed",
    "desync": "never applies the outer step, so it trains from a stale model",
    # byte-level kinds: served by neurons.localnet.adversary, which never trains or follows θ
    "huge_values": "a signed payload of the right shapes whose values reach 1e4 ... 3.4e38",
    "malformed": "a different undecodable or unacceptable payload every window",
    "slow_endpoint": "commits a hostile HTTP endpoint that drips, hangs, redirects and lies",
}

KINDS: tuple[str, ...] = tuple(DESCRIPTIONS)
ADVERSARIAL_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k != HONEST)
BYTE_LEVEL_KINDS: tuple[str, ...] = ("huge_values", "malformed", "slow_endpoint")
