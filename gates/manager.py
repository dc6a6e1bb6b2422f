"""The plugin manager: built-in plugins and entry points of group "gatescope", loaded loudly.

Built-in gates (and the diagnostics) register through exactly the hooks a third-party plugin
uses. Entry points are loaded one by one, so that a broken plugin is reported by its name and
distribution instead of silently skipped or taking the others down with it (pluggy's own
`load_setuptools_entrypoints` does neither). `GATESCOPE_DISABLE_PLUGIN_AUTOLOAD=1` turns
entry-point loading off.
"""
import importlib
import importlib.metadata as metadata
import os
from dataclasses import dataclass, field

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "gatescope"
AUTOLOAD_ENV = "GATESCOPE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PLUGINS = ("gates.builtin", "diagnostics.plugin", "gates.remedies")
BUILTIN_DISTRIBUTION = ("gatescope", "built-in")


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
    """pluggy's manager plus what it lacks: who provides what, and clear failures."""

    def __init__(self, autoload=None):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info = {}  # plugin name -> PluginInfo
        self.gates = {}  # gate name -> GateEntry
        if autoload is None:
            autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
        for module_name in BUILTIN_PLUGINS:
            self.register(importlib.import_module(module_name), module_name, *BUILTIN_DISTRIBUTION)
        if autoload:
            self.load_entry_points()
        self.pm.check_pending()
        self.collect_registrations()

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
            raise PluginError(f"{info.label()} could not be registered: {type(e).__name__}: {e}") from e
        self.info[name] = info
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

    def collect_registrations(self):
        for info, function in self._each_impl("gatescope_register_gates"):
            def register(name, factory, _info=info):
                if name in self.gates:
                    raise PluginError(f"gate '{name}' is registered twice: by {self.gates[name].plugin.label()} "
                                      f"and by {_info.label()}; uninstall one or rename the gate")
                if not callable(factory):
                    raise PluginError(f"{_info.label()} registered gate '{name}' with a non-callable factory")
                self.gates[name] = GateEntry(name, factory, _info)
                _info.gates.append(name)
            self._call(info, function, "gatescope_register_gates", register=register)

    def register_trainers(self, registry):
        """Add the trainers plugins register to `registry` (the engine's TRAINER_REGISTRY)."""
        for info, function in self._each_impl("gatescope_register_trainers"):
            def register(cls, _info=info):
                if cls.__name__ not in registry:
                    registry.register(cls)
                _info.trainers.append(cls.__name__)
            self._call(info, function, "gatescope_register_trainers", register=register)

    def add_config(self, cfg):
        for info, function in self._each_impl("gatescope_add_config"):
            self._call(info, function, "gatescope_add_config", cfg=cfg)

    def _call(self, info, function, hook_name, **kwargs):
        import inspect

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


_MANAGER = None


def get_plugins(reload=False):
    """The process-wide plugin manager (built on first use)."""
    global _MANAGER
    if _MANAGER is None or reload:
        _MANAGER = GatescopePlugins()
    return _MANAGER
