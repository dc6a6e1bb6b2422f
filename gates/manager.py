"""The plugin manager: built-in plugins and entry points of group "gatescope", loaded loudly.

Built-in plugins register through exactly the hooks a third-party plugin uses; which modules
they are is the application's choice, handed in as `builtin` (gatescope's list is in
trainers/plugins.py), so this package depends on none of them. Entry points are loaded one by
one, so that a broken plugin is reported by its name and distribution instead of silently
skipped or taking the others down with it (pluggy's own `load_setuptools_entrypoints` does
neither). `GATESCOPE_DISABLE_PLUGIN_AUTOLOAD=1` turns entry-point loading off.

Besides pluggy's hook calls, the manager attributes every result to its plugin: the gates and
trainers each plugin registers (a name registered twice is an error naming both), and each
plugin's checkpointed state (`state_dicts` / `load_state_dicts`).
"""
import importlib.metadata as metadata
import inspect
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import pluggy
import torch

from . import hookspecs

ENTRY_POINT_GROUP = "gatescope"
AUTOLOAD_ENV = "GATESCOPE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = ("gatescope", "built-in")
# What torch.load(weights_only=True) rebuilds: the only values a plugin's checkpointed state may
# hold (exact types: numpy's float64 is a float subclass that weights-only loading refuses).
STATE_LEAVES = (str, int, float, bool, type(None))
STATE_CONTAINERS = (dict, OrderedDict, list, tuple)


class PluginError(RuntimeError):
    """A plugin failed to import, register or run; the message names plugin and distribution."""


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    gates: list = field(default_factory=list)
    trainers: list = field(default_factory=list)

    def label(self):
        return f"plugin '{self.name}' (distribution {self.distribution} {self.version})"


@dataclass
class GateEntry:
    name: str
    factory: object
    plugin: PluginInfo


class GatescopePlugins:
    """pluggy's manager plus what it lacks: who provides what, and clear failures.

    `builtin`: the application's own plugins, as modules (registered under their module name,
    distribution "gatescope built-in"); `autoload` (default: unless GATESCOPE_DISABLE_PLUGIN_AUTOLOAD
    is set) then loads the entry points of group "gatescope".
    """

    def __init__(self, builtin=(), autoload=None):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info = {}  # plugin name -> PluginInfo
        self.gates = {}  # gate name -> GateEntry
        self.trainers = {}  # trainer name -> PluginInfo of the plugin that registered it
        if autoload is None:
            autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
        for module in builtin:
            self.register(module, module.__name__, *BUILTIN_DISTRIBUTION)
        if autoload:
            self.load_entry_points()
        self.pm.check_pending()

    @property
    def hook(self):
        return self.pm.hook

    def register(self, plugin, name, distribution="(not installed)", version=""):
        if name in self.info:
            raise PluginError(f"two plugins are named '{name}': {self.info[name].label()} and "
                              f"one from distribution {distribution} {version}; rename one entry point")
        info = PluginInfo(name, distribution, version)
        try:
            self.pm.register(plugin, name=name)
        except Exception as e:
            hint = ""
            if "'trainer'" in str(e) and "hookspec" in str(e):
                hint = (". Lifecycle hooks receive `context` (a gates.HookContext), not the trainer: rename the "
                        "argument and read what the hook needs from the context (see gates/hookspecs.py).")
            raise PluginError(f"{info.label()} could not be registered: {type(e).__name__}: {e}{hint}") from e
        self.info[name] = info
        self.collect_gates(info)
        return info

    def load_entry_points(self):
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "(unknown)"
            version = dist.version if dist is not None else ""
            try:
                plugin = ep.load()
            except Exception as e:
                raise PluginError(
                    f"plugin '{ep.name}' (distribution {dist_name} {version}, entry point {ep.value}) failed "
                    f"to import: {type(e).__name__}: {e}. Fix or uninstall it, or set {AUTOLOAD_ENV}=1 "
                    "to run without plugins.") from e
            self.register(plugin, ep.name, dist_name, version)

    def _each_impl(self, hook_name):
        """(PluginInfo, function) per implementation, so each call is attributed to its plugin."""
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            yield self.info[impl.plugin_name], impl.function

    def collect_gates(self, info):
        """The gates plugin `info` registers (called as it is registered, so a plugin added later,
        e.g. by a test, contributes its gates too)."""
        for owner, function in self._each_impl("gatescope_register_gates"):
            if owner is not info:
                continue

            def register(name, factory):
                if name in self.gates:
                    raise PluginError(f"gate '{name}' is registered twice: by {self.gates[name].plugin.label()} "
                                      f"and by {info.label()}; uninstall one or rename the gate")
                if not callable(factory):
                    raise PluginError(f"{info.label()} registered gate '{name}' with a non-callable factory")
                self.gates[name] = GateEntry(name, factory, info)
                info.gates.append(name)
            self._call(info, function, "gatescope_register_gates", register=register)

    def register_trainers(self, registry):
        """Add the trainers plugins register to `registry` (the engine's TRAINER_REGISTRY).

        Called whenever a config is assembled; registering the same class again is a no-op. A
        class whose name is already taken by another class (a built-in trainer, or another
        plugin's) is a PluginError naming both, never a silent choice of one of them.
        """
        for info, function in self._each_impl("gatescope_register_trainers"):
            def register(cls, _info=info):
                name = cls.__name__
                if name in registry and registry.get(name) is not cls:
                    existing = registry.get(name)
                    owner = self.trainers.get(name)
                    holder = (f"{owner.label()}'s trainer" if owner is not None else "gatescope's built-in trainer")
                    raise PluginError(
                        f"{_info.label()} registers trainer '{name}' ({cls.__module__}.{cls.__qualname__}), but "
                        f"{holder} '{name}' ({existing.__module__}.{existing.__qualname__}) already has that name; "
                        "rename the plugin's trainer class (--trainer selects trainers by class name)")
                if name not in registry:
                    registry.register(cls)
                self.trainers[name] = _info
                if name not in _info.trainers:
                    _info.trainers.append(name)
            self._call(info, function, "gatescope_register_trainers", register=register)

    def add_config(self, cfg):
        for info, function in self._each_impl("gatescope_add_config"):
            self._call(info, function, "gatescope_add_config", cfg=cfg)

    def _call(self, info, function, hook_name, **kwargs):
        wanted = inspect.signature(function).parameters
        try:
            return function(**{k: v for k, v in kwargs.items() if k in wanted})
        except PluginError:
            raise
        except Exception as e:
            raise PluginError(f"{info.label()} failed in {hook_name}: {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------ lifecycle
    def call_lifecycle(self, hook_name, **kwargs):
        """Call lifecycle hook `hook_name` (pluggy's order); a failure is a PluginError naming the
        plugin and distribution whose implementation raised (found in the traceback)."""
        caller = getattr(self.pm.hook, hook_name)
        try:
            return caller(**kwargs)
        except PluginError:
            raise
        except Exception as e:
            culprit = self._implementation_in_traceback(caller, e.__traceback__)
            who = culprit.label() if culprit is not None else (
                "one of the plugins implementing it: " + ", ".join(
                    self.info[i.plugin_name].label() for i in caller.get_hookimpls() if i.plugin_name in self.info))
            raise PluginError(
                f"{who} failed in hook {hook_name}: {type(e).__name__}: {e}. The run stopped; its last checkpoint "
                "is intact, so after fixing or uninstalling the plugin (DIAGNOSTICS.ENABLED False turns the "
                "diagnostics off) the same command resumes it.") from e

    def call_while_stopping(self, hook_name, **kwargs):
        """Call `hook_name` while an exception is already stopping the run (on_abort, after_train):
        every implementation runs, and a failure is printed naming its plugin instead of raised,
        so it never hides the error that stopped the run. Same order as pluggy's calls."""
        for info, function in reversed(list(self._each_impl(hook_name))):
            try:
                self._call(info, function, hook_name, **kwargs)
            except Exception as e:
                print(f"Warning: while the run was stopping, {e}")

    # ------------------------------------------------------------ checkpointed state
    def state_dicts(self, context):
        """{plugin name: state} of every plugin whose `state_dict` hook returns something; a state
        that a checkpoint could not hold is a PluginError naming the plugin and the value."""
        states = {}
        for info, function in self._each_impl("state_dict"):
            state = self._call(info, function, "state_dict", context=context)
            if state is not None:
                where = _unsavable(state, "state")
                if where is not None:
                    raise PluginError(f"{info.label()} returned a state_dict holding {where}; a checkpoint holds "
                                      "only tensors, numbers, strings, booleans, None and lists, tuples and dicts "
                                      "of them (it is read back with torch.load(weights_only=True))")
                states[info.name] = state
        return states

    def load_state_dicts(self, context, states):
        """Hand each plugin its entry of `states` (from `state_dicts`) through load_state_dict;
        plugins without an entry are not called. An entry of a plugin that is no longer loaded is
        reported, since that plugin's history does not continue."""
        loaded = set()
        for info, function in self._each_impl("load_state_dict"):
            if info.name in states:
                self._call(info, function, "load_state_dict", context=context, state=states[info.name])
                loaded.add(info.name)
        for name in sorted(set(states) - loaded):
            print(f"Note: the checkpoint holds state of plugin '{name}', which is not loaded (or has no "
                  "load_state_dict hook); it is ignored")

    def _implementation_in_traceback(self, caller, tb):
        """The PluginInfo of the first hook implementation on the traceback's stack, or None."""
        codes = {}
        for impl in caller.get_hookimpls():
            code = getattr(getattr(impl.function, "__wrapped__", impl.function), "__code__", None)
            if code is not None and impl.plugin_name in self.info:
                codes[code] = self.info[impl.plugin_name]
        while tb is not None:
            if tb.tb_frame.f_code in codes:
                return codes[tb.tb_frame.f_code]
            tb = tb.tb_next
        return None

    # ------------------------------------------------------------ gates
    def available_gates(self):
        return sorted(self.gates)

    def build_gate(self, cfg, name, num_options, cond_dim, kind):
        """Build gate `name` and check it against the contract (shape, kind, range)."""
        from .contract import validate_gate

        if name not in self.gates:
            raise KeyError(f'No gate named "{name}" (GATE.NAME). Available gates: '
                           f"{', '.join(self.available_gates())}")
        entry = self.gates[name]
        try:
            gate = entry.factory(cfg, num_options, cond_dim, kind)
        except Exception as e:
            raise PluginError(f"gate '{name}' from {entry.plugin.label()} failed to build: "
                              f"{type(e).__name__}: {e}") from e
        validate_gate(gate, name, num_options, cond_dim, kind)
        return gate


def _unsavable(value, path):
    """The path of the first value in `value` that a weights-only checkpoint cannot hold, else None."""
    if isinstance(value, torch.Tensor) or type(value) in STATE_LEAVES:
        return None
    if type(value) not in STATE_CONTAINERS:
        return f"{path}, a {type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) not in (str, int, float):
                return f"{path} key {key!r} of type {type(key).__name__}"
            found = _unsavable(item, f"{path}[{key!r}]")
            if found is not None:
                return found
        return None
    for i, item in enumerate(value):
        found = _unsavable(item, f"{path}[{i}]")
        if found is not None:
            return found
    return None
