"""Config assembly in CoOp's order: defaults, trainers' keys, dataset YAML, method YAML, flags, opts;
then one check of every value against its declaration (gates/config_spec.py) before anything is built."""
import os

from yacs.config import CfgNode as CN

from gates.config import add_gate_config
from gates.config_spec import MissingPathError, closest_path, copy_declarations, declare, one_of, unchecked, validate

from .config_file import read_config_file
from .config_sources import ConfigSources
from .data.domain_tasks import add_domain_task_config
from .data.image_cache import add_image_cache_config
from .data.registry import resolve_dataset
from .engine import TRAINER_REGISTRY, get_cfg_default
from .engine.config import get_cfg_default as gatescope_cfg_default
from .engine.trainer import NONFINITE_POLICIES
from .feature_cache import add_feature_cache_config
from .plugins import get_plugins
from .study_keys import apply_study_gate_flags


def extend_cfg(cfg):
    """Add the keys of every trainer and plugin (CoOp's extend_cfg, without a hand-kept list).

    Plugins' trainers are registered first. A trainer contributes keys through an
    `add_config(cfg)` defined on its own class, so a trainer that subclasses another
    (CoOpGated from CoOp) adds only what it defines itself; plugins (the built-in gates among
    them) add theirs through the `gatescope_add_config` hook, after the core GATE node.
    """
    plugins = get_plugins()
    plugins.register_trainers(TRAINER_REGISTRY)
    copy_declarations(gatescope_cfg_default(), cfg)  # Dassl's own tree (GATESCOPE_ENGINE=dassl) has none
    add_gate_config(cfg, gate_names=registered_gate_names)
    add_feature_cache_config(cfg)  # DATALOADER.FEATURE_CACHE (issue 7)
    add_image_cache_config(cfg)  # DATALOADER.IMAGE_CACHE_MB (issue 7)
    add_domain_task_config(cfg)  # DATASET.DOMAIN_TASK: the graded controlled task's knobs (issue 14)
    done = set()
    for name in TRAINER_REGISTRY.registered_names():
        cls = TRAINER_REGISTRY.get(name)
        # Each class adds its keys once, parents first: CoOp's add_config (which creates
        # TRAINER.COOP) must never run again after CoOpGated has added the study's keys to it.
        for klass in reversed(cls.__mro__):
            if klass in done:
                continue
            done.add(klass)
            add = klass.__dict__.get("add_config")
            if add is not None:
                try:
                    add.__func__(cfg)
                except NotImplementedError:
                    pass
    cfg.CONFIG_FILE = ""  # the --config-file of this run (set by setup_cfg; names the run in summaries)
    declare(cfg, CONFIG_FILE=unchecked("set from --config-file"))
    if "SUBSAMPLE_CLASSES" not in cfg.DATASET:  # Dassl's own defaults lack CoOp's key
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    if "GRAD_CLIP" not in cfg.OPTIM:  # Dassl's defaults lack the engine's clipping key (0: off)
        cfg.OPTIM.GRAD_CLIP = 0.0
    add_reliability_config(cfg)
    plugins.add_config(cfg)
    return cfg


def registered_gate_names():
    """The gates the run's plugin manager knows (GATE.NAME's choices). A module function, not the
    manager's bound method: declarations travel with the config through clone() (a deepcopy)."""
    return get_plugins().available_gates()


def add_reliability_config(cfg):
    """gatescope's keys for runs that must survive bad steps, bad images and reused folders."""
    # "stop": a NaN/Inf loss or gradient stops the run naming the step and the parameter group
    # (after the diagnostics are written); "skip": the step is skipped and counted.
    cfg.TRAIN.NONFINITE = "stop"
    # Replace a run made with another config in OUTPUT_DIR (its checkpoints, results.json and
    # diagnostics are deleted); without it such a folder is refused, naming the differing keys.
    cfg.TRAIN.OVERWRITE = False
    # torch.use_deterministic_algorithms (warn-only) and no cuDNN autotuning: bit-identical
    # reruns and resumes where the hardware allows (CPU always).
    cfg.TRAIN.DETERMINISTIC = False
    # An unreadable or corrupt image: False stops naming the file; True skips it (the next
    # readable item of the split stands in), warns once per file and counts it.
    cfg.DATASET.SKIP_BAD_IMAGES = False
    declare(cfg.TRAIN, NONFINITE=one_of(*NONFINITE_POLICIES))
    return cfg


def resolve_cfg(cfg):
    """Let trainers rewrite keys that select another trainer (the study's USE_GATE on CoOp)."""
    for name in list(TRAINER_REGISTRY.registered_names()):
        resolve = TRAINER_REGISTRY.get(name).__dict__.get("resolve_config")
        if resolve is not None:
            resolve.__func__(cfg)
    return cfg


def merge_from_file(cfg, path):
    """Merge a YAML config file into `cfg`, naming the file in any error (yacs only names the key)."""
    data = read_config_file(path)
    try:
        cfg.merge_from_other_cfg(CN(data))
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise _user_error(e)(f"{_text(e)} (in config file {path})") from e


def merge_from_list(cfg, opts):
    if len(opts) % 2:
        raise ValueError(f"trailing options must be KEY VALUE pairs, got an odd number: {opts}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise _user_error(e)(f"{_text(e)} (in the command-line options)") from e


def _user_error(error):
    """The type to re-raise `error` as with a message naming its source.

    yacs reports an unknown key with an AssertionError (gone under `python -O`): a KeyError.
    Subclasses whose constructor takes more than a message (UnicodeDecodeError takes five
    arguments) become their plain base, so the wrapper itself never fails.
    """
    if isinstance(error, AssertionError):
        return KeyError
    for base in (KeyError, TypeError, ValueError):
        if isinstance(error, base):
            return base
    return ValueError


def _text(error):
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)


def reset_cfg(cfg, args):
    """Command-line flags override the YAML files (CoOp's reset_cfg)."""
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head
    apply_study_gate_flags(cfg, args)  # --use_gate, --gate_type, ... of the study's train.py


def setup_cfg(args):
    """The run's frozen config from train.py's `args`, checked before anything is built or written.

    Merged in CoOp's order (defaults and every trainer's and plugin's keys, --dataset-config-file,
    --config-file, flags, KEY VALUE options). Each file and the options are checked for unknown
    keys before they are merged; a key set differently by two sources is reported in one line;
    then every value is checked once against its declaration, and the chosen trainer's own
    choices (gate targets) with it. Errors name the key, where it was set and, for a typo, the
    closest valid name. Raises gates.config_spec.ConfigError (a ValueError; UnknownNameError /
    UnknownKeyError are also KeyErrors, MissingPathError a FileNotFoundError).
    """
    check_path_flags(args)
    cfg = get_cfg_default()
    extend_cfg(cfg)
    sources = ConfigSources()
    if args.dataset_config_file:
        sources.check_and_record_file(cfg, args.dataset_config_file, merge_from_file, "dataset config file")
    if args.config_file:
        sources.check_and_record_file(cfg, args.config_file, merge_from_file)
    sources.record_flags(cfg, lambda c: reset_cfg(c, args))
    cfg.CONFIG_FILE = args.config_file or ""
    sources.check_and_record_options(cfg, args.opts or [], merge_from_list)
    resolve_dataset(cfg)  # no dataset named: the demo dataset
    sources.record_changes(cfg, resolve_cfg, "the study's gate keys (trainers/study_keys.py)")
    for line in sources.overrides():
        print(line)
    validate(cfg, sources.as_mapping(), trainer_config_problems(cfg))
    cfg.freeze()
    return cfg


def check_path_flags(args):
    """The files and folders train.py's flags name exist (a MissingPathError suggests the closest)."""
    problems = []
    for flag, path, kind in (("--dataset-config-file", args.dataset_config_file, "file"),
                             ("--config-file", args.config_file, "file"),
                             ("--model-dir", getattr(args, "model_dir", ""), "folder")):
        if not path or (os.path.isfile(path) if kind == "file" else os.path.isdir(path)):
            continue
        close = closest_path(path)
        problems.append((flag, f'{flag} "{path}": no such {kind}' + (f'; did you mean "{close}"?' if close else "")))
    if problems:
        raise MissingPathError(problems)


def trainer_config_problems(cfg):
    """The chosen trainer's own checks (`config_problems(cfg)` on its class, e.g. a gated
    trainer's GATE.TARGET); none for an unknown trainer, which validate reports itself."""
    if cfg.TRAINER.NAME not in TRAINER_REGISTRY.registered_names():
        return ()
    check = getattr(TRAINER_REGISTRY.get(cfg.TRAINER.NAME), "config_problems", None)
    return list(check(cfg)) if check is not None else ()


__all__ = ["CN", "extend_cfg", "add_reliability_config", "setup_cfg", "reset_cfg", "merge_from_file",
           "merge_from_list", "read_config_file", "check_path_flags", "trainer_config_problems"]
