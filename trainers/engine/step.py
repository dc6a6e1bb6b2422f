"""The optimizer step, written once: Dassl's `model_backward_and_update` and the prompt trainers'
`forward_backward` both end in `optimizer_step`, so TRAIN.NONFINITE and the checks on both sides
of the update are the same on every path::

    optimizer_step(trainer, loss, optimizers):
        the loss finite?                 NaN/Inf: stop or skip the step (TRAIN.NONFINITE)
        zero_grad, backward              amp: scaled by the GradScaler, then unscaled
        gradient L2 norm of each group   NaN/Inf (fp32, fp16): stop or skip the step
        trainer.after_backward()         listeners read, then remedies edit, the gradients
        gradient clipping                OPTIM.GRAD_CLIP > 0: one L2 norm over every parameter
        learning rates representable     each group's lr finite in its parameters' dtype, else stop
        optimizer.step()                 amp: GradScaler.step and update
        parameter L2 norm of each group  NaN/Inf: stop (under either policy, see below)
        trainer.after_step()

TRAIN.NONFINITE "skip" exists for a batch that produces a NaN or Inf loss or gradient: the step
is not taken, counted (`trainer.nonfinite_skips`, checkpointed, written to results.json and the
diagnostics summary) and training goes on. Weights that become non-finite *after* a step with
finite gradients are a different fault: the update itself (learning rate x gradient) overflowed,
and every later step would do the same, so skipping cannot help and keeping them would be a
silent ruin of the run. Such a step stops the run with a NonFiniteError naming the group and its
learning rate, under either policy; the run's last checkpoint keeps the last finite weights. The
same holds for a learning rate the parameters' dtype cannot represent (e.g. OPTIM.LR 1e38 with
GATE.LR_MULT 10 in float32), caught before the step instead of inside torch's optimizer.

With PREC amp, overflowing gradients are the GradScaler's business (it skips the step and lowers
its scale), so only the loss and the parameters are checked.
"""
import math

import torch

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(FloatingPointError):
    """A NaN or Inf in the loss, a gradient, a learning rate or the parameters stopped the run."""


def step_label(trainer):
    """`epoch E/N, batch B/M (global step S)` for messages (1-based epoch and batch)."""
    epoch, batch = getattr(trainer, "epoch", 0), getattr(trainer, "batch_idx", 0)
    num_batches = getattr(trainer, "num_batches", 0)
    return (f"epoch {epoch + 1}/{getattr(trainer, 'max_epoch', '?')}, batch {batch + 1}/{num_batches or '?'} "
            f"(global step {epoch * num_batches + batch})")


def labelled_groups(optimizers):
    """[(label, group)] for every parameter group of `optimizers` ({model name: optimizer}): the
    group's "name" (groupN without one), prefixed by the model's name when there are several."""
    several = len(optimizers) > 1
    out = []
    for model_name, optim in optimizers.items():
        for i, group in enumerate(optim.param_groups):
            name = group.get("name", f"group{i}")
            out.append((f"{model_name}/{name}" if several else name, group))
    return out


def group_l2(groups, tensor_of, device):
    """{label: L2 norm over the group of tensor_of(p) (skipping None)}, as floats (NaN/Inf when a
    value is). Every step runs this: norms accumulate in float32 (also for fp16 tensors, without a
    float64 copy) and the host waits for the device once, not once per group."""
    labels, norms = [], []
    for label, group in groups:
        tensors = [t.detach() for t in (tensor_of(p) for p in group["params"]) if t is not None]
        labels.append(label)
        norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(t, dtype=torch.float32) for t in tensors]))
            if tensors else torch.zeros((), device=device))
    values = torch.stack([n.to(device) for n in norms]).tolist() if norms else []
    return dict(zip(labels, values))


def count_nonfinite(tensors):
    """(NaN count, Inf count, number of values) over `tensors`."""
    n_nan = sum(int(torch.isnan(t).sum()) for t in tensors)
    n_inf = sum(int(torch.isinf(t).sum()) for t in tensors)
    return n_nan, n_inf, sum(t.numel() for t in tensors)


def first_nonfinite_group(groups, norms, tensor_of):
    """(label, description) of the first group whose tensors hold a NaN or Inf, or None.

    A non-finite norm is only a hint: float32 norms of huge finite values overflow too, so the
    values themselves are counted before anything is called non-finite.
    """
    for label, group in groups:
        if math.isfinite(norms[label]):
            continue
        tensors = [t.detach() for t in (tensor_of(p) for p in group["params"]) if t is not None]
        n_nan, n_inf, n = count_nonfinite(tensors)
        if n_nan or n_inf:
            return label, f"{n_nan} NaN and {n_inf} Inf among {n:,} values"
    return None


def optimizer_step(trainer, loss, optimizers, losses=None, scaler=None):
    """Backward and one optimizer step for `loss` over `optimizers` ({model name: optimizer});
    True when the step was taken, False when TRAIN.NONFINITE skip skipped it.

    Calls `trainer.after_backward()` and `trainer.after_step()` (the lifecycle points) and keeps
    `trainer.last_finite` (the step's label, loss and gradient norms) for the messages. Raises
    NonFiniteError as the module docstring says. `losses` (the named terms of `loss`) only serve
    the message of a non-finite loss; `scaler` is amp's GradScaler.
    """
    if not torch.isfinite(loss.detach()).all():
        terms = {k: float(v.detach()) for k, v in (losses or {}).items() if v.numel() == 1}
        return skip_or_stop(trainer, optimizers, "the loss", f"loss {float(loss.detach().flatten()[0])}"
                            + (f" (terms: {terms})" if len(terms) > 1 else ""))
    for optim in optimizers.values():
        optim.zero_grad()
    if scaler is not None:
        scaler.scale(loss).backward()
        for optim in optimizers.values():
            scaler.unscale_(optim)
    else:
        loss.backward()
    groups = labelled_groups(optimizers)
    grad_l2 = group_l2(groups, lambda p: p.grad, loss.device)
    if scaler is None:
        bad = first_nonfinite_group(groups, grad_l2, lambda p: p.grad)
        if bad is not None:
            return skip_or_stop(trainer, optimizers, f"parameter group '{bad[0]}'", f"{bad[1]} of its gradient")
    trainer.after_backward()
    # After after_backward (the remedies' edits are in: a frozen gate's gradient is None and
    # counts for nothing; the diagnostics have read the raw gradient), before the update.
    clip_gradients(trainer, groups)
    check_learning_rates(trainer, groups)
    try:
        if scaler is not None:
            for optim in optimizers.values():
                scaler.step(optim)
            scaler.update()
        else:
            for optim in optimizers.values():
                optim.step()
    except RuntimeError as error:
        if "overflow" not in str(error):
            raise
        # A step size the optimizer derives from the learning rate (Adam divides it by its bias
        # correction) does not fit the parameters' dtype: the same fault as an oversized lr.
        label, group = max(groups, key=lambda item: abs(item[1]["lr"]))
        raise NonFiniteError(
            f"The optimizer step at {step_label(trainer)} overflowed ({error}): a step size computed from "
            f"the learning rates (largest: parameter group '{label}', lr {group['lr']:.6g}) does not fit the "
            "parameters' dtype. Lower OPTIM.LR (or GATE.LR_MULT for the 'gate' group).") from error
    check_parameters(trainer, groups, grad_l2, loss.device)
    trainer.after_step()
    trainer.last_finite = {"step": step_label(trainer), "loss": float(loss.detach()), "grad_l2": grad_l2}
    return True


def clip_gradients(trainer, groups):
    """OPTIM.GRAD_CLIP: when > 0, torch.nn.utils.clip_grad_norm_ over the gradients of every
    optimizer parameter taken as one vector (the study's `clip_grad_norm_(model.parameters(),
    max_norm=1)`: its frozen CLIP has no gradients, so the same vector): with t their total L2
    norm, every gradient is multiplied by min(1, max_norm / (t + 1e-6)). Under amp the gradients
    are already unscaled here, so max_norm is in the loss's own units.

    Keeps `trainer.last_grad_clip` = {"max_norm": float, "total_norm": 0-d tensor (t, before
    clipping, left on the device: no host sync per step)} for the diagnostics, None when off.
    Raises ValueError for a negative or non-finite OPTIM.GRAD_CLIP.
    """
    max_norm = float(getattr(trainer.cfg, "OPTIM", {}).get("GRAD_CLIP", 0.0) or 0.0)
    if not math.isfinite(max_norm) or max_norm < 0:
        raise ValueError(f"OPTIM.GRAD_CLIP must be a finite number >= 0 (the largest gradient L2 norm; 0 turns "
                         f"clipping off), got {max_norm}")
    if max_norm == 0:
        trainer.last_grad_clip = None
        return
    params = [p for _, group in groups for p in group["params"] if p.grad is not None]
    total = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
    trainer.last_grad_clip = {"max_norm": max_norm, "total_norm": total.detach()}


def check_learning_rates(trainer, groups):
    """NonFiniteError when a group's learning rate is NaN/Inf or beyond its parameters' dtype."""
    for label, group in groups:
        lr = float(group["lr"])
        dtype = next((p.dtype for p in group["params"] if p.is_floating_point()), torch.float32)
        largest = torch.finfo(dtype).max
        if not math.isfinite(lr) or abs(lr) > largest:
            raise NonFiniteError(
                f"The learning rate of parameter group '{label}' is {lr:.6g} at {step_label(trainer)}, which its "
                f"{str(dtype).replace('torch.', '')} parameters cannot use (largest value {largest:.4g}); the step "
                "was not taken. A group's rate is OPTIM.LR times its multiplier (GATE.LR_MULT for 'gate'): lower "
                "them.")


def check_parameters(trainer, groups, grad_l2, device):
    """NonFiniteError when a step with finite gradients left a parameter NaN or Inf (see the module
    docstring: never skipped, the weights in memory are ruined)."""
    param_l2 = group_l2(groups, lambda p: p, device)
    bad = first_nonfinite_group(groups, param_l2, lambda p: p)
    if bad is None:
        return
    label, found = bad
    lr = dict(groups)[label]["lr"]
    raise NonFiniteError(
        f"Non-finite values in the parameters of group '{label}' after the optimizer step at {step_label(trainer)}: "
        f"{found}. The gradients were finite (L2 {grad_l2[label]:.6g}) and the group's learning rate is {lr:.6g}, "
        "so the update itself overflowed; TRAIN.NONFINITE skip cannot help, every later step would do the same. "
        "The run's last checkpoint holds the last finite weights. Lower OPTIM.LR (or GATE.LR_MULT for the "
        "'gate' group).")


def skip_or_stop(trainer, optimizers, where, found):
    """TRAIN.NONFINITE for a NaN/Inf loss or gradient: "skip" counts and skips the step (returns
    False); "stop" raises NonFiniteError naming the step, `where`, what was found and the last
    finite values (the loop then runs the plugins' on_abort, which write the diagnostics)."""
    for optim in optimizers.values():
        optim.zero_grad()
    if trainer.cfg.TRAIN.get("NONFINITE", "stop") == "skip":
        trainer.nonfinite_skips = getattr(trainer, "nonfinite_skips", 0) + 1
        print(f"Skipping {step_label(trainer)}: non-finite values in {where} ({found}); "
              f"{trainer.nonfinite_skips} step(s) skipped so far (TRAIN.NONFINITE skip)")
        return False
    last = getattr(trainer, "last_finite", None)
    if last is None:
        previous = "no earlier step of this process was finite"
    else:
        norms = ", ".join(f"{k} {v:.6g}" for k, v in last["grad_l2"].items())
        previous = f"last finite step ({last['step']}): loss {last['loss']:.6g}, gradient L2 by group: {norms}"
    raise NonFiniteError(
        f"Non-finite values in {where} at {step_label(trainer)}: {found}. {previous}. "
        "The diagnostics (when on) were written before stopping. Lower OPTIM.LR (or GATE.LR_MULT), "
        "or set TRAIN.NONFINITE skip to skip such steps.")
