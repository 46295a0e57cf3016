"""What the local subnet shows: a live rich table while it runs, a JSON summary at the end.

Both are built only from the nodes' event logs (``events.jsonl`` per node) and the chain, the
same things an operator can read, so the launcher needs no back channel into the nodes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table

from neurons.status import NetworkStatus
from protocol.chain import Chain


@dataclass
class NodeLog:
    name: str
    role: str
    uid: int
    records: list[dict]


def validator_windows(logs: list[NodeLog]) -> list[int]:
    """Windows every validator has processed live (not replayed), in order."""
    per_validator = [
        {r["window"] for r in log.records if not r.get("replayed")} for log in logs if log.role == "validator"
    ]
    if not per_validator:
        return []
    return sorted(set.intersection(*per_validator))


def first_window_all_up(logs: list[NodeLog], miner_names: set[str]) -> int | None:
    """The first window by which every named miner has uploaded at least once, None until then.

    Nodes take a while to start (imports, catching up), and a miner that comes up late in a
    window sits that window out; the subnet is "up" once each miner has published a payload.
    """
    firsts = []
    for log in logs:
        if log.name not in miner_names:
            continue
        uploads = [r["window"] for r in log.records if not r.get("replayed") and r.get("uploaded_bytes")]
        if not uploads:
            return None
        firsts.append(min(uploads))
    return max(firsts, default=None)


def scored_windows(logs: list[NodeLog], miner_names: set[str]) -> list[int]:
    """Validator windows from the one where every (on-time) miner was up; these are reported."""
    up = first_window_all_up(logs, miner_names)
    if up is None:
        return []
    return [w for w in validator_windows(logs) if w >= up]


def chain_weights(chain: Chain, block: int) -> dict[int, float]:
    """Stake-weighted mean of the validators' weight rows as on chain at ``block``."""
    metagraph = chain.metagraph(block)
    total_stake = sum(n.stake for n in metagraph.neurons if n.weights)
    combined: dict[int, float] = defaultdict(float)
    for n in metagraph.neurons:
        for uid, w in n.weights.items():
            combined[uid] += w * (n.stake / total_stake if total_stake else 0.0)
    return {uid: round(w, 6) for uid, w in sorted(combined.items())}


def window_summary(window: int, logs: list[NodeLog], chain: Chain | None) -> dict:
    by_node = {log.name: _record(log, window) for log in logs}
    vals = [r for log in logs if log.role == "validator" and (r := by_node[log.name]) is not None]
    losses = [r["heldout_loss"] for r in vals if r.get("heldout_loss") is not None]
    lead = vals[0] if vals else {}
    weights_block = max((r.get("weights_block") or 0) for r in vals) if vals else 0
    weights = chain_weights(chain, weights_block) if chain is not None and weights_block else {}
    return {
        "window": window,
        "loss": sum(losses) / len(losses) if losses else None,
        "scores": {int(k): v for k, v in lead.get("scores", {}).items()},
        "weights": weights,
        "payload_bytes": {int(k): v for k, v in lead.get("payload_bytes", {}).items()},
        "rejected": {int(k): v for k, v in lead.get("rejected", {}).items()},
        "gathered": lead.get("gathered", []),
        "stage_seconds": lead.get("stage_seconds", {}),
        "fingerprints": {name: r["fingerprint"] for name, r in by_node.items() if r is not None},
    }


def attack_shares(
    window: dict, honest: Sequence[int], adversaries: Mapping[int, str], burn_uid: int | None
) -> dict:
    """Who holds the miners' weight in one ``window_summary``: honest vs adversarial share of the
    weight the validators set (the burned share left out), and per adversary its weight and why it
    was rejected (None: it passed stage 1 that window)."""
    weights = {uid: w for uid, w in window["weights"].items() if uid != burn_uid}
    honest_weight = sum(weights.get(uid, 0.0) for uid in honest)
    adversary_weight = sum(weights.get(uid, 0.0) for uid in adversaries)
    total = honest_weight + adversary_weight
    return {
        "honest_weight_share": honest_weight / total if total else 0.0,
        "adversary_weight_share": adversary_weight / total if total else 0.0,
        "adversaries": {
            uid: {
                "kind": kind,
                "weight": weights.get(uid, 0.0),
                "share": weights.get(uid, 0.0) / total if total else 0.0,
                "rejected": window["rejected"].get(uid),
            }
            for uid, kind in adversaries.items()
        },
    }


def _record(log: NodeLog, window: int) -> dict | None:
    """The node's record of ``window``: the one it wrote live, else the latest replay. A node that
    ended a window out of step and replayed it after rejoining must show the θ it held live, or
    the summary would hide the divergence."""
    found = [r for r in log.records if r["window"] == window]
    live = [r for r in found if not r.get("replayed")]
    return live[0] if live else (found[-1] if found else None)


def live_table(
    logs: list[NodeLog], miners: list[int], chain: Chain | None, last: int = 8, adversaries: Sequence[int] = ()
) -> Table:
    """One row per validator window; a column per miner, then one per adversary ("adv")."""
    table = Table(title="tessera local subnet", expand=False)
    table.caption = "miner: score/weight on chain (or why rejected); kB moved; validator seconds"
    columns = [f"miner {u}" for u in miners] + [f"adv {u}" for u in adversaries]
    for col in ("window", "loss", *columns, "kB", "in step", "val s"):
        table.add_column(col, justify="right", no_wrap=True)
    for window in validator_windows(logs)[-last:]:
        s = window_summary(window, logs, chain)
        loss = f"{s['loss']:.4f}" if s["loss"] is not None else "-"
        cells = []
        for uid in [*miners, *adversaries]:
            score, weight = s["scores"].get(uid), s["weights"].get(uid)
            reason = s["rejected"].get(uid)
            cells.append(reason or f"{score or 0:.1f}/{weight or 0:.2f}")
        moved = sum(s["payload_bytes"].values()) / 1e3
        in_step = "yes" if len(set(s["fingerprints"].values())) == 1 else "NO"
        seconds = sum(s["stage_seconds"].values())  # per stage in the JSON summary
        table.add_row(str(window), loss, *cells, f"{moved:.0f}", in_step, f"{seconds:.1f}")
    return table


def live_view(table: Table, status: NetworkStatus | None) -> RenderableType:
    """The live table, and under it what ``tessera status`` reads from the chain and the buckets
    (each miner's last payload, the weight each validator gives it, who agrees on θ)."""
    if status is None:
        return table
    from neurons.status_view import miners_table, validators_table

    return Group(table, validators_table(status), miners_table(status))
