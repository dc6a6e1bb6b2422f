"""Optimizers from named groups and Dassl's per-epoch learning-rate sequences (trainers/engine/optim.py)."""
import io

import pytest
import torch
import torch.nn as nn

from trainers.engine.config import get_cfg_default
from trainers.engine.optim import AVAI_OPTIMS, build_lr_scheduler, build_optimizer

# The emulation below steps torch's schedulers without optimizer steps; torch warns about that order.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")


def optim_cfg(**overrides):
    cfg = get_cfg_default().OPTIM
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


COCOOP = dict(NAME="sgd", LR=0.002, MAX_EPOCH=10, LR_SCHEDULER="cosine", WARMUP_EPOCH=1,
              WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5)


def make_param(*shape):
    return nn.Parameter(torch.zeros(*shape or (2,)))


def one_group_optimizer(cfg):
    return build_optimizer([{"name": "prompt", "params": [make_param()]}], cfg)


def lr_sequence(cfg, n_epochs=None, groups=None):
    """Group-0 (or all groups') lr actually set on the optimizer at each epoch, stepping once per epoch."""
    optimizer = build_optimizer(groups, cfg) if groups is not None else one_group_optimizer(cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    seq = []
    for _ in range(n_epochs or cfg.MAX_EPOCH):
        seq.append([g["lr"] for g in optimizer.param_groups])
        assert scheduler.get_last_lr() == seq[-1]
        scheduler.step()
    return seq


def sig4(values):
    return [f"{v:.3e}" for v in values]


# ---------------------------------------------------------------- published sequences (facts file)
def test_cocoop_sequence_matches_dassl():
    seq = [lrs[0] for lrs in lr_sequence(optim_cfg(**COCOOP))]
    assert sig4(seq) == sig4([1e-5, 2.000e-3, 1.951e-3, 1.809e-3, 1.588e-3, 1.309e-3, 1.000e-3,
                              6.910e-4, 4.122e-4, 1.910e-4])


def test_maple_sequence_matches_dassl():
    seq = [lrs[0] for lrs in lr_sequence(optim_cfg(**{**COCOOP, "LR": 0.0035, "MAX_EPOCH": 5}))]
    assert sig4(seq) == sig4([1e-5, 3.500e-3, 3.166e-3, 2.291e-3, 1.209e-3])


def test_coop_50_epoch_sequence_matches_dassl():
    seq = [lrs[0] for lrs in lr_sequence(optim_cfg(**{**COCOOP, "MAX_EPOCH": 50}))]
    assert len(seq) == 50
    assert sig4(seq[:4]) == sig4([1e-5, 2.000e-3, 1.998e-3, 1.992e-3])
    assert sig4(seq[-1:]) == sig4([7.885e-6])
    assert min(seq[1:]) > 0  # the cosine restarts after warm-up, so it never reaches zero


# ---------------------------------------------------------------- other schedules, hand-computed
def test_linear_warmup():
    cfg = optim_cfg(NAME="sgd", LR=0.01, MAX_EPOCH=8, LR_SCHEDULER="single_step", STEPSIZE=(2,), GAMMA=0.5,
                    WARMUP_EPOCH=3, WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-4)
    seq = [lrs[0] for lrs in lr_sequence(cfg)]
    # epoch 0: min lr; 1, 2: base * e / W; from 3: the step decay restarted at its epoch 0
    expected = [1e-4, 0.01 / 3, 0.02 / 3, 0.01, 0.01, 0.005, 0.005, 0.0025]
    assert seq == pytest.approx(expected, rel=1e-12)


def test_single_step_uses_last_stepsize_and_max_epoch_for_nonpositive():
    cfg = optim_cfg(LR=1.0, MAX_EPOCH=7, LR_SCHEDULER="single_step", STEPSIZE=[2, 3], GAMMA=0.1)
    assert [lrs[0] for lrs in lr_sequence(cfg)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])
    cfg = optim_cfg(LR=1.0, MAX_EPOCH=4, LR_SCHEDULER="single_step", STEPSIZE=(-1,), GAMMA=0.1)
    assert [lrs[0] for lrs in lr_sequence(cfg, n_epochs=5)] == pytest.approx([1, 1, 1, 1, 0.1])


def test_multi_step():
    cfg = optim_cfg(LR=0.8, MAX_EPOCH=7, LR_SCHEDULER="multi_step", STEPSIZE=[2, 5], GAMMA=0.5)
    assert [lrs[0] for lrs in lr_sequence(cfg)] == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.4, 0.2, 0.2])


def test_per_group_multiplier_scales_every_phase_but_the_constant_warmup():
    groups = [{"name": "prompt", "params": [make_param()]},
              {"name": "gate", "params": [make_param(3)], "lr_mult": 10.0}]
    seq = lr_sequence(optim_cfg(**COCOOP), groups=groups)
    assert seq[0] == [1e-5, 1e-5]  # Dassl gives every group WARMUP_CONS_LR
    for prompt_lr, gate_lr in seq[1:]:
        assert gate_lr == pytest.approx(10 * prompt_lr)
    assert seq[1] == pytest.approx([0.002, 0.02])


# ---------------------------------------------------------------- Dassl's mechanism, emulated
class DasslWarmupEmulation:
    """Dassl's warm-up wrapper, re-enacted around torch's own schedulers (the test oracle).

    The wrapper counts epochs until warm-up ends; from then on each step steps the successor and
    copies the successor's last lr into the optimizer. Without recount, the successor's epoch
    counter is set to the warm-up length before wrapping.
    """

    def __init__(self, optimizer, successor, warmup_epoch, kind, value):
        self.optimizer, self.successor = optimizer, successor
        self.warmup_epoch, self.kind, self.value = warmup_epoch, kind, value
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = 0
        self._set(self._lr())

    def _lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.kind == "constant" or self.last_epoch == 0:
            return [self.value] * len(self.base_lrs)
        return [b * self.last_epoch / self.warmup_epoch for b in self.base_lrs]

    def _set(self, lrs):
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr

    def step(self):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
            self._set(self.successor.get_last_lr())
        else:
            self.last_epoch += 1
            self._set(self._lr())


def dassl_reference(cfg, base_lrs, n_epochs):
    params = [make_param() for _ in base_lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)], lr=1.0)
    if cfg.LR_SCHEDULER == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(cfg.MAX_EPOCH))
    elif cfg.LR_SCHEDULER == "multi_step":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.STEPSIZE), cfg.GAMMA)
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.STEPSIZE[-1], cfg.GAMMA)
    if cfg.WARMUP_EPOCH > 0:
        if not cfg.WARMUP_RECOUNT:
            scheduler.last_epoch = cfg.WARMUP_EPOCH
        value = cfg.WARMUP_CONS_LR if cfg.WARMUP_TYPE == "constant" else cfg.WARMUP_MIN_LR
        scheduler = DasslWarmupEmulation(optimizer, scheduler, cfg.WARMUP_EPOCH, cfg.WARMUP_TYPE, value)
    seq = []
    for _ in range(n_epochs):
        seq.append([g["lr"] for g in optimizer.param_groups])
        scheduler.step()
    return seq


@pytest.mark.parametrize("sched", [dict(LR_SCHEDULER="cosine"),
                                   dict(LR_SCHEDULER="single_step", STEPSIZE=(3,), GAMMA=0.3),
                                   dict(LR_SCHEDULER="multi_step", STEPSIZE=[2, 6, 6], GAMMA=0.5)])
@pytest.mark.parametrize("warmup", [dict(WARMUP_EPOCH=-1), dict(WARMUP_EPOCH=1, WARMUP_TYPE="constant"),
                                    dict(WARMUP_EPOCH=4, WARMUP_TYPE="linear", WARMUP_MIN_LR=2e-4)])
@pytest.mark.parametrize("recount", [True, False])
def test_matches_dassl_mechanism(sched, warmup, recount):
    cfg = optim_cfg(LR=0.01, MAX_EPOCH=12, WARMUP_RECOUNT=recount, **sched, **warmup)
    groups = [{"name": "a", "params": [make_param()]}, {"name": "b", "params": [make_param()], "lr_mult": 3.0}]
    ours = lr_sequence(cfg, groups=groups)
    reference = dassl_reference(cfg, [0.01, 0.03], cfg.MAX_EPOCH)
    for epoch, (got, want) in enumerate(zip(ours, reference)):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-15), f"epoch {epoch}"


# ---------------------------------------------------------------- state
def test_resume_midway_continues_the_same_sequence_through_weights_only_files():
    cfg = optim_cfg(**COCOOP)
    full = [lrs[0] for lrs in lr_sequence(cfg)]

    optimizer = one_group_optimizer(cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    for _ in range(4):
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    optimizer2 = one_group_optimizer(cfg)
    scheduler2 = build_lr_scheduler(optimizer2, cfg)
    assert optimizer2.param_groups[0]["lr"] == full[0]
    optimizer2.load_state_dict(saved["optimizer"])
    scheduler2.load_state_dict(saved["scheduler"])
    assert scheduler2.last_epoch == 4
    resumed = []
    for _ in range(4, cfg.MAX_EPOCH):
        resumed.append(optimizer2.param_groups[0]["lr"])  # the live optimizer follows the schedule
        scheduler2.step()
    assert resumed == pytest.approx(full[4:], rel=1e-12)
    assert optimizer2.param_groups[0]["name"] == "prompt" and optimizer2.param_groups[0]["lr_mult"] == 1.0


def test_load_state_dict_sets_the_optimizer_lr():
    cfg = optim_cfg(**COCOOP)
    optimizer = one_group_optimizer(cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    optimizer.param_groups[0]["lr"] = 123.0
    scheduler.load_state_dict({"last_epoch": 2, "base_lrs": [0.002]})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.951e-3, rel=1e-3)


def test_state_of_a_different_grouping_is_refused():
    cfg = optim_cfg(**COCOOP)
    scheduler = build_lr_scheduler(one_group_optimizer(cfg), cfg)
    with pytest.raises(ValueError, match="2 base learning rates but the optimizer has 1"):
        scheduler.load_state_dict({"last_epoch": 2, "base_lrs": [0.002, 0.02]})


def test_reads_a_dassl_warmup_scheduler_state():
    # Dassl's wrapper stops counting at the end of warm-up; its successor holds the epoch count.
    cfg = optim_cfg(**COCOOP)
    scheduler = build_lr_scheduler(one_group_optimizer(cfg), cfg)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.SGD([make_param()], lr=0.002), 10.0)
    for _ in range(4):
        successor.step()
    scheduler.load_state_dict({"last_epoch": 1, "warmup_epoch": 1, "cons_lr": 1e-5, "base_lrs": [0.002],
                               "successor": successor})
    assert scheduler.last_epoch == 5
    assert scheduler.get_last_lr()[0] == pytest.approx(1.309e-3, rel=1e-3)


# ---------------------------------------------------------------- optimizer construction
def test_group_lr_and_names_are_kept():
    prompt, gate = make_param(), make_param(4)
    cfg = optim_cfg(NAME="sgd", LR=0.002, MOMENTUM=0.9, SGD_DAMPNING=0.1, WEIGHT_DECAY=5e-4)
    optimizer = build_optimizer([{"name": "prompt", "params": [prompt]},
                                 {"name": "gate", "params": (p for p in [gate]), "lr_mult": 10,
                                  "weight_decay": 0.0}], cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    g0, g1 = optimizer.param_groups
    assert (g0["name"], g0["lr"], g0["lr_mult"], g0["weight_decay"]) == ("prompt", 0.002, 1.0, 5e-4)
    assert (g1["name"], g1["lr"], g1["lr_mult"], g1["weight_decay"]) == ("gate", pytest.approx(0.02), 10.0, 0.0)
    assert g0["momentum"] == 0.9 and g0["dampening"] == 0.1 and g0["nesterov"] is False
    assert g1["params"][0] is gate


@pytest.mark.parametrize("name,cls,check", [
    ("adam", torch.optim.Adam, lambda g: g["betas"] == (0.8, 0.9) and not g["amsgrad"]),
    ("amsgrad", torch.optim.Adam, lambda g: g["amsgrad"]),
    ("adamw", torch.optim.AdamW, lambda g: g["betas"] == (0.8, 0.9) and g["weight_decay"] == 0.01),
    ("rmsprop", torch.optim.RMSprop, lambda g: g["alpha"] == 0.5 and g["momentum"] == 0.7),
    ("radam", torch.optim.RAdam, lambda g: g["decoupled_weight_decay"] and g["betas"] == (0.8, 0.9)),
    ("sgd", torch.optim.SGD, lambda g: g["nesterov"] and g["momentum"] == 0.7),
])
def test_each_optimizer_reads_dassl_keys(name, cls, check):
    cfg = optim_cfg(NAME=name, LR=0.1, WEIGHT_DECAY=0.01, MOMENTUM=0.7, RMSPROP_ALPHA=0.5,
                    ADAM_BETA1=0.8, ADAM_BETA2=0.9, SGD_NESTEROV=True)
    param = make_param()
    optimizer = build_optimizer([{"name": "prompt", "params": [param]}], cfg)
    assert type(optimizer) is cls and check(optimizer.param_groups[0])
    param.grad = torch.ones_like(param)
    optimizer.step()
    assert (param < 0).all()  # one step against a positive gradient


def test_module_gives_one_group_of_learnable_tensors_including_direct_ones():
    class PromptLearner(nn.Module):
        def __init__(self):
            super().__init__()
            self.ctx = nn.Parameter(torch.zeros(4, 8))  # held directly, as CoOp's context
            self.meta_net = nn.Linear(8, 2)
            self.frozen = nn.Linear(8, 8).requires_grad_(False)

    model = PromptLearner()
    optimizer = build_optimizer(model, optim_cfg(NAME="sgd"))
    (group,) = optimizer.param_groups
    assert group["name"] == "all"
    assert {id(p) for p in group["params"]} == {id(model.ctx), id(model.meta_net.weight), id(model.meta_net.bias)}


def test_staged_lr_on_a_module_splits_by_top_level_name():
    model = nn.Module()
    model.ctx = nn.Parameter(torch.zeros(2))
    model.head = nn.Linear(2, 2)
    cfg = optim_cfg(NAME="sgd", LR=0.1, STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.1)
    new, base = build_optimizer(model, cfg).param_groups
    assert (new["name"], new["lr"], len(new["params"])) == ("new_layers", 0.1, 2)
    assert (base["name"], base["lr"], base["params"][0] is model.ctx) == ("base_layers", pytest.approx(0.01), True)


@pytest.mark.parametrize("groups_fn,message", [
    (lambda p, q: [{"name": "prompt", "params": [p]}, {"name": "gate", "params": [q, p]}],
     "appears in group 'gate' and in group 'prompt'"),
    (lambda p, q: [{"name": "prompt", "params": [p, p]}], "appears in group 'prompt' twice"),
    (lambda p, q: [{"name": "prompt", "params": [p]}, {"name": "gate", "params": []}], "group 'gate' is empty"),
    (lambda p, q: [{"name": "gate", "params": [q.detach()]}], "group 'gate', tensor #0 .*requires_grad=False"),
    (lambda p, q: [{"name": "prompt", "params": [p], "lr": 0.1}], "unknown keys \\['lr'\\]"),
    (lambda p, q: [{"name": "x", "params": [p]}, {"name": "x", "params": [q]}], "Two parameter groups are named 'x'"),
    (lambda p, q: [{"params": [p]}], "needs a non-empty string 'name'"),
    (lambda p, q: [{"name": "gate", "params": [q], "lr_mult": -1}], "lr_mult must be a non-negative"),
])
def test_bad_groups_are_named_in_the_error(groups_fn, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(groups_fn(make_param(), make_param(3)), optim_cfg(NAME="sgd"))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="must be one of adam, amsgrad, sgd, rmsprop, radam, adamw; got 'lamb'"):
        one_group_optimizer(optim_cfg(NAME="lamb"))
    assert "sgd" in AVAI_OPTIMS
    optimizer = one_group_optimizer(optim_cfg(NAME="sgd"))
    with pytest.raises(ValueError, match="single_step, multi_step, cosine; got 'poly'"):
        build_lr_scheduler(optimizer, optim_cfg(LR_SCHEDULER="poly"))
    with pytest.raises(ValueError, match="constant, linear; got 'exp'"):
        build_lr_scheduler(optimizer, optim_cfg(LR_SCHEDULER="cosine", WARMUP_EPOCH=1, WARMUP_TYPE="exp"))
    with pytest.raises(TypeError, match="multi_step must be a list"):
        build_lr_scheduler(optimizer, optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=5))
