"""Optimizers and learning-rate schedules with Dassl's config keys (`cfg.OPTIM.*`) and Dassl's numbers.

`build_optimizer(param_groups, optim_cfg)` takes *named* parameter groups built by the trainer::

    [{"name": "prompt", "params": [ctx]}, {"name": "gate", "params": gate.parameters(), "lr_mult": 10.0}]

and gives each group `lr = OPTIM.LR * lr_mult`. "name" and "lr_mult" stay in the torch param
groups so diagnostics can find a group after the optimizer is built. Dassl instead scans child
modules (`OPTIM.STAGED_LR`), which silently drops tensors held directly by the model, such as
CoOp's `ctx`; with explicit groups every learnable tensor is accounted for or an error says why.

`build_lr_scheduler(optimizer, optim_cfg)` returns an `EpochLRScheduler`: the learning rate is a
closed-form function of the epoch counter that reproduces the sequence Dassl's schedulers produce
(torch's StepLR / MultiStepLR / CosineAnnealingLR wrapped in Dassl's constant or linear warm-up),
without holding the wrapped scheduler object. Its `state_dict()` is plain numbers, so checkpoints
load with `torch.load(weights_only=True)`, and after `load_state_dict` it drives the live optimizer
(Dassl's keeps driving a stale copy after a resume, so the learning rate stops changing).
"""
import bisect
import math
import warnings

import torch
import torch.nn as nn

__all__ = [
    "AVAI_OPTIMS", "AVAI_SCHEDS", "AVAI_WARMUP_TYPES", "build_optimizer", "build_lr_scheduler",
    "EpochLRScheduler", "StepDecay", "MultiStepDecay", "CosineDecay", "Warmup",
]

AVAI_OPTIMS = ("adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw")
AVAI_SCHEDS = ("single_step", "multi_step", "cosine")
AVAI_WARMUP_TYPES = ("constant", "linear")

# Keys a trainer may put in a group dict; "lr" is left out on purpose: it is OPTIM.LR * lr_mult,
# and a hand-set "lr" would be silently overwritten by the scheduler anyway.
_GROUP_KEYS = ("name", "params", "lr_mult", "weight_decay")


# ================================================================ optimizer
def build_optimizer(param_groups, optim_cfg):
    """A torch optimizer over named parameter groups, configured by Dassl's `OPTIM` keys.

    Args:
        param_groups: a list of dicts `{"name": str, "params": [tensors], "lr_mult": float = 1.0,
            "weight_decay": float (optional, default OPTIM.WEIGHT_DECAY)}`, or an `nn.Module`
            (one group "all" with its `requires_grad` parameters; with `OPTIM.STAGED_LR`, groups
            "new_layers" (lr_mult 1) and "base_layers" (lr_mult `OPTIM.BASE_LR_MULT`) split by
            the first component of each parameter's name against `OPTIM.NEW_LAYERS`).
        optim_cfg: `cfg.OPTIM` (NAME, LR, WEIGHT_DECAY, MOMENTUM, SGD_DAMPNING, SGD_NESTEROV,
            RMSPROP_ALPHA, ADAM_BETA1, ADAM_BETA2).

    Each torch param group gets `lr = OPTIM.LR * lr_mult` and keeps "name" and "lr_mult".
    """
    name = optim_cfg.NAME
    if name not in AVAI_OPTIMS:
        raise ValueError(f"OPTIM.NAME must be one of {', '.join(AVAI_OPTIMS)}; got {name!r}")
    lr = float(optim_cfg.LR)
    if not lr >= 0:
        raise ValueError(f"OPTIM.LR must be a non-negative number; got {optim_cfg.LR!r}")

    if isinstance(param_groups, nn.Module):
        param_groups = _groups_of_module(param_groups, optim_cfg)
    elif optim_cfg.STAGED_LR:
        warnings.warn("OPTIM.STAGED_LR is ignored because explicit parameter groups were given; "
                      "set lr_mult per group instead", stacklevel=2)
    groups = _check_param_groups(param_groups)
    torch_groups = []
    for group in groups:
        torch_group = dict(group)
        torch_group["lr"] = lr * group["lr_mult"]
        torch_groups.append(torch_group)

    wd = optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "adam":
        return torch.optim.Adam(torch_groups, lr=lr, weight_decay=wd, betas=betas)
    if name == "amsgrad":
        return torch.optim.Adam(torch_groups, lr=lr, weight_decay=wd, betas=betas, amsgrad=True)
    if name == "sgd":
        if optim_cfg.SGD_NESTEROV and (optim_cfg.MOMENTUM <= 0 or optim_cfg.SGD_DAMPNING != 0):
            raise ValueError(
                "OPTIM.SGD_NESTEROV needs OPTIM.MOMENTUM > 0 and OPTIM.SGD_DAMPNING = 0; got "
                f"MOMENTUM={optim_cfg.MOMENTUM}, SGD_DAMPNING={optim_cfg.SGD_DAMPNING}"
            )
        return torch.optim.SGD(torch_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV)
    if name == "rmsprop":
        return torch.optim.RMSprop(torch_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                                   alpha=optim_cfg.RMSPROP_ALPHA)
    if name == "radam":
        # Dassl's RAdam decays weights decoupled (p -= lr * wd * p) and falls back to momentum SGD
        # while the variance estimate is unreliable; torch's RAdam does both with this flag.
        return torch.optim.RAdam(torch_groups, lr=lr, weight_decay=wd, betas=betas,
                                 decoupled_weight_decay=True)
    return torch.optim.AdamW(torch_groups, lr=lr, weight_decay=wd, betas=betas)  # "adamw"


def _groups_of_module(model, optim_cfg):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not optim_cfg.STAGED_LR:
        return [{"name": "all", "params": [p for _, p in named]}]
    new_layers = optim_cfg.NEW_LAYERS
    new_layers = [new_layers] if isinstance(new_layers, str) else list(new_layers)
    if not new_layers:
        raise ValueError("OPTIM.STAGED_LR is True but OPTIM.NEW_LAYERS is empty; name the "
                         "top-level submodules (or parameters) that get the full learning rate")
    top_names = {n.split(".")[0] for n, _ in named}
    unknown = [layer for layer in new_layers if layer not in top_names]
    if unknown:
        raise ValueError(f"OPTIM.NEW_LAYERS names {unknown}, which hold no learnable parameter of "
                         f"the model; its top-level names are {sorted(top_names)}")
    new = [p for n, p in named if n.split(".")[0] in new_layers]
    base = [p for n, p in named if n.split(".")[0] not in new_layers]
    groups = [{"name": "new_layers", "params": new}]
    if base:
        groups.append({"name": "base_layers", "params": base, "lr_mult": float(optim_cfg.BASE_LR_MULT)})
    return groups


def _check_param_groups(param_groups):
    """Validated copies of the group dicts, with "params" as a list and "lr_mult" filled in."""
    if isinstance(param_groups, dict):
        raise TypeError("build_optimizer() expects a list of group dicts or an nn.Module, got one "
                        "dict; wrap it in a list: [{'name': ..., 'params': [...]}]")
    groups = list(param_groups)
    if not groups:
        raise ValueError("build_optimizer() got no parameter groups; give at least one "
                         "{'name': ..., 'params': [...]}")
    owner = {}  # id(tensor) -> name of the group that holds it
    checked = []
    for index, group in enumerate(groups):
        if not isinstance(group, dict):
            raise TypeError(f"Parameter group #{index} must be a dict with 'name' and 'params'; "
                            f"got {type(group).__name__}")
        name = group.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"Parameter group #{index} needs a non-empty string 'name' (e.g. "
                             f"'prompt', 'gate'); got {name!r}")
        unknown = sorted(set(group) - set(_GROUP_KEYS))
        if unknown:
            raise ValueError(f"Parameter group '{name}' has unknown keys {unknown}; allowed keys are "
                             f"{list(_GROUP_KEYS)} (the learning rate is OPTIM.LR * lr_mult)")
        if any(c["name"] == name for c in checked):
            raise ValueError(f"Two parameter groups are named '{name}'; group names must be unique "
                             "(diagnostics find groups by name)")
        if "params" not in group:
            raise ValueError(f"Parameter group '{name}' has no 'params'")
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if not params:
            raise ValueError(f"Parameter group '{name}' is empty; drop the group or check that the "
                             "module it was built from has learnable tensors")
        for i, p in enumerate(params):
            where = f"Parameter group '{name}', tensor #{i}"
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"{where} is a {type(p).__name__}, not a tensor")
            if not p.requires_grad:
                raise ValueError(f"{where} (shape {tuple(p.shape)}) has requires_grad=False; a frozen "
                                 "tensor cannot be optimized: remove it from the group or unfreeze it")
            if not p.is_leaf:
                raise ValueError(f"{where} (shape {tuple(p.shape)}) is not a leaf tensor (it was computed "
                                 "from others); pass the nn.Parameter itself")
            if id(p) in owner:
                other = owner[id(p)]
                detail = "twice" if other == name else f"and in group '{other}'"
                raise ValueError(f"{where} (shape {tuple(p.shape)}) appears in group '{name}' {detail}; "
                                 "each tensor must belong to exactly one group")
            owner[id(p)] = name
        lr_mult = group.get("lr_mult", 1.0)
        if isinstance(lr_mult, bool) or not isinstance(lr_mult, (int, float)) or not lr_mult >= 0:
            raise ValueError(f"Parameter group '{name}': lr_mult must be a non-negative number; got {lr_mult!r}")
        out = {"name": name, "params": params, "lr_mult": float(lr_mult)}
        if "weight_decay" in group:
            out["weight_decay"] = float(group["weight_decay"])
        checked.append(out)
    return checked


# ================================================================ learning-rate schedules
class StepDecay:
    """torch's StepLR as a factor of the base lr: `gamma ** (epoch // step_size)`."""

    def __init__(self, step_size, gamma):
        self.step_size = step_size
        self.gamma = gamma

    def __call__(self, epoch):
        return self.gamma ** (epoch // self.step_size)

    def __repr__(self):
        return f"StepDecay(step_size={self.step_size}, gamma={self.gamma})"


class MultiStepDecay:
    """torch's MultiStepLR as a factor: `gamma ** (number of milestones <= epoch)`.

    A milestone listed twice counts twice, as in torch.
    """

    def __init__(self, milestones, gamma):
        self.milestones = sorted(milestones)
        self.gamma = gamma

    def __call__(self, epoch):
        return self.gamma ** bisect.bisect_right(self.milestones, epoch)

    def __repr__(self):
        return f"MultiStepDecay(milestones={self.milestones}, gamma={self.gamma})"


class CosineDecay:
    """torch's CosineAnnealingLR with eta_min = 0 as a factor: `(1 + cos(pi * epoch / T_max)) / 2`."""

    def __init__(self, t_max):
        self.t_max = float(t_max)

    def __call__(self, epoch):
        return (1 + math.cos(math.pi * epoch / self.t_max)) / 2

    def __repr__(self):
        return f"CosineDecay(t_max={self.t_max})"


class Warmup:
    """Dassl's warm-up (`ConstantWarmupScheduler` / `LinearWarmupScheduler`) over `epochs` epochs.

    During warm-up (epoch e < W):
        constant: lr = cons_lr for every group;
        linear:   lr = min_lr for every group at e = 0, base_lr * e / W for 0 < e < W.
    After warm-up (e >= W), with `decay` the successor's factor:
        recount=True  (Dassl's default): lr = base_lr * decay(e - W)   (the successor starts at 0);
        recount=False: lr = base_lr * decay(e) / decay(W). Dassl sets the successor's epoch to W
            and hands over its stored lr (base_lr, at e = W); torch's schedulers then update the lr
            multiplicatively from there, so the successor's curve is rescaled to start at base_lr
            (for cosine it still reaches 0 at T_max), not jumped to base_lr * decay(W).
    """

    def __init__(self, epochs, kind, cons_lr, min_lr, recount=True):
        if kind not in AVAI_WARMUP_TYPES:
            raise ValueError(f"OPTIM.WARMUP_TYPE must be one of {', '.join(AVAI_WARMUP_TYPES)}; got {kind!r}")
        self.epochs = int(epochs)
        self.kind = kind
        self.cons_lr = float(cons_lr)
        self.min_lr = float(min_lr)
        self.recount = bool(recount)

    def lr(self, epoch, base_lr):
        """The warm-up learning rate at `epoch` < `self.epochs` for a group with `base_lr`."""
        if self.kind == "constant":
            return self.cons_lr
        if epoch == 0:
            return self.min_lr
        return base_lr * epoch / self.epochs

    def __repr__(self):
        return (f"Warmup(epochs={self.epochs}, kind={self.kind!r}, cons_lr={self.cons_lr}, "
                f"min_lr={self.min_lr}, recount={self.recount})")


class EpochLRScheduler:
    """Per-epoch learning rates as a closed-form function of `last_epoch` (stepped once per epoch).

    `lr_g(e) = base_lr_g * decay(e)` without warm-up; with warm-up see `Warmup`. `base_lr_g` is each
    group's lr when the scheduler is built (OPTIM.LR * lr_mult), so multipliers carry through
    every phase except the constant/minimum warm-up value, which Dassl gives to all groups.

    Construction sets epoch 0's rates on the optimizer; `step()` moves to the next epoch and sets
    its rates; `load_state_dict` sets the rates of the loaded epoch. `state_dict()` holds only
    numbers and lists of numbers.
    """

    def __init__(self, optimizer, decay, warmup=None):
        self.optimizer = optimizer
        self.decay = decay
        self.warmup = warmup if warmup is not None and warmup.epochs > 0 else None
        if self.warmup is not None and not self.warmup.recount and abs(decay(self.warmup.epochs)) < 1e-12:
            raise ValueError(
                f"With OPTIM.WARMUP_RECOUNT False the schedule continues from the decay's value at the "
                f"end of warm-up ({self.warmup.epochs} epochs), which is 0 for {decay!r}; use fewer "
                "warm-up epochs or WARMUP_RECOUNT True"
            )
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def lrs_at(self, epoch):
        """The learning rate of every param group at `epoch` (0-based)."""
        w = self.warmup
        if w is None:
            return [base * self.decay(epoch) for base in self.base_lrs]
        if epoch < w.epochs:
            return [w.lr(epoch, base) for base in self.base_lrs]
        if w.recount:
            return [base * self.decay(epoch - w.epochs) for base in self.base_lrs]
        scale = self.decay(epoch) / self.decay(w.epochs)
        return [base * scale for base in self.base_lrs]

    def _apply(self):
        self._last_lr = self.lrs_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def step(self):
        """Advance one epoch and set its learning rates on the optimizer."""
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self):
        return list(self._last_lr)

    def state_dict(self):
        return {"last_epoch": int(self.last_epoch), "base_lrs": list(self.base_lrs),
                "_last_lr": list(self._last_lr)}

    def load_state_dict(self, state_dict):
        """Restore the epoch counter and base rates, then set that epoch's rates on the optimizer.

        Also reads the scheduler state of a checkpoint written by Dassl (loaded with trust), whose
        warm-up wrapper stops counting at the end of warm-up and leaves the count to its successor.
        """
        if "last_epoch" not in state_dict or "base_lrs" not in state_dict:
            raise KeyError(f"A scheduler state needs 'last_epoch' and 'base_lrs'; got keys {sorted(state_dict)}")
        base_lrs = [float(lr) for lr in state_dict["base_lrs"]]
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"The scheduler state has {len(base_lrs)} base learning rates but the optimizer has "
                f"{len(self.optimizer.param_groups)} param groups; the checkpoint was written for a "
                "different parameter grouping"
            )
        self.base_lrs = base_lrs
        self.last_epoch = self._epoch_of_state(state_dict)
        self._apply()

    def _epoch_of_state(self, state_dict):
        epoch = int(state_dict["last_epoch"])
        successor = state_dict.get("successor")
        warmup_epochs = state_dict.get("warmup_epoch")
        if successor is None or warmup_epochs is None or epoch < warmup_epochs:
            return epoch
        successor_epoch = successor.get("last_epoch") if isinstance(successor, dict) else \
            getattr(successor, "last_epoch", None)
        if successor_epoch is None:
            raise ValueError("The scheduler state looks like Dassl's warm-up scheduler after warm-up, but "
                             "its successor has no 'last_epoch'; cannot tell which epoch it was at")
        recount = self.warmup.recount if self.warmup is not None else True
        return int(successor_epoch) + (int(warmup_epochs) if recount else 0)

    def __repr__(self):
        return f"EpochLRScheduler(decay={self.decay!r}, warmup={self.warmup!r}, last_epoch={self.last_epoch})"


def build_lr_scheduler(optimizer, optim_cfg):
    """An `EpochLRScheduler` from Dassl's keys: LR_SCHEDULER, STEPSIZE, GAMMA, MAX_EPOCH, WARMUP_*.

    single_step: StepDecay(STEPSIZE, GAMMA); STEPSIZE may be a list (its last entry is used);
        STEPSIZE <= 0 means MAX_EPOCH (one decay at the end, i.e. a constant rate in training).
    multi_step: MultiStepDecay(STEPSIZE, GAMMA), STEPSIZE a list of milestone epochs.
    cosine: CosineDecay(T_max = MAX_EPOCH).
    WARMUP_EPOCH > 0 wraps it in a `Warmup` of WARMUP_TYPE (constant uses WARMUP_CONS_LR, linear
    WARMUP_MIN_LR) with WARMUP_RECOUNT.
    """
    name = optim_cfg.LR_SCHEDULER
    stepsize = optim_cfg.STEPSIZE
    gamma = float(optim_cfg.GAMMA)
    max_epoch = optim_cfg.MAX_EPOCH
    if name == "single_step":
        if isinstance(stepsize, (list, tuple)):
            if not stepsize:
                raise ValueError("OPTIM.STEPSIZE is empty; give a step size such as (20,) or (-1,) for MAX_EPOCH")
            stepsize = stepsize[-1]
        if isinstance(stepsize, bool) or not isinstance(stepsize, int):
            raise TypeError(f"OPTIM.STEPSIZE for single_step must be an integer; got {stepsize!r}")
        stepsize = stepsize if stepsize > 0 else max_epoch
        if stepsize <= 0:
            raise ValueError(f"single_step needs OPTIM.STEPSIZE > 0 or OPTIM.MAX_EPOCH > 0; got "
                             f"STEPSIZE={optim_cfg.STEPSIZE}, MAX_EPOCH={max_epoch}")
        decay = StepDecay(stepsize, gamma)
    elif name == "multi_step":
        if not isinstance(stepsize, (list, tuple)) or not all(
                isinstance(m, int) and not isinstance(m, bool) for m in stepsize):
            raise TypeError(f"OPTIM.STEPSIZE for multi_step must be a list of integer epochs "
                            f"(e.g. [30, 60]); got {stepsize!r}")
        decay = MultiStepDecay(stepsize, gamma)
    elif name == "cosine":
        if not max_epoch > 0:
            raise ValueError(f"The cosine schedule needs OPTIM.MAX_EPOCH > 0; got {max_epoch}")
        decay = CosineDecay(max_epoch)
    else:
        raise ValueError(f"OPTIM.LR_SCHEDULER must be one of {', '.join(AVAI_SCHEDS)}; got {name!r}")

    warmup = None
    if optim_cfg.WARMUP_EPOCH > 0:
        warmup = Warmup(optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_TYPE, optim_cfg.WARMUP_CONS_LR,
                        optim_cfg.WARMUP_MIN_LR, optim_cfg.WARMUP_RECOUNT)
    return EpochLRScheduler(optimizer, decay, warmup)
