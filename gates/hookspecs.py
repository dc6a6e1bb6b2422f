"""Every hook of gatescope, in one place (project name and entry-point group: "gatescope").

A plugin is a module or object with functions marked `@hookimpl` and named after these specs;
it may take any subset of a spec's arguments (pluggy passes them by keyword). Built-in gates,
the built-in trainers' extras and the diagnostics register through these same hooks.

Registration (called once, when the plugin manager is built or a config is assembled):

    gatescope_register_gates(register)     register(name, factory); factory(cfg, num_options,
                                           cond_dim) -> a Gate (see gates/contract.py)
    gatescope_register_trainers(register)  register(trainer_class) -> into TRAINER_REGISTRY
    gatescope_add_config(cfg)              add the plugin's keys before YAML and opts are merged

Lifecycle, called by every trainer with the trainer as first argument, in this order:

    before_train(trainer)
    for each epoch:
        before_epoch(trainer)
        for each batch:
            gate_output(trainer, name, output, cond, phase="train")   # gated models only
            gatescope_gate_losses(trainer)  # gated models: extra named loss terms
            after_backward(trainer)        # gradients present and unscaled, before the step
            after_step(trainer)            # after optimizer.step()
        after_epoch(trainer)               # after evaluation; the epoch's checkpoint follows
    after_train(trainer)                   # after the final test
    after_test(trainer, split, results)    # after every evaluation (val or test)
    on_abort(trainer, error)               # the run is about to stop on `error` (a NaN/Inf)

An epoch's checkpoint is written after every after_epoch hook has returned, so what a plugin
writes in after_epoch is on disk before the checkpoint that marks the epoch done (a run killed in
between redoes the epoch). A hook that raises stops the run with a PluginError naming the plugin
and its distribution.

gate_output is also called during evaluation with phase="test". Hooks observe: a plugin that
only listens must not change a number of the run (the diagnostics are tested for that).
"""
import pluggy

PROJECT = "gatescope"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def gatescope_register_gates(register):
    """Register gates: call register(name, factory) once per gate."""


@hookspec
def gatescope_register_trainers(register):
    """Register trainers: call register(trainer_class) once per trainer class."""


@hookspec
def gatescope_add_config(cfg):
    """Add this plugin's config keys to cfg (a yacs CfgNode) before files and opts are merged, and
    declare what each may hold beside its default (gates.config_spec.declare): checked once at setup."""


@hookspec
def before_train(trainer):
    """Called once before the first epoch (after a resume has restored the trainer's state)."""


@hookspec
def before_epoch(trainer):
    """Called at the start of every epoch."""


@hookspec
def gate_output(trainer, name, output, cond, phase):
    """A gate produced `output` (B, K) from conditioning `cond` (B, D); phase is train or test.

    `output` is part of the autograd graph during training: a listener may attach a tensor
    hook to it (e.g. to capture dL/dg) but must not modify it.
    """


@hookspec
def gatescope_gate_losses(trainer):
    """Extra loss terms on the gates of the current training step: a dict name -> scalar tensor
    (or None). Read each GateHead's `last_output` and its gate's `last_logits`. Called by
    GatedTrainer.compute_losses, which adds each term to the loss as "remedy_<name>".
    """


@hookspec
def after_backward(trainer):
    """Called after loss.backward(): gradients are present and unscaled, the step not yet taken."""


@hookspec
def after_step(trainer):
    """Called after optimizer.step()."""


@hookspec
def after_epoch(trainer):
    """Called at the end of every epoch, after its evaluation, before its checkpoint is written."""


@hookspec
def after_test(trainer, split, results):
    """Called after every evaluation with the split name and the evaluator's results dict."""


@hookspec
def after_train(trainer):
    """Called once at the end of training, after the final test."""


@hookspec
def on_abort(trainer, error):
    """Called once when the run is about to stop on `error` (a NonFiniteError): write what is
    most useful exactly then (the diagnostics flush their files). Must not raise."""
