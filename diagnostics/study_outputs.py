"""The study's per-epoch metrics file, for its users' scripts (DIAGNOSTICS.STUDY_METRICS_FILE).

The study's AdaptiveMaPLe writes `<OUTPUT_DIR>/visualizations/training_metrics.json`, its
AdaptiveBiDirMaPLe and ImprovedAdaptiveBiDirMaPLe `<OUTPUT_DIR>/visualizations_adaptive_bidir/
training_metrics_adaptive_bidir.json`: a dict of per-epoch lists, rewritten after every epoch.
This module writes the same file with the same keys from the diagnostics' records:

  epochs            the epoch (0-based)
  train_loss        mean over the epoch's steps of the total loss
  cls_loss          ... of the cross-entropy ("ce")
  reg_loss          ... of the regularisers (every term but ce, the cycle loss and the remedies':
                    the study's sparsity + depth smoothness)
  cycle_loss        ... of the cycle loss, unweighted (the BiDir trainers)
  effective_length  ... of sum_i sigma(length gate i) after the step (soft: the training count)
  avg/max/min_depth_prob  ... of the mean / max / min depth gate value after the step
  val_acc           validation accuracy (%) after the epoch
  length_gates, depth_probs  AdaptiveMaPLe: ... of the mean length gate value of the step's
                    forward and of the mean depth gate value after the step; the study's BiDir
                    trainers declare them and never fill them: [] there too
With a fixed length (depth_only) effective_length is FIXED_N_CTX, and with a fixed depth
(length_only) the depth figures are those of the study's fixed mask over PROMPT_DEPTH_MAX - 1
layers, the first FIXED_PROMPT_DEPTH - 1 of them on. A value that cannot be measured is null (the
study writes NaN, which is not JSON). The step figures are the logged steps' (every step with
DIAGNOSTICS.LOG_EVERY 1, the default).
"""
import os

from . import metrics, report

_BIDIR = ("visualizations_adaptive_bidir", "training_metrics_adaptive_bidir.json")
# trainer -> (folder, file name, its key node, whether the file has cycle_loss, whether its
# length_gates / depth_probs lists are filled)
METRICS_FILES = {
    "AdaptiveMaPLe": ("visualizations", "training_metrics.json", "ADAPTIVE_MAPLE", False, True),
    "AdaptiveBiDirMaPLe": (*_BIDIR, "ADAPTIVE_BIDIR_MAPLE", True, False),
    "ImprovedAdaptiveBiDirMaPLe": (*_BIDIR, "ADAPTIVE_BIDIR_MAPLE", True, False),
}


def check_metrics_file(context):
    """ValueError when DIAGNOSTICS.STUDY_METRICS_FILE is set for a trainer the study wrote no such file for."""
    cfg = context.cfg
    if cfg.DIAGNOSTICS.get("STUDY_METRICS_FILE", False) and cfg.TRAINER.NAME not in METRICS_FILES:
        raise ValueError(f"DIAGNOSTICS.STUDY_METRICS_FILE: the study's code writes its per-epoch metrics file for "
                         f"{', '.join(METRICS_FILES)} only, not for {cfg.TRAINER.NAME}; the same figures are in "
                         "diagnostics/epochs.jsonl (losses, train_loss, val_acc). Set DIAGNOSTICS.STUDY_METRICS_FILE "
                         "False")


def metrics_file_path(context):
    folder, name, *_ = METRICS_FILES[context.cfg.TRAINER.NAME]
    return os.path.join(context.output_dir or ".", folder, name)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fixed_depth_mask(node):
    n, on = int(node.PROMPT_DEPTH_MAX) - 1, int(node.FIXED_PROMPT_DEPTH) - 1
    return [1.0] * min(on, n) + [0.0] * max(n - on, 0)


def epoch_row(epoch, steps, node, has_cycle, fills_gate_lists):
    """The study's figures of one epoch from its record (recorder.after_epoch) and its step records."""
    losses = epoch.get("losses") or {}
    row = {"train_loss": epoch.get("train_loss"), "cls_loss": losses.get("ce"),
           "reg_loss": sum(v for k, v in losses.items() if k not in ("ce", "cycle") and not k.startswith("remedy_"))
           if losses else None}
    if has_cycle:
        weight = float((epoch.get("loss_weights") or {}).get("cycle", 0.0) or 0.0)
        row["cycle_loss"] = losses.get("cycle", 0.0) / weight if weight > 0 and losses else None
    row["val_acc"] = epoch.get("val_acc")

    def figures(gate, key):
        return [s["gates"].get(gate, {}).get("study", {}).get(key) for s in steps]
    if any(s["gates"].get("length") for s in steps):
        row["effective_length"] = _mean(figures("length", "d_eff"))
    else:
        row["effective_length"] = float(node.FIXED_N_CTX)
    if any(s["gates"].get("depth") for s in steps):
        depth = {k: _mean(figures("depth", f"{k}_p")) for k in ("mean", "max", "min")}
    else:
        mask = _fixed_depth_mask(node)
        depth = {"mean": _mean(mask), "max": max(mask) if mask else None, "min": min(mask) if mask else None}
    row.update(avg_depth_prob=depth["mean"], max_depth_prob=depth["max"], min_depth_prob=depth["min"])
    if fills_gate_lists:
        row["length_gates"] = _mean(s["gates"].get("length", {}).get("mean") for s in steps)
        row["depth_probs"] = depth["mean"]
    return row


def write_metrics_file(context, epochs, steps):
    """Rewrite the study's metrics file from every epoch so far (a resumed run's included), when
    DIAGNOSTICS.STUDY_METRICS_FILE is set."""
    cfg = context.cfg
    if not cfg.DIAGNOSTICS.get("STUDY_METRICS_FILE", False):
        return
    _, _, node_name, has_cycle, fills = METRICS_FILES[cfg.TRAINER.NAME]
    node = cfg.TRAINER[node_name]
    keys = ["train_loss", "cls_loss", "reg_loss"] + (["cycle_loss"] if has_cycle else []) + [
        "val_acc", "effective_length", "avg_depth_prob", "max_depth_prob", "min_depth_prob"]
    out = {k: [] for k in keys + ["length_gates", "depth_probs", "epochs"]}
    for epoch in epochs:
        row = epoch_row(epoch, [s for s in steps if s["epoch"] == epoch["epoch"]], node, has_cycle, fills)
        for k in keys:
            out[k].append(metrics.finite_or_none(row[k]))
        if fills:
            out["length_gates"].append(metrics.finite_or_none(row["length_gates"]))
            out["depth_probs"].append(metrics.finite_or_none(row["depth_probs"]))
        out["epochs"].append(epoch["epoch"])
    path = metrics_file_path(context)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    report.write_json(path, out)
    return path
