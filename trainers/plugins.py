"""gatescope's plugins: which built-in plugins every run has, and the process-wide manager.

The built-in plugins register through the same hooks as third-party ones (gates/hookspecs.py);
this list is the one place that names them, so the plugin manager (gates/manager.py) depends on
none of them and the packages stay free of cycles (gates <- diagnostics <- trainers).
"""
import diagnostics.plugin
import gates.builtin
import gates.remedies
from gates.manager import GatescopePlugins

from . import results

# Built-in gates, the diagnostics, the remedies and the results file (results.json).
BUILTIN_PLUGINS = (gates.builtin, diagnostics.plugin, gates.remedies, results)

_MANAGER = None


def load_plugins(autoload=None):
    """A new manager with the built-in plugins and (unless `autoload` is False, or
    GATESCOPE_DISABLE_PLUGIN_AUTOLOAD is set) the installed entry points."""
    return GatescopePlugins(builtin=BUILTIN_PLUGINS, autoload=autoload)


def get_plugins(reload=False):
    """The process-wide plugin manager (built on first use)."""
    global _MANAGER
    if _MANAGER is None or reload:
        _MANAGER = load_plugins()
    return _MANAGER
