"""The attack matrix: each adversarial behaviour against honest miners on the local subnet.

One ``tessera localnet`` run per behaviour (``--per-kind`` adversaries of that kind next to
``--honest`` honest miners), one mixed run (one adversary of every kind in ``--mixed``, by default
every listed kind, key ``"mixed"``)
and one honest-only run, one after another, each a whole subnet of real processes on this
machine. From each run's JSON summary it reports, per scored window, the honest and adversarial
shares of the weight the validators set (the burned share left out), the final held-out loss
next to the honest-only run's, and the first scored window in which every adversary of the run
was rejected by stage 1 (an index into the per-window lists; null if never):

    .venv/bin/python scripts/attack_report.py --json --behaviours copy,sign_flip --windows 8 --honest 3

Each entry also carries the rejection reason per adversary and window, how many honest
miner-windows went unpaid, the run's outcome and its wall time. Runs are sequential: two local
subnets on one small machine would starve each other's miners.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neurons.behaviours.kinds import ADVERSARIAL_KINDS  # noqa: E402
from neurons.localnet.launcher import STARTUP_WINDOWS  # noqa: E402
from protocol.hparams import load_hparams  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MIXED = "mixed"
HONEST_ONLY = "honest_only"
PAIR_SEPARATOR = "+"


@dataclass(frozen=True)
class RunSpec:
    name: str  # a behaviour, MIXED or HONEST_ONLY
    adversaries: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    honest: int
    validators: int
    windows: int
    block_time: float
    hparams: str
    workdir: Path


def plan_runs(behaviours: list[str], per_kind: int, each: bool, mixed: list[str], pairs: bool = False) -> list[RunSpec]:
    """Honest-only first (every other entry is compared with it), then one run per kind (or,
    with ``pairs``, one run per two kinds, one adversary of each: half the runs on a small
    machine), then the mixed run (one adversary of each kind in ``mixed``; none if empty)."""
    runs = [RunSpec(HONEST_ONLY, ())]
    if each and pairs:
        chunks = [behaviours[i:i + 2] for i in range(0, len(behaviours), 2)]
        runs += [RunSpec(PAIR_SEPARATOR.join(c), tuple(c) if len(c) == 2 else (c[0],) * 2) for c in chunks]
    elif each:
        runs += [RunSpec(kind, (kind,) * per_kind) for kind in behaviours]
    if mixed:
        runs.append(RunSpec(MIXED, tuple(mixed)))
    return runs


def localnet_command(run: RunSpec, settings: Settings) -> list[str]:
    cmd = [
        sys.executable, "-m", "neurons.cli", "localnet", "--miners", str(settings.honest),
        "--validators", str(settings.validators), "--windows", str(settings.windows),
        "--block-time", str(settings.block_time), "--hparams", settings.hparams,
        "--workdir", str(settings.workdir / run.name), "--json-out", str(settings.workdir / f"{run.name}.json"),
    ]
    return cmd + (["--adversaries", ",".join(run.adversaries)] if run.adversaries else [])


def run_timeout(run: RunSpec, settings: Settings) -> float:
    """Generous: start-up (about a window per extra process on a small machine) plus the windows."""
    window_seconds = load_hparams(settings.hparams).window.blocks_per_window * settings.block_time
    return (settings.windows + STARTUP_WINDOWS + len(run.adversaries) + 4) * window_seconds + 120


def run_localnet(run: RunSpec, settings: Settings) -> dict:
    """The run's summary (with ``outcome``); a run that died without one reports why."""
    out = settings.workdir / f"{run.name}.json"
    settings.workdir.mkdir(parents=True, exist_ok=True)
    with (settings.workdir / f"{run.name}.log").open("wb") as log:
        proc = subprocess.Popen(localnet_command(run, settings), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=run_timeout(run, settings))
        except subprocess.TimeoutExpired:
            # SIGTERM, not a kill: the launcher then stops its nodes and still writes the summary
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        return {"outcome": f"no summary ({type(exc).__name__}: {exc})", "windows": [], "miners": [], "adversaries": {}}


def first_rejected_window(windows: list[dict], adversaries: list[str]) -> int | None:
    """Index of the first scored window in which stage 1 rejected every adversary of the run."""
    for i, w in enumerate(windows):
        if adversaries and all(w["rejected"].get(uid) for uid in adversaries):
            return i
    return None


def honest_unpaid(windows: list[dict], miners: list[int]) -> int:
    """Honest miner-windows with no weight (the validators set weights that window but none to it)."""
    return sum(1 for w in windows if w["weights"] for uid in miners if not w["weights"].get(str(uid)))


def kind_share(window: dict, summary: dict, kind: str) -> float:
    """The share of the miner weight (burn left out) that adversaries of ``kind`` hold."""
    weights = {int(u): float(v) for u, v in window["weights"].items()}
    miners = set(summary["miners"]) | {int(u) for u in summary["adversaries"]}
    total = sum(v for u, v in weights.items() if u in miners)
    ours = sum(v for u, v in weights.items() if summary["adversaries"].get(str(u)) == kind)
    return ours / total if total else 0.0


def digest(summary: dict, honest_only_loss: float | None, seconds: float, kind: str | None = None) -> dict:
    """One matrix entry; with ``kind``, only the adversaries of that kind of a run with several."""
    windows = summary["windows"]
    adversaries = sorted((u for u, k in summary["adversaries"].items() if kind is None or k == kind), key=int)
    shares = ([kind_share(w, summary, kind) for w in windows] if kind is not None
              else [w.get("adversary_weight_share", 0.0) for w in windows])
    return {
        "adversary_weight_share": shares,
        "honest_weight_share": [w.get("honest_weight_share", 0.0) for w in windows],
        "loss": windows[-1]["loss"] if windows else None,
        "honest_only_loss": honest_only_loss,
        "first_rejected_window": first_rejected_window(windows, adversaries),
        "windows": [w["window"] for w in windows],
        "adversaries": summary["adversaries"],
        "rejections": {uid: [w["rejected"].get(uid) for w in windows] for uid in adversaries},
        "honest_unpaid_windows": honest_unpaid(windows, summary["miners"]),
        "honest_miner_windows": len(windows) * len(summary["miners"]),
        "outcome": summary["outcome"],
        "seconds": round(seconds, 1),
    }


def report(runs: list[RunSpec], settings: Settings, progress=None, honest_only_loss: float | None = None) -> dict:
    """Run every planned subnet in order and digest each summary."""
    out: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
                 "behaviours": {}}
    for run in runs:
        started = time.time()
        summary = run_localnet(run, settings)
        seconds = time.time() - started
        entry = digest(summary, honest_only_loss, seconds)
        runs_totals(out, run.name, entry)
        if run.name == HONEST_ONLY:
            honest_only_loss = entry["loss"]
            out[HONEST_ONLY] = entry
        elif PAIR_SEPARATOR in run.name:
            for kind in dict.fromkeys(run.adversaries):
                out["behaviours"][kind] = digest(summary, honest_only_loss, seconds, kind) | {"run": run.name}
        else:
            out["behaviours"][run.name] = entry
        if progress is not None:
            progress(run.name, entry)
    return out


def runs_totals(out: dict, name: str, entry: dict) -> None:
    """Honest miner-windows unpaid over every run, each run counted once."""
    totals = out.setdefault("totals", {"honest_unpaid_windows": 0, "honest_miner_windows": 0, "runs": 0})
    totals["honest_unpaid_windows"] += entry["honest_unpaid_windows"]
    totals["honest_miner_windows"] += entry["honest_miner_windows"]
    totals["runs"] += 1


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ADVERSARIAL_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown behaviour {unknown or text!r}; one of {', '.join(ADVERSARIAL_KINDS)}")
    return kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON (else one line per run)")
    parser.add_argument("--behaviours", type=_kinds, default=list(ADVERSARIAL_KINDS), help="comma list (default: all)")
    parser.add_argument("--windows", type=int, default=8, help="scored windows per run")
    parser.add_argument("--honest", type=int, default=3, help="honest miners in every run")
    parser.add_argument("--per-kind", type=int, default=2, help="adversaries in each single-behaviour run")
    parser.add_argument("--validators", type=int, default=1)
    parser.add_argument("--block-time", type=float, default=2.0, help="devchain seconds per block")
    parser.add_argument("--hparams", default="tiny")
    parser.add_argument("--only-mixed", action="store_true", help="skip the single-behaviour runs")
    parser.add_argument("--mixed", type=_kinds, default=None,
                        help="kinds of the mixed run, one adversary each (default: --behaviours)")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed run")
    parser.add_argument("--honest-only-loss", type=float, default=None,
                        help="skip the honest-only run; compare with this loss from an earlier one")
    parser.add_argument("--pairs", action="store_true",
                        help="two kinds per run, one adversary each (half the runs), instead of --per-kind of one kind")
    parser.add_argument("--workdir", default=None, help="keep every run's files here (default: a temp dir)")
    args = parser.parse_args(argv)
    mixed = [] if args.no_mixed else (args.mixed or args.behaviours)
    runs = plan_runs(args.behaviours, args.per_kind, each=not args.only_mixed, mixed=mixed, pairs=args.pairs)
    if args.honest_only_loss is not None:  # compare with an earlier honest-only run of the same settings
        runs = [r for r in runs if r.name != HONEST_ONLY]
    with tempfile.TemporaryDirectory(prefix="attack-report-") as tmp:
        workdir = Path(args.workdir).resolve() if args.workdir else Path(tmp)
        settings = Settings(args.honest, args.validators, args.windows, args.block_time, args.hparams, workdir)

        def progress(name: str, entry: dict) -> None:
            print(f"{name}: {entry['outcome']}, {entry['seconds']} s, adversary share {entry['adversary_weight_share']}",
                  file=sys.stderr, flush=True)

        result = report(runs, settings, progress, args.honest_only_loss)
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        for name, entry in result["behaviours"].items():
            print(f"{name}: loss {entry['loss']} vs {entry['honest_only_loss']}, "
                  f"adversary share {entry['adversary_weight_share']}, first rejected {entry['first_rejected_window']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
