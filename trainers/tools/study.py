"""`gatescope study`: when does gating work? The controlled benchmark, run and tabulated.

Grid: {homogeneous, multidomain} x {CoOp, CoOpGated, CoCoOpGated, MaPLeGated} x {no remedy,
each remedy that applies to the trainer's gate} x seeds, on the demo backbone (see
trainers/data/domain_tasks.py for the two tasks). Each run is an ordinary train.py run with its
own folder `<output>/<task>/<trainer>/<remedy>/seed<S>` (log.txt, results.json, diagnostics/),
run in this process one after the other; a finished run is skipped, a failing one is recorded
and the rest go on. The tables: accuracy (mean ± std over seeds), the difference from CoOp on the
same task and seeds, the gate's verdicts, median rho, input std and counterfactual delta.
"""
import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass

from .tables import FORMATS, Delta, Sci, Stat, Table, render

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "configs", "trainers")
TASKS = {"homogeneous": "GatescopeHomogeneous", "multidomain": "GatescopeMultiDomain"}
PARENT = "CoOp"

# How each trainer is gated in the study. CoOpGated selects between two prompts per image (a
# softmax over a pool): the domain-aware choice the multi-domain task rewards. The others keep
# their demo gate: an input-conditioned mlp (sigmoid) on CoCoOp's meta-net shift and on MaPLe's depth.
TRAINER_OPTS = {
    "CoOp": (),
    "CoOpGated": ("GATE.NAME", "softmax", "GATE.TARGET", "pool", "GATE.POOL_SIZE", 2),
    "CoCoOpGated": (),
    "MaPLeGated": (),
}

# Remedy -> (config options, the gate activations it applies to: None = any gate).
REMEDIES = {
    "none": ((), None),
    "gradnorm": (("REMEDY.GRADNORM.ENABLED", True), None),
    "equalize_grad": (("GATE.EQUALIZE_GRAD", True), ("sigmoid",)),
    "entropy_sharpen": (("REMEDY.ENTROPY.WEIGHT", 0.01, "REMEDY.ENTROPY.DIRECTION", "sharpen"), None),
    "entropy_flatten": (("REMEDY.ENTROPY.WEIGHT", 0.01, "REMEDY.ENTROPY.DIRECTION", "flatten"), None),
    "zloss": (("REMEDY.ZLOSS.WEIGHT", 0.01), None),
    "balance": (("REMEDY.BALANCE.WEIGHT", 0.01), ("softmax",)),
    "temperature": (("REMEDY.TEMPERATURE.ENABLED", True), ("softmax",)),
    "warmup_fix_gate": (("REMEDY.WARMUP.EPOCHS", 2, "REMEDY.WARMUP.MODE", "fix_gate"), None),
    "init_center": (("REMEDY.INIT.ENABLED", True), None),
    "freeze_early": (("REMEDY.FREEZE.AFTER_EPOCH", 1), None),
    "explicit_reg": (("REMEDY.EXPLICIT_REG.WEIGHT_DECAY", 0.01), None),
}
GATE_ACTIVATION = {"CoOpGated": "softmax", "CoCoOpGated": "sigmoid", "MaPLeGated": "sigmoid"}

QUICK = dict(seeds=(1,), remedies=("none", "gradnorm"), opts=("OPTIM.MAX_EPOCH", 2, "DATASET.NUM_SHOTS", 4))
DEFAULT = dict(seeds=(1, 2, 3), remedies=tuple(REMEDIES), opts=())


@dataclass
class StudyRun:
    task: str
    trainer: str
    remedy: str
    seed: int
    output_dir: str
    opts: tuple


def plan(output, seeds, remedies, extra_opts=()):
    """Every run of the grid (remedies that do not apply to a trainer's gate are left out)."""
    runs = []
    for task, dataset in TASKS.items():
        for trainer, trainer_opts in TRAINER_OPTS.items():
            for remedy in remedies:
                if remedy not in REMEDIES:
                    raise ValueError(f"unknown remedy {remedy!r}; available: {', '.join(REMEDIES)}")
                remedy_opts, applies_to = REMEDIES[remedy]
                if trainer == PARENT and remedy != "none":
                    continue  # no gate, nothing to remedy
                if applies_to is not None and GATE_ACTIVATION.get(trainer) not in applies_to:
                    continue
                for seed in seeds:
                    out = os.path.join(output, task, trainer, remedy, f"seed{seed}")
                    opts = ("DATASET.NAME", dataset) + trainer_opts + remedy_opts + tuple(extra_opts)
                    runs.append(StudyRun(task, trainer, remedy, seed, out, opts))
    return runs


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def finished(run):
    record = read_json(os.path.join(run.output_dir, "results.json"))
    return bool(record and "test" in record.get("results", {}) and record.get("epoch", 0) >= record.get("max_epoch", 1))


@contextlib.contextmanager
def quiet_console():
    """The run's log goes to its log.txt only (setup_logger tees whatever stdout is now)."""
    saved = sys.stdout, sys.stderr
    with open(os.devnull, "w") as devnull:
        sys.stdout = sys.stderr = devnull
        try:
            yield
        finally:
            current = sys.stdout
            sys.stdout, sys.stderr = saved
            close = getattr(current, "close", None)
            if close is not None and current is not devnull:
                close()


def execute(run, data_root):
    """Train and test one run in this process; returns None or the error text."""
    from trainers.cli import build_train_parser, run_training

    config = os.path.join(REPO_CONFIGS, run.trainer, "demo.yaml")
    args = build_train_parser().parse_args(
        ["--trainer", run.trainer, "--config-file", config, "--root", data_root, "--output-dir", run.output_dir,
         "--seed", str(run.seed), *map(str, run.opts)])
    try:
        with quiet_console():
            run_training(args)
    except Exception:  # a failing run is recorded; the grid goes on
        return traceback.format_exc(limit=5)
    return None


def run_study(runs, data_root, progress=print):
    failures = {}
    for i, run in enumerate(runs, 1):
        label = f"{run.task}/{run.trainer}/{run.remedy}/seed{run.seed}"
        if finished(run):
            progress(f"[{i}/{len(runs)}] {label}: done before, skipped")
            continue
        start = time.time()
        error = execute(run, data_root)
        if error:
            failures[label] = error
            progress(f"[{i}/{len(runs)}] {label}: FAILED ({error.strip().splitlines()[-1]})")
        else:
            progress(f"[{i}/{len(runs)}] {label}: {time.time() - start:.1f} s")
    return failures


# ----------------------------------------------------------------------------------- tables
def _mean_std(values):
    n = len(values)
    mean = sum(values) / n
    return Stat(mean, (sum((v - mean) ** 2 for v in values) / n) ** 0.5)


def _median(values):
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def collect(runs):
    """{(task, trainer, remedy): {seed: (accuracy, first gate's summary or None)}}."""
    cells = {}
    for run in runs:
        record = read_json(os.path.join(run.output_dir, "results.json"))
        if not record or "test" not in record.get("results", {}):
            continue
        summary = read_json(os.path.join(run.output_dir, "diagnostics", "summary.json"))
        gate = next(iter(summary["gates"].values()), None) if summary and summary.get("gates") else None
        cells.setdefault((run.task, run.trainer, run.remedy), {})[run.seed] = (
            record["results"]["test"]["accuracy"], gate)
    return cells


def study_tables(runs):
    cells = collect(runs)
    tables = []
    for task in TASKS:
        table = Table(f"Study: {task} task", ["trainer", "remedy", "accuracy", "Δ vs CoOp", "verdicts",
                                               "rho median", "input std", "counterfactual Δ"],
                      note="mean ± std over seeds (population std); Δ vs CoOp over the seeds both have; "
                           "rho = RMS(gate grad) / RMS(prompt grad); counterfactual Δ = acc - acc with the gate "
                           "replaced by its training mean (points)")
        parent = cells.get((task, PARENT, "none"), {})
        for (t, trainer, remedy), by_seed in cells.items():
            if t != task:
                continue
            accs = [acc for acc, _ in by_seed.values()]
            shared = [s for s in by_seed if s in parent]
            delta = None
            if trainer != PARENT and shared:
                delta = Delta(sum(by_seed[s][0] - parent[s][0] for s in shared) / len(shared), len(shared),
                              len(by_seed))
            gates = [g for _, g in by_seed.values() if g]
            verdicts = ", ".join(f"{v} {n}" for v, n in Counter(g["verdict"] for g in gates).most_common())
            rho = _median([g.get("rho_median") for g in gates])
            table.rows.append([trainer, remedy, _mean_std(accs), delta, verdicts or None,
                               Sci(rho) if rho is not None else None,
                               Sci(_median([g.get("input_std") for g in gates])) if gates else None,
                               _median([g.get("delta_acc") for g in gates])])
        tables.append(table)
    return tables


def build_parser(prog="gatescope study"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="output/study", help="folder of the study's runs")
    parser.add_argument("--root", default="data", help="data root (the tasks are generated there)")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 2 epochs, 4 shots, remedies none and gradnorm (for CI)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 1 2 3)")
    parser.add_argument("--remedies", nargs="+", help=f"subset of: {', '.join(REMEDIES)}")
    parser.add_argument("--format", default="plain", choices=FORMATS)
    parser.add_argument("--tables-only", action="store_true", help="print the tables of the runs already there")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs added to every run")
    return parser


def study_main(argv=None, prog="gatescope study"):
    args = build_parser(prog).parse_args(argv)
    preset = QUICK if args.quick else DEFAULT
    seeds = tuple(args.seeds or preset["seeds"])
    remedies = tuple(args.remedies or preset["remedies"])
    runs = plan(args.output, seeds, remedies, tuple(preset["opts"]) + tuple(args.opts or ()))
    failures = {}
    if not args.tables_only:
        print(f"gatescope study: {len(runs)} runs in {args.output}")
        failures = run_study(runs, args.root)
    for table in study_tables(runs):
        print()
        print(render(table, args.format))
    if failures:
        print(f"\n{len(failures)} run(s) failed:")
        for label, error in failures.items():
            print(f"  {label}: {error.strip().splitlines()[-1]}")
        return 1
    return 0
