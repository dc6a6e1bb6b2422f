"""`gatescope summarize DIR`: a folder of runs -> tables of accuracy over seeds and gate diagnoses.

Runs are grouped by (protocol, phase, dataset, trainer, cfg, shots), read from the folder layout
when it is a known one (see `layout`), else from each run's results.json / log. Per group:

- accuracy = mean ± std over seeds; std is the population std (numpy's default, ddof=0), as in
  CoOp's `parse_test_res.py`, so the numbers match what that script prints;
- base-to-new: a `train_base` run (test accuracy of the base classes) is paired with the
  `test_new` run of the same dataset, trainer, cfg, shots and seed (test accuracy of the new
  classes, evaluated from that model). A partner that is not among the runs read (only one
  phase's folder was given) is looked for in the sibling phase folder (`train_base` <->
  `test_new` in the run's path) before the run is called unpaired. base and new are mean ± std
  over the paired seeds and HM = 2 * base * new / (base + new) of the two means. The average row
  over datasets averages the per-dataset base and new means and takes HM of those two averages,
  as the published tables do (not the mean of the per-dataset HMs). A phase whose runs have no
  partner at all is reported on its own in the accuracy table (`base2new/train_base` or
  `base2new/test_new`), as `parse_test_res.py` reports a folder;
- other protocols: an average row over datasets when a method has more than one;
- delta vs parent: the mean of a trainer minus the mean of its parent on the same protocol,
  dataset, shots and the seeds both have (HM for base-to-new, accuracy otherwise). A trainer's
  parent is the ungated trainer it extends: its class attribute `PARENT_TRAINER`, which every
  run records in results.json (`parent_trainer`); runs written before that was recorded (and
  runs of the original CoOp code) fall back to the `PARENT_TRAINER` of the installed trainer of
  that name (built-in or plugin; a trainer that is not installed gets no delta). The parent's
  cfg is the one of the same name (gate `@g` and variant `~v` suffixes removed step by step),
  else the parent's only cfg there; with several and none of the same name, no delta is shown;
- variants (`--table variants`; what `gatescope study` prints): one table per dataset, a row per
  method and variant (`<cfg>~<variant>` folders of a grid) and gate, with accuracy, the delta
  vs a baseline trainer (`--baseline`, else vs parent) and the gate columns below;
- regime (`--table regime`; what `gatescope study --preset regime_map` prints): per task with an
  oracle (`<cfg>~oracle.<domain>` runs of a grid's `oracle`), each gated method's accuracy beside
  the baseline's and the oracle's, the share of the oracle's gap it recovers, MI(choice; domain),
  the counterfactual, verdicts and the domain probe; then a `best: ...` line (see `regime`);
- gates (from `diagnostics/summary.json` of the runs that trained; an `--eval-only` run has no
  gradients to judge): per gate, the count of each verdict over runs (whatever verdicts the
  diagnostics write), whether the seeds agree ("no" flags a cell whose seeds got different
  verdicts), and the median over runs of rho (gate/prompt gradient RMS ratio), input std and the
  counterfactual accuracy change of a constant gate (`delta_acc`);
- non-finite training: a run that ended with non-finite parameters (results.json
  `finite_end_state: false`) is not averaged; a run that skipped non-finite steps
  (`nonfinite_skips` > 0, TRAIN.NONFINITE skip) but ended finite is averaged. Either way the row
  gets a `flags` column saying which seeds (the column is there only when some row has a flag)
  and the problems table lists the run.

Runs that failed, did not finish or cannot be read (a damaged results.json or summary.json, a
field of the wrong type) are listed in the problems table with the reason, never silently
dropped, and never stop the other runs from being summarised.
"""
import argparse
import os
import statistics
import sys
from collections import Counter, defaultdict, namedtuple
from dataclasses import dataclass

import numpy as np

from .layout import cfg_label, phase_sibling, split_cfg_label
from .runs import find_runs, read_runs
from .tables import FORMATS, Delta, Sci, Stat, Table, drop_empty_columns, render

TABLES = ("base2new", "accuracy", "variants", "regime", "gates", "problems")
# What a plain `gatescope summarize` prints; `variants` repeats the accuracy table's numbers.
DEFAULT_TABLES = ("base2new", "accuracy", "gates", "problems")
STD_NOTE = "std over seeds: population std (ddof=0), as CoOp's parse_test_res.py"
FLAGS = "flags"

GroupKey = namedtuple("GroupKey", "protocol phase dataset trainer cfg shots")
MethodKey = namedtuple("MethodKey", "trainer cfg shots")


@dataclass
class SummaryOptions:
    """Which tables to build and how (a grid's `summary` section holds the same keys)."""

    tables: tuple = DEFAULT_TABLES
    baseline: str = None  # the variants table's delta is against this trainer (default: each one's parent)
    title: str = "Methods and variants on {dataset} ({protocol}, {shots} shots)"  # variants tables' title
    variant: str = "variant"  # header of the variants table's variant column (the study: "remedy")
    trainers: tuple = ()  # order of the trainers in the variants table (default: sorted)
    variants: tuple = ()  # order of the variants (default: sorted)
    datasets: tuple = ()  # order of the datasets in the regime table (default: sorted)

    @classmethod
    def from_grid(cls, grid):
        summary = dict(grid.summary)
        options = cls(trainers=tuple(grid.trainers), variants=tuple(grid.variants), datasets=tuple(grid.datasets))
        if "tables" in summary:
            options.tables = tuple(summary["tables"])
        for name in ("baseline", "title", "variant"):
            if summary.get(name):
                setattr(options, name, str(summary[name]))
        return options


def mean_std(values):
    """(mean, population std) of a list of numbers: std = sqrt(mean((x - mean)^2)), ddof=0."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std())


def harmonic_mean(base, new):
    """HM = 2 * base * new / (base + new); 0 when both are 0."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def group_key(run):
    return GroupKey(run.protocol, run.phase, run.dataset, run.trainer, run.cfg, run.shots)


def group_runs(runs):
    """Finished runs by GroupKey, then by seed. A second finished run of the same key and seed
    (the same run copied elsewhere) is returned in `duplicates` instead of counting twice."""
    groups, duplicates = defaultdict(dict), []
    for run in runs:
        if run.status != "ok":
            continue
        key = group_key(run)
        if run.seed in groups[key]:
            duplicates.append((run, groups[key][run.seed]))
            continue
        groups[key][run.seed] = run
    return dict(groups), duplicates


# ------------------------------------------------------------------ parents
def installed_parents(names):
    """{trainer: its class's PARENT_TRAINER} for the installed trainers among `names` (built-in,
    then plugin ones); names not installed are left out. Only asked for runs whose results.json
    does not record the parent: it imports the trainers (and, for unknown names, the plugins)."""
    names = {n for n in names if n and n != "?"}
    if not names:
        return {}
    import trainers  # noqa: F401  (registers the built-in trainers)
    from trainers.engine import TRAINER_REGISTRY

    def known():
        return set(TRAINER_REGISTRY.registered_names())

    if names - known():
        try:
            from trainers.plugins import get_plugins
            get_plugins().register_trainers(TRAINER_REGISTRY)
        except Exception:  # noqa: BLE001 - a broken plugin costs its delta column, not the summary
            pass
    return {n: getattr(TRAINER_REGISTRY.get(n), "PARENT_TRAINER", None) for n in names & known()}


def trainer_parents(runs):
    """{trainer: parent trainer or None}: what the runs recorded, else `installed_parents`."""
    parents = {}
    for run in runs:
        if run.parent_known and run.trainer not in parents:
            parents[run.trainer] = run.parent
    missing = {run.trainer for run in runs} - set(parents)
    parents.update(installed_parents(missing))
    return parents


def find_parent(key, candidates, parent):
    """The key of trainer `parent` among `candidates` (GroupKeys or MethodKeys that share the
    protocol, phase, dataset and shots with `key`): the same cfg label, then with the gate, then
    also the variant removed; else the parent's only cfg there; None when there is none or no
    single one to compare with."""
    if not parent:
        return None
    mine = [k for k in candidates if k.trainer == parent]
    label = split_cfg_label(key.cfg)
    for name in (key.cfg, cfg_label(label.config, "", label.variant), label.config):
        same = [k for k in mine if k.cfg == name]
        if same:
            return same[0]
    return mine[0] if len(mine) == 1 else None


# ------------------------------------------------------------------ flags (non-finite training)
def group_flags(runs):
    """{GroupKey: flag text} for groups with runs that skipped non-finite steps (counted) or ended
    non-finite (not averaged)."""
    skipped, excluded = defaultdict(list), defaultdict(list)
    for run in runs:
        if run.status == "ok" and run.nonfinite_skips:
            skipped[group_key(run)].append(f"{run.seed} ({run.nonfinite_skips})")
        elif run.status == "non-finite":
            excluded[group_key(run)].append(str(run.seed))
    flags = {}
    for key in set(skipped) | set(excluded):
        parts = []
        if skipped[key]:
            parts.append(f"skipped non-finite steps: {_seeds(skipped[key])}")
        if excluded[key]:
            parts.append(f"non-finite end, not averaged: {_seeds(excluded[key])}")
        flags[key] = "; ".join(parts)
    return flags


def _seeds(items):
    return ("seed " if len(items) == 1 else "seeds ") + ", ".join(sorted(items))


def _join_flags(*texts):
    return "; ".join(t for t in texts if t) or None


# ------------------------------------------------------------------ base-to-new
def pair_base_new(groups, runs=()):
    """{(dataset, MethodKey): {seed: (base acc, new acc)}}, the runs left without a partner
    (run, reason), and the GroupKeys with at least one pair.

    A partner not among `groups` is read from the sibling phase folder (see the module docstring);
    `runs` are the runs already read, so a folder is never read twice."""
    pairs, unpaired, paired_keys = defaultdict(dict), [], set()
    known = {os.path.abspath(run.path): run for run in runs}

    def sibling(run, phase):
        """(partner run or None, why there is none)."""
        path = phase_sibling(run.path, phase)
        if path is None:
            return None, f"no {phase} run of the same dataset, trainer, cfg, shots and seed among the runs read"
        partner = known.get(path)
        if partner is None:
            if not os.path.isdir(path):
                return None, f"no {phase} run at {display_path(path)}"
            partner = known[path] = read_runs([path])[0]
        if partner.status != "ok":
            return None, f"its {phase} run at {display_path(path)} is {partner.status}: {partner.reason}"
        return partner, ""

    for key, by_seed in groups.items():
        if key.protocol != "base2new" or key.phase != "train_base":
            continue
        partners = groups.get(key._replace(phase="test_new"), {})
        for seed, run in by_seed.items():
            partner, why = (partners[seed], "") if seed in partners else sibling(run, "test_new")
            if partner is None:
                unpaired.append((run, f"train_base run without a finished test_new run ({why}): "
                                      "run scripts/base2new_test.sh"))
                continue
            pairs[(key.dataset, MethodKey(key.trainer, key.cfg, key.shots))][seed] = (run.accuracy, partner.accuracy)
            paired_keys |= {key, key._replace(phase="test_new")}
    for key, by_seed in groups.items():
        if key.protocol != "base2new" or key.phase != "test_new":
            continue
        bases = groups.get(key._replace(phase="train_base"), {})
        for seed, run in by_seed.items():
            if seed in bases:
                continue
            partner, why = sibling(run, "train_base")
            if partner is None:
                unpaired.append((run, f"test_new run without a finished train_base run ({why})"))
                continue
            pairs[(key.dataset, MethodKey(key.trainer, key.cfg, key.shots))][seed] = (partner.accuracy, run.accuracy)
            paired_keys |= {key, key._replace(phase="train_base")}
    return dict(pairs), unpaired, paired_keys


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


def base2new_table(pairs, parents, flags=None):
    """Per dataset and method: seeds, base, new, HM, delta HM vs parent; then average rows."""
    flags = flags or {}
    table = Table("Base-to-new generalisation (test accuracy %, mean ± std over seeds; HM of the means)",
                  ["dataset", "trainer", "cfg", "shots", "seeds", "base", "new", "HM", "Δ HM vs parent", FLAGS],
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
            parent = _method_parent(method, methods, parents)
            delta = _hm_delta(by_seed, methods[parent]) if parent else None
            key = GroupKey("base2new", "train_base", dataset, method.trainer, method.cfg, method.shots)
            table.rows.append([dataset, method.trainer, method.cfg, method.shots, len(seeds), Stat(*base),
                               Stat(*new), harmonic_mean(base[0], new[0]), delta,
                               _join_flags(flags.get(key), flags.get(key._replace(phase="test_new")))])
    table.rows += _base2new_average_rows(by_dataset, parents)
    return drop_empty_columns(table, [FLAGS])


def _method_parent(method, methods, parents):
    """The parent's MethodKey among the methods of one dataset (same shots), or None."""
    return find_parent(method, [m for m in methods if m.shots == method.shots], parents.get(method.trainer))


def _base2new_average_rows(by_dataset, parents):
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
                     _average_hm_delta(method, datasets, by_dataset, parents), None])
    return rows


def _average_hm_delta(method, datasets, by_dataset, parents):
    """HM of the averages over the datasets where both methods share seeds, gated minus parent."""
    mine_means, parent_means = [], []
    for dataset in datasets:
        parent = _method_parent(method, by_dataset[dataset], parents)
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


# ------------------------------------------------------------------ accuracy (other protocols, lone phases)
def _phase_label(protocol, phase):
    return f"{protocol}/{phase}" if phase else protocol


def _accuracy_delta(key, groups, parent):
    """`key`'s mean accuracy minus trainer `parent`'s on the same protocol, phase, dataset, shots and
    the seeds both have; None without such a parent."""
    candidates = [k for k in groups if (k.protocol, k.phase, k.dataset, k.shots)
                  == (key.protocol, key.phase, key.dataset, key.shots)]
    other = find_parent(key, candidates, parent)
    if other is None:
        return None
    mine, theirs = groups[key], groups[other]
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    value = np.mean([mine[s].accuracy for s in common]) - np.mean([theirs[s].accuracy for s in common])
    return Delta(float(value), len(common), len(mine))


def accuracy_table(groups, parents, flags=None, paired_keys=()):
    """Per protocol, dataset and method: seeds, accuracy mean ± std, delta vs parent; averages.
    Base-to-new groups appear only when their phase has no partner at all (`paired_keys`)."""
    flags = flags or {}
    table = Table("Accuracy (test accuracy %, mean ± std over seeds)",
                  ["protocol", "dataset", "trainer", "cfg", "shots", "seeds", "accuracy", "Δ vs parent", FLAGS],
                  note=STD_NOTE + "; an average row averages the per-dataset means.")
    keys = sorted(k for k in groups if k.protocol != "base2new" or k not in paired_keys)
    for key in keys:
        accuracies = [run.accuracy for _, run in sorted(groups[key].items())]
        table.rows.append([_phase_label(key.protocol, key.phase), key.dataset, key.trainer, key.cfg, key.shots,
                           len(accuracies), Stat(*mean_std(accuracies)),
                           _accuracy_delta(key, groups, parents.get(key.trainer)), flags.get(key)])
    by_method = defaultdict(list)
    for key in keys:
        by_method[(key.protocol, key.phase, MethodKey(key.trainer, key.cfg, key.shots))].append(key)
    for (protocol, phase, method), members in sorted(by_method.items()):
        if len(members) < 2:
            continue
        means = [np.mean([run.accuracy for run in groups[k].values()]) for k in members]
        deltas = [_accuracy_delta(k, groups, parents.get(k.trainer)) for k in members]
        known = [d.value for d in deltas if d is not None]
        delta = Delta(float(np.mean(known)), len(known), len(members), "datasets") if known else None
        table.rows.append([_phase_label(protocol, phase), f"Average ({len(members)} datasets)", method.trainer,
                           method.cfg, method.shots, None, Stat(float(np.mean(means))), delta, None])
    return drop_empty_columns(table, [FLAGS])


# ------------------------------------------------------------------ gates
def verdict_counts(verdicts):
    """("collapsed 2, healthy 1", agree) for the verdicts of one gate over runs: each verdict
    string found (none is assumed; a missing one counts as "no verdict"), most frequent first;
    `agree` is "yes" / "no" over two or more runs, None for one."""
    counts = Counter(v if isinstance(v, str) and v else "no verdict" for v in verdicts)
    text = ", ".join(f"{v} {n}" for v, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    agree = None if len(verdicts) < 2 else ("yes" if len(counts) == 1 else "no")
    return text or None, agree


def _gate_label(place, stats):
    """summary.json names a gate by its place (e.g. "length"); its entry names the gate used."""
    return f"{place} ({stats['gate']})" if stats.get("gate") else place


def gate_cells(entries):
    """[verdicts, seeds agree, median rho, median input std, median Δ acc] of one gate over runs."""
    verdicts, agree = verdict_counts([e.get("verdict") for e in entries])
    return [verdicts, agree, _median(entries, "rho_median", Sci), _median(entries, "input_std", Sci),
            _median(entries, "delta_acc", float)]


GATE_HEADERS = ["verdicts", "seeds agree", "median rho", "median input std", "median Δ acc (constant gate)"]
GATE_NOTE = ("verdicts: count over runs (seeds agree: no = the seeds got different verdicts); rho = "
             "RMS(gate grad) / RMS(prompt grad); Δ acc = accuracy minus accuracy with the gate replaced by "
             "its training mean (points)")


def _trained_gates(runs):
    """{label: [entry per run]} of the runs that trained (an eval-only run has no gradients)."""
    per_gate = defaultdict(list)
    for run in runs:
        if run.eval_only:
            continue
        for place, stats in run.gates.items():
            per_gate[_gate_label(place, stats)].append(stats)
    return per_gate


def gates_table(runs):
    """Per gate of each method: runs, verdict counts, agreement, medians over runs (training runs only)."""
    table = Table("Gates (diagnostics/summary.json; medians over runs)",
                  ["protocol", "dataset", "trainer", "cfg", "shots", "gate", "runs", *GATE_HEADERS], note=GATE_NOTE)
    per_key = defaultdict(list)
    for run in runs:
        if run.status == "ok":
            per_key[group_key(run)].append(run)
    for key in sorted(per_key):
        for gate, entries in sorted(_trained_gates(per_key[key]).items()):
            table.rows.append([_phase_label(key.protocol, key.phase), key.dataset, key.trainer, key.cfg, key.shots,
                               gate, len(entries), *gate_cells(entries)])
    return table


def _median(entries, name, kind):
    values = [float(e[name]) for e in entries if isinstance(e.get(name), (int, float))
              and not isinstance(e.get(name), bool)]
    return kind(statistics.median(values)) if values else None


# ------------------------------------------------------------------ variants (the study's view)
def variants_tables(groups, parents, flags, options):
    """One table per (protocol, phase, dataset, shots): a row per method, variant and gate with
    seeds, accuracy, delta vs the baseline trainer (or the parent), and the gate columns."""
    baseline = options.baseline
    by_place = defaultdict(list)
    for key in groups:
        by_place[(key.protocol, key.phase, key.dataset, key.shots)].append(key)

    def order(key):
        label = split_cfg_label(key.cfg)
        trainer = (options.trainers.index(key.trainer) if key.trainer in options.trainers
                   else len(options.trainers))
        variant = (options.variants.index(label.variant) if label.variant in options.variants
                   else len(options.variants))
        return (key.trainer != baseline, trainer, key.trainer, label.config, label.gate, variant, label.variant)

    tables = []
    for (protocol, phase, dataset, shots), keys in sorted(by_place.items()):
        title = options.title.format(dataset=dataset, protocol=_phase_label(protocol, phase), shots=shots)
        table = Table(title, ["trainer", "cfg", options.variant, "seeds", "accuracy",
                              f"Δ vs {baseline}" if baseline else "Δ vs parent", "gate", *GATE_HEADERS, FLAGS],
                      note=STD_NOTE + "; Δ over the seeds both have; " + GATE_NOTE)
        for key in sorted(keys, key=order):
            label = split_cfg_label(key.cfg)
            accuracies = [run.accuracy for _, run in sorted(groups[key].items())]
            reference = baseline if baseline and key.trainer != baseline else (
                None if baseline else parents.get(key.trainer))
            cells = [key.trainer, cfg_label(label.config, label.gate), label.variant or None,
                     len(accuracies), Stat(*mean_std(accuracies)), _accuracy_delta(key, groups, reference)]
            gates = _trained_gates(groups[key].values())
            if not gates:
                table.rows.append(cells + [None] * (1 + len(GATE_HEADERS)) + [flags.get(key)])
            for gate, entries in sorted(gates.items()):
                table.rows.append(cells + [gate, *gate_cells(entries), flags.get(key)])
        tables.append(drop_empty_columns(table, [FLAGS]))
    return tables


# ------------------------------------------------------------------ problems
def problems_table(runs, unpaired, duplicates):
    """Every run that cannot count (failed, incomplete, damaged, non-finite, unpaired, duplicated)
    and every counted run with a warning (skipped non-finite steps, an unreadable summary.json)."""
    table = Table("Runs not counted, and warnings about counted runs", ["status", "run", "reason"])
    for run in runs:
        if run.status != "ok":
            table.rows.append([run.status, display_path(run.path), run.reason])
    for run, reason in unpaired:
        table.rows.append(["unpaired", display_path(run.path), reason])
    for run, kept in duplicates:
        table.rows.append(["duplicate", display_path(run.path),
                           f"same run and seed as {display_path(kept.path)}, which is counted"])
    for run in runs:
        table.rows += [["warning", display_path(run.path), note] for note in run.notes]
    return table


def display_path(path):
    """A run's path relative to the current folder when it lies below it (shorter tables)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


# ------------------------------------------------------------------ assembly and command line
def summarize_runs(runs, tables=None, options=None):
    """The tables (in TABLES order) for a list of `Run`s; empty tables are left out. `options`
    (a SummaryOptions) chooses the tables unless `tables` is given."""
    options = options or SummaryOptions()
    tables = tuple(tables or options.tables)
    groups, duplicates = group_runs(runs)
    pairs, unpaired, paired_keys = pair_base_new(groups, runs)
    parents = trainer_parents(runs)
    flags = group_flags(runs)
    built = {
        "base2new": lambda: [base2new_table(pairs, parents, flags)],
        "accuracy": lambda: [accuracy_table(groups, parents, flags, paired_keys)],
        "variants": lambda: variants_tables(groups, parents, flags, options),
        "regime": lambda: [regime_table_of(groups, options)],
        "gates": lambda: [gates_table(runs)],
        "problems": lambda: [problems_table(runs, unpaired, duplicates)],
    }
    return [table for name in TABLES if name in tables for table in built[name]() if table.rows]


def regime_rows_of(groups, options):
    """The regime map's rows (trainers/tools/regime.py) in the order `options` give."""
    from .regime import regime_rows, sort_rows  # regime builds on this module's groups and gate columns

    return sort_rows(regime_rows(groups, options.baseline), options.datasets, options.trainers, options.variants)


def regime_table_of(groups, options):
    from .regime import regime_table

    return regime_table(regime_rows_of(groups, options), options.baseline, options.variant)


def best_setting_line(runs, options):
    """The regime map's `best: ...` line for these runs (regime.best_line)."""
    from .regime import best_line

    return best_line(regime_rows_of(group_runs(runs)[0], options))


def summarize(paths, fmt="plain", digits=2, tables=None, options=None):
    """Read every run under `paths` and return the rendered tables as one string; with the regime
    table, its `best: ...` line last."""
    options = options or SummaryOptions()
    runs = [run for path in paths for run in find_runs(path)]
    if not runs:
        raise FileNotFoundError(f"no runs under {', '.join(paths)} (a run folder holds results.json or log.txt)")
    rendered = [render(table, fmt, digits) for table in summarize_runs(runs, tables, options)]
    if "regime" in (tables or options.tables):
        rendered.append(best_setting_line(runs, options))
    return "\n\n".join(rendered) if rendered else "no table has rows (see --table)"


def build_parser(prog="gatescope summarize"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="folders of runs (searched recursively)")
    parser.add_argument("--format", default="plain", choices=FORMATS,
                        help="plain text (tabulate's 'simple'), GitHub markdown, LaTeX, or CSV")
    parser.add_argument("--table", action="append", choices=TABLES,
                        help=f"print only this table (repeatable; default: {', '.join(DEFAULT_TABLES)})")
    parser.add_argument("--baseline", metavar="TRAINER",
                        help="the variants table's Δ column compares with this trainer (default: each one's parent); "
                             "the regime table's recovery is measured from it (required there)")
    parser.add_argument("--digits", type=int, default=2, help="decimals of accuracies (default 2)")
    return parser


def summarize_main(argv=None, prog="gatescope summarize"):
    args = build_parser(prog).parse_args(argv)
    options = SummaryOptions(tables=tuple(args.table or DEFAULT_TABLES), baseline=args.baseline)
    if "regime" in options.tables and not args.baseline:
        print(f"{prog}: the regime table measures recovery from a baseline trainer (one prompt for every "
              "domain): give it, e.g. --baseline CoOp", file=sys.stderr)
        return 2
    try:
        print(summarize(args.dirs, args.format, args.digits, options=options))
    except FileNotFoundError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(summarize_main())
