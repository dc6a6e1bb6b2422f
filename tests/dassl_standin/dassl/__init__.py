"""A minimal stand-in for Dassl (https://github.com/KaiyangZhou/Dassl.pytorch), for the tests only.

Dassl is not on the package registries, so the tests of `GATESCOPE_ENGINE=dassl` run gatescope's
trainers on this package instead, put on PYTHONPATH of a subprocess (never installed: a real
Dassl must not be shadowed). It has the public names gatescope uses and Dassl's documented
behaviour (/work/shared/reference/dassl-coop-facts.md): the bare loop, `after_epoch` that
validates and saves, `after_train` that tests and closes the writer, `test()` that returns the
first metric, checkpoints with a `checkpoint` pointer file, `parse_batch_train` returning the
domain too. Data and evaluation come from gatescope (their interfaces are Dassl's).
"""
