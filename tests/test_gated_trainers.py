"""Gated trainers are their parent plus a gate: a gate fixed open gives the parent exactly."""
import pytest
import torch
import torch.nn.functional as F

from conftest import build_demo_trainer
from gates import hookimpl
from trainers.plugins import get_plugins

FAST = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2)
# An mlp gate saturated at exactly 1.0 (sigmoid(100) rounds to 1 in float32) that still depends
# on its input: it exercises the per-input paths, which must also reproduce the parent.
SATURATED = ("GATE.NAME", "mlp", "GATE.MLP.INIT_BIAS", 100.0)
CONSTANT = ("GATE.NAME", "constant")

CASES = [
    ("CoOp", "CoOpGated", CONSTANT + ("GATE.TARGET", "length")),
    ("CoOp", "CoOpGated", SATURATED + ("GATE.TARGET", "length")),
    ("CoOp", "CoOpGated", SATURATED + ("GATE.TARGET", "token_dim")),
    ("CoOp", "CoOpGated", CONSTANT + ("GATE.TARGET", "prefix")),
    ("CoOp", "CoOpGated", CONSTANT + ("GATE.TARGET", "pool", "GATE.POOL_SIZE", 1)),
    ("CoCoOp", "CoCoOpGated", CONSTANT + ("GATE.TARGET", "meta")),
    ("CoCoOp", "CoCoOpGated", SATURATED + ("GATE.TARGET", "meta_token")),
    ("CoCoOp", "CoCoOpGated", SATURATED + ("GATE.TARGET", "length")),
    ("MaPLe", "MaPLeGated", CONSTANT),
    ("MaPLe", "MaPLeGated", SATURATED),
    ("MaPLe", "MaPLeGated", SATURATED + ("GATE.COND", "image_feature")),
]


def logits_and_grads(trainer, images, labels):
    trainer.set_model_mode("train")
    logits = trainer.model(images)
    params = dict(trainer.model.prompt_learner.named_parameters())
    shared = {n: p for n, p in params.items() if not n.startswith("gate.")}
    grads = torch.autograd.grad(F.cross_entropy(logits, labels), list(shared.values()), allow_unused=True)
    return logits, dict(zip(shared, grads))


@pytest.mark.parametrize("parent,gated,opts", CASES, ids=[f"{g}-{'-'.join(map(str, o[1::2]))}" for _, g, o in CASES])
def test_gate_fixed_open_reproduces_the_parent(demo_root, tmp_path, parent, gated, opts):
    ref = build_demo_trainer(demo_root, tmp_path / "p", trainer=parent, opts=FAST)
    gtr = build_demo_trainer(demo_root, tmp_path / "g", trainer=gated, opts=FAST + opts)
    batch = next(iter(ref.train_loader_x))
    images, labels = batch["img"][:4], batch["label"][:4]
    ref_logits, ref_grads = logits_and_grads(ref, images, labels)
    logits, grads = logits_and_grads(gtr, images, labels)
    exact = "constant" in opts and "prefix" not in opts and "pool" not in opts
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, **tol)
    for name, grad in ref_grads.items():
        # A per-input gate encodes the prompts once per image instead of once per batch: other
        # matrix shapes, other float32 rounding, up to ~3e-6 of the largest gradient entry
        # (measured), which a fixed atol on the smallest entries mistook for a difference.
        scaled = dict(rtol=1e-4, atol=1e-5 * float(grad.abs().max()))
        torch.testing.assert_close(grads[name].reshape(grad.shape), grad, **(tol if exact else scaled))


def test_depth_gate_closed_keeps_the_shallow_prompts_throughout(demo_root, tmp_path):
    """g = 0 on every deep layer: the tokens inserted at layer 0 are carried on, i.e. MaPLe at depth 1."""
    shallow = build_demo_trainer(demo_root, tmp_path / "s", trainer="MaPLe", opts=FAST + ("TRAINER.MAPLE.PROMPT_DEPTH", 1))
    closed = build_demo_trainer(demo_root, tmp_path / "c", trainer="MaPLeGated",
                                opts=FAST + ("GATE.NAME", "constant", "GATE.CONSTANT.VALUE", 0.0))
    closed.model.prompt_learner.load_state_dict(
        {**closed.model.prompt_learner.state_dict(), **shallow.model.prompt_learner.state_dict()})
    images = next(iter(shallow.train_loader_x))["img"][:3]
    with torch.no_grad():
        torch.testing.assert_close(closed.model(images), shallow.model(images), rtol=1e-6, atol=1e-6)


def test_gate_parameters_form_their_own_group_with_the_lr_multiplier(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + ("GATE.LR_MULT", 10.0))
    groups = {g["name"]: g for g in trainer.optim.param_groups}
    gate_ids = {id(p) for p in trainer.gate_head.parameters()}
    assert {id(p) for p in groups["gate"]["params"]} == gate_ids
    assert gate_ids.isdisjoint(id(p) for p in groups["prompt"]["params"])
    # Base rates (what follows the warm-up; Dassl's constant warm-up gives every group WARMUP_CONS_LR).
    base = dict(zip(groups, trainer.sched.base_lrs))
    assert base["gate"] == pytest.approx(10 * base["prompt"]) and groups["gate"]["lr_mult"] == 10


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def gate_output(self, context, name, output, cond, phase):
        self.calls.append((name, tuple(output.shape), tuple(cond.shape), phase, output.requires_grad))

    @hookimpl
    def after_backward(self, context):
        self.calls.append(("after_backward", context.gate_heads[0].gate.net[-1].weight.grad is not None))


def test_gate_output_reaches_the_hook_in_training_and_test(demo_root, tmp_path):
    recorder = Recorder()
    plugins = get_plugins()
    plugins.pm.register(recorder, name="recorder")
    try:
        trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + ("GATE.NAME", "mlp"))
        trainer.train()
    finally:
        plugins.pm.unregister(name="recorder")
    train_calls = [c for c in recorder.calls if c[0] == "length" and c[3] == "train"]
    test_calls = [c for c in recorder.calls if c[0] == "length" and c[3] == "test"]
    assert train_calls and all(c[1][1] == 4 and c[2][1] == 32 and c[4] for c in train_calls)
    assert test_calls and not any(c[4] for c in test_calls)
    assert ("after_backward", True) in recorder.calls


def test_hard_test_mode_thresholds_the_gate(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated",
                                 opts=FAST + ("GATE.TEST_MODE", "hard", "GATE.THRESHOLD", 0.5))
    head = trainer.gate_head
    cond = F.normalize(torch.randn(6, 32), dim=-1)
    head.train()
    soft = head(cond)
    head.eval()
    torch.testing.assert_close(head(cond), (soft > 0.5).float())


def test_gate_aux_loss_joins_the_named_losses(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated",
                                 opts=FAST + ("GATE.NAME", "topk", "GATE.TARGET", "pool"))
    trainer.set_model_mode("train")
    batch = next(iter(trainer.train_loader_x))
    losses = trainer.compute_losses(trainer.model(batch["img"]), batch["label"])
    assert set(losses) == {"ce", "gate_aux"} and losses["gate_aux"] > 0


def test_unsupported_target_and_cond_list_the_valid_ones(demo_root, tmp_path):
    with pytest.raises(ValueError, match=r"GATE.TARGET must be one of \('length', 'token_dim', 'prefix', 'pool'\) "
                                         r"\(the targets of CoOpGated\), got 'depth'"):
        build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + ("GATE.TARGET", "depth"))
    with pytest.raises(ValueError, match=r"GATE.COND must be one of \('patch_mean', 'image_feature'\) "
                                         r"\(the conditioning signals of MaPLeGated\), got 'text'"):
        build_demo_trainer(demo_root, tmp_path, trainer="MaPLeGated", opts=FAST + ("GATE.COND", "text"))


def test_mask_gate_on_a_simplex_target_is_rejected(demo_root, tmp_path):
    with pytest.raises(ValueError, match="gate 'mlp' is a mask gate but this target needs a simplex gate"):
        build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + ("GATE.TARGET", "pool"))


@pytest.mark.parametrize("name", ["CoOpGated", "CoCoOpGated", "MaPLeGated"])
def test_gated_demo_config_trains(demo_root, tmp_path, name):
    from test_training import train_set_loss
    trainer = build_demo_trainer(demo_root, tmp_path, trainer=name, opts=("TEST.NO_TEST", True))
    before = train_set_loss(trainer)
    gate_before = [p.detach().clone() for p in trainer.gate_head.parameters()]
    trainer.train()
    assert train_set_loss(trainer) < before - 0.01
    assert any(not torch.equal(a, b) for a, b in zip(gate_before, trainer.gate_head.parameters()))
