"""The remedies (gates/remedies): each changes what it says and nothing else."""
import json
import os
from types import SimpleNamespace

import pytest
import torch
from yacs.config import CfgNode as CN

import gates.remedies as remedies
from conftest import REPO, build_demo_trainer
from gates import hookimpl
from gates.builtin import MLPGate, SigmoidGate, SoftmaxGate
from gates.config_spec import validate
from gates.manager import PluginError
from gates.remedies import balance, entropy, gradnorm, temperature, zloss
from gates import AppliedGate
from trainers.plugins import get_plugins

# 20 training images in batches of 8: 2 steps per epoch; no probes, no final test (speed).
FAST = ("DATASET.NUM_SHOTS", 2, "DATALOADER.TRAIN_X.BATCH_SIZE", 8, "DIAGNOSTICS.PROBE_EPOCHS", "[]",
        "DIAGNOSTICS.COUNTERFACTUAL", False, "DIAGNOSTICS.INPUT_TESTS", False, "DIAGNOSTICS.PLOTS", False,
        "TEST.NO_TEST", True)


def remedy_cfg():
    cfg = CN()
    remedies.gatescope_add_config(cfg)
    return cfg.REMEDY


def steps_of(output_dir):
    with open(os.path.join(output_dir, "diagnostics", "steps.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class EpochSnapshots:
    """Copies of the "prompt" and "gate" groups at the start of training and after every epoch,
    and each gate's temperature during every epoch."""

    def __init__(self):
        self.start = None
        self.after = []
        self.temperatures = []

    @staticmethod
    def snapshot(context):
        return {g["name"]: [p.detach().clone() for p in g["params"]] for g in context.param_groups}

    @hookimpl
    def before_epoch(self, context):
        if self.start is None:
            self.start = self.snapshot(context)

    @hookimpl
    def after_epoch(self, context):
        self.after.append(self.snapshot(context))
        self.temperatures.append([getattr(h.gate, "temperature", None) for h in context.gate_heads])


def train(demo_root, out, trainer_name, epochs, opts=(), probe=None):
    plugins = get_plugins()
    if probe is not None:
        plugins.pm.register(probe, name="remedy-test-probe")
    try:
        trainer = build_demo_trainer(demo_root, out, trainer=trainer_name,
                                     opts=FAST + ("OPTIM.MAX_EPOCH", epochs) + tuple(opts))
        trainer.train()
    finally:
        if probe is not None:
            plugins.pm.unregister(name="remedy-test-probe")
    return trainer


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------- registration and defaults
def test_remedies_are_a_builtin_plugin_and_off_by_default(demo_root, tmp_path):
    plugins = get_plugins()
    assert "gates.remedies" in plugins.info
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST)
    r = trainer.cfg.REMEDY
    assert not r.GRADNORM.ENABLED and r.GRADNORM.CAP == 1e3 and r.GRADNORM.FLOOR == 1.0
    assert r.BALANCE.WEIGHT == r.ENTROPY.WEIGHT == r.ZLOSS.WEIGHT == 0.0 and r.ENTROPY.DIRECTION == ""
    assert not r.TEMPERATURE.ENABLED and r.WARMUP.EPOCHS == 0 and not r.INIT.ENABLED
    assert r.FREEZE.AFTER_EPOCH == -1 and not r.FREEZE.ALWAYS and r.FREEZE.LOGIT == 5.0
    assert r.EXPLICIT_REG.WEIGHT_DECAY < 0 and r.EXPLICIT_REG.CTX_DROPOUT == 0.0
    for module in remedies.REMEDY_MODULES:
        assert "Failure mode" in module.__doc__ or "failure mode" in module.__doc__, module.__name__


def test_readme_lists_every_remedy_node():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Remedies"):]
    for node in remedy_cfg():
        assert f"REMEDY.{node}" in section, node


# ---------------------------------------------------------------- gradnorm
def test_gradnorm_makes_the_received_ratio_one_and_leaves_the_raw_one(demo_root, tmp_path):
    train(demo_root, tmp_path / "off", "CoOpGated", 1)
    train(demo_root, tmp_path / "on", "CoOpGated", 1, ("REMEDY.GRADNORM.ENABLED", True))
    off, on = steps_of(tmp_path / "off"), steps_of(tmp_path / "on")
    assert len(off) == len(on) == 2
    # Raw gradient: read before the remedy; step 0 is the same computation in both runs.
    assert on[0]["rho"] == off[0]["rho"]
    assert on[0]["groups"]["gate"]["rms"] == off[0]["groups"]["gate"]["rms"]
    for rec in off:  # nothing rescales: the optimizer receives the raw gradient
        assert rec["rho_received"] == pytest.approx(rec["rho"], rel=1e-9)
        assert rec["groups"]["gate"]["received_rms"] == pytest.approx(rec["groups"]["gate"]["rms"], rel=1e-9)
    for rec in on:
        assert rec["rho"] < 0.1  # the demo gate's raw imbalance, far inside the cap of 1e3
        assert rec["rho_received"] == pytest.approx(1.0, rel=1e-5)
        # The prompts' gradient is not touched.
        assert rec["groups"]["prompt"]["received_rms"] == pytest.approx(rec["groups"]["prompt"]["rms"], rel=1e-9)


def fake_context(cfg, groups, heads=()):
    """A stand-in for the HookContext the remedies receive, with the views they read."""
    return SimpleNamespace(cfg=SimpleNamespace(REMEDY=cfg, TRAINER=SimpleNamespace(NAME="Fake")),
                           param_groups=[{"name": n, "params": ps} for n, ps in groups.items()],
                           model=object(), gate_heads=list(heads), epoch=0, max_epoch=1, store={})


def with_grad(values):
    p = torch.nn.Parameter(torch.zeros(len(values)))
    p.grad = torch.tensor(values, dtype=torch.float32)
    return p


@pytest.mark.parametrize("gate_value,cap,floor,factor", [
    (1e-6, 1e3, 1.0, 1e3),  # capped
    (0.5, 1e3, 1.0, 2.0),  # prompt rms 1 / gate rms 0.5
    (4.0, 1e3, 1.0, 1.0),  # larger than the prompts: floor 1 leaves it
    (4.0, 1e3, 0.1, 0.25),  # a lower floor lets it shrink
])
def test_gradnorm_factor_cap_and_floor(gate_value, cap, floor, factor):
    cfg = remedy_cfg()
    cfg.GRADNORM.ENABLED, cfg.GRADNORM.CAP, cfg.GRADNORM.FLOOR = True, cap, floor
    prompt, gate = with_grad([1.0, -1.0, 1.0, -1.0]), with_grad([gate_value, -gate_value])
    context = fake_context(cfg, {"prompt": [prompt], "gate": [gate]})
    gradnorm.after_backward(context, cfg)
    assert context.store["remedy_gradnorm_factor"] == pytest.approx(factor)
    assert torch.allclose(gate.grad, torch.tensor([gate_value, -gate_value]) * factor)
    assert torch.equal(prompt.grad, torch.tensor([1.0, -1.0, 1.0, -1.0]))


# ---------------------------------------------------------------- freezes
@pytest.mark.parametrize("mode,frozen,moving", [("fix_gate", "gate", "prompt"),
                                                ("freeze_prompts", "prompt", "gate")])
def test_warmup_really_freezes_the_named_group(demo_root, tmp_path, mode, frozen, moving):
    probe = EpochSnapshots()
    trainer = train(demo_root, tmp_path, "CoOpGated", 3,
                    ("REMEDY.WARMUP.EPOCHS", 2, "REMEDY.WARMUP.MODE", mode, "OPTIM.WARMUP_EPOCH", 0), probe)
    # Weight decay and momentum are on: a zero gradient would still move the tensor.
    assert trainer.cfg.OPTIM.WEIGHT_DECAY > 0 and trainer.cfg.OPTIM.MOMENTUM > 0
    start, (e0, e1, e2) = probe.start, probe.after
    assert same(start[frozen], e0[frozen]) and same(e0[frozen], e1[frozen])  # bit-identical while frozen
    assert not same(e1[frozen], e2[frozen])  # and moving after
    assert not same(start[moving], e0[moving]) and not same(e0[moving], e1[moving])
    steps = steps_of(tmp_path)
    for rec in steps:
        received = rec["groups"][frozen]["received_rms"]
        assert (received == 0.0) == (rec["epoch"] < 2)
        assert rec["groups"][frozen]["rms"] > 0  # the raw gradient is still measured


def test_freeze_after_epoch_freezes_the_gate_from_that_epoch_on(demo_root, tmp_path):
    probe = EpochSnapshots()
    train(demo_root, tmp_path, "CoOpGated", 3, ("REMEDY.FREEZE.AFTER_EPOCH", 1, "OPTIM.WARMUP_EPOCH", 0), probe)
    start, (e0, e1, e2) = probe.start, probe.after
    assert not same(start["gate"], e0["gate"])
    assert same(e0["gate"], e1["gate"]) and same(e1["gate"], e2["gate"])
    assert not same(e1["prompt"], e2["prompt"])


def test_always_frozen_sigmoid_gate_sits_at_its_logit(demo_root, tmp_path):
    probe = EpochSnapshots()
    trainer = train(demo_root, tmp_path, "CoOpGated", 2, ("GATE.NAME", "sigmoid", "REMEDY.FREEZE.ALWAYS", True,
                                                          "OPTIM.WARMUP_EPOCH", 0), probe)
    logits = trainer.gate_head.gate.logits
    assert torch.equal(logits, torch.full_like(logits, 5.0))
    for snap in (probe.start, *probe.after):
        assert same(snap["gate"], [logits])
    assert not same(probe.start["prompt"], probe.after[-1]["prompt"])


def test_always_frozen_and_init_together_are_refused(demo_root, tmp_path):
    with pytest.raises((ValueError, PluginError), match="FREEZE.ALWAYS and REMEDY.INIT"):
        train(demo_root, tmp_path, "CoOpGated", 1, ("REMEDY.FREEZE.ALWAYS", True, "REMEDY.INIT.ENABLED", True))


# ---------------------------------------------------------------- initialisation
def test_init_sets_the_output_bias_and_scales_the_weights(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + (
        "GATE.MLP.INIT_BIAS", 10.0, "REMEDY.INIT.ENABLED", True, "REMEDY.INIT.LOGIT", 0.5,
        "REMEDY.INIT.WEIGHT_SCALE", 0.25))
    layer = trainer.gate_head.gate.net[-1]
    weight, hidden = layer.weight.detach().clone(), trainer.gate_head.gate.net[0].weight.detach().clone()
    assert float(layer.bias.detach().min()) > 5  # saturated by GATE.MLP.INIT_BIAS
    trainer.start_epoch = 1  # a resumed run keeps its checkpoint's values
    remedies.before_train(trainer.hook_context)
    assert float(layer.bias.detach().min()) > 5
    trainer.start_epoch = 0
    remedies.before_train(trainer.hook_context)
    assert torch.equal(layer.bias, torch.full_like(layer.bias, 0.5))
    assert torch.allclose(layer.weight, weight * 0.25)
    assert torch.equal(trainer.gate_head.gate.net[0].weight, hidden)  # only the output layer


def test_init_refuses_a_gate_without_logits_or_output_bias(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + (
        "GATE.NAME", "keyquery", "GATE.TARGET", "pool", "REMEDY.INIT.ENABLED", True))
    with pytest.raises(ValueError, match="keyquery"):
        remedies.before_train(trainer.hook_context)


# ---------------------------------------------------------------- auxiliary losses
def trained_head(gate, cond):
    head = AppliedGate(gate, "target", gate.kind)
    head.train()
    head(cond)
    return head


def test_entropy_directions_have_opposite_signs_and_effects():
    torch.manual_seed(0)
    cond = torch.randn(6, 5)
    for gate in (MLPGate(4, 5, hidden=0), SoftmaxGate(4, 5)):
        head = trained_head(gate, cond)
        cfg = remedy_cfg()
        cfg.ENTROPY.WEIGHT = 0.3
        values = {}
        for direction in ("sharpen", "flatten"):
            cfg.ENTROPY.DIRECTION = direction
            values[direction] = entropy.gate_losses(fake_context(cfg, {}, [head]), cfg)["entropy"]
        assert float(values["sharpen"]) > 0 and values["flatten"].item() == pytest.approx(-values["sharpen"].item())
        # One gradient step on each direction's loss alone moves the entropy the named way.
        h0 = entropy.mean_entropy(head.last_output, gate.kind).item()
        params = list(gate.parameters())
        for direction, sign in (("sharpen", -1), ("flatten", 1)):
            grads = torch.autograd.grad(values[direction], params, retain_graph=True)
            with torch.no_grad():
                saved = [p.clone() for p in params]
                for p, d in zip(params, grads):
                    p.sub_(1.0 * d)
                h1 = entropy.mean_entropy(gate(cond), gate.kind).item()
                for p, s in zip(params, saved):
                    p.copy_(s)
            assert sign * (h1 - h0) > 0, (type(gate).__name__, direction, h0, h1)


def test_entropy_hand_computed_and_direction_required():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    g = torch.sigmoid(logits)
    binary = -(g * g.log() + (1 - g) * (1 - g).log()).mean()
    assert entropy.mean_entropy(g, "mask", logits, "sigmoid").item() == pytest.approx(binary.item(), rel=1e-6)
    assert entropy.mean_entropy(g, "mask").item() == pytest.approx(binary.item(), rel=1e-6)
    p = torch.softmax(logits, dim=-1)
    simplex = -(p * p.log()).sum(-1).mean()
    assert entropy.mean_entropy(p, "simplex", logits, "softmax").item() == pytest.approx(simplex.item(), rel=1e-6)
    # A one-hot row has entropy 0 (no log(0) NaN).
    assert entropy.mean_entropy(torch.tensor([[1.0, 0.0]]), "simplex").item() == 0.0
    root = CN()
    remedies.gatescope_add_config(root)
    root.REMEDY.ENTROPY.WEIGHT = 0.1  # the direction is required, checked with the whole config
    with pytest.raises(ValueError, match="REMEDY.ENTROPY.DIRECTION must be set .*sharpen.*flatten"):
        validate(root)
    root.REMEDY.ENTROPY.DIRECTION = "flatten"
    validate(root)


def test_zloss_hand_computed():
    torch.manual_seed(1)
    cond = torch.randn(3, 5)
    cfg = remedy_cfg()
    cfg.ZLOSS.WEIGHT = 0.5
    softmax = trained_head(SoftmaxGate(4, 5, temperature=2.0), cond)
    z = softmax.gate.net(cond) / 2.0
    expected = 0.5 * torch.logsumexp(z, dim=-1).pow(2).mean()
    assert zloss.gate_losses(fake_context(cfg, {}, [softmax]), cfg)["zloss"].item() == pytest.approx(expected.item())
    sigmoid = trained_head(SigmoidGate(3, 5, init_logit=2.0), cond)
    assert zloss.gate_losses(fake_context(cfg, {}, [sigmoid]), cfg)["zloss"].item() == pytest.approx(0.5 * 4.0)
    assert zloss.gate_losses(fake_context(cfg, {}, [sigmoid, softmax]), cfg)["zloss"].item() == \
        pytest.approx(expected.item() + 2.0)


def test_balance_losses_hand_computed():
    uniform_routing = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7]])
    one_option = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.9, 0.05, 0.05]])
    # importance I = column sums; CV^2 = population variance / mean^2
    importance = one_option.sum(0)
    cv2 = importance.var(unbiased=False) / importance.mean() ** 2
    assert balance.importance_cv2(one_option).item() == pytest.approx(cv2.item(), rel=1e-5)
    assert balance.importance_cv2(torch.full((4, 3), 1 / 3)).item() == pytest.approx(0.0, abs=1e-9)
    # switch: K * sum_k f_k P_k
    p = uniform_routing.mean(0)
    assert balance.switch_loss(uniform_routing).item() == pytest.approx((3 * p / 3).sum().item())
    assert balance.switch_loss(one_option).item() == pytest.approx(3 * one_option[:, 0].mean().item())
    cfg = remedy_cfg()
    cfg.BALANCE.WEIGHT, cfg.BALANCE.KIND = 0.1, "switch"
    mask = trained_head(MLPGate(3, 5, hidden=0), torch.randn(4, 5))
    with pytest.raises(ValueError, match="simplex"):
        balance.gate_losses(fake_context(cfg, {}, [mask]), cfg)


def test_gate_losses_reach_the_trainer_and_the_loss_competition(demo_root, tmp_path):
    from diagnostics import probes

    trainer = train(demo_root, tmp_path, "CoOpGated", 1, (
        "REMEDY.ENTROPY.WEIGHT", 0.1, "REMEDY.ENTROPY.DIRECTION", "flatten", "REMEDY.ZLOSS.WEIGHT", 0.01,
        "REMEDY.BALANCE.WEIGHT", 0.1))
    batch = next(iter(trainer.train_loader_x))
    image, label = trainer.parse_batch_train(batch)
    trainer.model.train()
    losses = trainer.compute_losses(trainer.model(image), label)
    assert {"remedy_entropy", "remedy_zloss", "remedy_balance"} <= set(losses)
    assert float(losses["remedy_entropy"]) < 0  # flatten: - w * H
    angles = probes.loss_competition_probe(trainer, batch)["length"]["angles"]
    assert {"ce|remedy_entropy", "ce|remedy_zloss", "ce|remedy_balance"} <= set(angles)
    assert all(angles[k] is not None for k in ("ce|remedy_entropy", "ce|remedy_zloss", "ce|remedy_balance"))


# ---------------------------------------------------------------- temperature
def test_temperature_schedule_values():
    geo = [temperature.temperature_at(e, 5, 4.0, 0.25, "geometric") for e in range(5)]
    assert geo == pytest.approx([4.0, 2.0, 1.0, 0.5, 0.25])
    lin = [temperature.temperature_at(e, 3, 3.0, 1.0, "linear") for e in range(3)]
    assert lin == pytest.approx([3.0, 2.0, 1.0])
    assert temperature.temperature_at(0, 1, 3.0, 1.0) == 3.0


def test_temperature_is_annealed_on_a_softmax_gate_and_refused_on_an_mlp(demo_root, tmp_path):
    probe = EpochSnapshots()
    train(demo_root, tmp_path / "softmax", "CoOpGated", 3, (
        "GATE.NAME", "softmax", "GATE.TARGET", "pool", "GATE.POOL_SIZE", 2, "REMEDY.TEMPERATURE.ENABLED", True,
        "REMEDY.TEMPERATURE.START", 4.0, "REMEDY.TEMPERATURE.END", 1.0), probe)
    assert [t[0] for t in probe.temperatures] == pytest.approx([4.0, 2.0, 1.0])
    with pytest.raises((ValueError, PluginError), match="temperature"):
        train(demo_root, tmp_path / "mlp", "CoOpGated", 1, ("REMEDY.TEMPERATURE.ENABLED", True))


# ---------------------------------------------------------------- explicit regularisation
def test_explicit_weight_decay_is_set_on_prompt_and_gate_groups(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated",
                                 opts=FAST + ("REMEDY.EXPLICIT_REG.WEIGHT_DECAY", 0.01))
    assert {g["name"]: g["weight_decay"] for g in trainer.optim.param_groups} == \
        {"prompt": trainer.cfg.OPTIM.WEIGHT_DECAY, "gate": trainer.cfg.OPTIM.WEIGHT_DECAY}
    remedies.before_train(trainer.hook_context)
    assert {g["name"]: g["weight_decay"] for g in trainer.optim.param_groups} == {"prompt": 0.01, "gate": 0.01}


def test_context_dropout_in_training_only_and_checkpoint_keys_unchanged(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOp",
                                 opts=FAST + ("REMEDY.EXPLICIT_REG.CTX_DROPOUT", 0.5))
    learner = trainer.model.prompt_learner
    keys = sorted(learner.state_dict())
    learner.train()
    clean = learner().detach()
    remedies.before_train(trainer.hook_context)
    remedies.before_train(trainer.hook_context)  # a second train() installs nothing twice
    assert len(trainer.hook_context.store["remedy_ctx_dropout_hooks"]) == 1
    n_prefix, n_ctx = learner.template.token_prefix.shape[1], learner.template.n_ctx
    torch.manual_seed(0)
    dropped = learner().detach()
    ctx_clean = clean[:, n_prefix:n_prefix + n_ctx]
    ctx_dropped = dropped[:, n_prefix:n_prefix + n_ctx]
    zeroed = ctx_dropped == 0
    assert 0 < zeroed.float().mean() < 1
    assert torch.allclose(ctx_dropped[~zeroed], 2.0 * ctx_clean[~zeroed])  # inverted dropout, p = 0.5
    assert torch.equal(dropped[:, :n_prefix], clean[:, :n_prefix])  # only the context
    learner.eval()
    assert torch.equal(learner().detach(), clean)
    assert sorted(learner.state_dict()) == keys


@pytest.mark.parametrize("opts", [("REMEDY.INIT.ENABLED", True),
                                  ("REMEDY.ENTROPY.WEIGHT", 0.1, "REMEDY.ENTROPY.DIRECTION", "flatten")])
def test_a_gate_remedy_on_an_ungated_trainer_says_it_changes_nothing(demo_root, tmp_path, opts):
    with pytest.warns(UserWarning, match="no learnable gate"):
        train(demo_root, tmp_path, "CoOp", 1, opts)

