"""The one optimizer step (trainers/engine/step.py): TRAIN.NONFINITE on both sides of the update,
on the Dassl path and the prompt trainers' alike, and what results.json says of a run's health."""
import json
from types import SimpleNamespace

import pytest
import torch

from conftest import build_demo_trainer
from trainers.engine.step import NonFiniteError, optimizer_step
from trainers.engine.trainer import TrainerBase


class StepTrainer:
    """The little of a trainer the step reads: the policy, the lifecycle points, the step's place."""

    def __init__(self, policy="stop"):
        self.cfg = SimpleNamespace(TRAIN={"NONFINITE": policy})
        self.calls = []
        self.epoch, self.batch_idx, self.num_batches, self.max_epoch = 0, 0, 1, 1

    def after_backward(self):
        self.calls.append("after_backward")

    def after_step(self):
        self.calls.append("after_step")


def model_and_optim(lr, optimizer="sgd", values=(1.0, 2.0)):
    param = torch.nn.Parameter(torch.tensor(values))
    cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    return param, cls([{"name": "prompt", "params": [param], "lr": lr}])


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_step_that_makes_the_weights_non_finite_is_never_kept(policy):
    """Finite gradient x huge lr = Inf weights: a skip cannot help, so both policies stop."""
    trainer = StepTrainer(policy)
    param, optim = model_and_optim(lr=3e38)
    loss = (param * 10.0).sum()  # gradient 10 per entry: 3e39 overflows float32
    with pytest.raises(NonFiniteError, match=r"parameters of group 'prompt' after the optimizer step at epoch 1/1, "
                                             r"batch 1/1.*0 NaN and 2 Inf among 2 values.*gradients were finite "
                                             r"\(L2 14.14.*learning rate is 3e\+38.*TRAIN.NONFINITE skip cannot help"):
        optimizer_step(trainer, loss, {"model": optim})
    assert trainer.calls == ["after_backward"]  # after_step never sees the ruined weights
    assert getattr(trainer, "nonfinite_skips", 0) == 0


@pytest.mark.parametrize("lr,optimizer", [(1e39, "sgd"), (float("inf"), "sgd"), (float("nan"), "adam")])
def test_a_learning_rate_the_dtype_cannot_hold_stops_before_the_step(lr, optimizer):
    trainer = StepTrainer("skip")
    param, optim = model_and_optim(lr=lr, optimizer=optimizer)
    with pytest.raises(NonFiniteError, match=r"learning rate of parameter group 'prompt' is (1e\+39|inf|nan) at "
                                             r"epoch 1/1.*float32 parameters cannot use.*was not taken"):
        optimizer_step(trainer, param.sum(), {"model": optim})
    assert torch.equal(param.detach(), torch.tensor([1.0, 2.0]))


def test_an_optimizer_overflowing_its_own_step_size_is_a_non_finite_error_naming_the_group():
    """Adam divides the lr by its bias correction: lr 1e38 is a float32 value, its first step is not."""
    trainer = StepTrainer()
    param, optim = model_and_optim(lr=1e38, optimizer="adam")
    with pytest.raises(NonFiniteError, match=r"overflowed.*largest: parameter group 'prompt', lr 1e\+38"):
        optimizer_step(trainer, param.sum(), {"model": optim})


def test_a_huge_but_finite_gradient_is_not_called_non_finite():
    """Its float32 norm overflows; the values are counted before anything is called NaN/Inf."""
    trainer = StepTrainer()
    param, optim = model_and_optim(lr=1e-40, values=(1.0, 1.0))
    assert optimizer_step(trainer, (param * 3e38)[0], {"model": optim})  # gradient (3e38, 0)
    assert trainer.calls == ["after_backward", "after_step"]


class DasslStyle(TrainerBase):
    """A Dassl-style trainer: one registered model, forward_backward through model_backward_and_update."""

    def __init__(self, policy):
        super().__init__()
        self.cfg = SimpleNamespace(TRAIN={"NONFINITE": policy})
        self.param, optim = model_and_optim(lr=0.1)
        self.register_model("model", torch.nn.ParameterList([self.param]), optim)
        self.epoch, self.batch_idx, self.num_batches, self.max_epoch = 0, 0, 1, 1


def test_dassls_model_backward_and_update_honours_nonfinite_skip():
    trainer = DasslStyle("skip")
    assert trainer.model_backward_and_update(trainer.param.sum() * float("nan")) is False
    assert trainer.nonfinite_skips == 1 and torch.equal(trainer.param.detach(), torch.tensor([1.0, 2.0]))
    assert trainer.model_backward_and_update(trainer.param.sum()) is True
    assert torch.allclose(trainer.param.detach(), torch.tensor([0.9, 1.9]))
    with pytest.raises(NonFiniteError, match="the loss"):
        DasslStyle("stop").model_backward_and_update(trainer.param.sum() * float("inf"))


def test_lr_beyond_float32_through_gate_lr_mult_is_refused_by_the_config_check(demo_root, tmp_path):
    """OPTIM.LR 1e38 x GATE.LR_MULT 10 overflows float32: refused when the config is checked,
    before anything is built or written (torch's SGD would raise a raw overflow error in epoch 2)."""
    from gates.config_spec import ConfigError

    opts = ("OPTIM.LR", 1e38, "GATE.LR_MULT", 10.0)
    with pytest.raises(ConfigError, match=r"OPTIM.LR x GATE.LR_MULT = 1e\+38 x 10 = 1e\+39 overflows float32"):
        build_demo_trainer(demo_root, tmp_path / "run", trainer="CoOpGated", opts=opts)
    assert not (tmp_path / "run").exists()


def test_a_learning_rate_gone_beyond_float32_during_training_stops_naming_the_gate_group_after_writing_diagnostics(
        demo_root, tmp_path):
    """A group's rate that becomes too large while training (here set by hand at the start of epoch
    2, as a scheduler or a remedy could) stops the run with a NonFiniteError before the step;
    on_abort writes the diagnostics, and epoch 1's checkpoint is intact."""
    opts = ("OPTIM.MAX_EPOCH", 2, "DATASET.NUM_SHOTS", 2, "TRAIN.CHECKPOINT_FREQ", 1, "TRAIN.NONFINITE", "skip",
            "DIAGNOSTICS.PLOTS", False)
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=opts)
    before_epoch = trainer.before_epoch

    def raise_the_gate_rate():
        before_epoch()
        if trainer.epoch == 1:
            next(g for g in trainer.optim.param_groups if g["name"] == "gate")["lr"] = 1e39
    trainer.before_epoch = raise_the_gate_rate
    with pytest.raises(NonFiniteError, match=r"learning rate of parameter group 'gate' is 1e\+39 at epoch 2/2"):
        trainer.train()
    summary = json.loads((tmp_path / "diagnostics" / "summary.json").read_text())
    assert summary["aborted"].startswith("NonFiniteError")
    checkpoint = torch.load(tmp_path / "prompt_learner" / "model.pth.tar-1", weights_only=True)
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_results_json_records_skipped_steps_and_a_non_finite_end_state(demo_root, tmp_path):
    opts = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2, "TRAIN.NONFINITE", "skip")
    trainer = build_demo_trainer(demo_root, tmp_path / "train", opts=opts)
    compute_losses = trainer.compute_losses

    def nan_first(output, label):
        losses = compute_losses(output, label)
        if trainer.batch_idx == 0:
            losses["ce"] = losses["ce"] * float("nan")
        return losses
    trainer.compute_losses = nan_first
    trainer.train()
    record = json.loads((tmp_path / "train" / "results.json").read_text())
    assert record["nonfinite_skips"] == 1 and record["finite_end_state"] is True

    # Weights that are not finite (a damaged checkpoint, evaluated): the record says so.
    path = tmp_path / "train" / "prompt_learner" / "model.pth.tar-1"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["ctx"][0, 0] = float("nan")
    torch.save(checkpoint, path)
    evaluator = build_demo_trainer(demo_root, tmp_path / "eval", opts=opts)
    evaluator.load_model(str(tmp_path / "train"), epoch=1)
    results = evaluator.test()
    assert list(results)[0] == "accuracy" and "macro_f1" in results  # the whole results dict
    record = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert record["finite_end_state"] is False and record["nonfinite_skips"] == 0
    assert record["results"]["test"] == {k: float(v) for k, v in results.items()}


class ClipTrainer(StepTrainer):
    """A step trainer with OPTIM.GRAD_CLIP and an after_backward that edits gradients (a remedy)."""

    def __init__(self, grad_clip, edit=None):
        super().__init__()
        self.cfg = SimpleNamespace(TRAIN={"NONFINITE": "stop"}, OPTIM={"GRAD_CLIP": grad_clip})
        self.edit = edit

    def after_backward(self):
        super().after_backward()
        if self.edit is not None:
            self.edit()


def clip_setup(grad_clip, edit=None):
    """Two groups: prompt [1, 2] with gradient (3, 4), gate [5] with gradient 12: total norm 13."""
    prompt = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    gate = torch.nn.Parameter(torch.tensor([5.0]))
    optim = torch.optim.SGD([{"name": "prompt", "params": [prompt], "lr": 1.0},
                             {"name": "gate", "params": [gate], "lr": 1.0}])
    loss = 3.0 * prompt[0] + 4.0 * prompt[1] + 12.0 * gate[0]
    trainer = ClipTrainer(grad_clip, edit(prompt, gate) if edit else None)
    return trainer, prompt, gate, optim, loss


def test_grad_clip_scales_every_gradient_by_one_coefficient_from_the_total_norm():
    trainer, prompt, gate, optim, loss = clip_setup(1.0)
    assert optimizer_step(trainer, loss, {"model": optim})
    coef = 1.0 / (13.0 + 1e-6)  # torch's clip_grad_norm_: max_norm / (total + 1e-6)
    assert prompt.grad.tolist() == pytest.approx([3.0 * coef, 4.0 * coef], rel=1e-6)
    assert gate.grad.tolist() == pytest.approx([12.0 * coef], rel=1e-6)
    assert prompt.detach().tolist() == pytest.approx([1.0 - 3.0 * coef, 2.0 - 4.0 * coef], rel=1e-6)
    clip = trainer.last_grad_clip
    assert clip["max_norm"] == 1.0 and float(clip["total_norm"]) == pytest.approx(13.0)
    # The per-group ratio is unchanged by a global clip: (4 / 5) ... both groups scaled alike.
    assert (gate.grad / prompt.grad.norm()).item() == pytest.approx(12.0 / 5.0, rel=1e-6)


def test_grad_clip_below_the_norm_changes_nothing_and_zero_is_off():
    for grad_clip in (20.0, 0.0):
        trainer, prompt, gate, optim, loss = clip_setup(grad_clip)
        optimizer_step(trainer, loss, {"model": optim})
        assert prompt.grad.tolist() == [3.0, 4.0] and gate.grad.tolist() == [12.0]
        assert (trainer.last_grad_clip is None) == (grad_clip == 0.0)


def test_grad_clip_sees_the_gradients_after_the_after_backward_hooks():
    """A remedy that freezes the gate (grad None) runs first: the norm is the prompt's alone, 5."""
    def freeze_gate(prompt, gate):
        def edit():
            gate.grad = None
        return edit
    trainer, prompt, gate, optim, loss = clip_setup(1.0, freeze_gate)
    optimizer_step(trainer, loss, {"model": optim})
    assert float(trainer.last_grad_clip["total_norm"]) == pytest.approx(5.0)
    assert prompt.grad.tolist() == pytest.approx([3.0 / (5.0 + 1e-6), 4.0 / (5.0 + 1e-6)], rel=1e-6)
    assert gate.detach().tolist() == [5.0]  # frozen: not moved


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_negative_or_non_finite_grad_clip_is_refused(bad):
    trainer, prompt, gate, optim, loss = clip_setup(bad)
    with pytest.raises(ValueError, match=r"OPTIM.GRAD_CLIP must be a finite number >= 0"):
        optimizer_step(trainer, loss, {"model": optim})
