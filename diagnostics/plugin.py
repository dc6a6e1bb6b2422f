"""The diagnostics as a pluggy plugin: registered like any third-party plugin, it only listens.

On for every trainer that has gates (DIAGNOSTICS.ENABLED, default True). It sees the run only
through the hooks' `context` (gates.HookContext); each run gets its own `RunDiagnostics`, kept
in `context.store["diagnostics"]`, so several runs in one process do not mix. What it holds
between evaluations is saved with the trainer's checkpoints (state_dict / load_state_dict), so a
resumed run's diagnostics equal an uninterrupted run's.
"""
from gates import hookimpl

from .config import add_diagnostics_config
from .recorder import RunDiagnostics

STORE_KEY = "diagnostics"


def run_of(context, create=True):
    """The run's RunDiagnostics, or None when the diagnostics do not apply to it."""
    run = context.store.get(STORE_KEY)
    if run is not None or not create:
        return run
    cfg = context.cfg
    if "DIAGNOSTICS" not in cfg or not cfg.DIAGNOSTICS.ENABLED:
        return None
    if not context.gate_heads or getattr(context, "optim", None) is None:
        return None
    run = context.store[STORE_KEY] = RunDiagnostics(context)
    return run


@hookimpl
def gatescope_add_config(cfg):
    add_diagnostics_config(cfg)


@hookimpl
def load_state_dict(context, state):
    run = run_of(context)
    if run is not None:
        run.load_state_dict(state)


@hookimpl
def state_dict(context):
    run = run_of(context, create=False)
    return run.state_dict() if run is not None else None


@hookimpl
def before_train(context):
    run = run_of(context)
    if run is not None:
        run.before_train()


@hookimpl
def before_epoch(context):
    run = run_of(context, create=False)
    if run is not None:
        run.before_epoch()


@hookimpl
def gate_output(context, name, output, cond, phase):
    run = run_of(context, create=False)
    if run is not None and phase == "train":
        run.gate_output(name, output, cond)


# tryfirst: the raw gradient is read before any other plugin (a remedy) changes it.
@hookimpl(tryfirst=True)
def after_backward(context):
    run = run_of(context, create=False)
    if run is not None:
        run.after_backward()


@hookimpl
def after_step(context):
    run = run_of(context, create=False)
    if run is not None:
        run.after_step()


@hookimpl
def after_epoch(context):
    run = run_of(context, create=False)
    if run is not None:
        run.after_epoch()


@hookimpl
def after_test(context, split, results):
    run = run_of(context)  # an eval-only run starts here
    if run is not None:
        run.after_test(split, results)


@hookimpl
def on_abort(context, error):
    run = run_of(context, create=False)
    if run is not None:
        run.flush(reason=f"{type(error).__name__}: {error}")


@hookimpl
def after_train(context):
    run = run_of(context, create=False)
    if run is not None and context.error is None:  # a stopped run was flushed by on_abort
        run.after_train()
