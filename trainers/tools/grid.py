"""A study grid (GRID.yaml) -> the runs it asks for, each a chain of `train.py` steps.

    name: demo                 # optional; the sweep's records go to <output>/sweeps/<name>
    protocol: base2new         # fewshot | base2new | xd | dg, or a list of them
    datasets: [gatescope_demo] # dataset config names (configs/datasets/<name>.yaml) or YAML paths
    shots: [16]                # default [16]
    seeds: [1, 2, 3]
    trainers:                  # a list of names (all use the top-level `configs`), or a mapping:
      CoOp: {configs: [vit_b16_ep50]}
      CoOpGated: {configs: [vit_b16_ep50], gates: [mlp, sigmoid], seeds: [1], opts: [GATE.LR_MULT, 10]}
    configs: [demo]            # default configs of every trainer (names or YAML paths)
    opts: [OPTIM.MAX_EPOCH, 5] # KEY VALUE pairs for every run (a trainer's own opts come after)
    output: output             # default ./output
    data: /data                # DATA root; default $DATA, else ./data
    xd: {source: imagenet, targets: [caltech101, ...]}   # defaults: the published 10 targets
    dg: {source: imagenet, targets: [imagenetv2, ...]}   # defaults: V2, Sketch, A, R
    resources: {num_cpus: 1, num_gpus: 0, timeout_s: null}  # per run (a Ray task)
    env: {HF_HUB_OFFLINE: "1"}                              # extra environment of every run

Relative paths are relative to the folder the sweep is started in (as CoOp's scripts run from
the repository root). A config name `x` of trainer T is `configs/trainers/T/x.yaml` there, else
in the configs folder next to the installed `trainers` package.

The runs, in the layout of `layout` (the same as `scripts/*.sh`):
- fewshot: one step, training on all classes with DATASET.NUM_SHOTS K;
- base2new: train on the base classes, then `--eval-only` on the new classes from that model;
- xd and dg: train on the source (all classes, K shots) once per trainer/cfg/gate/seed/shots,
  then `--eval-only` on each target; an xd and a dg run of the same training share it.
A gate `g` adds `GATE.NAME g` and names the cfg folder `<cfg>@g`. Protocol keys come last in
the options, so a grid's opts cannot silently change what a protocol means.
"""
import os
from dataclasses import dataclass, field

import yaml

from .layout import DG_TARGETS, PHASES, PROTOCOLS, XD_SOURCE, XD_TARGETS, cfg_label, run_dir

PACKAGE_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "configs")
GRID_KEYS = {"name", "protocol", "datasets", "shots", "seeds", "trainers", "configs", "opts", "output",
             "data", "xd", "dg", "resources", "env"}
TRAINER_KEYS = {"configs", "gates", "seeds", "opts"}
RESOURCE_KEYS = {"num_cpus", "num_gpus", "timeout_s"}


class GridError(ValueError):
    """A GRID.yaml that cannot be run as written."""


@dataclass
class Step:
    """One `train.py` call: `flags`, then `--load-epoch N` for an eval-only step (N: the last
    checkpoint of `model_dir`, known only once that training ran), then the KEY VALUE `opts`."""

    phase: str
    dataset: str
    output_dir: str
    flags: list
    opts: list
    model_dir: str = ""

    def argv(self, load_epoch=None):
        """The train.py arguments; an eval-only step needs the epoch of the checkpoint to load."""
        if self.model_dir and load_epoch is None:
            raise ValueError(f"the step writing {self.output_dir} evaluates {self.model_dir}: give its load_epoch")
        epoch = ["--load-epoch", str(load_epoch)] if self.model_dir else []
        return self.flags + epoch + self.opts


@dataclass
class Cell:
    """One run of the grid: its steps run in order in one task; finished steps are skipped."""

    id: str
    protocol: str
    trainer: str
    cfg: str
    seed: int
    shots: int
    steps: list = field(default_factory=list)


@dataclass
class Grid:
    name: str
    output: str
    cells: list
    resources: dict
    env: dict


def _as_list(value, what):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int)):
        return [value]
    raise GridError(f"{what} must be a value or a list, found {value!r}")


def _check_keys(mapping, allowed, where):
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise GridError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def _opts(value, where):
    opts = [str(v) for v in _as_list(value, where)]
    if len(opts) % 2:
        raise GridError(f"{where} must be KEY VALUE pairs, found an odd number of items: {opts}")
    return opts


def resolve_config(kind, name, trainer=None):
    """(label, absolute path) of a config given by name or path; an error names where it looked."""
    name = str(name)
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        path = os.path.abspath(name)
        if not os.path.isfile(path):
            raise GridError(f"{kind} config file {path} does not exist")
        return os.path.splitext(os.path.basename(path))[0], path
    sub = os.path.join("trainers", trainer) if kind == "trainer" else "datasets"
    tried = []
    for base in (os.path.abspath("configs"), PACKAGE_CONFIGS):
        path = os.path.join(base, sub, f"{name}.yaml")
        if os.path.isfile(path):
            return name, path
        tried.append(path)
    raise GridError(f"no {kind} config named {name!r}: tried {' and '.join(tried)}; "
                    "give a name from that folder or a path to a YAML file")


def _trainer_entries(spec):
    """[(trainer, {configs, gates, seeds, opts})] from the list or mapping form."""
    trainers = spec.get("trainers")
    if not trainers:
        raise GridError("the grid lists no trainers (key `trainers`: a list of names or a mapping)")
    if isinstance(trainers, dict):
        entries = []
        for name, entry in trainers.items():
            entry = entry or {}
            if not isinstance(entry, dict):
                raise GridError(f"trainers.{name} must be a mapping with {sorted(TRAINER_KEYS)}, found {entry!r}")
            _check_keys(entry, TRAINER_KEYS, f"trainers.{name}")
            entries.append((str(name), entry))
        return entries
    return [(str(name), {}) for name in _as_list(trainers, "trainers")]


def _base_argv(data, seed, trainer, cfg_path, dataset_path, output_dir):
    return ["--root", data, "--seed", str(seed), "--trainer", trainer, "--dataset-config-file", dataset_path,
            "--config-file", cfg_path, "--output-dir", output_dir]


def load_grid(path):
    """Read GRID.yaml and expand it into cells (see the module docstring)."""
    try:
        with open(path, encoding="utf-8") as f:
            spec = yaml.safe_load(f) or {}
    except OSError as e:
        raise GridError(f"cannot read the grid file {path}: {e}") from e
    if not isinstance(spec, dict):
        raise GridError(f"{path} must hold a YAML mapping, found {type(spec).__name__}")
    spec.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return expand_grid(spec)


def expand_grid(spec):
    """The Grid of a parsed GRID.yaml mapping."""
    _check_keys(spec, GRID_KEYS, "the grid")
    protocols = _as_list(spec.get("protocol", "fewshot"), "protocol")
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise GridError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    output = os.path.abspath(str(spec.get("output", "output")))
    data = os.path.abspath(str(spec.get("data") or os.environ.get("DATA") or "data"))
    shots = [int(k) for k in _as_list(spec.get("shots", 16), "shots")]
    seeds = [int(s) for s in _as_list(spec.get("seeds"), "seeds")]
    common_opts = _opts(spec.get("opts"), "opts")
    resources = dict(spec.get("resources") or {})
    _check_keys(resources, RESOURCE_KEYS, "resources")
    env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    datasets = [resolve_config("dataset", d) for d in _as_list(spec.get("datasets"), "datasets")]
    if {"fewshot", "base2new"} & set(protocols) and not datasets:
        raise GridError("protocols fewshot and base2new need `datasets`")

    cells = {}
    for trainer, entry in _trainer_entries(spec):
        configs = _as_list(entry.get("configs", spec.get("configs")), f"trainers.{trainer}.configs")
        if not configs:
            raise GridError(f"trainer {trainer} has no configs (give `configs` at the top or under the trainer)")
        gates = [str(g) for g in _as_list(entry.get("gates"), f"trainers.{trainer}.gates")] or [""]
        trainer_seeds = [int(s) for s in _as_list(entry.get("seeds"), f"trainers.{trainer}.seeds")] or seeds
        if not trainer_seeds:
            raise GridError(f"no seeds for trainer {trainer} (give `seeds` at the top or under the trainer)")
        opts = common_opts + _opts(entry.get("opts"), f"trainers.{trainer}.opts")
        for cfg_name in configs:
            cfg, cfg_path = resolve_config("trainer", cfg_name, trainer)
            for gate in gates:
                run_opts = opts + (["GATE.NAME", gate] if gate else [])
                method = dict(trainer=trainer, cfg=cfg_label(cfg, gate), cfg_path=cfg_path, opts=run_opts)
                for k in shots:
                    for seed in trainer_seeds:
                        for protocol in protocols:
                            _add_cells(cells, spec, protocol, method, datasets, k, seed, output, data)
    return Grid(name=str(spec["name"]), output=output, cells=list(cells.values()), resources=resources, env=env)


def _add_cells(cells, spec, protocol, method, datasets, shots, seed, output, data):
    trainer, cfg, cfg_path, opts = method["trainer"], method["cfg"], method["cfg_path"], method["opts"]

    def where(phase, dataset):
        return run_dir(output, protocol, phase, dataset, shots, trainer, cfg, seed)

    def new_cell(first_dir):
        cell_id = os.path.relpath(first_dir, output)
        return cells.setdefault(cell_id, Cell(cell_id, protocol, trainer, cfg, seed, shots))

    if protocol in ("fewshot", "base2new"):
        for dataset, dataset_path in datasets:
            train_phase = PHASES[protocol][0]
            train_dir = where(train_phase, dataset)
            cell = new_cell(train_dir)
            subsample = ["DATASET.SUBSAMPLE_CLASSES", "base"] if protocol == "base2new" else []
            cell.steps.append(Step(train_phase, dataset, train_dir,
                                   _base_argv(data, seed, trainer, cfg_path, dataset_path, train_dir),
                                   opts + ["DATASET.NUM_SHOTS", str(shots)] + subsample))
            if protocol == "base2new":
                test_dir = where("test_new", dataset)
                cell.steps.append(Step("test_new", dataset, test_dir,
                                       _base_argv(data, seed, trainer, cfg_path, dataset_path, test_dir)
                                       + ["--eval-only", "--model-dir", train_dir],
                                       opts + ["DATASET.NUM_SHOTS", str(shots), "DATASET.SUBSAMPLE_CLASSES", "new"],
                                       model_dir=train_dir))
        return

    # xd and dg: one training on the source, shared by both protocols, then one test per target.
    settings = spec.get(protocol) or {}
    _check_keys(settings, {"source", "targets"}, protocol)
    source = str(settings.get("source", XD_SOURCE))
    targets = _as_list(settings.get("targets"), f"{protocol}.targets") or list(
        XD_TARGETS if protocol == "xd" else DG_TARGETS)
    source_name, source_path = resolve_config("dataset", source)
    train_dir = run_dir(output, "xd", "train", source_name, shots, trainer, cfg, seed)
    cell = new_cell(train_dir)
    if not cell.steps:
        cell.steps.append(Step("train", source_name, train_dir,
                               _base_argv(data, seed, trainer, cfg_path, source_path, train_dir),
                               opts + ["DATASET.NUM_SHOTS", str(shots)]))
    for target in targets:
        target_name, target_path = resolve_config("dataset", target)
        test_dir = where("test", target_name)
        if any(step.output_dir == test_dir for step in cell.steps):
            continue
        cell.steps.append(Step("test", target_name, test_dir,
                               _base_argv(data, seed, trainer, cfg_path, target_path, test_dir)
                               + ["--eval-only", "--model-dir", train_dir], list(opts), model_dir=train_dir))
