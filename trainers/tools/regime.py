"""The regime map (`gatescope summarize --table regime`, `gatescope study --preset regime_map`):
for each task with an oracle, how much of the oracle's gap each gated method recovers, and whether
its gate routes by domain.

Per task (dataset folder label) and shots, from the runs of a grid with an `oracle` (grid.py):

- baseline: the runs of the baseline trainer (`--baseline`, a grid's `summary.baseline`; CoOp in
  the study), one prompt for every domain; when it has several cfgs there, the one without a
  variant or with variant `none`;
- oracle: the runs `<cfg>~oracle.<domain>` (one prompt per domain, trained and tested on that
  domain alone; the baseline trainer's when several trainers have them). Its accuracy on a seed
  is the mean of its per-domain accuracies, counted only for a seed that has a finished run on
  every domain any seed has (every domain of the controlled tasks has equally many test images,
  so the mean is the accuracy on the whole test set);
- per gated method and gate, on the seeds it shares with the baseline and the complete oracle:

      recovery = (acc_gated - acc_baseline) / (acc_oracle - acc_baseline)   (means over those seeds)

  0: no better than one prompt; 1: as good as being told the domain. It is computed only where
  the oracle beats the baseline by at least ORACLE_GAP_MIN points (the oracle check of
  tests/test_domain_benchmark.py); below that the task lacks the property the benchmark claims
  (the `same` control) or the ratio would be one of noise. Recovery credits anything that beats
  the baseline, including avoiding its collapse; the counterfactual isolates what the routing
  adds: `delta_acc` = accuracy minus accuracy with the gate replaced by its training-set mean;
- MI(choice; domain): the gate's choice on the test set against the domain, Miller-Madow
  corrected (summary.json `gates.<gate>.mi.domain.miller_madow`; its maximum is ln(#domains));
- probe: held-out accuracy of a linear probe from the gate's conditioning to the domain
  (`linear_probe.cond_domain.accuracy`): whether the signal a router needs is in its input.

MI, counterfactual, probe and verdicts are means / counts over the same seeds as the accuracy.
"""
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .layout import oracle_domain, split_cfg_label
from .summarize import _trained_gates, mean_std, verdict_counts
from .tables import Stat, Table

# The oracle check (tests/test_domain_benchmark.py): the oracle beats one prompt by more than this.
ORACLE_GAP_MIN = 5.0
NO_VARIANT = ("", "none")


@dataclass
class RegimeRow:
    """One gated method (and gate) on one task: the figures of the regime map (see module doc)."""

    dataset: str
    shots: int
    trainer: str
    cfg: str  # the config label without the variant (config@gate)
    variant: str
    gate: str
    seeds: list
    accuracy: Stat
    baseline: float = None
    oracle: float = None
    recovery: float = None
    mi_domain: float = None
    counterfactual: float = None
    probe_domain: float = None
    verdicts: list = field(default_factory=list)

    @property
    def gap(self):
        return None if self.oracle is None or self.baseline is None else self.oracle - self.baseline

    @property
    def setting(self):
        variant = f"~{self.variant}" if self.variant else ""
        return f"{self.trainer} {self.cfg}{variant} on {self.dataset}, {self.shots} shots"


def _place(key):
    return (key.protocol, key.phase, key.dataset, key.shots)


def oracle_accuracies(keys, groups, baseline=None):
    """{seed: oracle accuracy} of one task: the mean over domains of the oracle's per-domain runs,
    for the seeds that have every domain (see the module docstring). {} without oracle runs, or
    when several trainers/cfgs have them and none is the baseline's."""
    methods = defaultdict(dict)  # (trainer, config) -> {domain: {seed: accuracy}}
    for key in keys:
        domain = oracle_domain(key.cfg)
        if domain is not None:
            methods[(key.trainer, split_cfg_label(key.cfg).config)][domain] = {
                seed: run.accuracy for seed, run in groups[key].items()}
    if len(methods) > 1:
        methods = {m: d for m, d in methods.items() if m[0] == baseline}
    if len(methods) != 1:
        return {}
    [per_domain] = methods.values()
    seeds = set.intersection(*(set(by_seed) for by_seed in per_domain.values()))
    return {seed: float(np.mean([by_seed[seed] for by_seed in per_domain.values()])) for seed in sorted(seeds)}


def baseline_key(keys, baseline):
    """The baseline trainer's group among `keys` (not an oracle run), or None (see module doc)."""
    mine = [k for k in keys if k.trainer == baseline and oracle_domain(k.cfg) is None]
    if len(mine) > 1:
        mine = [k for k in mine if split_cfg_label(k.cfg).variant in NO_VARIANT]
    return mine[0] if len(mine) == 1 else None


def _mean_of(entries, *path):
    values = []
    for entry in entries:
        x = entry
        for name in path:
            x = x.get(name) if isinstance(x, dict) else None
        if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
            values.append(float(x))
    return float(np.mean(values)) if values else None


def regime_rows(groups, baseline):
    """[RegimeRow] of every gated method on every task that has oracle runs (see the module docstring)."""
    by_place = defaultdict(list)
    for key in groups:
        by_place[_place(key)].append(key)
    rows = []
    for (_, _, dataset, shots), keys in by_place.items():
        oracle = oracle_accuracies(keys, groups, baseline)
        if not oracle:
            continue
        base_key = baseline_key(keys, baseline)
        base = {s: run.accuracy for s, run in groups[base_key].items()} if base_key else {}
        for key in keys:
            if key == base_key or oracle_domain(key.cfg) is not None:
                continue
            label = split_cfg_label(key.cfg)
            common = sorted(set(groups[key]) & set(base) & set(oracle))
            seeds = common or sorted(groups[key])
            runs = [groups[key][s] for s in seeds]
            for gate, entries in sorted(_trained_gates(runs).items()):
                row = RegimeRow(dataset, shots, key.trainer, label.config + (f"@{label.gate}" if label.gate else ""),
                                label.variant, gate, seeds, Stat(*mean_std([r.accuracy for r in runs])))
                if common:
                    row.baseline = float(np.mean([base[s] for s in common]))
                    row.oracle = float(np.mean([oracle[s] for s in common]))
                    if row.gap >= ORACLE_GAP_MIN:
                        row.recovery = (row.accuracy.mean - row.baseline) / row.gap
                row.mi_domain = _mean_of(entries, "mi", "domain", "miller_madow")
                row.counterfactual = _mean_of(entries, "delta_acc")
                row.probe_domain = _mean_of(entries, "linear_probe", "cond_domain", "accuracy")
                row.verdicts = [e.get("verdict") for e in entries]
                rows.append(row)
    return rows


def sort_rows(rows, datasets=(), trainers=(), variants=()):
    """Rows in the grid's order of datasets, trainers and variants (others after, sorted)."""
    def index(order, value):
        return order.index(value) if value in order else len(order)

    return sorted(rows, key=lambda r: (index(datasets, r.dataset), r.dataset, r.shots, index(trainers, r.trainer),
                                       r.trainer, r.cfg, index(variants, r.variant), r.variant, r.gate))


def regime_table(rows, baseline, variant_header="variant"):
    """The regime map as one Table (see the module docstring for each column)."""
    table = Table("Regime map: how much of the oracle's gap each gated method recovers, and does it route?",
                  ["task", "shots", "trainer", "cfg", variant_header, "gate", "seeds", "accuracy",
                   baseline or "baseline", "oracle", "recovery", "MI(choice; domain)", "counterfactual Δ", "verdicts",
                   "probe(cond→domain)"],
                  note=(f"accuracy: mean ± std over the seeds the method shares with {baseline or 'the baseline'} and "
                        "the oracle (one prompt per domain, trained and tested on each alone; mean of its per-domain "
                        "accuracies); recovery = (accuracy - baseline) / (oracle - baseline), only where the oracle "
                        f"beats the baseline by >= {ORACLE_GAP_MIN:g} points; MI(choice; domain): nats, Miller-Madow "
                        "corrected, test set (max ln #domains); counterfactual Δ: accuracy minus accuracy with the "
                        "gate replaced by its training mean (points); probe: held-out accuracy (%) of a linear probe "
                        "from the gate's conditioning to the domain; means over the same seeds"))
    for r in rows:
        table.rows.append([r.dataset, r.shots, r.trainer, r.cfg, r.variant or None, r.gate, len(r.seeds), r.accuracy,
                           r.baseline, r.oracle, r.recovery, r.mi_domain, r.counterfactual,
                           verdict_counts(r.verdicts)[0], r.probe_domain])
    return table


def best_row(rows):
    """The gated setting that recovers most of the oracle's gap (ties: the larger MI), or None."""
    scored = [r for r in rows if r.recovery is not None]
    if not scored:
        return None
    return max(scored, key=lambda r: (r.recovery, r.mi_domain if r.mi_domain is not None else -math.inf))


def best_line(rows):
    """`best: <setting> recovers X.XX of the oracle gap, MI(choice; domain) Y.YY nats, counterfactual
    Z.ZZ points` for `best_row(rows)`, or a line saying why there is none."""
    row = best_row(rows)
    if row is None:
        return (f"best: none (no gated setting on a task whose oracle beats the baseline by >= {ORACLE_GAP_MIN:g} "
                "points on the same seeds)")

    def number(x):
        return "n/a" if x is None else f"{x:.2f}"
    return (f"best: {row.setting} recovers {row.recovery:.2f} of the oracle gap, MI(choice; domain) "
            f"{number(row.mi_domain)} nats, counterfactual {number(row.counterfactual)} points")


def plot_regime_map(rows, path):
    """A PNG of the map: one heat map per figure (recovery, MI(choice; domain), counterfactual Δ),
    tasks (and shots) across, methods down, each cell annotated with its value. Returns `path`,
    or None when there is nothing to draw."""
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(dict.fromkeys((r.dataset, r.shots) for r in rows))
    methods = list(dict.fromkeys((r.trainer, r.cfg, r.variant, r.gate) for r in rows))
    single_shots = len({shots for _, shots in columns}) == 1
    panels = [("recovery of the oracle gap", "recovery", "RdYlGn", (-0.5, 1.5)),
              ("MI(choice; domain), nats", "mi_domain", "viridis", (0.0, None)),
              ("counterfactual Δ, points", "counterfactual", "RdYlGn", None)]
    width = max(6.0, 2.0 + 0.8 * len(columns))
    height = len(panels) * (1.2 + 0.32 * len(methods))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, height), squeeze=False)
    for ax, (title, name, cmap, limits) in zip(axes[:, 0], panels):
        values = np.full((len(methods), len(columns)), np.nan)
        for r in rows:
            x = getattr(r, name)
            if x is not None:
                values[methods.index((r.trainer, r.cfg, r.variant, r.gate)), columns.index((r.dataset, r.shots))] = x
        finite = values[np.isfinite(values)]
        if limits is None:
            bound = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
            limits = (-bound, bound)
        elif limits[1] is None:
            limits = (limits[0], max(0.7, float(finite.max())) if finite.size else 0.7)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto")
        for i in range(len(methods)):
            for j in range(len(columns)):
                text = "-" if not np.isfinite(values[i, j]) else f"{values[i, j]:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([d if single_shots else f"{d}\n{k} shots" for d, k in columns], fontsize=7, rotation=30,
                           ha="right")
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels([f"{v or c}" + ("" if t.endswith("Gated") else f" ({t})") for t, c, v, _ in methods],
                           fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

