"""Why one gate routes and another collapses: its diagnostics over training, runs side by side.

    python -m trainers.tools.trajectories RUN_DIR [RUN_DIR ...] --labels A B ... --output fig.png

Reads each run's `diagnostics/` files (no training, no model) and draws one PNG of six panels,
one line per run, against training time in epochs (a step at batch b of E batches in epoch e is
at e + b / E; an epoch's figures are at its end, e + 1):

- rho = RMS(gate grad) / RMS(prompt grad) per logged step (steps.jsonl, every loss term; log scale);
- input std: the gate's output std across the batch's images, per step (steps.jsonl);
- MI(choice; domain) over each training epoch (epochs.jsonl `mi_domain_stats`, Miller-Madow
  corrected; 0 for runs whose data have one domain);
- at each evaluation (summary.json `evaluations`; one per epoch with TEST.FINAL_MODEL best_val,
  on the validation set, otherwise only the final test): the functional measures of the gate
  against its training-set mean (a constant gate), the reproducible KL between the predictions
  (`kl_effect`, nats) and the share of predicted classes it changes (`changed_share`), and the
  model's cross-entropy on that set (`loss_base`; ln(#classes) is a uniform prediction).

Runs without a gate's diagnostics are refused with the folder named.
"""
import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field

DIAGNOSTICS = "diagnostics"


@dataclass
class Trajectory:
    """One gate's figures over training, each a list of (time in epochs, value)."""

    run: str
    gate: str
    rho: list = field(default_factory=list)
    input_std: list = field(default_factory=list)
    mi_domain: list = field(default_factory=list)
    kl_effect: list = field(default_factory=list)
    changed_share: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    num_classes: int = None


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _number(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def read_trajectory(run_dir, gate=None):
    """The Trajectory of gate `gate` (default: the run's only or first gate) of a finished or
    stopped run. Raises FileNotFoundError naming the folder when it has no gate diagnostics,
    ValueError when it has no gate of that name."""
    folder = os.path.join(run_dir, DIAGNOSTICS)
    paths = {name: os.path.join(folder, name) for name in ("steps.jsonl", "epochs.jsonl", "summary.json")}
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{run_dir} has no gate diagnostics ({', '.join(missing)} missing in {folder}): "
                                "give the folder of a gated run with DIAGNOSTICS.ENABLED")
    steps, epochs = _read_jsonl(paths["steps.jsonl"]), _read_jsonl(paths["epochs.jsonl"])
    with open(paths["summary.json"], encoding="utf-8") as f:
        summary = json.load(f)
    gates = list(summary.get("gates") or {})
    if not gates:
        raise FileNotFoundError(f"{run_dir}: its diagnostics record no gate")
    if gate is None:
        gate = gates[0]
    elif gate not in gates:
        raise ValueError(f"{run_dir} has no gate {gate!r}; its gates are {', '.join(gates)}")
    out = Trajectory(run=run_dir, gate=gate)
    batches = {}
    for step in steps:
        batches[step["epoch"]] = max(batches.get(step["epoch"], 0), step["batch"] + 1)
    for step in steps:
        figures = (step.get("gates") or {}).get(gate, {})
        when = step["epoch"] + step["batch"] / batches[step["epoch"]]
        for name in ("rho", "input_std"):
            value = _number(figures.get(name))
            if value is not None:
                getattr(out, name).append((when, value))
    for record in epochs:
        stats = ((record.get("gates") or {}).get(gate) or {}).get("mi_domain_stats") or {}
        value = _number(stats.get("miller_madow"))
        out.mi_domain.append((record["epoch"] + 1, value if value is not None else 0.0))
    for evaluation in summary.get("evaluations") or []:
        figures = (evaluation.get("gates") or {}).get(gate) or {}
        reference = ((figures.get("functional") or {}).get("test") or {}).get(figures.get("reference")) or {}
        when = evaluation.get("epoch", 0) + 1
        for name, value in (("kl_effect", figures.get("kl_effect")), ("changed_share", reference.get("changed_share")),
                            ("loss", reference.get("loss_base"))):
            value = _number(value)
            if value is not None:
                getattr(out, name).append((when, value))
    probe = ((summary["gates"][gate].get("linear_probe") or {}).get("cond_label") or {})
    out.num_classes = probe.get("classes")
    return out


PANELS = (("rho", "rho = RMS(gate grad) / RMS(prompt grad), per step", True),
          ("input_std", "gate output std across images, per step", False),
          ("mi_domain", "MI(choice; domain) per training epoch, nats", False),
          ("kl_effect", "KL(learned || constant gate), nats, per evaluation", True),
          ("changed_share", "share of predictions the constant gate changes", False),
          ("loss", "cross-entropy of the model, per evaluation", False))


def plot_trajectories(trajectories, labels, path, title=None):
    """Draw the six panels (see the module docstring) for `trajectories` into the PNG `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (name, panel_title, log) in zip(axes.flat, PANELS):
        for trajectory, label in zip(trajectories, labels):
            points = getattr(trajectory, name)
            if not points:
                continue
            x, y = zip(*points)
            if log:
                y = [max(v, 1e-6) for v in y]
            marker = "o" if len(points) < 40 else None
            ax.plot(x, y, label=label, marker=marker, markersize=3, linewidth=1.2)
        if name == "mi_domain":
            ax.axhline(math.log(2), color="grey", linestyle=":", linewidth=1)
            ax.text(0, math.log(2), " ln 2", va="bottom", fontsize=7, color="grey")
        if name == "loss":
            classes = next((t.num_classes for t in trajectories if t.num_classes), None)
            if classes:
                ax.axhline(math.log(classes), color="grey", linestyle=":", linewidth=1)
                ax.text(0, math.log(classes), f" ln {classes} (uniform)", va="bottom", fontsize=7, color="grey")
        if log:
            ax.set_yscale("log")
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainers.tools.trajectories",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders of gated runs")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the folder names)")
    parser.add_argument("--gate", default=None, help="the gate to follow (default: each run's first)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    labels = args.labels or [os.path.basename(os.path.normpath(r)) for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(labels)} labels for {len(args.runs)} runs: give one label per run")
    try:
        trajectories = [read_trajectory(run, args.gate) for run in args.runs]
    except (FileNotFoundError, ValueError) as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 1
    print(plot_trajectories(trajectories, labels, args.output, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
