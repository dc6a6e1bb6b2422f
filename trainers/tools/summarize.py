"""`gatescope summarize DIR`: a folder of runs -> tables of accuracy over seeds and gate diagnoses.

Runs are grouped by (protocol, phase, dataset, trainer, cfg, shots), read from the folder layout
when it is a known one (see `layout`), else from each run's results.json / log. Per group:

- accuracy = mean ± std over seeds; std is the population std (numpy's default, ddof=0), as in
  CoOp's `parse_test_res.py`, so the numbers match what that script prints;
- base-to-new: a `train_base` run (test accuracy of the base classes) is paired with the
  `test_new` run of the same dataset, trainer, cfg, shots and seed (test accuracy of the new
  classes, evaluated from that model). base and new are mean ± std over the paired seeds and
  HM = 2 * base * new / (base + new) of the two means. The average row over datasets averages
  the per-dataset base and new means and takes HM of those two averages, as the published
  tables do (not the mean of the per-dataset HMs);
- other protocols: an average row over datasets when a method has more than one;
- delta vs parent (gated trainers only, parents in `PARENT_TRAINER`): the gated mean minus the
  parent's mean on the same protocol, dataset, shots and the seeds both have (HM for base-to-new,
  accuracy otherwise). The parent's cfg is the one of the same name (gate suffix `@g` removed),
  else the parent's only cfg there; with several and none of the same name, no delta is shown;
- gates (from `diagnostics/summary.json` of the runs that trained; an `--eval-only` run has no
  gradients to judge): per gate, the count of each verdict over runs and the median over runs of
  rho (gate/prompt gradient RMS ratio), input std and the counterfactual accuracy change of a
  constant gate (`delta_acc`).

Runs that failed or did not finish are listed with the reason, never silently dropped.
"""
import argparse
import os
import statistics
import sys
from collections import defaultdict, namedtuple

import numpy as np

from .layout import strip_gate
from .runs import find_runs
from .tables import FORMATS, Delta, Sci, Stat, Table, render

# The ungated method each gated trainer extends: its delta column compares with this one.
PARENT_TRAINER = {
    "CoOpGated": "CoOp",
    "CoCoOpGated": "CoCoOp",
    "MaPLeGated": "MaPLe",
    "AdaptiveMaPLe": "MaPLe",
    "AdaptiveBiDirMaPLe": "BiDirMaPLe",
}
VERDICTS = ("healthy", "imbalanced", "degraded", "collapsed")
TABLES = ("base2new", "accuracy", "gates", "problems")
STD_NOTE = "std over seeds: population std (ddof=0), as CoOp's parse_test_res.py"

GroupKey = namedtuple("GroupKey", "protocol phase dataset trainer cfg shots")
MethodKey = namedtuple("MethodKey", "trainer cfg shots")


def mean_std(values):
    """(mean, population std) of a list of numbers: std = sqrt(mean((x - mean)^2)), ddof=0."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std())


def harmonic_mean(base, new):
    """HM = 2 * base * new / (base + new); 0 when both are 0."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def group_runs(runs):
    """Finished runs by GroupKey, then by seed. A second finished run of the same key and seed
    (the same run copied elsewhere) is returned in `duplicates` instead of counting twice."""
    groups, duplicates = defaultdict(dict), []
    for run in runs:
        if run.status != "ok":
            continue
        key = GroupKey(run.protocol, run.phase, run.dataset, run.trainer, run.cfg, run.shots)
        if run.seed in groups[key]:
            duplicates.append((run, groups[key][run.seed]))
            continue
        groups[key][run.seed] = run
    return dict(groups), duplicates


def find_parent(key, candidates):
    """The parent method's key among `candidates` (GroupKeys or MethodKeys that share the
    protocol, phase, dataset and shots with `key`) for a gated `key`, by the rule in the module
    docstring; None for an ungated key or when there is no single parent to compare with."""
    parent = PARENT_TRAINER.get(key.trainer)
    if parent is None:
        return None
    mine = [k for k in candidates if k.trainer == parent]
    for name in (key.cfg, strip_gate(key.cfg)):
        same = [k for k in mine if k.cfg == name]
        if same:
            return same[0]
    return mine[0] if len(mine) == 1 else None


# ------------------------------------------------------------------ base-to-new
def pair_base_new(groups):
    """{(dataset, MethodKey): {seed: (base acc, new acc)}} and the runs left without a partner."""
    pairs, unpaired = defaultdict(dict), []
    for key, by_seed in groups.items():
        if key.protocol != "base2new" or key.phase != "train_base":
            continue
        partner = groups.get(key._replace(phase="test_new"), {})
        for seed, run in by_seed.items():
            if seed in partner:
                pairs[(key.dataset, MethodKey(key.trainer, key.cfg, key.shots))][seed] = (
                    run.accuracy, partner[seed].accuracy)
            else:
                unpaired.append((run, "train_base run has no finished test_new run (same dataset, "
                                      "trainer, cfg, shots, seed): run scripts/base2new_test.sh"))
    for key, by_seed in groups.items():
        if key.protocol == "base2new" and key.phase == "test_new":
            base = groups.get(key._replace(phase="train_base"), {})
            unpaired += [(run, "test_new run has no finished train_base run") for seed, run in by_seed.items()
                         if seed not in base]
    return dict(pairs), unpaired


def _base_new_means(by_seed, seeds):
    base = float(np.mean([by_seed[s][0] for s in seeds]))
    new = float(np.mean([by_seed[s][1] for s in seeds]))
    return base, new


def _hm_delta(mine, parent):
    """HM of `mine` minus HM of `parent` on the seeds both have, or None when they share none."""
    common = sorted(set(mine) & set(parent))
    if not common:
        return None
    return Delta(harmonic_mean(*_base_new_means(mine, common)) - harmonic_mean(*_base_new_means(parent, common)),
                 len(common), len(mine))


def base2new_table(pairs):
    """Per dataset and method: seeds, base, new, HM, delta HM vs parent; then average rows."""
    table = Table("Base-to-new generalisation (test accuracy %, mean ± std over seeds; HM of the means)",
                  ["dataset", "trainer", "cfg", "shots", "seeds", "base", "new", "HM", "Δ HM vs parent"],
                  note=STD_NOTE + "; the average row's HM is that of the averaged base and new.")
    by_dataset = defaultdict(dict)
    for (dataset, method), by_seed in pairs.items():
        by_dataset[dataset][method] = by_seed
    for dataset in sorted(by_dataset):
        methods = by_dataset[dataset]
        for method in sorted(methods):
            by_seed = methods[method]
            seeds = sorted(by_seed)
            base, new = mean_std([by_seed[s][0] for s in seeds]), mean_std([by_seed[s][1] for s in seeds])
            parent = _method_parent(method, methods)
            delta = _hm_delta(by_seed, methods[parent]) if parent else None
            table.rows.append([dataset, method.trainer, method.cfg, method.shots, len(seeds), Stat(*base),
                               Stat(*new), harmonic_mean(base[0], new[0]), delta])
    table.rows += _base2new_average_rows(by_dataset)
    return table


def _method_parent(method, methods):
    """The parent's MethodKey among the methods of one dataset (same shots), or None."""
    return find_parent(method, [m for m in methods if m.shots == method.shots])


def _base2new_average_rows(by_dataset):
    methods = sorted({m for per_dataset in by_dataset.values() for m in per_dataset})
    rows = []
    for method in methods:
        datasets = [d for d in sorted(by_dataset) if method in by_dataset[d]]
        if len(datasets) < 2:
            continue
        means = [_base_new_means(by_dataset[d][method], sorted(by_dataset[d][method])) for d in datasets]
        base, new = float(np.mean([m[0] for m in means])), float(np.mean([m[1] for m in means]))
        rows.append([f"Average ({len(datasets)} datasets)", method.trainer, method.cfg, method.shots, None,
                     Stat(base), Stat(new), harmonic_mean(base, new),
                     _average_hm_delta(method, datasets, by_dataset)])
    return rows


def _average_hm_delta(method, datasets, by_dataset):
    """HM of the averages over the datasets where both methods share seeds, gated minus parent."""
    mine_means, parent_means = [], []
    for dataset in datasets:
        parent = _method_parent(method, by_dataset[dataset])
        if parent is None:
            continue
        mine, theirs = by_dataset[dataset][method], by_dataset[dataset][parent]
        common = sorted(set(mine) & set(theirs))
        if common:
            mine_means.append(_base_new_means(mine, common))
            parent_means.append(_base_new_means(theirs, common))
    if not mine_means:
        return None

    def hm_of_average(means):
        return harmonic_mean(float(np.mean([m[0] for m in means])), float(np.mean([m[1] for m in means])))
    return Delta(hm_of_average(mine_means) - hm_of_average(parent_means), len(mine_means), len(datasets), "datasets")


# ------------------------------------------------------------------ other protocols
def _phase_label(protocol, phase):
    return f"{protocol}/{phase}" if phase else protocol


def _accuracy_delta(key, groups):
    candidates = [k for k in groups if (k.protocol, k.phase, k.dataset, k.shots)
                  == (key.protocol, key.phase, key.dataset, key.shots)]
    parent = find_parent(key, candidates)
    if parent is None:
        return None
    mine, theirs = groups[key], groups[parent]
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    value = np.mean([mine[s].accuracy for s in common]) - np.mean([theirs[s].accuracy for s in common])
    return Delta(float(value), len(common), len(mine))


def accuracy_table(groups):
    """Per protocol, dataset and method: seeds, accuracy mean ± std, delta vs parent; averages."""
    table = Table("Accuracy (test accuracy %, mean ± std over seeds)",
                  ["protocol", "dataset", "trainer", "cfg", "shots", "seeds", "accuracy", "Δ vs parent"],
                  note=STD_NOTE + "; an average row averages the per-dataset means.")
    keys = sorted(k for k in groups if k.protocol != "base2new")
    for key in keys:
        accuracies = [run.accuracy for _, run in sorted(groups[key].items())]
        table.rows.append([_phase_label(key.protocol, key.phase), key.dataset, key.trainer, key.cfg, key.shots,
                           len(accuracies), Stat(*mean_std(accuracies)), _accuracy_delta(key, groups)])
    by_method = defaultdict(list)
    for key in keys:
        by_method[(key.protocol, key.phase, MethodKey(key.trainer, key.cfg, key.shots))].append(key)
    for (protocol, phase, method), members in sorted(by_method.items()):
        if len(members) < 2:
            continue
        means = [np.mean([run.accuracy for run in groups[k].values()]) for k in members]
        deltas = [_accuracy_delta(k, groups) for k in members]
        known = [d.value for d in deltas if d is not None]
        delta = Delta(float(np.mean(known)), len(known), len(members), "datasets") if known else None
        table.rows.append([_phase_label(protocol, phase), f"Average ({len(members)} datasets)", method.trainer,
                           method.cfg, method.shots, None, Stat(float(np.mean(means))), delta])
    return table


# ------------------------------------------------------------------ gates and problems
def gates_table(runs):
    """Per gate of each method: runs, the count of each verdict, medians over runs (training runs only)."""
    table = Table("Gates (diagnostics/summary.json; medians over runs)",
                  ["protocol", "dataset", "trainer", "cfg", "shots", "gate", "runs", *VERDICTS,
                   "median rho", "median input std", "median Δ acc (constant gate)"])
    per_gate = defaultdict(list)
    for run in runs:
        if run.status != "ok" or run.eval_only:
            continue
        for gate, stats in run.gates.items():
            # summary.json names a gate by its place (e.g. "length"); its entry names the gate used
            label = f"{gate} ({stats['gate']})" if isinstance(stats, dict) and stats.get("gate") else gate
            key = (run.protocol, run.phase, run.dataset, run.trainer, run.cfg, run.shots, label)
            per_gate[key].append(stats if isinstance(stats, dict) else {})
    for (protocol, phase, dataset, trainer, cfg, shots, gate), entries in sorted(per_gate.items()):
        counts = [sum(1 for e in entries if e.get("verdict") == v) for v in VERDICTS]
        table.rows.append([_phase_label(protocol, phase), dataset, trainer, cfg, shots, gate, len(entries), *counts,
                           _median(entries, "rho_median", Sci), _median(entries, "input_std", Sci),
                           _median(entries, "delta_acc", float)])
    return table


def _median(entries, name, kind):
    values = [float(e[name]) for e in entries if isinstance(e.get(name), (int, float))]
    return kind(statistics.median(values)) if values else None


def problems_table(runs, unpaired, duplicates):
    """Every run that cannot count: failed, unfinished, without its base-to-new partner, duplicated."""
    table = Table("Runs not counted (failed, incomplete, unpaired or duplicated)", ["status", "run", "reason"])
    for run in runs:
        if run.status != "ok":
            table.rows.append([run.status, display_path(run.path), run.reason])
    for run, reason in unpaired:
        table.rows.append(["unpaired", display_path(run.path), reason])
    for run, kept in duplicates:
        table.rows.append(["duplicate", display_path(run.path),
                           f"same run and seed as {display_path(kept.path)}, which is counted"])
    return table


def display_path(path):
    """A run's path relative to the current folder when it lies below it (shorter tables)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


# ------------------------------------------------------------------ assembly and command line
def summarize_runs(runs, tables=TABLES):
    """The tables (in TABLES order) for a list of `Run`s; empty tables are left out."""
    groups, duplicates = group_runs(runs)
    pairs, unpaired = pair_base_new(groups)
    built = {
        "base2new": lambda: base2new_table(pairs),
        "accuracy": lambda: accuracy_table(groups),
        "gates": lambda: gates_table(runs),
        "problems": lambda: problems_table(runs, unpaired, duplicates),
    }
    return [table for name in TABLES if name in tables for table in [built[name]()] if table.rows]


def summarize(paths, fmt="plain", digits=2, tables=TABLES):
    """Read every run under `paths` and return the rendered tables as one string."""
    runs = [run for path in paths for run in find_runs(path)]
    if not runs:
        raise FileNotFoundError(f"no runs under {', '.join(paths)} (a run folder holds results.json or log.txt)")
    rendered = [render(table, fmt, digits) for table in summarize_runs(runs, tables)]
    return "\n\n".join(rendered) if rendered else "no table has rows (see --table)"


def build_parser(prog="gatescope summarize"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="folders of runs (searched recursively)")
    parser.add_argument("--format", default="plain", choices=FORMATS,
                        help="plain text (tabulate's 'simple'), GitHub markdown, LaTeX, or CSV")
    parser.add_argument("--table", action="append", choices=TABLES,
                        help=f"print only this table (repeatable; default all: {', '.join(TABLES)})")
    parser.add_argument("--digits", type=int, default=2, help="decimals of accuracies (default 2)")
    return parser


def summarize_main(argv=None, prog="gatescope summarize"):
    args = build_parser(prog).parse_args(argv)
    try:
        print(summarize(args.dirs, args.format, args.digits, tuple(args.table or TABLES)))
    except FileNotFoundError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(summarize_main())
