"""Modules imported on first use, so that `import trainers` and the config check stay fast.

open_clip (with timm) and torchvision each pull in torch._dynamo and take seconds to import
(about as long as torch itself on 2 cores), yet only building a backbone or a data pipeline
needs them. Checking a config and reporting a mistyped trainer or key must not wait for them
(issue 17: errors in seconds), so the modules that use them hold a `LazyModule` instead.
"""
import importlib

__all__ = ["LazyModule"]


class LazyModule:
    """Stands in for module `name` and imports it at the first attribute access.

    `after_import(module)`, when given, runs once right after the import (e.g. registering
    gatescope's model configs with open_clip). `LazyModule("x").y` is `import x; x.y`.
    """

    def __init__(self, name, after_import=None):
        self.__dict__.update(_name=name, _after_import=after_import, _module=None)

    def _load(self):
        module = self.__dict__["_module"]
        if module is None:
            module = importlib.import_module(self.__dict__["_name"])
            self.__dict__["_module"] = module  # before the hook, which may use this proxy
            hook = self.__dict__["_after_import"]
            if hook is not None:
                hook(module)
        return module

    def __getattr__(self, attr):
        return getattr(self._load(), attr)

    def __repr__(self):
        state = "imported" if self.__dict__["_module"] is not None else "not imported yet"
        return f"<LazyModule {self.__dict__['_name']!r} ({state})>"
