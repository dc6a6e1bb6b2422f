"""The results file: `<output>/results.json`, a built-in plugin listening to after_test.

`gatescope summarize` reads it. It is rewritten atomically after every evaluation (the latest
evaluation of each split is kept under "results"), so a killed run leaves the last complete file.
Top-level keys say what the numbers are worth:

- `nonfinite_skips` (int): training steps skipped for NaN/Inf values (TRAIN.NONFINITE skip);
- `stopped` (str, only while it holds): the run stopped after this file was written (the error in
  one line); a sweep does not count it as finished, and resuming it clears the mark;
- `finite_end_state` (bool): every learnable tensor was finite when the latest evaluation ran.
  A run whose weights went non-finite stops with a NonFiniteError, so this is false only for a
  state that came from elsewhere (e.g. evaluating a damaged checkpoint): its accuracy is not a
  result.

An `--eval-only` run writes `results.json` in its own --output-dir. Given the folder of a
training run (one that holds that run's `config.yaml` or training results), it writes
`results_eval.json` there instead, so a training run's record is never replaced by an evaluation.
"""
import json
import os

import torch

from gates import hookimpl
from gates.plumbing import write_json_atomic

RESULTS_FILE = "results.json"
EVAL_RESULTS_FILE = "results_eval.json"
RUN_CONFIG_FILE = "config.yaml"  # what a training run writes in its folder (engine/run_folder.py)


def finite_state(param_groups):
    """True when every tensor of the optimizer's parameter groups is finite (one host sync)."""
    flags = [torch.isfinite(p.detach()).all() for group in param_groups for p in group["params"]]
    return bool(torch.stack(flags).all()) if flags else True


def results_record(context, previous, split, results):
    """`previous` (the file's record, or {}) updated with the run's identity and this evaluation."""
    cfg = context.cfg
    record = dict(previous)
    record.update({
        "trainer": cfg.TRAINER.NAME, "dataset": cfg.DATASET.NAME, "seed": cfg.SEED,
        "backbone": cfg.MODEL.BACKBONE.NAME, "num_shots": cfg.DATASET.NUM_SHOTS,
        "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES, "output_dir": context.output_dir,
        "epoch": context.epoch + 1, "max_epoch": cfg.OPTIM.MAX_EPOCH, "eval_only": context.eval_only,
        "parent_trainer": context.parent_trainer,
        "nonfinite_skips": int(getattr(context, "nonfinite_skips", 0)), "finite_end_state": finite_state(context.param_groups),
    })
    record.setdefault("results", {})[split] = {k: float(v) for k, v in results.items()}
    record.pop("stopped", None)  # a new evaluation: the stop on record (if any) was resumed past
    return record


def _holds_training_record(output_dir):
    """True when `output_dir` is a training run's folder: its config.yaml, or a results.json
    that is not an evaluation's."""
    if os.path.isfile(os.path.join(output_dir, RUN_CONFIG_FILE)):
        return True
    try:
        with open(os.path.join(output_dir, RESULTS_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return os.path.lexists(os.path.join(output_dir, RESULTS_FILE))  # unreadable: not ours to replace
    return not (isinstance(record, dict) and record.get("eval_only") is True)


def results_path(context):
    """Where this run's record goes (see the module docstring)."""
    if context.eval_only and _holds_training_record(context.output_dir):
        return os.path.join(context.output_dir, EVAL_RESULTS_FILE)
    return os.path.join(context.output_dir, RESULTS_FILE)


@hookimpl
def after_test(context, split, results):
    if not context.output_dir:
        return
    path = results_path(context)
    if path.endswith(EVAL_RESULTS_FILE):
        print(f'Evaluation results written to "{path}" (this folder holds a training run, whose '
              f"{RESULTS_FILE} is kept as it is)")
    previous = {}
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = {}  # a torn file from an older writer: rebuilt below, never trusted
        if not isinstance(previous, dict):
            previous = {}
    write_json_atomic(results_record(context, previous, split, results), path)


@hookimpl
def on_abort(context, error):
    """A run stopped after its results were written (e.g. a plugin failing in after_test, after
    this one): the file says so under "stopped", so a sweep does not count the run as finished
    and runs the same command again, which resumes it (the next evaluation clears the mark)."""
    if not context.output_dir:
        return
    path = results_path(context)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return  # nothing written yet, or not readable: nothing to mark
    if isinstance(record, dict):
        record["stopped"] = f"{type(error).__name__}: {error}"[:500]
        write_json_atomic(record, path)
