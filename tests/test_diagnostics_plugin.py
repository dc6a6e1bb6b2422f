"""The diagnostics plugin: it only listens, measures what it says, and writes its outputs."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, build_demo_trainer
from gates import hookimpl
from diagnostics.plugin import run_of
from trainers.plugins import get_plugins

FAST = ("OPTIM.MAX_EPOCH", 2, "DATASET.NUM_SHOTS", 2)


def learnable_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.prompt_learner.state_dict().items()}


@pytest.mark.parametrize("trainer_name,opts", [
    ("CoOpGated", ("GATE.NAME", "mlp")),
    ("CoOpGated", ("GATE.NAME", "topk", "GATE.TARGET", "pool")),  # noisy routing: draws random numbers
    ("CoOpGated", ("GATE.NAME", "gumbel", "GATE.TARGET", "prefix")),
    ("CoCoOpGated", ("GATE.NAME", "mlp", "GATE.TARGET", "meta_token")),
    ("AdaptiveBiDirMaPLe", ()),
    # the study's definitions (its experiments at epoch index 1) and its per-epoch file with a
    # validation pass every epoch: measured under a forked RNG as well
    ("AdaptiveBiDirMaPLe", ("DIAGNOSTICS.DEFINITIONS", "study", "DIAGNOSTICS.STUDY_METRICS_FILE", True)),
])
def test_diagnostics_change_no_number_of_the_run(demo_root, tmp_path, trainer_name, opts):
    """Same seed with diagnostics off and on (with every probe): identical weights and accuracy."""
    runs = []
    for enabled in (False, True):
        trainer = build_demo_trainer(demo_root, tmp_path / str(enabled), trainer=trainer_name, opts=FAST + opts + (
            "DIAGNOSTICS.ENABLED", enabled, "DIAGNOSTICS.PROBE_EPOCHS", "[1, 2]"))
        trainer.train()
        runs.append((learnable_state(trainer), trainer.test()))
    (off, acc_off), (on, acc_on) = runs
    assert acc_on == acc_off
    for name in off:
        assert torch.equal(off[name], on[name]), name
    assert os.path.isfile(tmp_path / "True" / "diagnostics" / "summary.json")
    assert not os.path.exists(tmp_path / "False" / "diagnostics")


class GradProbe:
    """Independent measurement of what the diagnostics report for each step."""

    def __init__(self):
        self.steps = []
        self.outputs = {}

    @hookimpl
    def gate_output(self, context, name, output, cond, phase):
        if phase == "train" and output.requires_grad:
            output.retain_grad()
            self.outputs[name] = output

    @hookimpl
    def after_backward(self, context):
        groups = {g["name"]: g["params"] for g in context.param_groups}
        rms = {n: torch.cat([p.grad.reshape(-1) for p in ps]).norm().item() /
               sum(p.numel() for p in ps) ** 0.5 for n, ps in groups.items()}
        out = self.outputs["length"]
        self.steps.append({"rho": rms["gate"] / rms["prompt"], "prompt_rms": rms["prompt"],
                           "dL_dg_rms": out.grad.norm().item() / out.numel() ** 0.5,
                           "input_std": out.detach().std(0, unbiased=False).mean().item()})


def test_step_records_match_an_independent_measurement(demo_root, tmp_path):
    probe = GradProbe()
    plugins = get_plugins()
    plugins.pm.register(probe, name="gradprobe")
    try:
        trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + ("GATE.NAME", "mlp"))
        trainer.train()
    finally:
        plugins.pm.unregister(name="gradprobe")
    steps = [json.loads(line) for line in open(tmp_path / "diagnostics" / "steps.jsonl")]
    assert len(steps) == len(probe.steps) == 2 * trainer.num_batches
    for rec, ref in zip(steps, probe.steps):
        assert rec["rho"] == pytest.approx(ref["rho"], rel=1e-5)
        assert rec["groups"]["prompt"]["rms"] == pytest.approx(ref["prompt_rms"], rel=1e-5)
        assert rec["gates"]["length"]["dL_dg_rms"] == pytest.approx(ref["dL_dg_rms"], rel=1e-5)
        assert rec["gates"]["length"]["input_std"] == pytest.approx(ref["input_std"], rel=1e-4, abs=1e-9)
        assert rec["groups"]["gate"]["update_rel"] > 0
        assert 0 < rec["gates"]["length"]["slope"] <= 0.25  # sigmoid'(z) = s (1 - s) <= 1/4


def test_log_every_thins_the_step_records(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + ("DIAGNOSTICS.LOG_EVERY", 3))
    trainer.train()
    steps = [json.loads(line) for line in open(tmp_path / "diagnostics" / "steps.jsonl")]
    assert [s["step"] for s in steps] == list(range(0, 2 * trainer.num_batches, 3))


def test_counterfactual_replaces_the_gate_by_its_training_mean(demo_root, tmp_path):
    from diagnostics import probes

    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + ("GATE.NAME", "mlp"))
    trainer.train()
    summary = json.load(open(tmp_path / "diagnostics" / "summary.json"))
    gate = summary["gates"]["length"]
    head = trainer.gate_head
    mean = run_of(trainer.hook_context, create=False).tracks["length"].train_mean
    assert mean.shape == (trainer.cfg.TRAINER.COOP.N_CTX,)
    head.override = mean
    acc_const = probes.evaluate(trainer, trainer.test_loader)
    head.override = None
    assert gate["acc_constant_gate"] == pytest.approx(acc_const)
    assert gate["delta_acc"] == pytest.approx(gate["acc"] - acc_const)
    assert gate["acc"] == pytest.approx(probes.evaluate(trainer, trainer.test_loader))
    for key in ("verdict", "rho_median", "input_std", "saturation", "usage_entropy", "effective_options",
                "magnitude_gap", "acc", "acc_constant_gate", "delta_acc"):
        assert key in gate
    assert (summary["trainer"], summary["dataset"], summary["seed"]) == ("CoOpGated", "GatescopeDemo", 1)
    assert summary["config_name"] == "demo"


def test_a_saturated_gate_that_changes_nothing_is_collapsed(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated",
                                 opts=FAST + ("GATE.NAME", "mlp", "GATE.MLP.INIT_BIAS", 30.0))
    trainer.train()
    gate = json.load(open(tmp_path / "diagnostics" / "summary.json"))["gates"]["length"]
    assert gate["saturation"] == 1.0 and gate["delta_acc"] == 0.0
    assert gate["verdict"] == "collapsed"


def test_simplex_gate_reports_usage_and_a_surrogate_trained_gate_is_not_called_starved(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated",
                                 opts=FAST + ("GATE.NAME", "topk", "GATE.TARGET", "pool", "GATE.POOL_SIZE", 3))
    trainer.train()
    gate = json.load(open(tmp_path / "diagnostics" / "summary.json"))["gates"]["pool"]
    assert 1.0 <= gate["effective_options"] <= 3.0 and gate["usage_entropy"] is not None
    if gate["no_task_grad_params"]:
        assert any("by design" in r for r in gate["reasons"])
        assert gate["verdict"] != "imbalanced"


def test_per_epoch_probes_and_layer_slope(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="MaPLeGated", opts=FAST + (
        "DIAGNOSTICS.PROBE_EPOCHS", "[2]", "GATE.REG_SPARSITY", 0.01))
    trainer.train()
    epochs = [json.loads(line) for line in open(tmp_path / "diagnostics" / "epochs.jsonl")]
    assert len(epochs) == 2 and "probes" not in epochs[0]
    probes = epochs[1]["probes"]["depth"]
    assert set(probes["schedules"]) == {"learned", "uniform", "full_on", "decay", "increase",
                                        "random_same_length", "per_layer_mean"}
    assert set(probes["sensitivity"]["per_sigma"]) == {"0.1", "0.5", "1.0"}
    assert set(probes["loss_competition"]["angles"]) == {"ce|gate_sparsity"}
    steps = [json.loads(line) for line in open(tmp_path / "diagnostics" / "steps.jsonl")]
    assert len(steps[0]["layer_l2"]) == 2 and steps[0]["layer_slope"] is not None


def test_eval_only_run_gets_a_summary_too(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path / "train", trainer="CoOpGated", opts=FAST)
    trainer.train()
    evaluator = build_demo_trainer(demo_root, tmp_path / "eval", trainer="CoOpGated", opts=FAST)
    evaluator.load_model(str(tmp_path / "train"), epoch=2)
    evaluator.test()
    gate = json.load(open(tmp_path / "eval" / "diagnostics" / "summary.json"))["gates"]["length"]
    assert gate["acc_constant_gate"] is not None and gate["rho_median"] is None


def test_train_py_writes_every_output(demo_root, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--trainer", "CoCoOpGated", "--config-file",
           os.path.join(REPO, "configs", "trainers", "CoCoOpGated", "demo.yaml"), "--dataset-config-file",
           os.path.join(REPO, "configs", "datasets", "gatescope_demo.yaml"), "--root", demo_root,
           "--output-dir", str(out), "--seed", "1", "OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "2"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO,
                   env={**os.environ, "GATESCOPE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    d = out / "diagnostics"
    for name in ("steps.jsonl", "epochs.jsonl", "summary.json", "grad_norms.png", "gate_outputs.png"):
        assert (d / name).stat().st_size > 0, name
    assert open(d / "grad_norms.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    log = open(out / "log.txt").read()
    assert "** Gate diagnostics **" in log and "verdict" in log
    assert log.index("* accuracy:") < log.index("** Gate diagnostics **")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "diag/grad_rms/gate" in tags and "diag/meta/rho" in tags


def test_diagnostics_can_be_turned_off_and_ungated_trainers_have_none(demo_root, tmp_path):
    build_demo_trainer(demo_root, tmp_path / "off", trainer="CoOpGated",
                       opts=FAST + ("DIAGNOSTICS.ENABLED", False)).train()
    build_demo_trainer(demo_root, tmp_path / "coop", trainer="CoOp", opts=FAST).train()
    assert not os.path.exists(tmp_path / "off" / "diagnostics")
    assert not os.path.exists(tmp_path / "coop" / "diagnostics")


def test_resume_keeps_the_history_of_checkpointed_epochs(demo_root, tmp_path):
    """A run resumed after epoch 1 drops records of the unfinished epoch and appends the rest."""
    opts = ("OPTIM.MAX_EPOCH", 2, "DATASET.NUM_SHOTS", 2, "TRAIN.CHECKPOINT_FREQ", 1)
    full = build_demo_trainer(demo_root, tmp_path / "full", trainer="CoOpGated", opts=opts)
    full.train()
    first = build_demo_trainer(demo_root, tmp_path / "cut", trainer="CoOpGated",
                               opts=opts[:1] + (1,) + opts[2:])
    first.train()
    # A stray record of an epoch that never reached its checkpoint (the run was killed in it).
    with open(tmp_path / "cut" / "diagnostics" / "steps.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 1, "step": 999, "groups": {}, "gates": {}}) + "\n{\"torn")
    resumed = build_demo_trainer(demo_root, tmp_path / "cut", trainer="CoOpGated", opts=opts)
    resumed.train()
    steps = [json.loads(line) for line in open(tmp_path / "cut" / "diagnostics" / "steps.jsonl")]
    ref = [json.loads(line) for line in open(tmp_path / "full" / "diagnostics" / "steps.jsonl")]
    assert [s["step"] for s in steps] == [s["step"] for s in ref]
    assert len([json.loads(line) for line in open(tmp_path / "cut" / "diagnostics" / "epochs.jsonl")]) == 2


def test_embedding_figures_at_each_evaluation(demo_root, tmp_path):
    from diagnostics import metrics

    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoCoOpGated", opts=FAST)
    trainer.train()
    trainer.test()  # a second evaluation with no training between: no drift
    summary = json.load(open(tmp_path / "diagnostics" / "summary.json"))
    first, second = (e["embedding"] for e in summary["evaluations"][-2:])
    assert -1 <= first["alignment"] <= 1 and first["separation"] is not None
    assert -1 <= first["silhouette"] <= 1
    assert second["text_drift"] == pytest.approx(0.0, abs=1e-6)
    assert summary["embedding"] == second
    # The alignment is the mean cosine of each test image with its class's text feature: recompute it.
    from trainers.backbone.adapter import capture_embeddings
    trainer.model.eval()
    with torch.no_grad(), capture_embeddings() as sink:
        images, labels = [], []
        for batch in trainer.test_loader:
            image, label = trainer.parse_batch_test(batch)
            trainer.model_inference(image)
            labels.append(label)
    image = torch.cat([img for img, _ in sink])
    text = torch.cat([txt for _, txt in sink])  # CoCoOp: (N, C, D) per-image class features
    assert metrics.embedding_alignment(image, text, torch.cat(labels))["alignment"] == pytest.approx(
        second["alignment"], rel=1e-5)
