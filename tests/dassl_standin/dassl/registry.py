"""Dassl's Registry interface: register(obj=None, force=False), get(name), registered_names()."""


class Registry:
    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def register(self, obj=None, force=False):
        def add(item):
            if item.__name__ in self._obj_map and not force:
                raise KeyError(f"{item.__name__} is already registered in {self._name}")
            self._obj_map[item.__name__] = item
            return item
        return add if obj is None else add(obj)

    def get(self, name):
        if name not in self._obj_map:
            raise KeyError(f"{name} is not registered in {self._name}")
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map)
