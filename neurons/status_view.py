"""How ``tessera status`` looks on a terminal: rich tables built from a ``NetworkStatus``.

Kept apart from the reading (``neurons.status``) so the local subnet's live view can draw the
same tables from the same record.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table

from neurons.status import NetworkStatus, NodeStatus


def _fp(row: NodeStatus) -> str:
    if row.fingerprint is None:
        return "-"
    mark = {True: "agrees", False: "DIFFERS", None: "?"}[row.agrees]
    return f"{row.fingerprint[:12]} {mark}"


NOTE_CHARS = 60  # the table keeps a reason short; --json carries it whole


def _unreadable(row: NodeStatus) -> str:
    if not row.unreadable:
        return ""
    reason = " ".join(row.unreadable.split())
    return "unreadable: " + (reason if len(reason) <= NOTE_CHARS else reason[: NOTE_CHARS - 1] + "…")


def validators_table(status: NetworkStatus) -> Table:
    table = Table(title=f"validators (fingerprints of window {status.reference_window})", expand=False)
    for col in ("uid", "hotkey", "stake", f"θ fingerprint {status.reference_window}", "gathered", "newest fp", "note"):
        table.add_column(col, no_wrap=col != "note")
    for v in status.validators:
        table.add_row(
            str(v.uid), v.hotkey[:10], f"{v.stake:g}", _fp(v),
            ",".join(map(str, v.gathered)) if v.gathered is not None else "-",
            "-" if v.fingerprint_window is None else str(v.fingerprint_window), _unreadable(v),
        )
    return table


def miners_table(status: NetworkStatus) -> Table:
    table = Table(title="miners (weight on chain by validator)", expand=False)
    validators = [v.uid for v in status.validators]
    for col in ("uid", "hotkey", "last payload", "on time", "in step", *[f"v{u}" for u in validators], "note"):
        table.add_column(col, no_wrap=col != "note")
    by_validator = {v.uid: v.weights for v in status.validators}
    for m in status.miners:
        last = "-" if m.last_payload_window is None else str(m.last_payload_window)
        on_time = {True: "yes", False: "LATE/EARLY", None: "-"}[m.last_payload_on_time]
        in_step = {True: "yes", False: "NO", None: "-"}[m.agrees]
        weights = [_weight(by_validator[u].get(m.uid)) for u in validators]
        table.add_row(str(m.uid), m.hotkey[:10], last, on_time, in_step, *weights, _unreadable(m))
    return table


def _weight(value: float | None) -> str:
    return f"paid {value:.3f}" if value else "0"


def status_group(status: NetworkStatus) -> Group:
    head = (f"netuid {status.netuid}  block {status.block}  window {status.window}  run {status.run_id}  "
            f"origin block {status.origin.get('start_block', 'unreadable')}")
    majority = status.majority_fingerprint[:12] if status.majority_fingerprint else "none (no stake majority)"
    return Group(head, f"validators' majority fingerprint: {majority}", validators_table(status), miners_table(status))


def print_status(status: NetworkStatus, console: Console | None = None) -> None:
    (console or Console()).print(status_group(status))
