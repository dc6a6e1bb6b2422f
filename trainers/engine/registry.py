"""A name -> class registry with Dassl's interface (`register()`, `get()`, `registered_names()`)."""


class Registry:
    """Maps names to objects; `@REG.register()` on a class registers it under its own name.

    An unknown name raises a KeyError that lists every registered name, so a typo in
    `--trainer` or `DATASET.NAME` tells the user what they could have written instead.
    """

    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, force=False):
        if name in self._obj_map and not force and self._obj_map[name] is not obj:
            raise KeyError(
                f'An object named "{name}" was already registered in the "{self._name}" registry '
                f"({self._obj_map[name]!r}); pick another name or pass force=True to replace it"
            )
        self._obj_map[name] = obj

    def register(self, obj=None, force=False, name=None):
        if obj is None:
            def wrapper(fn_or_class):
                self._do_register(name or fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class
            return wrapper
        self._do_register(name or obj.__name__, obj, force=force)
        return obj

    def get(self, name):
        if name not in self._obj_map:
            raise KeyError(
                f'No {self._name.lower()} named "{name}". Available: '
                f"{', '.join(sorted(self._obj_map)) or '(none registered)'}"
            )
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map.keys())

    def __contains__(self, name):
        return name in self._obj_map
