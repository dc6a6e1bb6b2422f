"""Config assembly in CoOp's order: defaults, trainers' keys, dataset YAML, method YAML, flags, opts."""
import os
import re

import yaml
from yacs.config import CfgNode as CN

from gates.config import add_gate_config
from gates.manager import get_plugins

from .data.image_cache import add_image_cache_config
from .engine import TRAINER_REGISTRY, get_cfg_default
from .feature_cache import add_feature_cache_config


def extend_cfg(cfg):
    """Add the keys of every trainer and plugin (CoOp's extend_cfg, without a hand-kept list).

    Plugins' trainers are registered first. A trainer contributes keys through an
    `add_config(cfg)` defined on its own class, so a trainer that subclasses another
    (CoOpGated from CoOp) adds only what it defines itself; plugins (the built-in gates among
    them) add theirs through the `gatescope_add_config` hook, after the core GATE node.
    """
    plugins = get_plugins()
    plugins.register_trainers(TRAINER_REGISTRY)
    add_gate_config(cfg)
    add_feature_cache_config(cfg)  # DATALOADER.FEATURE_CACHE (issue 7)
    add_image_cache_config(cfg)  # DATALOADER.IMAGE_CACHE_MB (issue 7)
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
    if "SUBSAMPLE_CLASSES" not in cfg.DATASET:  # Dassl's own defaults lack CoOp's key
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    add_reliability_config(cfg)
    plugins.add_config(cfg)
    return cfg


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
    return cfg


def resolve_cfg(cfg):
    """Let trainers rewrite keys that select another trainer (the study's USE_GATE on CoOp)."""
    for name in list(TRAINER_REGISTRY.registered_names()):
        resolve = TRAINER_REGISTRY.get(name).__dict__.get("resolve_config")
        if resolve is not None:
            resolve.__func__(cfg)
    return cfg


YAML_SUFFIXES = (".yaml", ".yml", "")  # yacs' YAML suffixes; it imports and runs ".py" configs


def read_config_file(path):
    """The mapping in YAML config file `path`, read without running anything from it.

    yacs' own `merge_from_file` imports a `.py` config (running it) and lets yaml name neither the
    file nor the line of an error; here the file is decoded as UTF-8 and parsed with yaml's safe
    loader, so `!!python/...` tags are refused, and every error names the file and line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a `.py` or other non-YAML file, bytes that are not UTF-8, YAML syntax errors,
            YAML tags that build Python objects, or a top level that is not a mapping of keys.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file "{path}" does not exist')
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".py":
        raise ValueError(
            f'config file "{path}" is Python; gatescope reads YAML config files only, because a .py '
            "config is imported and run as code (yacs' loader does that). Write the same keys in a .yaml "
            "file, e.g. `OPTIM: {LR: 0.002}`."
        )
    if suffix not in YAML_SUFFIXES:
        raise ValueError(f'config file "{path}" should be a YAML file (.yaml or .yml), not "{suffix}".')
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(
            f'config file "{path}", line {line}, column {column}: byte 0x{raw[e.start]:02x} is not UTF-8 '
            "text. Save the file as UTF-8 (YAML config files are UTF-8)."
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(_describe_yaml_error(path, e)) from None
    if data is None:  # an empty file (or only comments) sets nothing
        return {}
    if not isinstance(data, dict):
        raise ValueError(f'config file "{path}" holds a YAML {type(data).__name__}; expected a mapping of '
                         "config keys, e.g. `OPTIM: {LR: 0.002}`.")
    return data


def _describe_yaml_error(path, error):
    """One line naming the file, the line and column, and what yaml found there."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    if isinstance(error, yaml.constructor.ConstructorError) and "python/" in str(problem):
        tag = re.search(r"tag '([^']*)'", problem)
        tag = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else "a python tag"
        return (f'config file "{path}"{where}: the YAML tag {tag} asks to build a Python object, which can '
                "run code, so gatescope refuses it. Config files hold plain values (numbers, strings, "
                "lists, mappings): write the value itself.")
    context = getattr(error, "context", None)
    context_mark = getattr(error, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        context = f"{context} that starts at line {context_mark.line + 1}"
    detail = f"{context}: {problem}" if context else problem
    return f'config file "{path}"{where}: YAML syntax error ({detail}).'


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


def setup_cfg(args):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        merge_from_file(cfg, args.dataset_config_file)
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    reset_cfg(cfg, args)
    cfg.CONFIG_FILE = args.config_file or ""
    merge_from_list(cfg, args.opts)
    resolve_cfg(cfg)
    cfg.freeze()
    return cfg


__all__ = ["CN", "extend_cfg", "add_reliability_config", "setup_cfg", "reset_cfg", "merge_from_file",
           "merge_from_list", "read_config_file"]
