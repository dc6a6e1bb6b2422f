"""A study grid (GRID.yaml) -> the runs it asks for, each a chain of `train.py` steps.

    name: demo                 # optional; the sweep's records go to <output>/sweeps/<name>
    protocol: base2new         # fewshot | base2new | xd | dg, or a list of them
    datasets: [gatescope_demo] # dataset config names (configs/datasets/<name>.yaml) or YAML paths,
                               # or a mapping {folder label: name or path, or an entry (below)}
      # an entry: {config: gatescope_graded,            # the dataset config (name or path)
      #            opts: [DATASET.DOMAIN_TASK.STRENGTH, 0.5],   # KEY VALUE pairs for its runs
      #            domains: [tint0, tint1],             # its domains, for the oracle (below)
      #            shots: [2, 16], seeds: [1, 2],       # instead of the grid's
      #            variants: [none, fast]}              # only these of the grid's variants run on it
    oracle:                    # per dataset with `domains`: the domain-told upper bound, one run per
      {trainer: CoOp, config: demo, opts: []}  # domain trained and tested on it alone (fewshot only)
    shots: [16]                # default [16]
    seeds: [1, 2, 3]
    trainers:                  # a list of names (all use the top-level `configs`), or a mapping:
      CoOp: {configs: [vit_b16_ep50]}
      CoOpGated: {configs: [vit_b16_ep50], gates: [mlp, sigmoid], seeds: [1], opts: [GATE.LR_MULT, 10],
                  variants: [none, gradnorm]}
    configs: [demo]            # default configs of every trainer (names or YAML paths)
    opts: [OPTIM.MAX_EPOCH, 5] # KEY VALUE pairs for every run (a trainer's own opts come after)
    variants:                  # named sets of KEY VALUE pairs (e.g. remedies); each trainer runs
      none: []                 # the ones it lists (default: all), each in a folder <cfg>~<variant>
      gradnorm: [REMEDY.GRADNORM.ENABLED, True]
    output: output             # default ./output
    data: /data                # DATA root; default $DATA, else ./data; "" leaves --root empty, so
                               # generated datasets go to $GATESCOPE_CACHE/datasets
    xd: {source: imagenet, targets: [caltech101, ...]}   # defaults: the published 10 targets
    dg: {source: imagenet, targets: [imagenetv2, ...]}   # defaults: V2, Sketch, A, R
    resources: {num_cpus: 1, num_gpus: 0, timeout_s: null}  # per run (a Ray task)
    env: {HF_HUB_OFFLINE: "1"}                              # extra environment of every run
    quick:                     # what `--quick` changes (a smoke run, e.g. for CI)
      {seeds: [1], shots: 4, opts: [OPTIM.MAX_EPOCH, 2], variants: [none, gradnorm], datasets: [md]}
    summary:                   # the tables printed at the end (see summarize.SummaryOptions)
      {tables: [variants, problems], baseline: CoOp, title: "Study: {dataset} task", variant: remedy}

Relative paths are relative to the folder the sweep is started in (as CoOp's scripts run from
the repository root). A config name `x` of trainer T is `configs/trainers/T/x.yaml` there, else
in the configs folder next to the installed `trainers` package.

The runs, in the layout of `layout` (the same as `scripts/*.sh`):
- fewshot: one step, training on all classes with DATASET.NUM_SHOTS K;
- base2new: train on the base classes, then `--eval-only` on the new classes from that model;
- xd and dg: train on the source (all classes, K shots) once per trainer/cfg/gate/seed/shots,
  then `--eval-only` on each target; an xd and a dg run of the same training share it.
A gate `g` adds `GATE.NAME g` and names the cfg folder `<cfg>@g`; a variant `v` adds its options
after the trainer's and names it `<cfg>~v` (`<cfg>@g~v` with a gate). A dataset entry's `opts`
come after those (they say what the task is, e.g. a pool with one prompt per label mapping, so a
variant cannot silently change it). Protocol keys come last in the options, so a grid's opts
cannot silently change what a protocol means; among them is the dataset config's own
`DATASET.NAME`, because a trainer config read after the dataset config (a `demo.yaml` names the
demo dataset) would otherwise silently replace the grid's dataset.

A dataset entry's `shots` and `seeds` replace the grid's for that dataset (a trainer's own
`seeds` still win); its `variants` keep only those variants on it (a trainer none of whose
variants is listed does not run on it).

The oracle (`oracle`): for each fewshot dataset that lists `domains`, each of its shots and
seeds, one run per domain d of the oracle's trainer, trained and tested on d alone
(`DATASET.SOURCE_DOMAINS ["d"]`), in the folder `<trainer>/<config>~oracle.<d>`
(`layout.oracle_label`). The oracle's accuracy on the whole task is the mean of its per-domain
accuracies (every domain of the controlled tasks has equally many test images); `gatescope
summarize --table regime` compares the gated methods with it.
"""
import os
from dataclasses import dataclass, field

from trainers.config_file import read_config_file

from .layout import DG_TARGETS, PHASES, PROTOCOLS, XD_SOURCE, XD_TARGETS, cfg_label, oracle_label, run_dir

PACKAGE_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "configs")
GRID_KEYS = {"name", "protocol", "datasets", "shots", "seeds", "trainers", "configs", "opts", "output",
             "data", "xd", "dg", "resources", "env", "variants", "quick", "summary", "oracle"}
TRAINER_KEYS = {"configs", "gates", "seeds", "opts", "variants"}
DATASET_KEYS = {"config", "opts", "domains", "shots", "seeds", "variants"}
ORACLE_KEYS = {"trainer", "config", "opts"}
RESOURCE_KEYS = {"num_cpus", "num_gpus", "timeout_s"}
QUICK_KEYS = {"seeds", "shots", "opts", "variants", "datasets"}
SUMMARY_KEYS = {"tables", "baseline", "title", "variant"}


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
    # The `summary` section (tables to print and their options), plus the grid's order of
    # trainers and variants so the tables list them as the grid does.
    summary: dict = field(default_factory=dict)
    trainers: list = field(default_factory=list)
    variants: list = field(default_factory=list)
    datasets: list = field(default_factory=list)  # folder labels, in the grid's order


def _as_list(value, what):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int)):
        return [value]
    raise GridError(f"{what} must be a value or a list, found {value!r}")


def _mapping(value, what, allowed=None):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{what} must be a mapping, found {value!r}")
    if allowed is not None:
        _check_keys(value, allowed, what)
    return value


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


def dataset_name_opts(path):
    """`["DATASET.NAME", <name>]` from a dataset config file ([] when it names none)."""
    try:
        config = read_config_file(path)
    except (OSError, ValueError) as e:  # ValueError: ConfigError, naming the file and line
        raise GridError(f"cannot read the dataset config {path}: {e}") from e
    node = config.get("DATASET")
    name = node.get("NAME") if isinstance(node, dict) else None
    return ["DATASET.NAME", str(name)] if name else []


@dataclass
class DatasetEntry:
    """One dataset of a grid: its folder label, config file and what its entry changes (see the
    module docstring); None where the entry leaves the grid's setting."""

    label: str
    path: str
    opts: list = field(default_factory=list)
    domains: list = field(default_factory=list)
    shots: list = None
    seeds: list = None
    variants: list = None


def _dataset_entry(label, value):
    if not isinstance(value, dict):
        _, path = resolve_config("dataset", value)
        return DatasetEntry(str(label), path)
    where = f"datasets.{label}"
    _check_keys(value, DATASET_KEYS, where)
    if not value.get("config"):
        raise GridError(f"{where} names no `config` (the dataset config: a name in configs/datasets or a path)")
    _, path = resolve_config("dataset", value["config"])
    domains = [str(d) for d in _as_list(value.get("domains"), f"{where}.domains")]
    if len(set(domains)) != len(domains):
        raise GridError(f"{where}.domains lists a domain twice: {domains}")
    shots = [int(k) for k in _as_list(value.get("shots"), f"{where}.shots")] or None
    seeds = [int(s) for s in _as_list(value.get("seeds"), f"{where}.seeds")] or None
    variants = value.get("variants")
    return DatasetEntry(str(label), path, _opts(value.get("opts"), f"{where}.opts"), domains, shots, seeds,
                        None if variants is None else [str(v) for v in _as_list(variants, f"{where}.variants")])


def _datasets(spec):
    """[DatasetEntry] from the list or mapping form of `datasets`."""
    value = spec.get("datasets")
    if isinstance(value, dict):
        return [_dataset_entry(label, entry) for label, entry in value.items()]
    entries = []
    for d in _as_list(value, "datasets"):
        label, path = resolve_config("dataset", d)
        entries.append(DatasetEntry(label, path))
    return entries


def _trainer_entries(spec):
    """[(trainer, {configs, gates, seeds, opts, variants})] from the list or mapping form."""
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


def _variants(spec):
    """{name: opts} of the `variants` section, in the grid's order."""
    variants = {}
    for name, opts in _mapping(spec.get("variants"), "variants").items():
        if isinstance(opts, dict):  # {opts: [...]} reads as well as the bare list
            _check_keys(opts, {"opts"}, f"variants.{name}")
            opts = opts.get("opts")
        variants[str(name)] = _opts(opts, f"variants.{name}")
    return variants


def select_variants(spec, names, where="the variants asked for"):
    """`spec` with only the variants `names` (each trainer keeps those of its own it lists).
    An unknown name is an error listing the grid's variants."""
    known = [str(v) for v in _mapping(spec.get("variants"), "variants")]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise GridError(f"unknown variant(s) {unknown} in {where}; the grid has: {', '.join(known) or 'none'}")
    spec = dict(spec)
    spec["variants"] = {k: v for k, v in (spec.get("variants") or {}).items() if str(k) in names}
    datasets = spec.get("datasets")
    if isinstance(datasets, dict):
        spec["datasets"] = {
            label: ({**entry, "variants": [v for v in _as_list(entry["variants"], "variants") if str(v) in names]}
                    if isinstance(entry, dict) and entry.get("variants") is not None else entry)
            for label, entry in datasets.items()}
    trainers = spec.get("trainers")
    if isinstance(trainers, dict):
        spec["trainers"] = {
            name: ({**entry, "variants": [v for v in _as_list(entry["variants"], "variants") if str(v) in names]}
                   if isinstance(entry, dict) and entry.get("variants") is not None else entry)
            for name, entry in trainers.items()}
    return spec


def apply_quick(spec):
    """`spec` changed by its `quick` section: seeds and shots replaced (also those of dataset
    entries), opts appended after the grid's, variants and datasets narrowed (see
    `select_variants`, `select_datasets`). A grid without one is an error."""
    quick = spec.get("quick")
    if not quick:
        raise GridError("the grid has no `quick` section, so --quick means nothing for it; add e.g. "
                        "quick: {seeds: [1], opts: [OPTIM.MAX_EPOCH, 1]}")
    _mapping(quick, "quick", QUICK_KEYS)
    spec = {k: v for k, v in spec.items() if k != "quick"}
    for key in ("seeds", "shots"):
        if key in quick:
            spec[key] = quick[key]
            if isinstance(spec.get("datasets"), dict):  # everywhere: dataset entries' own too
                spec["datasets"] = {label: ({k: v for k, v in entry.items() if k != key} if isinstance(entry, dict)
                                            else entry) for label, entry in spec["datasets"].items()}
    if quick.get("opts"):
        spec["opts"] = _opts(spec.get("opts"), "opts") + _opts(quick["opts"], "quick.opts")
    if quick.get("variants") is not None:
        spec = select_variants(spec, [str(v) for v in _as_list(quick["variants"], "quick.variants")],
                               "quick.variants")
    if quick.get("datasets") is not None:
        spec = select_datasets(spec, [str(d) for d in _as_list(quick["datasets"], "quick.datasets")])
    return spec


def select_datasets(spec, labels):
    """`spec` with only the datasets of those folder labels (a list entry's label is its config's
    name); an unknown label is an error listing the grid's."""
    value = spec.get("datasets")
    known = [str(k) for k in value] if isinstance(value, dict) else [
        os.path.splitext(os.path.basename(str(d)))[0] for d in _as_list(value, "datasets")]
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise GridError(f"unknown dataset(s) {unknown} in quick.datasets; the grid has: {', '.join(known) or 'none'}")
    spec = dict(spec)
    if isinstance(value, dict):
        spec["datasets"] = {k: v for k, v in value.items() if str(k) in labels}
    else:
        spec["datasets"] = [d for d, label in zip(_as_list(value, "datasets"), known) if label in labels]
    return spec


def _summary(spec):
    summary = dict(_mapping(spec.get("summary"), "summary", SUMMARY_KEYS))
    if "tables" in summary:
        from .summarize import TABLES

        summary["tables"] = [str(t) for t in _as_list(summary["tables"], "summary.tables")]
        unknown = [t for t in summary["tables"] if t not in TABLES]
        if unknown:
            raise GridError(f"unknown table(s) {unknown} in summary.tables; available: {', '.join(TABLES)}")
    return summary


def _base_argv(data, seed, trainer, cfg_path, dataset_path, output_dir):
    return ["--root", data, "--seed", str(seed), "--trainer", trainer, "--dataset-config-file", dataset_path,
            "--config-file", cfg_path, "--output-dir", output_dir]


def read_grid_file(path):
    """The parsed GRID.yaml mapping (named after the file unless it has a `name`)."""
    try:
        spec = read_config_file(path)  # the project's one YAML reader: data only, errors name file and line
    except (OSError, ValueError) as e:
        raise GridError(f"cannot read the grid file {path}: {e}") from e
    spec.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return spec


def load_grid(path, quick=False):
    """Read GRID.yaml and expand it into cells (see the module docstring)."""
    spec = read_grid_file(path)
    return expand_grid(apply_quick(spec) if quick else spec)


def _union(lists):
    """The values of `lists` in order of first appearance."""
    out = []
    for values in lists:
        out += [v for v in values if v not in out]
    return out


def expand_grid(spec):
    """The Grid of a parsed GRID.yaml mapping."""
    _check_keys(spec, GRID_KEYS, "the grid")
    protocols = _as_list(spec.get("protocol", "fewshot"), "protocol")
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise GridError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    output = os.path.abspath(str(spec.get("output", "output")))
    data = spec.get("data")
    # "" is kept: train.py's --root "" lets each dataset use its default (generated ones: gatescope's cache).
    data = "" if data == "" else os.path.abspath(str(data or os.environ.get("DATA") or "data"))
    shots = [int(k) for k in _as_list(spec.get("shots", 16), "shots")]
    seeds = [int(s) for s in _as_list(spec.get("seeds"), "seeds")]
    common_opts = _opts(spec.get("opts"), "opts")
    resources = dict(_mapping(spec.get("resources"), "resources", RESOURCE_KEYS))
    env = {str(k): str(v) for k, v in _mapping(spec.get("env"), "env").items()}
    variants = _variants(spec)
    summary = _summary(spec)
    datasets = _datasets(spec)
    if {"fewshot", "base2new"} & set(protocols) and not datasets:
        raise GridError("protocols fewshot and base2new need `datasets`")
    for ds in datasets:
        unknown = [v for v in ds.variants or [] if v not in variants]
        if unknown:
            raise GridError(f"datasets.{ds.label}.variants names {unknown}, which the grid's `variants` section "
                            f"does not define (it has: {', '.join(variants) or 'none'})")
    context = dict(spec=spec, datasets=datasets, shots=shots, seeds=seeds, output=output, data=data)

    cells, trainer_names = {}, []
    for trainer, entry in _trainer_entries(spec):
        trainer_names.append(trainer)
        configs = _as_list(entry.get("configs", spec.get("configs")), f"trainers.{trainer}.configs")
        if not configs:
            raise GridError(f"trainer {trainer} has no configs (give `configs` at the top or under the trainer)")
        gates = [str(g) for g in _as_list(entry.get("gates"), f"trainers.{trainer}.gates")] or [""]
        own_seeds = [int(s) for s in _as_list(entry.get("seeds"), f"trainers.{trainer}.seeds")]
        seedless = [ds for ds in datasets if ds.seeds is None] or not datasets or {"xd", "dg"} & set(protocols)
        if not own_seeds and not seeds and seedless:
            raise GridError(f"no seeds for trainer {trainer} (give `seeds` at the top or under the trainer)")
        opts = common_opts + _opts(entry.get("opts"), f"trainers.{trainer}.opts")
        own = [str(v) for v in _as_list(entry.get("variants"), f"trainers.{trainer}.variants")]
        unknown = [v for v in own if v not in variants]
        if unknown:
            raise GridError(f"trainers.{trainer}.variants names {unknown}, which the grid's `variants` section "
                            f"does not define (it has: {', '.join(variants) or 'none'})")
        if entry.get("variants") is None:
            own = list(variants)  # a trainer that names no variants runs them all
        elif variants and not own:
            continue  # narrowed (--quick, --remedies) to none of this trainer's variants
        all_shots = _union([shots] + [ds.shots or [] for ds in datasets])
        all_seeds = own_seeds or _union([seeds] + [ds.seeds or [] for ds in datasets])
        for cfg_name in configs:
            cfg, cfg_path = resolve_config("trainer", cfg_name, trainer)
            for gate in gates:
                for variant in own or [""]:
                    run_opts = opts + (["GATE.NAME", gate] if gate else []) + variants.get(variant, [])
                    method = dict(trainer=trainer, cfg=cfg_label(cfg, gate, variant), cfg_path=cfg_path,
                                  opts=run_opts, variant=variant, seeds=own_seeds)
                    for k in all_shots:
                        for seed in all_seeds:
                            for protocol in protocols:
                                _add_cells(cells, context, protocol, method, k, seed)
    _add_oracle_cells(cells, context, protocols, common_opts)
    return Grid(name=str(spec["name"]), output=output, cells=list(cells.values()), resources=resources, env=env,
                summary=summary, trainers=trainer_names, variants=list(variants),
                datasets=[ds.label for ds in datasets])


def _runs_on(ds, context, shots, seed, own_seeds=()):
    """Whether dataset entry `ds` has these shots and this seed (a trainer's own seeds win)."""
    return shots in (ds.shots or context["shots"]) and seed in (own_seeds or ds.seeds or context["seeds"])


def _add_oracle_cells(cells, context, protocols, common_opts):
    """The oracle's runs (see the module docstring): per dataset with domains, shots, seed, domain."""
    spec = context["spec"]
    if spec.get("oracle") is None:
        return
    oracle = _mapping(spec["oracle"], "oracle", ORACLE_KEYS)
    if "fewshot" not in protocols:
        raise GridError("the oracle trains one prompt per domain of a few-shot task: it needs protocol fewshot")
    with_domains = [ds for ds in context["datasets"] if ds.domains]
    if not with_domains:
        raise GridError("the grid has an `oracle` but no dataset lists its `domains` (the oracle trains one run "
                        "per domain): add e.g. domains: [light, dark] to a dataset entry")
    trainer = str(oracle.get("trainer") or "")
    if not trainer:
        raise GridError("oracle.trainer is missing: the trainer told the domain, e.g. CoOp")
    config, cfg_path = resolve_config("trainer", oracle.get("config") or "demo", trainer)
    opts = common_opts + _opts(oracle.get("opts"), "oracle.opts")
    output, data = context["output"], context["data"]
    for ds in with_domains:
        for shots in ds.shots or context["shots"]:
            for seed in ds.seeds or context["seeds"]:
                for domain in ds.domains:
                    cfg = oracle_label(config, domain)
                    run = run_dir(output, "fewshot", "", ds.label, shots, trainer, cfg, seed)
                    cell_id = os.path.relpath(run, output)
                    if cell_id in cells:
                        continue
                    cell = cells[cell_id] = Cell(cell_id, "fewshot", trainer, cfg, seed, shots)
                    cell.steps.append(Step("", ds.label, run, _base_argv(data, seed, trainer, cfg_path, ds.path, run),
                                           opts + ds.opts + dataset_name_opts(ds.path)
                                           + ["DATASET.NUM_SHOTS", str(shots),
                                              "DATASET.SOURCE_DOMAINS", f'["{domain}"]']))


def _add_cells(cells, context, protocol, method, shots, seed):
    trainer, cfg, cfg_path, opts = method["trainer"], method["cfg"], method["cfg_path"], method["opts"]
    spec, output, data = context["spec"], context["output"], context["data"]

    def where(phase, dataset):
        return run_dir(output, protocol, phase, dataset, shots, trainer, cfg, seed)

    def new_cell(first_dir):
        cell_id = os.path.relpath(first_dir, output)
        return cells.setdefault(cell_id, Cell(cell_id, protocol, trainer, cfg, seed, shots))

    if protocol in ("fewshot", "base2new"):
        for ds in context["datasets"]:
            if ds.variants is not None and method["variant"] not in ds.variants:
                continue
            if not _runs_on(ds, context, shots, seed, method["seeds"]):
                continue
            dataset, dataset_path = ds.label, ds.path
            name = dataset_name_opts(dataset_path)
            train_phase = PHASES[protocol][0]
            train_dir = where(train_phase, dataset)
            cell = new_cell(train_dir)
            subsample = ["DATASET.SUBSAMPLE_CLASSES", "base"] if protocol == "base2new" else []
            cell.steps.append(Step(train_phase, dataset, train_dir,
                                   _base_argv(data, seed, trainer, cfg_path, dataset_path, train_dir),
                                   opts + ds.opts + name + ["DATASET.NUM_SHOTS", str(shots)] + subsample))
            if protocol == "base2new":
                test_dir = where("test_new", dataset)
                cell.steps.append(Step("test_new", dataset, test_dir,
                                       _base_argv(data, seed, trainer, cfg_path, dataset_path, test_dir)
                                       + ["--eval-only", "--model-dir", train_dir],
                                       opts + ds.opts + name + ["DATASET.NUM_SHOTS", str(shots),
                                                                "DATASET.SUBSAMPLE_CLASSES", "new"],
                                       model_dir=train_dir))
        return

    # xd and dg: one training on the source, shared by both protocols, then one test per target.
    if shots not in context["shots"] or seed not in (method["seeds"] or context["seeds"]):
        return  # shots or seeds of a dataset entry only
    settings = _mapping(spec.get(protocol), protocol, {"source", "targets"})
    source = str(settings.get("source", XD_SOURCE))
    targets = _as_list(settings.get("targets"), f"{protocol}.targets") or list(
        XD_TARGETS if protocol == "xd" else DG_TARGETS)
    source_name, source_path = resolve_config("dataset", source)
    train_dir = run_dir(output, "xd", "train", source_name, shots, trainer, cfg, seed)
    cell = new_cell(train_dir)
    if not cell.steps:
        cell.steps.append(Step("train", source_name, train_dir,
                               _base_argv(data, seed, trainer, cfg_path, source_path, train_dir),
                               opts + dataset_name_opts(source_path) + ["DATASET.NUM_SHOTS", str(shots)]))
    for target in targets:
        target_name, target_path = resolve_config("dataset", target)
        test_dir = where("test", target_name)
        if any(step.output_dir == test_dir for step in cell.steps):
            continue
        cell.steps.append(Step("test", target_name, test_dir,
                               _base_argv(data, seed, trainer, cfg_path, target_path, test_dir)
                               + ["--eval-only", "--model-dir", train_dir],
                               opts + dataset_name_opts(target_path), model_dir=train_dir))
