"""Every hook of gatescope, in one place (project name and entry-point group: "gatescope").

A plugin is a module or object with functions marked `@hookimpl` and named after these specs;
it may take any subset of a spec's arguments (pluggy passes them by keyword). Built-in gates,
the diagnostics, the remedies and the results file register through these same hooks.

Registration (called once, when the plugin manager is built or a config is assembled):

    gatescope_register_gates(register)     register(name, factory); factory(cfg, num_options,
                                           cond_dim, kind) -> a gate (see gates/contract.py)
    gatescope_register_trainers(register)  register(trainer_class) -> into TRAINER_REGISTRY
    gatescope_add_config(cfg)              add the plugin's keys before YAML and opts are merged

Lifecycle: every hook receives `context`, a `gates.HookContext` (gates/context.py): the run as
plugins see it (config, output folder, epoch and batch, the batch's labels and domains, model,
gates, parameter groups, loaders, evaluation helpers, TensorBoard, the error stopping the run)
and `context.store` for the plugin's own per-run objects. It is the only surface a plugin uses;
it sets no attribute on the trainer. Both engines (Dassl's through trainers/engine/dassl_adapter.py)
call the hooks in this order:

    load_state_dict(context, state)        # if resuming: each plugin whose state the checkpoint holds
    before_train(context)
    for each epoch:
        before_epoch(context)
        for each batch:
            gate_output(context, name, output, cond, phase)   # if gated: each gate's output
            gatescope_gate_losses(context)                    # if gated: extra loss terms
            after_backward(context)        # gradients present and unscaled, before the step
            after_step(context)            # after optimizer.step()
        after_test(context, split, results)   # if validating: split "val" (TEST.FINAL_MODEL best_val)
        after_epoch(context)
        state_dict(context)                # if checkpointing: once per checkpoint file written
    after_test(context, split, results)    # if testing: the final test (unless TEST.NO_TEST)
    on_abort(context, error)               # if stopping: any exception ends the run
    after_train(context)                   # always, last

The loop runs in try/finally: when any exception stops the run (a NonFiniteError, a failing
plugin, KeyboardInterrupt, SIGTERM, which the engine turns into `SignalInterrupt`), on_abort is
called with it, then after_train (with `context.error` set and no final test), then the
TensorBoard writer is closed, and the exception propagates. The last checkpoint stays intact, so
the same command resumes the run.

An epoch's checkpoint is written after every after_epoch hook has returned, so what a plugin
writes in after_epoch is on disk before the checkpoint that marks the epoch done (a run killed in
between redoes the epoch). A hook that raises stops the run with a PluginError naming the plugin
and its distribution.

gate_output is also called during every evaluation, with phase "test" (the diagnostics' probes
silence it), and gatescope_gate_losses whenever a plugin evaluates the training objective outside
the step through `context.compute_losses` (the diagnostics' task-gradient and loss-competition
probes, from their after_test / after_epoch). An evaluation-only run (train.py --eval-only) calls only after_test. Hooks
observe: a plugin that only listens must not change a number of the run (the diagnostics are
tested for that).
"""
import pluggy

PROJECT = "gatescope"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------- registration
@hookspec
def gatescope_register_gates(register):
    """Register gates: call register(name, factory) once per gate; factory(cfg, num_options,
    cond_dim, kind) returns the gate (kind is "mask" or "simplex", what the target needs)."""


@hookspec
def gatescope_register_trainers(register):
    """Register trainers: call register(trainer_class) once per trainer class. A class named like
    a built-in trainer or another plugin's is an error naming both."""


@hookspec
def gatescope_add_config(cfg):
    """Add this plugin's config keys to cfg (a yacs CfgNode) before files and opts are merged, and
    declare what each may hold beside its default (gates.config_spec.declare): checked once at setup."""


# ---------------------------------------------------------------- lifecycle
@hookspec
def before_train(context):
    """Called once before the first epoch, after a resume has restored the trainer's state and
    every plugin's (load_state_dict)."""


@hookspec
def before_epoch(context):
    """Called at the start of every epoch."""


@hookspec
def gate_output(context, name, output, cond, phase):
    """The gate at target `name` produced `output` (B, K) from conditioning `cond` (B, D); phase
    is "train" or "test".

    `output` is part of the autograd graph during training: a listener may attach a tensor
    hook to it (e.g. to capture dL/dg) but must not modify it.
    """


@hookspec
def gatescope_gate_losses(context):
    """Extra loss terms on the gates of the current training step: a dict name -> scalar tensor
    (or None). Read each gate head's `last_output` and its gate's `last_logits`
    (`context.gate_heads`). Added to the loss as "remedy_<name>".
    """


@hookspec
def after_backward(context):
    """Called after loss.backward(): gradients are present and unscaled, the step not yet taken.
    A remedy may edit gradients here (use `trylast` to run after the listeners)."""


@hookspec
def after_step(context):
    """Called after optimizer.step() (a step skipped by TRAIN.NONFINITE skip calls no hook)."""


@hookspec
def after_test(context, split, results):
    """Called after every evaluation with the split name ("val" or "test") and the evaluator's
    results dict ({"accuracy": %, "error_rate": %, "macro_f1": %, ...})."""


@hookspec
def after_epoch(context):
    """Called at the end of every epoch, after its validation, before its checkpoint is written."""


@hookspec
def on_abort(context, error):
    """Called once when `error` (any exception, KeyboardInterrupt and SIGTERM included) is about
    to stop the run: write what is most useful exactly then (the diagnostics flush their files).
    A failure here is reported, never raised over `error`."""


@hookspec
def after_train(context):
    """Called once at the very end of `train()`, always: after the final test of a completed run,
    or after on_abort when an exception stops it (then `context.error` is that exception).
    Release what the plugin holds; the TensorBoard writer is closed after this hook."""


# ---------------------------------------------------------------- checkpointed plugin state
@hookspec
def state_dict(context):
    """This plugin's state to save with the checkpoint being written, or None for none.

    Only tensors, numbers, strings, booleans, None and lists, tuples and dicts of them: a
    checkpoint is read back with torch.load(weights_only=True). Called after after_epoch.
    """


@hookspec
def load_state_dict(context, state):
    """Restore what `state_dict` returned when the checkpoint being resumed was written. Called
    only for plugins whose state the checkpoint holds, before before_train."""
