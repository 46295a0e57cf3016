"""When a validator sets weights, and what vector it hands the chain, so the chain accepts it.

The chain refuses a weight set made sooner than ``WeightsSetRateLimit`` blocks after this
uid's last one, under a version key older than the subnet's ``WeightsVersionKey``, with fewer
than ``MinAllowedWeights`` entries, or with one weight above ``MaxWeightsLimit`` of the row.
Windows can be far shorter than the rate limit (tiny: 10 blocks against the chain's default
100), so "every ``windows_per_weights`` windows" is the *wish*; the chain's limit decides:

- a window whose turn it is makes its weights *pending*; newer windows replace them (the
  newest scores are what the chain should see);
- pending weights are sent at the first window that ends at or after the next allowed block
  (``WeightsPolicy.next_allowed_block``, read from the chain each time, so a restart or another
  process setting weights for this hotkey is seen), never before: every call made is one the
  chain accepts;
- a call that is refused or fails anyway keeps the weights pending; it is logged and reported
  in the window's event (``WeightsOutcome.note``) and retried at the next allowed block.

A burn-only row (everything to the owner) is padded with one-quantum weights on other uids up to
``min(MinAllowedWeights, subnet size)``, and no weight is left above ``MaxWeightsLimit`` (the
excess is spread over the others in proportion, as the SDK would clip it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from protocol.chain import (
    U16_MAX,
    Chain,
    ChainError,
    RateLimitedError,
    WeightsPolicy,
    WeightsRefusedError,
)
from protocol.signing import Signer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsOutcome:
    """What happened to weights in one window: ``block`` is the head after an accepted set."""

    status: str  # "set", "deferred", "refused", "failed" or "idle" (nothing due, nothing pending)
    block: int | None = None
    retry_at: int | None = None
    note: str = ""


def cap_shares(row: dict[int, float], share: float) -> dict[int, float]:
    """``row`` normalized to sum 1 with no entry above ``share``; the largest entries are cut to
    exactly ``share`` and the rest keep their proportions (``share * len(row) >= 1`` required)."""
    total = sum(row.values())
    norm = {uid: w / total for uid, w in row.items()}
    if max(norm.values()) <= share:
        return norm
    if share * len(norm) <= 1.0:
        return {uid: 1.0 / len(norm) for uid in norm}
    order = sorted(norm, key=lambda uid: (-norm[uid], uid))
    for k in range(1, len(order)):
        rest = sum(norm[uid] for uid in order[k:])
        final_total = rest / (1.0 - k * share)  # k entries at share x total, the rest unchanged
        if norm[order[k]] <= share * final_total:
            capped = set(order[:k])
            return {uid: (share * final_total if uid in capped else norm[uid]) / final_total for uid in norm}
    return {uid: 1.0 / len(norm) for uid in norm}  # not reached: k = n - 1 always fits


def conform(weights: dict[int, float], policy: WeightsPolicy, own_uid: int | None) -> dict[int, float]:
    """The row to submit: positive finite weights, padded to the subnet's minimum count and
    capped at its maximum share. A lone weight on our own uid is exempt, as on chain."""
    row = {uid: float(w) for uid, w in weights.items() if math.isfinite(w) and w > 0}
    if not row:
        raise WeightsRefusedError("set_weights: every weight is zero; nothing to set")
    if list(row) == [own_uid]:
        return row
    need = min(policy.min_allowed_weights, policy.subnet_size)
    if len(row) < need:
        quantum = max(row.values()) / U16_MAX  # one u16 step once the chain max-upscales the row
        spare = [uid for uid in range(policy.subnet_size) if uid not in row and uid != own_uid]
        if own_uid is not None and own_uid not in row:
            spare.append(own_uid)  # our own uid only when no other is left
        for uid in spare[: need - len(row)]:
            row[uid] = quantum
    if policy.max_weight_share < 1.0:
        row = cap_shares(row, policy.max_weight_share)
    return row


class WeightsSchedule:
    """Turns each window's weights into the chain calls the chain will accept (module doc)."""

    def __init__(
        self, chain: Chain, signer: Signer, uid: int | None, *, version_key: int, windows_per_weights: int,
        name: str = "validator",
    ) -> None:
        self.chain, self.signer, self.uid = chain, signer, uid
        self.version_key, self.every, self.name = version_key, windows_per_weights, name
        self.pending: dict[int, float] | None = None
        self.pending_window: int | None = None

    def step(self, window: int, weights: dict[int, float]) -> WeightsOutcome:
        """Called once per judged window with its weights ({} when there are none)."""
        if weights and (self.pending is not None or (window + 1) % self.every == 0):
            self.pending, self.pending_window = dict(weights), window
        if self.pending is None:
            return WeightsOutcome("idle")
        try:
            policy = self.chain.weights_policy(self.uid if self.uid is not None else -1)
        except ChainError as exc:
            return self._report(window, WeightsOutcome("failed", note=f"reading the subnet's weight rules: {exc}"))
        outcome = self._submit(policy)
        return self._report(window, outcome)

    def _submit(self, policy: WeightsPolicy) -> WeightsOutcome:
        if policy.version_key > self.version_key:
            return WeightsOutcome(
                "refused", retry_at=policy.next_allowed_block,
                note=f"our weights version key {self.version_key} (hparams scoring.weights_version_key) is older "
                     f"than the subnet's WeightsVersionKey {policy.version_key}: run the release the subnet requires",
            )
        if policy.block < policy.next_allowed_block:
            return WeightsOutcome(
                "deferred", retry_at=policy.next_allowed_block,
                note=f"rate limit {policy.rate_limit} blocks since block {policy.last_update}; "
                     f"next allowed block {policy.next_allowed_block}",
            )
        try:
            row = conform(self.pending or {}, policy, self.uid)
            self.chain.set_weights(self.signer, row, version_key=self.version_key)
        except RateLimitedError as exc:
            return WeightsOutcome("refused", retry_at=exc.retry_at, note=str(exc))
        except WeightsRefusedError as exc:
            return WeightsOutcome("refused", note=str(exc))
        except ChainError as exc:
            return WeightsOutcome("failed", note=str(exc))
        self.pending, self.pending_window = None, None
        mode = "committed (commit-reveal)" if policy.commit_reveal else "set"
        try:
            block = self.chain.block()
        except ChainError:
            block = policy.block + 1  # included in the block after the head we submitted at
        return WeightsOutcome("set", block=block, note=f"{len(row)} weights {mode} at block {block}")

    def _report(self, window: int, outcome: WeightsOutcome) -> WeightsOutcome:
        """One log line per window that had weights to set; refusals and failures are errors."""
        retry = f"; retrying at block {outcome.retry_at}" if outcome.retry_at is not None else "; retrying next window"
        if outcome.status == "set":
            log.info("%s window %d: %s", self.name, window, outcome.note)
        elif outcome.status == "deferred":
            log.info("%s window %d: weights of window %s wait: %s", self.name, window, self.pending_window, outcome.note)
        else:
            log.error("%s window %d: set_weights %s: %s%s", self.name, window, outcome.status, outcome.note, retry)
        return outcome
