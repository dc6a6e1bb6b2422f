"""Where each config value came from, and one line for every key that two sources set differently.

CoOp's merge order stays: defaults, `--dataset-config-file`, `--config-file`, the command-line
flags (`--root`, `--trainer`, ...), then the trailing `KEY VALUE` options; the last source that
sets a key wins. What changes is that an override is no longer silent (issue 17): a demo config
that also named a dataset, or a `--root` that replaced a file's `DATASET.ROOT`, is reported in
one line naming both sources and the winner. Keys are also checked before each merge, so an
unknown key gets a "did you mean" (gates/config_spec.py) along with the file it came from.
"""
from gates.config_spec import check_keys, leaf_keys

from .config_file import read_config_file

__all__ = ["ConfigSources", "file_keys", "FLAG_OF_KEY", "MERGE_ORDER"]

# reset_cfg's flags (CoOp's train.py), by the key each one sets.
FLAG_OF_KEY = {
    "DATASET.ROOT": "--root", "OUTPUT_DIR": "--output-dir", "RESUME": "--resume", "SEED": "--seed",
    "DATASET.SOURCE_DOMAINS": "--source-domains", "DATASET.TARGET_DOMAINS": "--target-domains",
    "INPUT.TRANSFORMS": "--transforms", "TRAINER.NAME": "--trainer", "MODEL.BACKBONE.NAME": "--backbone",
    "MODEL.HEAD.NAME": "--head",
}
MERGE_ORDER = "dataset config file, config file, command-line flags, command-line options"


def file_keys(cfg, path):
    """The full keys a YAML config file sets (its leaves, as far as `cfg` has nodes).

    Read with `read_config_file` (yaml's safe loader: plain data only, no code runs), whose
    ConfigError names the file and line of a syntax error, a python tag or a non-UTF-8 byte."""
    data = read_config_file(path)
    keys = []

    def walk(mapping, node, prefix):
        for key, value in mapping.items():
            full = f"{prefix}{key}"
            child = node.get(key) if hasattr(node, "get") else None
            if isinstance(value, dict) and hasattr(child, "is_frozen"):
                walk(value, child, full + ".")
            else:
                keys.append(full)
    walk(data, cfg, "")
    return keys


def _value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


class ConfigSources:
    """Which source set each key, in merge order: `record_*` after each merge step, then
    `source_of` (the winner, for error messages) and `overrides()` (the report lines)."""

    def __init__(self):
        self.setters = {}  # full key -> [(source, value)], in merge order

    def _record(self, key, source, value):
        self.setters.setdefault(key, []).append((source, value))

    def check_and_record_file(self, cfg, path, merge, role="config file"):
        """Check the file's keys (unknown ones raise with a suggestion), `merge(cfg, path)`, then
        record what the file set."""
        source = f"{role} {path}"
        keys = file_keys(cfg, path)
        check_keys(cfg, keys, source)
        merge(cfg, path)
        for key in keys:
            self._record(key, source, _value(cfg, key))

    def check_and_record_options(self, cfg, opts, merge):
        source = "the command-line options"
        keys = [str(k) for k in list(opts)[0::2]] if len(opts) % 2 == 0 else []
        check_keys(cfg, keys, source)
        merge(cfg, opts)
        for key in keys:
            self._record(key, source, _value(cfg, key))

    def record_changes(self, cfg, apply, source):
        """`apply(cfg)` sets some keys; each key whose value it changed is recorded under
        `source` (a text, or key -> text)."""
        before = {key: _value(cfg, key) for key in leaf_keys(cfg)}
        apply(cfg)
        for key in leaf_keys(cfg):
            if key in before and _value(cfg, key) != before[key]:
                self._record(key, source(key) if callable(source) else source, _value(cfg, key))

    def record_flags(self, cfg, apply):
        """`apply(cfg)` sets keys from command-line flags (reset_cfg): each change under its flag."""
        self.record_changes(cfg, apply, lambda key: f"the command-line flag {FLAG_OF_KEY.get(key, '(a flag)')}")

    def source_of(self, key):
        """Where the value of `key` in use was set ("config file x.yaml"), or None for a default."""
        setters = self.setters.get(key)
        return setters[-1][0] if setters else None

    def as_mapping(self):
        return {key: setters[-1][0] for key, setters in self.setters.items()}

    def overrides(self):
        """One line per key that two sources set to different values: the value used and its
        source first (the last in CoOp's order), then what it overrides."""
        lines = []
        for key, setters in self.setters.items():
            if len({repr(value) for _, value in setters}) < 2:
                continue
            (source, value), earlier = setters[-1], setters[-2::-1]
            overridden = ", ".join(f"{v!r} from {s}" for s, v in earlier)
            lines.append(f"Note: {key} = {value!r} from {source} overrides {overridden}")
        return lines
