"""Learning curves like the paper's: eval success rate against environment steps, or
against training time (``--x=wall_s``: what a run costs to reach a success rate).

    python -m holdjax.plot runs/fig3a_pushing_sac runs/fig3a_pushing_holdc --out=curves.png
    python -m holdjax.plot runs/fig3a_pushing_holdc --x=wall_s --out=by_time.png

One line per run directory: the mean over its seeds, with a band from the lowest to the
highest seed (a run trained with ``--seeds=K`` holds all K in its ``metrics.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def metrics_path(run: str) -> str:
    """A run's metrics.jsonl (``run``: the run directory or the file itself)."""
    named_file = run.endswith(".jsonl") or os.path.isfile(run)
    return run if named_file else os.path.join(run, "metrics.jsonl")


def read_metrics(run: str) -> list[dict]:
    """The records of a run's metrics.jsonl (``run``: the run directory or the file) in epoch
    order: the last one written for each epoch (a resumed run may log an epoch again). An
    unfinished last line, a write that a kill cut short, is left out with a warning."""
    path = metrics_path(run)
    if not os.path.exists(path):
        hint = "" if path == run else f": is {run} a holdjax.train run directory?"
        raise FileNotFoundError(f"{path} not found{hint}")
    with open(path) as f:
        lines = f.read().split("\n")
    by_epoch = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # no newline after it: its write never finished
                print(f"warning: {path}: its last line is unfinished (a write cut short); "
                      "leaving it out", file=sys.stderr)
                continue
            raise ValueError(f"{path}, line {number}, is not a metrics record ({e})") from None
        by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def drop_unfinished_line(path: str) -> None:
    """Cuts an unfinished last line (a write that a kill cut short) off a JSONL file, and ends
    a whole one that lacks its newline, so that the next record appended starts a line of its
    own."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
            f.write(b"\n")
        except json.JSONDecodeError:
            f.truncate(start)


MARKED_POINTS = 50  # curves of at most this many epochs get a marker at each
# What a curve's x axis may be: a key of every metrics record, and its axis label.
X_AXES = {"env_steps": "environment steps", "wall_s": "training time (minutes)"}


def _load_curve(run_dir: str, metric: str = "eval_success_rate",
                x: str = "env_steps") -> tuple[np.ndarray, np.ndarray]:
    """(``x`` per epoch (E,): env steps, or minutes of training for "wall_s" (summed over a
    resumed run's sessions); metric per epoch and seed (E, K)) from a run's metrics.jsonl."""
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{metrics_path(run_dir)} is empty: the run has not finished an epoch "
                         "yet")
    logged = [r[metric] for r in records if r.get(metric) is not None]
    if not logged:
        numeric = sorted(k for k, v in records[-1].items()
                         if isinstance(v, (int, float, list)) and k != "epoch")
        raise ValueError(f"{run_dir} logs no metric {metric!r}; available: {', '.join(numeric)}")
    if x not in X_AXES:
        raise ValueError(f"no x axis {x!r}; choose one of {', '.join(X_AXES)}")
    xs = np.array([r[x] for r in records], dtype=float) / (60.0 if x == "wall_s" else 1.0)
    # Epochs without it (losses before training starts, returns of epochs that finished no
    # episode) are gaps in the curve.
    gap = np.full(np.atleast_1d(logged[-1]).shape, np.nan)
    values = np.array([gap if r.get(metric) is None else np.atleast_1d(r[metric])
                       for r in records], dtype=float)
    return xs, values


def curves_figure(run_dirs: list[str], metric: str = "eval_success_rate", x: str = "env_steps"):
    """A matplotlib figure of ``metric`` against ``x``, one line (seed mean) and band
    (seed range) per run; rates (metrics ending in "rate") on a fixed 0-1 axis, so that
    figures compare at a glance and an all-zero curve is not drawn as a band around 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run_dir in run_dirs:
        steps, values = _load_curve(run_dir, metric, x)
        seeds = values.shape[1]
        label = f"{os.path.basename(os.path.normpath(run_dir))} ({seeds} seed{'s' * (seeds > 1)})"
        # Markers on short curves, so that a lone point (one epoch logged) shows.
        line, = ax.plot(steps, values.mean(axis=1), label=label,
                        marker="o" if len(steps) <= MARKED_POINTS else None, markersize=3)
        ax.fill_between(steps, values.min(axis=1), values.max(axis=1), alpha=0.2,
                        color=line.get_color())
    if metric.endswith("rate"):
        ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_runs(run_dirs: list[str], out: str, metric: str = "eval_success_rate",
              x: str = "env_steps") -> str:
    """Writes `curves_figure` to the image file ``out`` (``.png`` added when it has no
    suffix, as matplotlib does); returns its path."""
    import matplotlib.pyplot as plt

    if os.path.isdir(out):
        raise ValueError(f"--out {out} is a folder: name an image file, e.g. "
                         f"{os.path.join(out, 'curves.png')}")
    if not os.path.splitext(out)[1]:
        out += ".png"
    fig = curves_figure(run_dirs, metric, x)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m holdjax.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--out", default="curves.png",
                        help="image to write; its suffix picks the format (default: %(default)s)")
    parser.add_argument("--metric", default="eval_success_rate",
                        help="a key of the runs' metrics.jsonl (default: %(default)s)")
    parser.add_argument("--x", default="env_steps", choices=sorted(X_AXES),
                        help="the x axis: env steps per seed, or training time (wall_s, "
                             "plotted in minutes) (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        path = plot_runs(args.runs, args.out, args.metric, args.x)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
