"""The study's diagnostic definitions (DIAGNOSTICS.DEFINITIONS study) beside gatescope's, on
hand-computed cases: each test shows the number the study's formula gives and, where gatescope's
definition differs, gatescope's number for the same input (the README's table lists them)."""
import json
import math

import pytest
import torch

from conftest import build_demo_trainer, demo_args
from diagnostics import metrics as M
from diagnostics import probes
from diagnostics import study_metrics as S
from diagnostics.verdict import gap_reason, gate_verdict, probe_flags
from gates import hookimpl
from gates.plumbing import fork_rng
from trainers.plugins import get_plugins


# ------------------------------------------------------------------ A1: the gradient gap
def test_a1_gap_uses_the_study_s_groups_and_epsilon_and_reports_rho_and_sizes_beside_it():
    # prompt tensors (3, 4) and (12,): p = sqrt(9 + 16 + 144) = 13; one gate value with gradient 0.013
    f64 = dict(dtype=torch.float64)
    a1 = S.gradient_magnitude_ratio([torch.tensor([3.0, 4.0], **f64), torch.tensor([12.0], **f64), None],
                                    [torch.tensor([0.013], **f64)])
    assert a1["prompt_grad_norm"] == pytest.approx(13.0) and a1["gate_grad_norm"] == pytest.approx(0.013)
    assert a1["magnitude_gap"] == pytest.approx(math.log10(13.0 / (0.013 + 1e-10)), rel=1e-12)
    assert a1["ratio"] == pytest.approx(0.013 / (13.0 + 1e-8))
    assert (a1["prompt_numel"], a1["gate_numel"]) == (3, 1)
    # per element: (0.013 / 1) / (13 / sqrt 3) = 0.001 sqrt 3; count term 0.5 log10(3 / 1)
    assert a1["rho"] == pytest.approx(0.001 * math.sqrt(3.0))
    assert a1["count_term"] == pytest.approx(0.5 * math.log10(3.0))
    assert a1["magnitude_gap"] == pytest.approx(-math.log10(a1["rho"]) + a1["count_term"], rel=1e-7)


# ------------------------------------------------------------------ A3: chain length
def test_a3_chain_slope_is_natural_log_over_renumbered_layers():
    e = math.e
    grads = [torch.tensor([v], dtype=torch.float64) for v in (1.0, e ** -1, e ** -2)]
    assert S.chain_length(grads)["decay_rate"] == pytest.approx(-1.0, abs=1e-9)  # ln: one e-fold per layer
    assert M.layer_slope([1.0, e ** -1, e ** -2]) == pytest.approx(-1.0 / math.log(10.0))  # gatescope: log10
    # a layer without a gradient: the study renumbers the rest 0, 1 (slope -2 per step); gatescope keeps 0, 2
    gapped = S.chain_length([grads[0], None, grads[2]])
    assert set(gapped["depth_grads"]) == {"layer_0", "layer_2"}
    assert gapped["decay_rate"] == pytest.approx(-2.0, abs=1e-9)
    assert M.layer_slope([1.0, None, e ** -2]) == pytest.approx(-1.0 / math.log(10.0))
    assert S.chain_length([torch.tensor([2.0])])["decay_rate"] == 0.0  # one layer: the study's 0


# ------------------------------------------------------------------ B1-B3: loss competition
def competing_terms():
    # one gate tensor "length": cls (1, 0), reg (-1, 0), cycle unweighted (0, 2); cycle weight 0.5
    cls, reg, cycle = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0]), torch.tensor([0.0, 2.0])
    return {"cls": {"length": cls}, "reg": {"length": reg}, "cycle": {"length": cycle}}, cls + reg + 0.5 * cycle


def test_b1_angles_per_gate_tensor_and_the_study_s_conflict_rule():
    terms = {"cls": {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 0.0])},
             "reg": {"a": torch.tensor([0.0, 1.0]), "b": torch.zeros(2)},
             "cycle": {"a": torch.tensor([1.0, 1.0]), "b": None}}
    b1 = S.gradient_conflict(terms)
    assert set(b1["angles"]) == {"a"}  # "b" is not reached by the cycle term: left out, as the study's
    assert b1["angles"]["a"]["cls_vs_reg"] == pytest.approx(90.0)
    assert b1["angles"]["a"]["cls_vs_cycle"] == pytest.approx(45.0)
    assert b1["angles"]["a"]["reg_vs_cycle"] == pytest.approx(45.0)
    assert b1["strong_conflict"] is True
    # a zero gradient: torch's cosine is 0 there, so the study's angle is 90 (gatescope's: None)
    zero = S.gradient_conflict({"cls": {"a": torch.tensor([1.0])}, "reg": {"a": torch.zeros(1)},
                                "cycle": {"a": torch.tensor([1.0])}})
    assert zero["angles"]["a"]["cls_vs_reg"] == pytest.approx(90.0)
    assert M.loss_competition({"ce": torch.tensor([1.0]), "reg": torch.zeros(1)})["angles"]["ce|reg"] is None
    # only cls-vs-reg and cls-vs-cycle count: reg against cycle at 90 degrees is no "strong conflict"
    apart = S.gradient_conflict({"cls": {"a": torch.tensor([0.0, 0.0, 1.0])}, "reg": {"a": torch.tensor([1.0, 0.0, 1.0])},
                                 "cycle": {"a": torch.tensor([-1.0, 0.0, 1.0])}})
    assert apart["angles"]["a"]["reg_vs_cycle"] == pytest.approx(90.0) and apart["strong_conflict"] is False


def test_b2_cancellation_sums_the_unweighted_cycle_norm():
    terms, total = competing_terms()
    b2 = S.gradient_cancellation({"length": total}, terms)
    # total (0, 1): norm 1; parts 1 + 1 + 2 = 4 (the cycle unweighted): 1 - 1 / 4
    assert b2["tensors"]["length"]["total_norm"] == pytest.approx(1.0)
    assert b2["tensors"]["length"]["component_sum"] == pytest.approx(4.0)
    assert b2["mean_cancellation"] == pytest.approx(0.75) and b2["strong_cancellation"] is True
    # gatescope's cancellation uses the terms as the loss has them (cycle weighted: norm 1): 1 - 1 / 3
    gs = M.loss_competition({"ce": terms["cls"]["length"], "reg": terms["reg"]["length"],
                             "cycle": 0.5 * terms["cycle"]["length"]}, ["reg"])
    assert gs["cancellation"] == pytest.approx(2.0 / 3.0)


def test_b3_regulariser_share_from_mean_absolute_gradients():
    terms, _ = competing_terms()
    b3 = S.regularisation_dominance(terms, {"cls": 1.0, "reg": 0.1, "cycle": 0.2})
    # mean |g|: cls 0.5, reg 0.5, cycle 1.0 (one tensor each): 0.5 / 2.0
    assert b3["gate_grad_contributions"]["cycle"] == pytest.approx(1.0)
    assert b3["reg_dominance"] == pytest.approx(0.25) and b3["reg_dominates"] is False
    # gatescope's share: ||g_reg|| / sum ||g_term|| with the weighted cycle: 1 / 3
    gs = M.loss_competition({"ce": terms["cls"]["length"], "reg": terms["reg"]["length"],
                             "cycle": 0.5 * terms["cycle"]["length"]}, ["reg"])
    assert gs["regulariser_share"] == pytest.approx(1.0 / 3.0)


# ------------------------------------------------------------------ C: sensitivity, schedules, pattern
def test_c1_flags_and_c2_schedules_hand_computed():
    assert S.sensitivity_flags({"length_pert_0.1": 0.002, "depth_pert_1.0": 0.008}) == \
        {"max_sensitivity": 0.008, "inert": True}
    logits = S.fixed_schedule_logits(5)
    assert logits["decay"].tolist() == [2.0, 1.0, 0.0, -1.0, -2.0] and logits["full_active"].tolist() == [2.0] * 5
    c2 = S.fixed_vs_adaptive({"adaptive": 50.0, "uniform": 49.5, "full_active": 48.0, "decay": 51.0, "increase": 47.0})
    assert c2["best_fixed_config"] == "decay" and c2["performance_gap"]["adaptive_vs_best_fixed"] == -1.0
    assert c2["limited_benefit"] is True and c2["no_real_adaptation"] is True  # |0.5| < 1 and |-1| < 2
    assert S.fixed_vs_adaptive({"adaptive": 60.0, "uniform": 50.0, "full_active": 50.0, "decay": 50.0,
                                "increase": 50.0})["no_real_adaptation"] is False


def test_no_trend_label_from_differences_below_the_tolerance():
    """A gate that barely moved from its constant init (values 1e-5 apart) correlates perfectly
    with its index; a correlation is not a trend: no "decay" below TREND_MIN_RANGE."""
    values = [0.73106 - 1e-5 * i for i in range(4)]
    assert M.pattern_stats(values)["depth_monotonicity"] == pytest.approx(-1.0)
    assert M.pattern_stats(values)["decay"] is False and M.pattern_stats(values)["range"] == pytest.approx(3e-5)
    assert M.pattern_stats(values, trend_min_range=0.0)["decay"] is True
    assert S.learned_pattern(values)["trend"] == "none"
    v = [0.9, 0.7, 0.3, 0.1]
    c3 = S.learned_pattern(v)
    assert c3["trend"] == "decay" and c3["pattern"] == "varied" and c3["effective_length"] == 2
    assert c3["std"] == pytest.approx(math.sqrt(0.1)) and c3["range"] == pytest.approx(0.8)
    h = [-(p * math.log(p + 1e-10) + (1 - p) * math.log(1 - p + 1e-10)) for p in v]
    assert c3["entropy"] == pytest.approx(sum(h) / 4)


# ------------------------------------------------------------------ D and E
def test_d_random_gates_and_their_statistics():
    generator = torch.Generator().manual_seed(3)
    logits = S.random_gate_logits(6, 2, generator)
    again = torch.Generator().manual_seed(3)
    order = torch.randperm(6, generator=again)
    noise = torch.randn(6, generator=again, dtype=torch.float64) * 0.5
    expected = torch.full((6,), -2.0, dtype=torch.float64)
    expected[order[:2]] = 2.0
    torch.testing.assert_close(logits, expected + noise)
    d = S.random_vs_adaptive(30.0, 29.5, [10.0, 20.0, 30.0, 40.0, 50.0], 2)
    assert d["fixed_random_mean"] == 30.0 and d["fixed_random_std"] == pytest.approx(math.sqrt(200.0))  # ddof 0
    assert d["analysis"]["all_on_equivalent"] and d["analysis"]["near_random"] and d["analysis"]["random_best_better"]
    assert d["analysis"]["random_covers_adaptive"] and not d["analysis"]["all_on_better"]


def test_e_per_layer_gate_averages_logits_and_its_entropy_is_shannon_of_the_normalised_vector():
    z = torch.tensor([0.0, 4.0])
    study = S.per_layer_gate(z)  # sigmoid(mean logit 2) = 0.8808 for both
    assert study.tolist() == pytest.approx([1 / (1 + math.exp(-2.0))] * 2)
    ours = probes.per_layer_mean(torch.sigmoid(z).view(1, -1))  # gatescope: mean of the values, 0.7410
    assert ours[0].tolist() == pytest.approx([(0.5 + 1 / (1 + math.exp(-4.0))) / 2] * 2)
    pattern = S.per_token_pattern([0.5, 0.5, 0.5, 0.5])
    assert pattern["entropy"] == pytest.approx(math.log(4.0))  # scipy.stats.entropy: the normalised vector
    assert M.pattern_stats([0.5] * 4)["binary_entropy"] == pytest.approx(math.log(2.0))  # gatescope's, per gate
    e = S.simplified_gate(40.0, 39.5, pattern)
    assert e["analysis"]["per_layer_sufficient"] and e["analysis"]["token_level_redundant"]
    assert e["analysis"]["performance_gap"] == 0.5 and not e["analysis"]["low_selectivity"]


# ------------------------------------------------------------------ per-step gate figures (CoOp's tags)
def test_the_study_s_per_step_gate_figures():
    f = S.gate_step_figures(torch.tensor([0.2, 0.8]), [torch.tensor([3.0, 4.0])])
    assert f["d_eff"] == pytest.approx(1.0) and f["mean_p"] == pytest.approx(0.5)
    assert f["std_p"] == pytest.approx(math.sqrt(0.18))  # Bessel: (0.09 + 0.09) / 1
    h = lambda p: -(p * math.log(p + 1e-6) + (1 - p) * math.log(1 - p + 1e-6))  # noqa: E731
    assert f["entropy"] == pytest.approx(h(0.2) + h(0.8))  # a sum over the options
    assert f["grad_norm"] == pytest.approx(5.0 / 2)  # ||grad|| / numel
    assert S.gate_step_figures(torch.tensor([0.3]), [None])["std_p"] is None
    assert S.gate_step_figures(torch.tensor([0.3]), [None])["grad_norm"] == 0.0  # no gradient: the study's 0


# ------------------------------------------------------------------ the verdict: severe gap beside rho
def test_the_severe_gap_beside_rho_says_when_they_disagree_and_why():
    # the study's testbed: ~9 M prompt values against 11 gate values; gap 2.6, rho 2.3 per element
    line = gap_reason("gap", 2.6, 9_000_000, 11, 2.3, "rho of the task loss")
    count = 0.5 * math.log10(9_000_000 / 11)
    assert f"{count:.3g}" == "2.96"
    assert line.startswith("gap 2.6 > GAP_SEVERE 2: severe gradient imbalance by the study's rule; disagrees with "
                           "rho of the task loss 2.3 (>= RHO_MIN 0.01): the parameter-count effect")
    assert "make 0.5 log10(9,000,000/11) = 2.96 of the gap, -0.356 is per element" in line
    # the other way: a vector gate of 8,192 values against 2,048 prompt values, small per element
    line = gap_reason("gap", 1.5, 2048, 8192, 0.005, "rho")
    assert "no severe gradient imbalance" in line and "disagrees with rho 5.0e-03 (< RHO_MIN 0.01)" in line
    assert "= -0.301 of the gap, 1.8 is per element" in line and "the other way" in line
    agree = gap_reason("gap", 2.5, 100, 1, 0.001, "rho")
    assert "agrees with rho 1.0e-03 (< RHO_MIN 0.01), per element; 100 prompt values against 1 gate values" in agree
    assert gap_reason("gap", None, 1, 1, 1.0, "rho") is None


def test_the_verdict_reports_both_gaps_and_they_never_decide_it():
    figures = dict(kind="mask", input_dependent=False, rho_task=0.3, moved=0.2, reference="init", kl_reference=0.1,
                   kl_effect=0.1, kl_effect_low=0.05, magnitude_gap=3.6, gap_prompt_numel=25474, gap_gate_numel=4,
                   study_magnitude_gap=2.9, study_gap_prompt_numel=512, study_gap_gate_numel=5)
    verdict, reasons = gate_verdict(figures)
    assert verdict == "healthy"
    gaps = [r for r in reasons if "GAP_SEVERE" in r]
    assert len(gaps) == 2 and all("disagrees with rho of the task loss 0.3" in r for r in gaps)
    assert gaps[1].startswith("the study's A1 gap (one batch; its ctx / compound_prompts group against every gate) 2.9")
    assert gate_verdict(dict(figures, rho_task=0.001))[0] == "imbalanced"  # rho decides, not the gap


def test_probe_flags_for_the_summary():
    record = {"sensitivity": {"per_sigma": {"0.1": 0.0}, "max": 0.004, "inert": False},
              "schedules": {"learned": 50.0, "uniform": 50.5, "full_on": 49.0, "decay": 48.0, "increase": 47.0,
                            "random_same_length": 46.0, "per_layer_mean": 49.5},
              "loss_competition": {"conflict": True}}
    flags = probe_flags(record)
    assert flags["sensitivity"]["inert"] is True  # judged with SENSITIVITY_MIN 0.01
    assert flags["schedules"]["best"] == "uniform" and flags["schedules"]["gain"] == -0.5
    assert flags["schedules"]["no_real_adaptation"] is True
    assert flags["schedules"]["per_layer_delta"] == 0.5 and flags["schedules"]["per_layer_sufficient"] is True
    assert flags["loss_competition"] == {"conflict": True}
    assert probe_flags(record, {"SENSITIVITY_MIN": 0.001})["sensitivity"]["inert"] is False


# ------------------------------------------------------------------ on a run
FAST = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2, "DIAGNOSTICS.PLOTS", False)


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_probe_epochs_count_from_zero_under_the_study_s_definitions(demo_root, tmp_path):
    for definitions, expected in (("gatescope", [True, False]), ("study", [False, True])):
        out = tmp_path / definitions
        build_demo_trainer(demo_root, out, trainer="CoOpGated", opts=FAST[:1] + (2,) + FAST[2:] + (
            "DIAGNOSTICS.PROBE_EPOCHS", "[1]", "DIAGNOSTICS.DEFINITIONS", definitions)).train()
        epochs = read_lines(out / "diagnostics" / "epochs.jsonl")
        assert ["probes" in e for e in epochs] == expected
        assert ["study_probes" in e for e in epochs] == (expected if definitions == "study" else [False, False])


def test_the_study_s_experiments_on_a_run_equal_an_independent_computation(demo_root, tmp_path):
    """AdaptiveBiDirMaPLe, study definitions, probes after epoch 0: A1 on the first batch of a
    fresh pass (seed 0) over its ctx + compound_prompts_text against both gates; C2's uniform
    schedule and E's per-layer gate in train mode on the validation set."""
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="AdaptiveBiDirMaPLe", opts=FAST + (
        "DIAGNOSTICS.DEFINITIONS", "study", "DIAGNOSTICS.PROBE_EPOCHS", "[0]"))
    trainer.train()
    study = read_lines(tmp_path / "diagnostics" / "epochs.jsonl")[0]["study_probes"]
    learner = trainer.model.prompt_learner
    heads = {h.name: h for h in trainer.gate_heads}
    prompt = [learner.ctx, *learner.compound_prompts_text]
    gates = [p for h in heads.values() for p in h.parameters()]
    with fork_rng():
        torch.manual_seed(0)
        batch = next(iter(trainer.train_loader_x))
        image, label = trainer.parse_batch_train(batch)
        trainer.model.train()
        losses = trainer.compute_losses(trainer.model(image), label)
        grads = torch.autograd.grad(sum(losses.values()), prompt + gates)
    p = math.sqrt(sum(float(g.norm()) ** 2 for g in grads[:len(prompt)]))
    g = math.sqrt(sum(float(g.norm()) ** 2 for g in grads[len(prompt):]))
    a1 = study["A1_gradient_ratio"]
    assert a1["prompt_numel"] == sum(t.numel() for t in prompt) == 2 * 4 * 64  # not the 25k non-gate values
    assert a1["gate_numel"] == 5 and a1["magnitude_gap"] == pytest.approx(math.log10(p / (g + 1e-10)), rel=1e-5)

    def train_mode_val_accuracy(values):
        with fork_rng(), torch.no_grad():
            for name, v in values.items():
                heads[name].override = v
            trainer.model.train()
            correct = total = 0
            for batch in trainer.val_loader:
                image, label = trainer.parse_batch_test(batch)
                correct += int((trainer.model(image).argmax(1) == label).sum())
                total += label.numel()
            for name in values:
                heads[name].override = None
        return 100.0 * correct / total
    half = {name: torch.full((h.gate.logits.numel(),), 0.5) for name, h in heads.items()}
    assert study["C2_fixed_vs_adaptive"]["uniform"] == pytest.approx(train_mode_val_accuracy(half))
    z = heads["length"].gate.logits.detach()
    per_layer = {"length": torch.sigmoid(z.mean()).expand_as(z)}
    assert study["E_simplified_gate"]["per_layer_fixed_acc"] == pytest.approx(train_mode_val_accuracy(per_layer))
    assert set(study) >= {"A1_gradient_ratio", "A3_chain_length", "B1_gradient_conflict", "B2_gradient_cancellation",
                          "B3_reg_dominance", "C1_sensitivity", "C2_fixed_vs_adaptive", "C3_pattern_analysis",
                          "D_random_gates", "E_simplified_gate"}
    assert set(study["C1_sensitivity"]["sensitivities"]) == {f"{n}_pert_{s}" for n in ("length", "depth")
                                                             for s in (0.1, 0.5, 1.0)}
    assert len(study["D_random_gates"]["fixed_random_trials"]) == 5
    summary = json.loads((tmp_path / "diagnostics" / "summary.json").read_text())
    assert summary["definitions"] == "study" and summary["study_probes"]["epoch"] == 0
    assert summary["study_probes"]["A1_gradient_ratio"] == a1
    length = summary["gates"]["length"]
    assert length["study_magnitude_gap"] == a1["magnitude_gap"] and length["study_gap_prompt_numel"] == 512
    assert any(r.startswith("the study's A1 gap") for r in length["reasons"])
    # gatescope's probes of the same epoch, with the study's flags, in the summary too
    flagged = length["probes"]
    assert flagged["epoch"] == 0 and "inert" in flagged["sensitivity"]
    assert {"best", "gain", "no_real_adaptation", "per_layer_sufficient"} <= set(flagged["schedules"])
    assert {"conflict", "cancellation_flag", "regulariser_flag"} <= set(flagged["loss_competition"])
    assert "decay" in flagged["pattern"] and "range" in flagged["pattern"]


class StepLog:
    """Independent record of each training step: the loss terms and the gates after the step."""

    def __init__(self):
        self.losses, self.after = [], []

    @hookimpl
    def after_step(self, context):
        self.after.append({h.name: torch.sigmoid(h.gate.logits.detach().double()) for h in context.gate_heads})


def test_epoch_losses_val_acc_and_the_study_s_metrics_file(demo_root, tmp_path):
    log = StepLog()
    plugins = get_plugins()
    plugins.pm.register(log, name="steplog")
    try:
        trainer = build_demo_trainer(demo_root, tmp_path, trainer="AdaptiveBiDirMaPLe", opts=FAST[:1] + (2,) + FAST[2:] + (
            "DIAGNOSTICS.STUDY_METRICS_FILE", True, "TRAINER.ADAPTIVE_BIDIR_MAPLE.CYCLE_WARMUP_EPOCHS", 0))
        compute_losses = trainer.compute_losses

        def logged(output, label):
            losses = compute_losses(output, label)
            log.losses.append({k: float(v) for k, v in losses.items()}
                              | {"raw_cycle": float(trainer.model.prompt_learner.cycle_loss())})
            return losses
        trainer.compute_losses = logged
        trainer.train()
    finally:
        plugins.pm.unregister(name="steplog")
    n = trainer.num_batches
    epochs = read_lines(tmp_path / "diagnostics" / "epochs.jsonl")
    path = tmp_path / "visualizations_adaptive_bidir" / "training_metrics_adaptive_bidir.json"
    study = json.loads(path.read_text())
    assert list(study) == ["train_loss", "cls_loss", "reg_loss", "cycle_loss", "val_acc", "effective_length",
                           "avg_depth_prob", "max_depth_prob", "min_depth_prob", "length_gates", "depth_probs", "epochs"]
    assert study["epochs"] == [0, 1] and study["length_gates"] == [] and study["depth_probs"] == []
    for e in (0, 1):
        steps = log.losses[e * n:(e + 1) * n]
        mean = {k: sum(s[k] for s in steps) / n for k in ("ce", "sparsity", "cycle", "raw_cycle")}
        assert epochs[e]["losses"]["ce"] == pytest.approx(mean["ce"], rel=1e-6)
        assert epochs[e]["train_loss"] == pytest.approx(mean["ce"] + mean["sparsity"] + mean["cycle"], rel=1e-6)
        assert study["cls_loss"][e] == pytest.approx(mean["ce"], rel=1e-6)
        assert study["reg_loss"][e] == pytest.approx(mean["sparsity"], rel=1e-6)
        assert study["cycle_loss"][e] == pytest.approx(mean["raw_cycle"], rel=1e-5)  # unweighted, as the study's
        after = log.after[e * n:(e + 1) * n]
        assert study["effective_length"][e] == pytest.approx(sum(float(a["length"].sum()) for a in after) / n)
        assert study["avg_depth_prob"][e] == pytest.approx(sum(float(a["depth"].mean()) for a in after) / n)
        assert epochs[e]["val_acc"] == study["val_acc"][e] is not None
    assert study["val_acc"][-1] == pytest.approx(probes.evaluate(trainer, trainer.val_loader))


def test_the_study_s_metrics_file_is_refused_for_a_trainer_without_one(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + (
        "DIAGNOSTICS.STUDY_METRICS_FILE", True))
    with pytest.raises(Exception, match=r"STUDY_METRICS_FILE: the study's code writes its per-epoch metrics file for "
                                        r"AdaptiveMaPLe, AdaptiveBiDirMaPLe, ImprovedAdaptiveBiDirMaPLe only, not for "
                                        r"CoOpGated"):
        trainer.train()


def test_grad_clip_in_the_step_records(demo_root, tmp_path):
    """AdaptiveBiDirMaPLe clips at 1 (the study's): per step, the pre-clip norm of all gradients,
    the coefficient, what each group received; rho is unchanged by a global clip."""
    build_demo_trainer(demo_root, tmp_path, trainer="AdaptiveBiDirMaPLe", opts=FAST).train()
    steps = read_lines(tmp_path / "diagnostics" / "steps.jsonl")
    assert steps
    for s in steps:
        clip = s["grad_clip"]
        prompt, gate = s["groups"]["prompt"], s["groups"]["gate"]
        assert clip["max_norm"] == 1.0
        assert clip["total_norm"] == pytest.approx(math.hypot(prompt["l2"], gate["l2"]), rel=1e-5)
        assert clip["coef"] == pytest.approx(min(1.0, 1.0 / (clip["total_norm"] + 1e-6)))
        for group in (prompt, gate):
            assert group["received_l2"] == pytest.approx(clip["coef"] * group["l2"], rel=1e-5)
        assert s["rho_received"] == pytest.approx(s["rho"], rel=1e-5)
    summary = json.loads((tmp_path / "diagnostics" / "summary.json").read_text())
    assert summary["grad_clip"]["max_norm"] == 1.0 and 0 <= summary["grad_clip"]["clipped_share"] <= 1


def test_the_study_s_gate_tags_every_step_for_a_gate_of_256_options(demo_root, tmp_path):
    """The study's CoOp vector gate (--use_gate --gate_type vector: 4 tokens x 64 dimensions here):
    per-option lists are not stored above 64 options, the study's per-step figures are, and
    TensorBoard gets its tags gate/{d_eff, mean_p, std_p, entropy, grad_norm} at every step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = StepLog()
    plugins = get_plugins()
    plugins.pm.register(log, name="steplog")
    try:
        trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOp", opts=FAST + (
            "TRAINER.COOP.USE_GATE", True, "TRAINER.COOP.GATE_TYPE", "vector"))
        trainer.train()
    finally:
        plugins.pm.unregister(name="steplog")
    steps = read_lines(tmp_path / "diagnostics" / "steps.jsonl")
    (name,) = steps[0]["gates"]
    assert "per_option_std" not in steps[0]["gates"][name]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {f"gate/{k}" for k in ("d_eff", "mean_p", "std_p", "entropy", "grad_norm")} <= set(events.Tags()["scalars"])
    d_eff = {e.step: e.value for e in events.Scalars("gate/d_eff")}
    std = {e.step: e.value for e in events.Scalars("gate/std_p")}
    assert sorted(d_eff) == [s["step"] for s in steps] == list(range(len(log.after)))
    for step, after in enumerate(log.after):
        p = after[name]
        assert p.numel() == 256
        assert d_eff[step] == pytest.approx(float(p.sum()), rel=1e-5)  # after the step, as the study reads it
        assert std[step] == pytest.approx(float(p.std()), rel=1e-4)  # Bessel-corrected
        assert steps[step]["gates"][name]["study"]["std_p"] == pytest.approx(float(p.std()), rel=1e-6)


@pytest.mark.parametrize("opts,message", [
    (("DIAGNOSTICS.DEFINITIONS", "paper"), r"DIAGNOSTICS.DEFINITIONS"),
    (("DIAGNOSTICS.TREND_MIN_RANGE", -0.1), r"DIAGNOSTICS.TREND_MIN_RANGE"),
    (("DIAGNOSTICS.PROBE_EPOCHS", "[0, 1]"), r"holds an epoch below 1, but with DIAGNOSTICS.DEFINITIONS gatescope "
                                             r"epochs are numbered from 1"),
])
def test_bad_definition_keys_are_refused_with_the_config(demo_root, tmp_path, opts, message):
    import trainers

    with pytest.raises(ValueError, match=message):
        trainers.setup_cfg(demo_args(demo_root, tmp_path, "CoOpGated", opts=opts))
    cfg = trainers.setup_cfg(demo_args(demo_root, tmp_path, "CoOpGated", opts=(
        "DIAGNOSTICS.PROBE_EPOCHS", "[0, 1]", "DIAGNOSTICS.DEFINITIONS", "study")))
    assert list(cfg.DIAGNOSTICS.PROBE_EPOCHS) == [0, 1]
