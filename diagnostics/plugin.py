"""The diagnostics as a pluggy plugin: registered like any third-party plugin, it only listens.

On for every trainer that has gates (DIAGNOSTICS.ENABLED, default True); each trainer gets its
own `RunDiagnostics` (trainer.diagnostics), so several runs in one process do not mix.
"""
from gates import hookimpl

from .config import add_diagnostics_config
from .recorder import RunDiagnostics


def run_of(trainer, create=True):
    """The trainer's RunDiagnostics, or None when the diagnostics do not apply to it."""
    run = getattr(trainer, "diagnostics", None)
    if run is not None or not create:
        return run
    cfg = getattr(trainer, "cfg", None)
    if cfg is None or "DIAGNOSTICS" not in cfg or not cfg.DIAGNOSTICS.ENABLED:
        return None
    if not getattr(trainer, "gate_heads", None) or getattr(trainer, "optim", None) is None:
        return None
    trainer.diagnostics = RunDiagnostics(trainer)
    return trainer.diagnostics


@hookimpl
def gatescope_add_config(cfg):
    add_diagnostics_config(cfg)


@hookimpl
def before_train(trainer):
    run = run_of(trainer)
    if run is not None:
        run.before_train()


@hookimpl
def before_epoch(trainer):
    run = run_of(trainer, create=False)
    if run is not None:
        run.before_epoch()


@hookimpl
def gate_output(trainer, name, output, cond, phase):
    run = run_of(trainer, create=False)
    if run is not None and phase == "train":
        run.gate_output(name, output, cond)


# tryfirst: the raw gradient is read before any other plugin (a remedy) changes it.
@hookimpl(tryfirst=True)
def after_backward(trainer):
    run = run_of(trainer, create=False)
    if run is not None:
        run.after_backward()


@hookimpl
def after_step(trainer):
    run = run_of(trainer, create=False)
    if run is not None:
        run.after_step()


@hookimpl
def after_epoch(trainer):
    run = run_of(trainer, create=False)
    if run is not None:
        run.after_epoch()


@hookimpl
def after_test(trainer, split, results):
    run = run_of(trainer)  # an eval-only run starts here
    if run is not None:
        run.after_test(split, results)


@hookimpl
def after_train(trainer):
    run = run_of(trainer, create=False)
    if run is not None:
        run.after_train()


@hookimpl
def on_abort(trainer, error):
    run = run_of(trainer, create=False)
    if run is not None:
        run.flush(reason=f"{type(error).__name__}: {error}")
