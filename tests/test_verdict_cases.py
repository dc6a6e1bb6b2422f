"""Constructed cases with known answers: what each verdict means, checked on small real runs.

Each case is a short run on the demo backbone with a gate whose behaviour is known by
construction (built-in gates, or the test-only plugin tests/constructed_gates.py), and asserts the
verdict and the figures that justify it. The README lists these cases as the definition of each
verdict.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import constructed_gates
from conftest import demo_args
from gates.manager import GateEntry
from trainers.plugins import get_plugins

FAST = ("OPTIM.MAX_EPOCH", 2, "DATASET.NUM_SHOTS", 4)
PLUGIN = "constructed-gates"
# A linear head with large random weights: an output that clearly varies with the input (the
# default mlp on the demo's unit-norm features varies by about 0.01).
VARIED_MLP = ("GATE.MLP.HIDDEN", 0, "GATE.MLP.INIT_STD", 50.0)


@pytest.fixture(scope="module")
def case_plugin():
    """The test-only gates, registered like a third-party plugin's, removed afterwards."""
    plugins = get_plugins()
    info = plugins.register(constructed_gates, PLUGIN)
    added = []

    def register_gate(name, factory):
        plugins.gates[name] = GateEntry(name, factory, info)
        added.append(name)

    constructed_gates.gatescope_register_gates(register_gate)
    yield plugins
    plugins.pm.unregister(name=PLUGIN)
    plugins.info.pop(PLUGIN, None)
    for name in added:
        plugins.gates.pop(name, None)


def build(root, out, opts=(), trainer_class=None):
    """A CoOpGated demo run's trainer (or `trainer_class` built from the same config)."""
    import os

    import trainers
    from conftest import REPO
    from trainers.engine import build_trainer
    from trainers.engine.utils import set_random_seed

    config = os.path.join(REPO, "configs", "trainers", "CoOpGated", "demo.yaml")
    cfg = trainers.setup_cfg(demo_args(root, out, "CoOpGated", config=config, opts=opts))
    set_random_seed(cfg.SEED)
    return trainer_class(cfg) if trainer_class is not None else build_trainer(cfg)


def run(root, out, opts=(), trainer_class=None, before=None):
    t = build(root, out, opts, trainer_class)
    if before is not None:
        before(t)
    t.train()
    summary = json.load(open(out / "diagnostics" / "summary.json"))
    gate = next(iter(summary["gates"].values()))
    print(f"\n{gate['verdict']}: " + "\n  ".join(gate["reasons"]))
    return gate


def test_gate_deep_in_saturation_is_collapsed(demo_root, tmp_path):
    """sigmoid(logit + 30) = 1 for every input: a fixed switch, and replacing it by its mean (1)
    changes nothing."""
    g = run(demo_root, tmp_path, FAST + ("GATE.NAME", "mlp", "GATE.MLP.INIT_BIAS", 30.0))
    assert g["saturation"] == 1.0 and g["choice_top_share"] == 1.0
    assert g["signal_std"] == 0.0 and g["kl_reference"] < 1e-9  # float rounding: 1e-13
    assert g["verdict"] == "collapsed"


def test_gate_with_a_gradient_scaled_by_1e4_is_imbalanced(demo_root, tmp_path, case_plugin):
    """The mlp gate whose gradient is multiplied by 1e-4: it varies and matters (its random
    initial routing), but its task gradient is four orders of magnitude too small to train it."""
    g = run(demo_root, tmp_path, FAST + ("GATE.NAME", "tiny_grad") + VARIED_MLP)
    assert g["rho_task"] < 1e-3 and g["rho_median"] < 1e-3
    assert g["signal_std"] >= 0.01 and g["kl_effect_low"] >= 1e-3
    assert g["verdict"] == "imbalanced"


def test_diagnose_recomputes_a_finished_runs_verdicts_with_other_thresholds(demo_root, tmp_path, case_plugin,
                                                                            capsys):
    from trainers.cli import diagnose_main, main

    run(demo_root, tmp_path, FAST + ("GATE.NAME", "tiny_grad") + VARIED_MLP)
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path)]) == 0
    assert "gate 'length': imbalanced\n" in capsys.readouterr().out
    assert diagnose_main([str(tmp_path), "--set", "RHO_MIN", "1e-9"]) == 0
    out = capsys.readouterr().out
    # trainable at that threshold, its untrained random routing changes a few decisions (>= FLIP_MIN)
    # but not the loss: no gain over its own constant
    assert "with RHO_MIN=1e-09" in out and "gate 'length': inert (was imbalanced)" in out
    assert "  - trainable: rho of the task loss" in out and "  - no gain: learned gate against its training-set mean" in out
    assert diagnose_main([str(tmp_path), "--set", "RHO_MIN", "1e-9", "--set", "GAIN_MIN", "0"]) == 0
    assert "gate 'length': healthy (was imbalanced)" in capsys.readouterr().out
    assert diagnose_main([str(tmp_path / "diagnostics"), "--set", "kl_min", "1"]) == 0  # case and folder accepted
    assert "inert (was imbalanced)" in capsys.readouterr().out
    for bad in (["--set", "WINDOW", "0.2"], ["--set", "DELTA_MIN", "1"], ["--set", "KL_MIN", "small"]):
        with pytest.raises(SystemExit):
            diagnose_main([str(tmp_path), *bad])
        err = capsys.readouterr().err
        assert "cannot set" in err or "needs a number" in err
    assert diagnose_main([str(tmp_path / "nowhere")]) == 2
    assert "no diagnostics summary" in capsys.readouterr().err

    # --write stores the recomputed verdicts (several runs in one call; a bad one is named, the others written)
    summary_path = tmp_path / "diagnostics" / "summary.json"
    assert diagnose_main([str(tmp_path / "nowhere"), str(tmp_path), "--set", "KL_MIN", "1", "--write"]) == 2
    assert f"written: {summary_path}" in capsys.readouterr().out
    written = json.loads(summary_path.read_text())
    assert written["gates"]["length"]["verdict"] == "inert"
    assert any(r.startswith("not functional:") and "< KL_MIN 1 nats" in r for r in written["gates"]["length"]["reasons"])
    assert written["thresholds"]["KL_MIN"] == 1.0 and written["thresholds"]["GAIN_MIN"] == 0.02
    assert written["rediagnosed"]["previous"] == {"length": "imbalanced"}
    # rediagnosed again: the first verdict stays on record
    assert diagnose_main([str(tmp_path), "--set", "KL_MIN", "1e-3", "--write"]) == 0
    written = json.loads(summary_path.read_text())
    assert written["gates"]["length"]["verdict"] == "imbalanced"
    assert written["rediagnosed"]["previous"] == {"length": "imbalanced"}


def test_input_dependent_gate_the_model_ignores_is_inert_even_with_an_auxiliary_loss(demo_root, tmp_path,
                                                                                      case_plugin):
    """The model computes the gate and uses the ungated prompt. A load-balancing loss on the gate
    gives it a gradient (rho over all terms > 0), but none from the task: rho_task is exactly 0."""
    g = run(demo_root, tmp_path, FAST + ("GATE.NAME", "mlp", "REMEDY.BALANCE.WEIGHT", 100.0) + VARIED_MLP,
            trainer_class=constructed_gates.CoOpIgnoringGate)
    assert g["rho_median"] > 0.01  # all loss terms: the old verdict read this and found it trainable
    assert g["rho_task"] == 0.0 and g["aux_share"] == 1.0 and g["dL_dg_task_rms"] == 0.0
    assert g["signal_std"] >= 0.01  # it varies with the input ...
    assert g["kl_reference"] == 0.0 and g["functional"]["test"]["constant"]["changed_share"] == 0.0  # ... uselessly
    assert g["verdict"] == "inert"


@pytest.mark.parametrize("opts", [
    ("GATE.CONSTANT.VALUE", 0.5),
    ("GATE.CONSTANT.VALUE", 1.0),
    ("GATE.TARGET", "pool", "GATE.POOL_SIZE", 2, "GATE.CONSTANT.UNIFORM", True),
], ids=["mask-0.5", "mask-1", "uniform-simplex"])
def test_constant_gate_is_collapsed_whatever_its_value(demo_root, tmp_path, opts):
    g = run(demo_root, tmp_path, FAST + ("GATE.NAME", "constant") + opts)
    assert not g["input_dependent"] and g["moved"] == 0.0 and g["kl_reference"] == 0.0
    assert g["verdict"] == "collapsed"
    # What it is as set is evidence, not the verdict: at 0.5 it is a different model from the
    # ungated one (KL > 0), at 1 it is the ungated model.
    if opts[1] == 1.0:
        assert g["kl_all_on"] == 0.0
    elif opts[1] == 0.5:
        assert g["kl_all_on"] > 1e-3


@pytest.mark.parametrize("target", [("GATE.TARGET", "length"), ("GATE.TARGET", "pool", "GATE.POOL_SIZE", 2)],
                         ids=["mask", "simplex"])
def test_gate_of_fresh_noise_is_collapsed(demo_root, tmp_path, case_plugin, target):
    """Fresh noise at every call: its std across inputs is all call-to-call noise, the choice says
    nothing about the label beyond the permutation null, and its effect does not reproduce."""
    g = run(demo_root, tmp_path, FAST + ("GATE.NAME", "noise") + target)
    assert g["repeat_std"] > 0.1 and g["eval_input_std"] > 0.1
    assert g["signal_std_low"] < 0.01 and g["kl_effect_low"] < 1e-3
    assert g["mi"]["label"]["p_value"] > 0.05
    assert g["verdict"] == "collapsed"


def fit_domain_rule(trainer):
    """w, b of a logistic regression dark (1) vs light (0) on the normalised training image features."""
    from trainers.feature_cache import image_features_of

    feats, domains = [], []
    with torch.no_grad():
        for batch in trainer.train_loader_x:
            image, _ = trainer.parse_batch_train(batch)
            feats.append(F.normalize(image_features_of(trainer.model.backbone, image).float(), dim=-1))
            domains.append(torch.as_tensor(batch["domain"]))
    x, d = torch.cat(feats).double(), torch.cat(domains).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, d)
        loss.backward()
        return loss
    optimizer.step(closure)
    w, b = w.detach().float(), float(b.detach())
    assert ((x.float() @ w + b > 0).double() == d).all()  # the rule reads the domain of every training image
    return w, b


def test_gate_given_the_domain_is_healthy_and_its_removal_costs_accuracy(demo_root, tmp_path, case_plugin):
    """A hard router told the domain on the multi-domain task: saturated (one-hot) yet varied,
    since its choice differs by input; MI(choice; domain) = ln 2; replacing it by its training
    mean costs accuracy, with the bootstrap interval above 0."""
    def give_domain(trainer):
        trainer.gate_head.gate.set_rule(*fit_domain_rule(trainer))

    g = run(demo_root, tmp_path, ("DATASET.NAME", "GatescopeMultiDomain", "OPTIM.MAX_EPOCH", 10, "GATE.NAME",
                                  "domain_router", "GATE.TARGET", "pool", "GATE.POOL_SIZE", 2), before=give_domain)
    assert g["saturation"] == 1.0 and g["choice_top_share"] == pytest.approx(0.5, abs=0.05)
    mi = g["mi"]["domain"]
    # ln 2 for a perfect router; the rule fitted on the training images reads 96 % of the test domains.
    assert 0.4 < mi["plugin"] <= math.log(2) and mi["null_p95"] < 0.02 and mi["p_value"] < 0.01
    assert g["linear_probe"]["cond_domain"]["accuracy"] > 95.0
    constant = g["functional"]["test"]["constant"]
    assert constant["acc_delta"] > 4.0 and constant["acc_delta_ci"][0] > 0.0 and constant["changed_share"] > 0.3
    assert g["kl_effect_low"] > 1e-2
    assert g["verdict"] == "healthy"


def test_gate_whose_routing_hurts_is_harmful(demo_root, tmp_path, case_plugin):
    """The same router told the domain in training, inverted at evaluation: each image goes to the
    prompt trained for the other domain. It changes the model (KL, half the decisions) for the
    worse: its training mean, a mixture of both prompts, is better in loss and accuracy."""
    def give_domain(trainer):
        trainer.gate_head.gate.set_rule(*fit_domain_rule(trainer))

    g = run(demo_root, tmp_path, ("DATASET.NAME", "GatescopeMultiDomain", "OPTIM.MAX_EPOCH", 10, "GATE.NAME",
                                  "domain_router_inverted", "GATE.TARGET", "pool", "GATE.POOL_SIZE", 2),
            before=give_domain)
    assert g["choice_top_share"] == pytest.approx(0.5, abs=0.05) and g["kl_effect_low"] > 1e-2
    constant = g["functional"]["test"]["constant"]
    assert constant["acc_delta"] < 0.0 and constant["changed_share"] > 0.3
    assert g["loss_gain"] <= -0.02  # the mean mixture's cross-entropy is lower by >= GAIN_MIN of it
    assert any(r.startswith("harmful:") for r in g["reasons"])
    assert g["verdict"] == "harmful"


def test_per_task_gate_that_stays_at_its_init_is_collapsed(demo_root, tmp_path):
    """The study's sigmoid gate (logit 1: 0.73 on every option) with a learning rate of 0: it
    gets a task gradient but never moves; as set it differs from all-on, which the reasons say."""
    g = run(demo_root, tmp_path, FAST + ("GATE.NAME", "sigmoid", "GATE.LR_MULT", 0.0))
    assert not g["input_dependent"]
    assert g["init_values"] == pytest.approx([torch.sigmoid(torch.tensor(1.0)).item()] * 4)
    # Dassl's constant warm-up epoch gives every group WARMUP_CONS_LR (1e-5), LR_MULT 0 included: a
    # step of that size is all it moves
    assert g["moved"] < 1e-6 and g["kl_reference"] < 1e-9 and g["rho_task"] > 0.01
    assert g["kl_all_on"] > 1e-3 and any("all-on" in r for r in g["reasons"])
    # the study's fixed schedules in its place: "uniform" (0.5) and "full_on" (sigmoid(2) = 0.88) differ
    assert set(g["kl_schedules"]) == {"uniform", "full_on", "decay", "increase"}
    assert all(v > 0 for v in g["kl_schedules"].values())
    assert any("the study's fixed schedules" in r for r in g["reasons"])
    assert any("per-task gate" in r for r in g["reasons"])
    assert g["verdict"] == "collapsed"


def test_shuffled_conditioning_is_a_random_permutation_not_a_shift():
    """In a test set ordered by domain a shift by one keeps the neighbour's domain 87 % of the time;
    the probe draws a random permutation of the batch's rows."""
    from diagnostics.probes import shuffled

    cond = torch.arange(100.0).view(100, 1)
    torch.manual_seed(0)
    out = shuffled(cond)
    assert sorted(out.view(-1).tolist()) == cond.view(-1).tolist()  # the same rows ...
    assert (out.view(-1) - cond.view(-1)).abs().le(1).float().mean() < 0.1  # ... rarely a neighbour's
    assert torch.equal(shuffled(cond[:1]), cond[:1])


def test_the_old_accuracy_threshold_says_what_replaced_it(demo_root, tmp_path):
    with pytest.raises(KeyError, match="DIAGNOSTICS.DELTA_MIN .* was renamed to DIAGNOSTICS.KL_MIN.*nats"):
        build(demo_root, tmp_path, opts=("DIAGNOSTICS.DELTA_MIN", 1.0))
