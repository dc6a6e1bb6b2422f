"""Reading a YAML config file as data: the one reader of `--config-file`, `--dataset-config-file`
and every YAML the grids name (issue 16: no code runs from a file the user points gatescope at)."""
import os
import re

import yaml

from gates.config_spec import ConfigError

__all__ = ["read_config_file", "YAML_SUFFIXES"]


def _error(path, message):
    return ConfigError([(str(path), message)])


YAML_SUFFIXES = (".yaml", ".yml", "")  # yacs' YAML suffixes; it imports and runs ".py" configs


def read_config_file(path):
    """The mapping in YAML config file `path`, read without running anything from it.

    yacs' own `merge_from_file` imports a `.py` config (running it) and lets yaml name neither the
    file nor the line of an error; here the file is decoded as UTF-8 and parsed with yaml's safe
    loader, so `!!python/...` tags are refused, and every error names the file and line.

    Raises:
        FileNotFoundError: no such file.
        ConfigError (a ValueError; gates/config_spec.py): a `.py` or other non-YAML file, bytes
            that are not UTF-8, YAML syntax errors, YAML tags that build Python objects, or a top
            level that is not a mapping of keys; the message names the file (and line).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file "{path}" does not exist')
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".py":
        raise _error(path,
            f'config file "{path}" is Python; gatescope reads YAML config files only, because a .py '
            "config is imported and run as code (yacs' loader does that). Write the same keys in a .yaml "
            "file, e.g. `OPTIM: {LR: 0.002}`."
        )
    if suffix not in YAML_SUFFIXES:
        raise _error(path, f'config file "{path}" should be a YAML file (.yaml or .yml), not "{suffix}".')
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise _error(path,
            f'config file "{path}", line {line}, column {column}: byte 0x{raw[e.start]:02x} is not UTF-8 '
            "text. Save the file as UTF-8 (YAML config files are UTF-8)."
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _error(path, _describe_yaml_error(path, e)) from None
    if data is None:  # an empty file (or only comments) sets nothing
        return {}
    if not isinstance(data, dict):
        raise _error(path, f'config file "{path}" holds a YAML {type(data).__name__}; expected a mapping of '
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
