"""The diagnostics' outputs: JSON lines, summary.json, TensorBoard scalars, plots, the log table."""
from tabulate import tabulate

# The JSON-lines helpers are gatescope's shared ones (one policy for a torn last line); the
# recorder reaches them as report.read_jsonl, report.append_jsonl, ...
from gates.plumbing import append_jsonl, json_safe, read_jsonl, write_json_atomic, write_jsonl  # noqa: F401


def write_json(path, obj):
    write_json_atomic(json_safe(obj), path)


def write_scalars(trainer, epoch_record, epoch_steps):
    """TensorBoard scalars under diag/: per-step group RMS and rho, per-epoch gate figures."""
    write = trainer.write_scalar
    for s in epoch_steps:
        for group, stats in s.get("groups", {}).items():
            if stats.get("rms") is not None:
                write(f"diag/grad_rms/{group}", stats["rms"], s["step"])
            if stats.get("update_rel") is not None:
                write(f"diag/update_rel/{group}", stats["update_rel"], s["step"])
        for name, g in s.get("gates", {}).items():
            for key in ("rho", "input_std", "saturation", "dL_dg_rms", "slope"):
                if g.get(key) is not None:
                    write(f"diag/{name}/{key}", g[key], s["step"])
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


def summary_table(summary):
    """The per-gate diagnosis as a tabulate table (printed at the end of log.txt)."""
    rows = []
    for name, g in summary["gates"].items():
        rows.append([name, g["gate"], g["verdict"], _fmt(g["rho_median"]), _fmt(g["magnitude_gap"], ".2f"),
                     _fmt(g["input_std"]), _fmt(g["saturation"], ".2f"), _fmt(g["effective_options"]),
                     _fmt(g["acc"], ".2f"), _fmt(g["acc_constant_gate"], ".2f"), _fmt(g["delta_acc"], "+.2f")])
    table = tabulate(rows, headers=["gate", "name", "verdict", "rho median", "log10 gap", "input std",
                                    "saturation", "eff. options", "acc", "acc const.", "delta"])
    reasons = "\n".join(f"  {name}: {r}" for name, g in summary["gates"].items() for r in g["reasons"])
    return f"** Gate diagnostics **\n{table}\n{reasons}" if reasons else f"** Gate diagnostics **\n{table}"
