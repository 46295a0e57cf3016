"""The subnet rules the devchain enforces on writes, as subtensor does where they change what a node
must do: the weights rate limit, version key, minimum count and maximum share of weights,
commit-reveal delay, and the commitment rate limit. Checks are pure functions of the rules and the
state the write sees; each refusal is the typed error a node handles (``protocol.chain``).

Defaults are permissive (no limit) so a test chain states the rules it exercises;
``tessera chain create`` starts from the real chain's defaults (``REAL_CHAIN``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from protocol.chain import U16_MAX, ChainError, RateLimitedError, WeightsRefusedError


@dataclass(frozen=True)
class DevChainRules:
    weights_rate_limit: int = 0  # blocks between two weight sets of one uid (WeightsSetRateLimit)
    min_allowed_weights: int = 0  # MinAllowedWeights (the chain asks min(this, subnet size))
    max_weights_limit: int = U16_MAX  # MaxWeightsLimit: largest weight's share of the row, in u16
    version_key: int = 0  # WeightsVersionKey: a set_weights under an older key is refused
    commit_reveal_blocks: int = 0  # >0: weights take effect this many blocks after the commit
    commit_rate_limit: int = 0  # blocks between two commitments of one uid

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ChainError(f"devchain rule {f.name} must be >= 0, got {getattr(self, f.name)}")
        if self.max_weights_limit > U16_MAX:
            raise ChainError(f"devchain rule max_weights_limit must be <= {U16_MAX}")

    def to_meta(self) -> dict[str, int]:
        return {f"rule_{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> DevChainRules:
        """Rules of a devchain file; a file made before a rule existed runs without it."""
        return cls(**{f.name: int(meta[f"rule_{f.name}"]) for f in fields(cls) if f"rule_{f.name}" in meta})


# subtensor's defaults for a new subnet: a 100-block weights rate limit, nothing else binding
REAL_CHAIN = DevChainRules(weights_rate_limit=100)


def check_version_key(rules: DevChainRules, version_key: int) -> None:
    if version_key < rules.version_key:
        raise WeightsRefusedError(
            f"set_weights: version key {version_key} is older than the subnet's WeightsVersionKey "
            f"{rules.version_key} (IncorrectWeightVersionKey)"
        )


def check_rate(what: str, limit: int, last: int | None, head: int) -> None:
    """The SDK's preflight rule: refused while ``head - last < limit``."""
    if limit and last is not None and head - last < limit:
        raise RateLimitedError(
            f"{what}: last one at block {last}, rate limit {limit} blocks; retry at block {last + limit}",
            retry_at=last + limit,
        )


def check_row(rules: DevChainRules, uid: int, row: dict[int, float], subnet_size: int) -> None:
    """Count and share rules on a normalized row; a lone self-weight is exempt, as on chain."""
    if list(row) == [uid]:
        return
    need = min(rules.min_allowed_weights, subnet_size)
    if len(row) < need:
        raise WeightsRefusedError(
            f"set_weights: {len(row)} weights, the subnet requires at least {need} (WeightVecLengthIsLow)"
        )
    share = rules.max_weights_limit / U16_MAX
    if max(row.values()) > share + 1e-9:
        raise WeightsRefusedError(
            f"set_weights: largest weight {max(row.values()):.6f} of the row exceeds MaxWeightsLimit "
            f"{share:.6f} (MaxWeightExceeded)"
        )
