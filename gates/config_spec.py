"""Config keys declared beside their defaults, and one check of a merged config against them.

yacs checks a value's *type* against its default when YAML files and command-line options are
merged. What a value may *mean* (one of some names, a range, a file that exists) is declared
where the default is defined, in the same function, right after it:

    cfg.TRAIN.PRINT_FREQ = 10  # print every N-th batch
    declare(cfg.TRAIN, PRINT_FREQ=at_least(1))

`validate(cfg)` then checks every declared key once, after the merge and before any data or
model is built (`trainers.config.setup_cfg` calls it), and reports every bad value in one
error: each line names the key, the value, where it was set and what is allowed, with a
"did you mean" (difflib) for a mistyped name. Nothing is written and nothing heavy is imported
before it runs, so a typo costs seconds, not a training run.

Declarations (a tuple of them must all hold):

    one_of(*choices)            a value among fixed choices
    registered(what, lister)    a name in a registry (trainer, dataset, gate): lister() -> names
    at_least(x), above(x), at_most(x), between(lo, hi)
    each(spec), length(n)       every item of a list or tuple; its number of items
    existing_path(kind)         "" or an existing "file" / "dir"
    unchecked(why)              deliberately any value of the default's type, and why
    satisfies(check, expected)  anything else: check(value) -> True when fine, or what is wrong
    declare_rule(node, rule)    a relation between keys: rule(cfg) -> None or (key, message)

A key nobody declared keeps yacs' type check, plus one check for every key: a float must be
finite (`1e999` parses to inf). Third-party plugins declare their keys the same way in their
`gatescope_add_config`; they need not. gatescope's own keys must: tests/test_config_spec.py
lists every built-in key without a declaration (booleans need none, yacs' type check is all
there is to them) and fails on any, so a key added later arrives declared.

This module imports only the standard library (a config can be checked without torch's help).
"""
import difflib
import math
import os

__all__ = [
    "ConfigError", "UnknownNameError", "UnknownKeyError", "MissingPathError", "Spec", "declare", "declare_rule",
    "declared", "one_of", "registered", "at_least", "above", "at_most", "between", "each", "length",
    "existing_path", "unchecked", "satisfies", "validate", "check_choice", "check_keys", "leaf_keys",
    "suggest", "closest_path", "FLOAT32_MAX",
]

_SPECS = "_gatescope_specs"  # where a CfgNode keeps its declarations (in its __dict__, not as keys)
_RULES = "_gatescope_rules"
FLOAT32_MAX = 3.4028234663852886e38  # largest finite float32, the dtype of learnable tensors


# ------------------------------------------------------------------------------------------ errors
class ConfigError(ValueError):
    """Config values that cannot work. `problems` lists (key, message); the text has all of them."""

    def __init__(self, problems, heading=None):
        self.problems = list(problems)
        if len(self.problems) == 1 and heading is None:
            text = self.problems[0][1]
        else:
            heading = heading or f"{len(self.problems)} config values cannot work"
            text = heading + ":\n" + "\n".join(f"  - {message}" for _, message in self.problems)
        super().__init__(text)

    @property
    def keys(self):
        return [key for key, _ in self.problems]

    def __str__(self):  # KeyError's own __str__ would quote the whole text
        return self.args[0]


class UnknownNameError(ConfigError, KeyError):
    """A value that names nothing registered (a trainer, dataset, gate); also a KeyError, as a
    registry lookup would raise."""


class UnknownKeyError(ConfigError, KeyError):
    """Keys set in a file or on the command line that the config does not have."""


class MissingPathError(ConfigError, FileNotFoundError):
    """A config file or a path in the config that does not exist."""


# ------------------------------------------------------------------------------------------ suggestions
def suggest(word, candidates, quote='"'):
    """'; did you mean "x"?' for the candidate closest to `word` (difflib), or ''."""
    candidates = [str(c) for c in candidates if str(c)]
    word = str(word)
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not close and word:  # another case ("coop"), or the start of one name ("image" for "image_feature")
        close = [c for c in candidates if c.lower() == word.lower()] or \
            [c for c in candidates if c.lower().startswith(word.lower())]
    return f"; did you mean {quote}{close[0]}{quote}?" if len(close) == 1 else ""


def closest_path(path):
    """The existing path that differs from `path` only by typos in its components, or None.

    Each missing component is replaced by the closest entry (difflib) of its existing parent,
    so `configs/trainers/CoOpp/dem.yaml` gives `configs/trainers/CoOp/demo.yaml`.
    """
    path = os.path.normpath(os.path.expanduser(str(path)))
    current = os.sep if path.startswith(os.sep) else ""
    for part in [p for p in path.split(os.sep) if p]:
        candidate = os.path.join(current, part) if current else part
        if not os.path.exists(candidate):
            try:
                entries = os.listdir(current or ".")
            except OSError:
                return None
            close = difflib.get_close_matches(part, entries, n=1, cutoff=0.6)
            if not close:
                return None
            candidate = os.path.join(current, close[0]) if current else close[0]
        current = candidate
    return current if current and os.path.exists(current) and current != path else None


# ------------------------------------------------------------------------------------------ specs
class Spec:
    """One declaration. `problem(key, value)` returns what is wrong (a sentence naming `key`) or
    None; `expected` says what is allowed, for messages and listings."""

    expected = "a value"
    allows_nonfinite = False
    error = ConfigError

    def problem(self, key, value):
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__}: {self.expected}>"


class _OneOf(Spec):
    def __init__(self, choices):
        self.lister = choices[0] if len(choices) == 1 and callable(choices[0]) else None
        self._choices = None if self.lister else tuple(choices)
        self.expected = "one of the listed choices" if self.lister else f"one of {self._choices}"

    @property
    def choices(self):
        return tuple(self.lister()) if self.lister else self._choices

    def problem(self, key, value):
        choices = self.choices
        if value in choices:
            return None
        return f"{key} must be one of {choices}, got {value!r}{suggest(value, choices, quote=chr(39))}"


def one_of(*choices):
    """A value among `choices` (one_of("soft", "hard")); a single callable is called at validation
    for the choices (module-level lists in modules that are costly to import at declaration)."""
    return _OneOf(choices)


class _Registered(Spec):
    error = UnknownNameError

    def __init__(self, what, lister, empty_means=None):
        self.what, self.lister, self.empty_means = what, lister, empty_means
        self.expected = f"a registered {what} name" + (f" or '' ({empty_means})" if empty_means else "")

    def problem(self, key, value):
        if value == "" and self.empty_means:
            return None
        names = sorted(self.lister())
        if value in names:
            return None
        available = f"Available {self.what}s: {', '.join(names) or '(none registered)'}"
        if value == "":
            return f"{key} is empty: name a {self.what}. {available}"
        return f'{key}: unknown {self.what} "{value}"{suggest(value, names) or "."} {available}'



def registered(what, lister, empty_means=None):
    """A name that `lister()` returns (called at validation: plugins register late). `what`
    names the kind ("trainer") in the message; `empty_means`, when given, allows "" and says
    what it means ("the trainer's default gate")."""
    return _Registered(what, lister, empty_means)


class _Range(Spec):
    def __init__(self, lo=None, hi=None, lo_open=False, hi_open=False, why=""):
        self.lo, self.hi, self.lo_open, self.hi_open, self.why = lo, hi, lo_open, hi_open, why
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_open else '>='} {_number(lo)}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '<='} {_number(hi)}")
        self.expected = " and ".join(parts)

    def problem(self, key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{key} must be a number {self.expected}, got {value!r}"
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if not (too_low or too_high or value != value):
            return None
        why = f" ({self.why})" if self.why else ""
        return f"{key} must be {self.expected}{why}, got {value!r}"


def _number(x):
    return f"{x:.4g}" if isinstance(x, float) and abs(x) >= 1e6 else str(x)


def at_least(lo, why=""):
    return _Range(lo=lo, why=why)


def above(lo, why=""):
    return _Range(lo=lo, lo_open=True, why=why)


def at_most(hi, why=""):
    return _Range(hi=hi, why=why)


def between(lo, hi, why="", hi_open=False, lo_open=False):
    """lo <= value <= hi (either end open on request)."""
    return _Range(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, why=why)


class _Each(Spec):
    def __init__(self, specs):
        self.specs = _as_tuple(specs)
        self.expected = "items each " + ", ".join(s.expected for s in self.specs)
        self.error = next((s.error for s in self.specs if s.error is not ConfigError), ConfigError)

    def problem(self, key, value):
        if not isinstance(value, (list, tuple)):
            return f"{key} must be a list, got {value!r}"
        for i, item in enumerate(value):
            for spec in self.specs:
                found = spec.problem(f"{key}[{i}]", item)
                if found:
                    return found
        return None


def each(*specs):
    """Every item of a list/tuple value satisfies `specs` (the key is named with the item's index)."""
    return _Each(specs)


class _Length(Spec):
    def __init__(self, n):
        self.n = n
        self.expected = f"{n} items"

    def problem(self, key, value):
        if isinstance(value, (list, tuple)) and len(value) == self.n:
            return None
        return f"{key} must have {self.n} items, got {value!r}"


def length(n):
    return _Length(n)


class _ExistingPath(Spec):
    error = MissingPathError

    def __init__(self, kind):
        if kind not in ("file", "dir"):
            raise ValueError(f"existing_path kind must be 'file' or 'dir', got {kind!r}")
        self.kind = kind
        self.expected = f"'' or an existing {'file' if kind == 'file' else 'folder'}"

    def problem(self, key, value):
        if value == "":
            return None
        path = os.path.expanduser(str(value))
        exists = os.path.isfile(path) if self.kind == "file" else os.path.isdir(path)
        if exists:
            return None
        what = "file" if self.kind == "file" else "folder"
        close = closest_path(path)
        hint = f'; did you mean "{close}"?' if close else ""
        return f'{key}: the {what} "{value}" does not exist{hint}'


def existing_path(kind="file"):
    """'' (not set) or an existing file (kind "file") or folder (kind "dir")."""
    return _ExistingPath(kind)


class _Unchecked(Spec):
    def __init__(self, why):
        self.expected = f"any value of its type ({why})"

    def problem(self, key, value):
        return None


def unchecked(why):
    """Any value of the default's type is meaningful; `why` says so for the reader."""
    return _Unchecked(why)


class _Satisfies(Spec):
    def __init__(self, check, expected, error):
        self.check, self.expected, self.error = check, expected, error

    def problem(self, key, value):
        found = self.check(value)
        if found is True or found is None:
            return None
        if isinstance(found, str):
            return f"{key}: {found}"
        return f"{key} must be {self.expected}, got {value!r}"


def satisfies(check, expected, error=None):
    """check(value) -> True (or None) when the value is fine, False ("KEY must be <expected>,
    got ...") or a message saying what is wrong. `error`: the exception class it calls for
    (UnknownNameError for a name, MissingPathError for a path; default ConfigError)."""
    return _Satisfies(check, expected, error or ConfigError)


# ------------------------------------------------------------------------------------------ declaring
def _as_tuple(specs):
    specs = tuple(specs) if isinstance(specs, (tuple, list)) else (specs,)
    for spec in specs:
        if not isinstance(spec, Spec):
            raise TypeError(f"a declaration must be a Spec (one_of, at_least, ...), got {spec!r}")
    return specs


def declare(node, **specs):
    """Declare what the keys of `node` (a CfgNode) may hold; each key must already have its
    default (declare right after setting it). Declaring a key again replaces its declaration."""
    for key, spec in specs.items():
        if key not in node:
            raise KeyError(f"declare: {key} has no default in this node yet; set the default first, then declare it")
        node.__dict__.setdefault(_SPECS, {})[key] = _as_tuple(spec)
    return node


def declare_rule(node, rule):
    """A check across keys, kept with `node`: rule(cfg) -> None or (key, message), run on the
    whole config after every key's own declaration held."""
    rules = node.__dict__.setdefault(_RULES, [])
    if rule not in rules:
        rules.append(rule)
    return node


def declared(node, key):
    """The declaration of `key` in `node` (a tuple of Specs), or None."""
    return node.__dict__.get(_SPECS, {}).get(key)


def copy_declarations(source, target):
    """Give `target` the declarations and rules of `source` for the keys and nodes both have
    (Dassl's own default tree, with GATESCOPE_ENGINE=dassl, gets gatescope's)."""
    for key, spec in source.__dict__.get(_SPECS, {}).items():
        if key in target and declared(target, key) is None:
            target.__dict__.setdefault(_SPECS, {})[key] = spec
    for rule in source.__dict__.get(_RULES, []):
        declare_rule(target, rule)
    for key, value in source.items():
        if _is_node(value) and key in target and _is_node(target[key]):
            copy_declarations(value, target[key])


def _is_node(value):
    return isinstance(value, dict) and hasattr(value, "is_frozen")


def _walk(node, prefix=""):
    """(full key, node, key, value) for every leaf, depth first."""
    for key, value in node.items():
        full = f"{prefix}{key}"
        if _is_node(value):
            yield from _walk(value, full + ".")
        else:
            yield full, node, key, value


def _nodes(node):
    yield node
    for value in node.values():
        if _is_node(value):
            yield from _nodes(value)


def leaf_keys(cfg):
    """Every full key of `cfg` ("OPTIM.LR", ...)."""
    return [full for full, _, _, _ in _walk(cfg)]


def _nonfinite(value):
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_nonfinite(v) for v in value)
    return False


# ------------------------------------------------------------------------------------------ checking
def check_choice(key, value, choices, context=""):
    """(key, message) when `value` is not among `choices` (with the closest), else None; for
    choices only a trainer class knows (its gate targets). `context` follows the choices
    (" (the targets of CoOpGated)")."""
    if value in choices:
        return None
    return key, (f"{key} must be one of {tuple(choices)}{context}, got {value!r}"
                 f"{suggest(value, choices, quote=chr(39))}")


def check_keys(cfg, keys, source):
    """Raise UnknownKeyError for every key of `keys` (full keys) that `cfg` lacks, each with the
    closest existing key; `source` names where they were set ("config file x.yaml")."""
    known = None
    problems = []
    for key in keys:
        if _has_key(cfg, key):
            continue
        renamed = _renamed(cfg, key)
        if renamed:
            problems.append((key, f"config key {key} (in {source}) was renamed to {renamed}"))
            continue
        known = known if known is not None else leaf_keys(cfg)
        problems.append((key, f"unknown config key {key} (in {source}){suggest(key, known, quote='')}"))
    if problems:
        raise UnknownKeyError(problems, heading=None if len(problems) == 1 else
                              f"{len(problems)} unknown config keys (in {source})")


def _renamed(cfg, key):
    """"NEW (note)" for a key yacs' register_renamed_key retired, else None."""
    renamed = getattr(cfg, "key_is_renamed", None)
    if renamed is None or not renamed(key):
        return None
    new = cfg.__dict__[type(cfg).RENAMED_KEYS][key]
    return f"{new[0]}: {new[1]}" if isinstance(new, tuple) else str(new)


def _has_key(cfg, key):
    node = cfg
    parts = key.split(".")
    for part in parts:
        if not _is_node(node):
            return False
        if part not in node:
            return node.is_new_allowed()
        node = node[part]
    return True


def validate(cfg, sources=None, extra=()):
    """Check every declared key of `cfg`, every rule, and `extra` checks; raise one ConfigError
    (UnknownNameError when a name is unknown, MissingPathError for a missing path) listing all
    problems. `sources` maps a full key to where its value was set, named in the message.
    `extra` yields (key, message) pairs (a trainer's own checks). Returns cfg when all hold."""
    problems = []  # (key, message, error class)
    for full, node, key, value in _walk(cfg):
        specs = declared(node, key) or ()
        for spec in specs:
            found = spec.problem(full, value)
            if found:
                problems.append((full, found, spec.error))
                break
        else:
            if _nonfinite(value) and not any(s.allows_nonfinite for s in specs):
                problems.append((full, f"{full} must be a finite number, got {value!r}", ConfigError))
    if not problems:  # relations only between values that each make sense
        for node in _nodes(cfg):
            for rule in node.__dict__.get(_RULES, []):
                found = rule(cfg)
                if found:
                    problems.append((*found, ConfigError))
    problems.extend((*found, ConfigError) for found in extra if found)
    if not problems:
        return cfg
    lines = [(key, message + _where(key, sources)) for key, message, _ in problems]
    errors = [error for _, _, error in problems]
    error = next((e for e in (UnknownNameError, MissingPathError) if e in errors), ConfigError)
    raise error(lines)


def _where(key, sources):
    if not sources:
        return ""
    source = sources.get(key.split("[")[0])
    return f" (set in {source})" if source else ""
