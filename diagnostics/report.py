"""The diagnostics' outputs: JSON lines, summary.json, TensorBoard scalars, plots, the log table."""
import json
import os

from tabulate import tabulate

# The JSON-lines helpers are gatescope's shared ones (one policy for a torn last line); the
# recorder reaches them as report.read_jsonl, report.append_jsonl, ...
from gates.plumbing import append_jsonl, json_safe, read_jsonl, write_json_atomic, write_jsonl  # noqa: F401


def write_json(path, obj):
    write_json_atomic(json_safe(obj), path)


# The study's per-step gate tags (its CoOp / CoCoOp `_log_gate_metrics`), from each step's "study" figures.
STUDY_GATE_TAGS = ("d_eff", "mean_p", "std_p", "entropy", "grad_norm")


def write_scalars(trainer, epoch_record, epoch_steps):
    """TensorBoard scalars under diag/: per-step group RMS, rho and clip coefficient, per-epoch gate
    figures; and the study's gate/{d_eff, mean_p, std_p, entropy, grad_norm} per step (its tags
    as they are for a run with one mask gate, gate/<name>/... with several), at the study's step
    number epoch * num_batches + batch."""
    write = trainer.write_scalar
    study_gates = {n for s in epoch_steps for n, g in s.get("gates", {}).items() if g.get("study")}
    for s in epoch_steps:
        for group, stats in s.get("groups", {}).items():
            if stats.get("rms") is not None:
                write(f"diag/grad_rms/{group}", stats["rms"], s["step"])
            if stats.get("update_rel") is not None:
                write(f"diag/update_rel/{group}", stats["update_rel"], s["step"])
        clip = s.get("grad_clip") or {}
        for key in ("total_norm", "coef"):
            if clip.get(key) is not None:
                write(f"diag/grad_clip/{key}", clip[key], s["step"])
        for name, g in s.get("gates", {}).items():
            for key in ("rho", "input_std", "saturation", "dL_dg_rms", "slope"):
                if g.get(key) is not None:
                    write(f"diag/{name}/{key}", g[key], s["step"])
            prefix = "gate" if len(study_gates) == 1 else f"gate/{name}"
            for key in STUDY_GATE_TAGS:
                value = (g.get("study") or {}).get(key)
                if value is not None:
                    write(f"{prefix}/{key}", value, s["step"])
    for name, g in epoch_record.get("gates", {}).items():
        for key in ("rho_median", "input_std", "saturation", "effective_options", "mi_label", "mi_domain"):
            if g.get(key) is not None:
                write(f"diag/{name}/epoch_{key}", g[key], epoch_record["epoch"] + 1)


def plot_grad_norms(steps, path):
    """Gradient RMS per parameter group over the logged steps, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for s in steps:
        for group, stats in s.get("groups", {}).items():
            if stats.get("rms"):
                series.setdefault(group, ([], []))
                series[group][0].append(s["step"])
                series[group][1].append(stats["rms"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for group, (x, y) in series.items():
        ax.plot(x, y, label=group)
    if series:
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("gradient RMS (norm / sqrt(numel))")
    ax.set_title("Gradient magnitude per parameter group")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gate_outputs(epochs, path):
    """The distribution of each gate's output values per epoch (box plots)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({n for e in epochs for n in e.get("gates", {})})
    fig, axes = plt.subplots(max(1, len(names)), 1, figsize=(7, 3 * max(1, len(names))), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        data = [e["gates"].get(name, {}).get("output_sample") or [float("nan")] for e in epochs]
        ax.boxplot(data, whis=(0, 100))
        ax.set_xticks(range(1, len(epochs) + 1), [str(e["epoch"] + 1) for e in epochs])
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"gate '{name}' output")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def _ci(g):
    ref = ((g.get("functional") or {}).get("test") or {}).get(g.get("reference") or "constant") or {}
    ci = ref.get("acc_delta_ci")
    return "-" if not ci else f"[{ci[0]:+.1f}, {ci[1]:+.1f}]"


def summary_table(summary):
    """The per-gate diagnosis as a tabulate table (printed at the end of log.txt), then the reasons."""
    rows = []
    for name, g in summary["gates"].items():
        rho = g.get("rho_task") if g.get("rho_task") is not None else g.get("rho_median")
        std = g.get("signal_std") if g.get("signal_std") is not None else g.get("input_std")
        rows.append([name, g["gate"], g["verdict"], _fmt(rho), _fmt(g.get("magnitude_gap"), ".2f"),
                     _fmt(std) if g.get("input_dependent", True) else "per-task", _fmt(g.get("saturation"), ".2f"),
                     _fmt(g.get("effective_options")), g.get("reference") or "-", _fmt(g.get("kl_reference")),
                     _fmt(g.get("acc"), ".2f"), _fmt(g.get("delta_acc"), "+.2f"), _ci(g)])
    table = tabulate(rows, headers=["gate", "name", "verdict", "rho (task)", "log10 gap", "input std",
                                    "saturation", "eff. options", "reference", "KL vs ref.", "acc", "delta",
                                    "delta 95% CI"])
    reasons = "\n".join(f"  {name}: {r}" for name, g in summary["gates"].items() for r in g["reasons"])
    return f"** Gate diagnostics **\n{table}\n{reasons}" if reasons else f"** Gate diagnostics **\n{table}"


def load_run_summary(run_dir):
    """summary.json of a run folder (RUN_DIR/diagnostics/summary.json; the diagnostics folder or the
    file itself are accepted too). Raises FileNotFoundError naming the paths tried, ValueError for
    a file that is not a diagnostics summary."""
    candidates = [os.path.join(run_dir, "diagnostics", "summary.json"), os.path.join(run_dir, "summary.json"), run_dir]
    path = next((c for c in candidates if os.path.isfile(c)), None)
    if path is None:
        raise FileNotFoundError(f"no diagnostics summary for {run_dir!r}: tried {', '.join(candidates[:2])}; pass the "
                                "--output-dir of a gated run that reached an evaluation")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the run may have been killed while writing it: rerun "
                         "its evaluation (--eval-only) to write it again") from e
    if not isinstance(summary, dict) or not isinstance(summary.get("gates"), dict):
        raise ValueError(f"{path} holds no 'gates' entry: it is not a gatescope diagnostics summary")
    return path, summary


def rediagnose(summary, overrides=None):
    """The verdicts of a finished run's summary recomputed with its recorded thresholds, overridden
    by `overrides` ({KEY: value}; KEY one of verdict.DEFAULT_THRESHOLDS). Returns {gate name:
    (old verdict, new verdict, reasons)}; the summary is not modified. Raises KeyError for an
    unknown key, naming the valid ones."""
    from .verdict import DEFAULT_THRESHOLDS, gate_verdict

    overrides = dict(overrides or {})
    if "WINDOW" in overrides:
        raise KeyError("WINDOW chooses the training steps the medians are taken over, when the run is made; "
                       "summary.json holds the medians, not the steps: set DIAGNOSTICS.WINDOW in a new run")
    unknown = sorted(set(overrides) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise KeyError(f"unknown threshold(s) {', '.join(unknown)}; the verdict's thresholds are "
                       f"{', '.join(k for k in DEFAULT_THRESHOLDS if k != 'WINDOW')}")
    thresholds = {k: v for k, v in (summary.get("thresholds") or {}).items() if k in DEFAULT_THRESHOLDS}
    thresholds.update({k: float(v) for k, v in overrides.items()})
    out = {}
    for name, gate in summary["gates"].items():
        verdict, reasons = gate_verdict(gate, thresholds)
        out[name] = (gate.get("verdict"), verdict, reasons)
    return out


def write_rediagnosed(path, summary, verdicts, overrides=None):
    """Store rediagnose's `verdicts` ({gate: (old, new, reasons)}) in the summary at `path`: each
    gate's verdict and reasons replaced, the thresholds updated with `overrides`, and the verdicts
    they replace kept under summary["rediagnosed"]["previous"] (the first ones, when rediagnosed
    again). Written atomically: a crash leaves the old file whole. Raises OSError naming the path."""
    from gates.plumbing import write_json_atomic
    from .verdict import merged_thresholds

    from .verdict import loss_gain

    record = summary.setdefault("rediagnosed", {"previous": {}})
    for name, (old, new, reasons) in verdicts.items():
        record["previous"].setdefault(name, old)
        summary["gates"][name]["loss_gain"] = loss_gain(summary["gates"][name])[0]
        summary["gates"][name]["verdict"] = new
        summary["gates"][name]["reasons"] = reasons
    thresholds = dict(summary.get("thresholds") or {})
    thresholds.update({k: float(v) for k, v in (overrides or {}).items()})
    thresholds.update(merged_thresholds(thresholds))  # a threshold added since the run: its default, as used
    summary["thresholds"] = thresholds
    record["thresholds"] = summary["thresholds"]
    write_json_atomic(summary, path)
