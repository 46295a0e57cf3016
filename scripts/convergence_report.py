"""Tables and plots of saved ``scripts/bench_convergence.py --json`` results (docs/convergence.md).

    .venv/bin/python scripts/convergence_report.py docs/img/convergence.json --table --plot-dir docs/img
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METHODS = ("ddp", "diloco", "sparseloco")

COLORS = {"ddp": "tab:gray", "diloco": "tab:blue", "sparseloco": "tab:red"}
VARIANT_COLORS = ("tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:olive")


def is_base(run: dict) -> bool:
    return run["variant"] in (None, "base")


def plot(runs: list[dict], out_dir: Path) -> list[Path]:
    """Per H: loss vs step and loss vs cumulative bytes per replica (log x), the three methods'
    base runs (seeds: solid, dashed); per H with SparseLoCo variants: the variants against DiLoCo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r["seed"] for r in runs})
    style = lambda r, color: dict(color=color, ls="-" if r["seed"] == seeds[0] else "--")  # noqa: E731
    written = []
    for H in sorted({r["H"] for r in runs}):
        fig, (ax_s, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
        for run in (r for r in runs if r["H"] == H and is_base(r)):
            steps, losses = zip(*run["curve"], strict=True)
            label = f"{run['method']} seed {run['seed']}"
            ax_s.plot(steps, losses, label=label, **style(run, COLORS[run["method"]]))
            sent = [b for _, b in run["bytes_curve"]]
            ax_b.plot(sent[1:], losses[1:], label=label, **style(run, COLORS[run["method"]]))
        ax_s.set(xlabel="inner step", ylabel="held-out loss", title=f"H = {H}: loss vs step")
        ax_b.set(xlabel="bytes sent per replica (cumulative)", ylabel="held-out loss", xscale="log",
                 title=f"H = {H}: loss vs bytes")
        written.append(_save(fig, ax_s, out_dir / f"convergence_H{H}.png"))
        variants = sorted({r["variant"] for r in runs if r["H"] == H and r["method"] == "sparseloco"} - {"base"})
        if variants:
            written.append(_plot_variants([r for r in runs if r["H"] == H], ["base", *variants], seeds, out_dir))
    return written


def _plot_variants(runs: list[dict], variants: list[str], seeds: list[int], out_dir: Path) -> Path:
    import matplotlib.pyplot as plt

    H, last = runs[0]["H"], min(r["steps"] for r in runs if r["method"] == "sparseloco")
    fig, axes = plt.subplots(1, len(seeds), figsize=(5.5 * len(seeds), 4), squeeze=False)
    for ax, seed in zip(axes[0], seeds, strict=True):
        for run in (r for r in runs if r["seed"] == seed):
            if run["method"] == "sparseloco" and run["variant"] in variants:
                color, label = VARIANT_COLORS[variants.index(run["variant"]) % len(VARIANT_COLORS)], run["variant"]
            elif run["method"] == "diloco":
                color, label = COLORS["diloco"], "diloco"
            else:
                continue
            steps, losses = zip(*((s, v) for s, v in run["curve"] if s <= last), strict=True)
            ax.plot(steps, losses, color=color, label=label)
        ax.set(xlabel="inner step", ylabel="held-out loss", title=f"SparseLoCo variants, H = {H}, seed {seed}")
    return _save(fig, axes[0][0], out_dir / f"convergence_variants_H{H}.png")


def _save(fig, legend_ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    legend_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_at(run: dict, step: int) -> float | None:
    return dict((int(k), v) for k, v in run["curve"]).get(step)


def largest_rise(run: dict, last: int) -> float:
    """The largest increase of the held-out loss between two consecutive evaluations up to ``last``."""
    curve = [v for s, v in run["curve"] if s <= last]
    return max([0.0, *(b - a for a, b in zip(curve, curve[1:], strict=False))])


def pct(a: float, b: float) -> str:
    return f"{100 * (a - b) / b:+.1f} %"


def markdown(runs: list[dict], early: tuple[int, ...] = (60, 90, 120)) -> str:
    """The docs tables from saved runs: the three methods (base runs), then SparseLoCo's variants."""
    find = {(r["method"], r["variant"], r["H"], r["seed"]): r for r in runs}
    cols = " | ".join(f"@{s}" for s in early)
    out = [f"| H | seed | method | final loss | vs DiLoCo | vs DDP | bytes/round/replica | DiLoCo bytes ÷ | {cols} "
           "| largest rise |", "|---" * (9 + len(early)) + "|"]
    for r in sorted((r for r in runs if is_base(r)), key=lambda r: (r["H"], r["seed"], METHODS.index(r["method"]))):
        dil, ddp = find.get(("diloco", None, r["H"], r["seed"])), find.get(("ddp", None, r["H"], r["seed"]))
        ratio = f"{dil['bytes_per_round'] / r['bytes_per_round']:.1f}x" if dil else "–"
        at = " | ".join(str(loss_at(r, s) or "–") for s in early)
        out.append(f"| {r['H']} | {r['seed']} | {r['method']} | {r['final_loss']:.4f} | "
                   f"{pct(r['final_loss'], dil['final_loss']) if dil else '–'} | "
                   f"{pct(r['final_loss'], ddp['final_loss']) if ddp else '–'} | {r['bytes_per_round']:,} | {ratio} | {at} "
                   f"| {largest_rise(r, r['steps']):.3f} |")
    sparse = sorted((r for r in runs if r["method"] == "sparseloco"), key=lambda r: (r["H"], r["seed"], r["variant"]))
    if {r["variant"] for r in sparse} - {"base"}:
        # every variant over the steps all of them ran (a variant study may be a prefix of the table's runs)
        lasts = {H: min(r["steps"] for r in sparse if r["H"] == H) for H in {r["H"] for r in sparse}}
        out += ["", f"| H | seed | variant | {cols} | @last | last step | largest rise | bytes/round/replica |",
                "|---" * (7 + len(early)) + "|"]
        for r in sparse:
            last = lasts[r["H"]]
            rise = largest_rise(r, last)
            sent = dict((int(k), v) for k, v in r["bytes_curve"])[last] * r["H"] // last
            at = " | ".join(str(loss_at(r, s) or "–") for s in early)
            out.append(f"| {r['H']} | {r['seed']} | {r['variant']} | {at} | {loss_at(r, last)} | {last} | {rise:.3f} "
                       f"| {sent:,} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="saved --json outputs; their runs are merged")
    p.add_argument("--table", action="store_true", help="print the markdown tables")
    p.add_argument("--plot-dir", type=Path, help="write convergence_H<H>.png (and _variants_) there")
    args = p.parse_args(argv)
    runs = [run for path in args.results for run in json.loads(path.read_text())["runs"]]
    if args.table:
        print(markdown(runs))
    for path in plot(runs, args.plot_dir) if args.plot_dir else []:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
