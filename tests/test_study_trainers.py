"""The study's trainers and keys: configurations of the gated trainers and built-in gates."""
import glob
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, build_demo_trainer, demo_args

FAST = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2)
OPEN = ("GATE.NAME", "constant")


def logits_and_grads(trainer, images, labels, skip=()):
    trainer.set_model_mode("train")
    logits = trainer.model(images)
    params = {n: p for n, p in trainer.model.prompt_learner.named_parameters()
              if not any(n.startswith(s) for s in skip)}
    grads = torch.autograd.grad(F.cross_entropy(logits, labels), list(params.values()), allow_unused=True)
    return logits, dict(zip(params, grads))


def shape_opts(node, n_ctx, depth, typ="full"):
    return (f"TRAINER.{node}.N_CTX_MAX", n_ctx, f"TRAINER.{node}.PROMPT_DEPTH_MAX", depth,
            f"TRAINER.{node}.TYPE", typ, f"TRAINER.{node}.FIXED_N_CTX", n_ctx,
            f"TRAINER.{node}.FIXED_PROMPT_DEPTH", depth)


@pytest.mark.parametrize("parent,adaptive,node", [
    ("BiDirMaPLe", "AdaptiveBiDirMaPLe", "ADAPTIVE_BIDIR_MAPLE"),
    ("MaPLe", "AdaptiveMaPLe", "ADAPTIVE_MAPLE"),
])
@pytest.mark.parametrize("typ", ["full", "length_only", "depth_only"])
def test_adaptive_trainer_with_gates_fixed_open_equals_its_parent(demo_root, tmp_path, parent, adaptive, node, typ):
    """Every length and depth gate at 1: the adaptive model is its parent at the same depth and length."""
    parent_node = "BIDIR_MAPLE" if parent == "BiDirMaPLe" else "MAPLE"
    ref = build_demo_trainer(demo_root, tmp_path / "p", trainer=parent, opts=FAST + (
        f"TRAINER.{parent_node}.N_CTX", 2, f"TRAINER.{parent_node}.PROMPT_DEPTH", 2))
    # The study's AdaptiveBiDirMaPLe makes its shallow visual prompt from the class mean of the
    # context (SHALLOW_VISION_PROMPT class_mean); with MaPLe's per-token prompt it is its parent.
    vision = (f"TRAINER.{node}.SHALLOW_VISION_PROMPT", "tokens") if node == "ADAPTIVE_BIDIR_MAPLE" else ()
    ada = build_demo_trainer(demo_root, tmp_path / "a", trainer=adaptive,
                             opts=FAST + OPEN + shape_opts(node, 2, 2, typ) + vision)
    ada.model.prompt_learner.load_state_dict(ref.model.prompt_learner.state_dict())
    batch = next(iter(ref.train_loader_x))
    images, labels = batch["img"][:4], batch["label"][:4]
    ref_logits, ref_grads = logits_and_grads(ref, images, labels)
    logits, grads = logits_and_grads(ada, images, labels)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    assert set(grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0)
    # The gates are there (TYPE decides which) even though they are fixed open.
    heads = {h.name for h in ada.gate_heads}
    assert heads == {"full": {"length", "depth"}, "length_only": {"length"}, "depth_only": {"depth"}}[typ]


# Hard test gates, regularisers, the cycle loss, ParamMatched and BiasMatched: tests/test_study_compat.py.


# ------------------------------------------------------------------ CoOp / CoCoOp study keys
def test_coop_use_gate_becomes_coopgated_with_a_static_sigmoid_gate(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOp", opts=FAST + (
        "TRAINER.COOP.USE_GATE", True, "TRAINER.COOP.GATE_INIT_STD", 0.02, "TRAINER.COOP.GATE_LR_MUL", 5.0,
        "TRAINER.COOP.GATE_REG_LAMBDA", 0.1))
    assert type(trainer).__name__ == "CoOpGated"
    cfg = trainer.cfg
    assert (cfg.GATE.NAME, cfg.GATE.TARGET, cfg.GATE.LR_MULT) == ("sigmoid", "length", 5.0)
    # GATE_REG_LAMBDA is the study's entropy penalty (towards 0/1), not a sparsity term.
    entropy = cfg.REMEDY.ENTROPY
    assert (entropy.WEIGHT, entropy.DIRECTION, entropy.REDUCTION, cfg.GATE.REG_SPARSITY) == (0.1, "sharpen", "sum", 0.0)
    logits = trainer.gate_head.gate.logits
    assert logits.shape == (cfg.TRAINER.COOP.N_CTX,) and 0 < logits.std().item() < 0.1
    groups = {g["name"]: g for g in trainer.optim.param_groups}
    # Base rates (what follows the warm-up; Dassl's constant warm-up gives every group WARMUP_CONS_LR).
    base = dict(zip(groups, trainer.sched.base_lrs))
    assert base["gate"] == pytest.approx(5 * base["prompt"]) and groups["gate"]["lr_mult"] == 5


def test_coop_vector_gate_is_per_token_and_dimension(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOp", opts=FAST + (
        "TRAINER.COOP.USE_GATE", True, "TRAINER.COOP.GATE_TYPE", "vector"))
    width = trainer.model.prompt_learner.ctx.shape[-1]
    assert trainer.gate_head.gate.logits.shape == (trainer.cfg.TRAINER.COOP.N_CTX * width,)


def test_cocoop_conditional_gate_is_a_linear_head_on_the_image_feature(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoCoOp", opts=FAST + (
        "TRAINER.COCOOP.USE_GATE", True, "TRAINER.COCOOP.GATE_MODE", "conditional"))
    assert type(trainer).__name__ == "CoCoOpGated" and trainer.cfg.GATE.NAME == "mlp"
    net = trainer.gate_head.gate.net
    n_ctx, embed = trainer.cfg.TRAINER.COCOOP.N_CTX, 32
    assert len(net) == 1 and tuple(net[0].weight.shape) == (n_ctx, embed)
    assert trainer.gate_head.input_dependent


@pytest.mark.parametrize("trainer_name,node", [("CoOp", "COOP"), ("CoCoOp", "COCOOP")])
def test_param_matched_bias_matches_the_gate_and_starts_as_the_parent(demo_root, tmp_path, trainer_name, node):
    gated = build_demo_trainer(demo_root, tmp_path / "g", trainer=trainer_name,
                               opts=FAST + (f"TRAINER.{node}.USE_GATE", True))
    pm = build_demo_trainer(demo_root, tmp_path / "m", trainer=trainer_name,
                            opts=FAST + (f"TRAINER.{node}.PARAM_MATCHED", True))
    ref = build_demo_trainer(demo_root, tmp_path / "r", trainer=trainer_name, opts=FAST)
    gate_count = sum(p.numel() for p in gated.gate_head.parameters())
    assert pm.model.prompt_learner.ctx_bias.numel() == gate_count
    assert sum(p.numel() for p in pm.gate_head.parameters()) == 0  # no gate left
    batch = next(iter(ref.train_loader_x))
    images, labels = batch["img"][:2], batch["label"][:2]
    pm.model.prompt_learner.load_state_dict({**pm.model.prompt_learner.state_dict(),
                                             **ref.model.prompt_learner.state_dict()})
    ref_logits, _ = logits_and_grads(ref, images, labels)
    logits, grads = logits_and_grads(pm, images, labels)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    assert grads["ctx_bias"].abs().sum() > 0  # it does learn


def test_bad_study_keys_name_the_key(demo_root, tmp_path):
    with pytest.raises(ValueError,
                       match=r"TRAINER.COCOOP.GATE_MODE must be one of \('static', 'conditional'\), got 'dynamic'"):
        build_demo_trainer(demo_root, tmp_path, trainer="CoCoOp",
                           opts=FAST + ("TRAINER.COCOOP.USE_GATE", True, "TRAINER.COCOOP.GATE_MODE", "dynamic"))
    with pytest.raises(ValueError, match=r"TRAINER.COOP.GATE_TYPE must be one of \('scalar', 'vector'\), got 'matrix'"):
        build_demo_trainer(demo_root, tmp_path, trainer="CoOp",
                           opts=FAST + ("TRAINER.COOP.USE_GATE", True, "TRAINER.COOP.GATE_TYPE", "matrix"))


# ------------------------------------------------------------------ the study's config files
# Every trainer YAML the study ships (copied under its own name into configs/trainers/<Trainer>/),
# and gatescope's configs with the study's CoOp / CoCoOp gate keys.
STUDY_TRAINERS = ("AdaptiveBiDirMaPLe", "AdaptiveMaPLe", "AdaptiveTrain", "AdaptiveFreezeEarly", "AdaptiveAlwaysFrozen",
                  "AdaptiveExplicitReg", "ImprovedAdaptiveBiDirMaPLe", "ParamMatched", "BiDirMaPLe", "BiasMatched")
STUDY_CONFIGS = sorted(
    [p for t in STUDY_TRAINERS for p in glob.glob(os.path.join(REPO, "configs", "trainers", t, "*.yaml"))
     if not p.endswith("demo.yaml")]
    + glob.glob(os.path.join(REPO, "configs", "trainers", "CoOp", "*_gate_*.yaml"))
    + glob.glob(os.path.join(REPO, "configs", "trainers", "CoOp", "*_param_matched.yaml"))
    + glob.glob(os.path.join(REPO, "configs", "trainers", "CoCoOp", "*_gate_*.yaml"))
    + glob.glob(os.path.join(REPO, "configs", "trainers", "CoCoOp", "*_param_matched.yaml")))
# The study's own files, by their names in its repository (configs/trainers/...).
STUDY_FILES = {
    "AdaptiveAlwaysFrozen/vit_b16_always_frozen.yaml", "AdaptiveBiDirMaPLe/vit_b16_adaptive_bidir_maple.yaml",
    "AdaptiveExplicitReg/vit_b16_explicit_reg.yaml", "AdaptiveFreezeEarly/vit_b16_freeze_early.yaml",
    "ImprovedAdaptiveBiDirMaPLe/improved_vit_b16_adaptive_bidir_maple.yaml", "ParamMatched/vit_b16_param_matched.yaml",
    "AdaptiveMaPLe/vit_b16_adaptive_maple.yaml", "BiDirMaPLe/vit_b16_bidir_maple.yaml",
}
# Run a real-size config on the demo data with a 12-layer tiny backbone of random weights (deep
# enough for the study's prompt depth 8), everything else as the file says.
ON_TINY = ("MODEL.BACKBONE.NAME", "gatescope-tiny-deep", "MODEL.BACKBONE.PRETRAINED", "",
           "INPUT.SIZE", "(32, 32)", "DATASET.NAME", "GatescopeDemo", "DATASET.NUM_SHOTS", 1,
           "DATALOADER.NUM_WORKERS", 0, "OPTIM.MAX_EPOCH", 1, "OPTIM.WARMUP_EPOCH", 0,
           "TEST.NO_TEST", True)


def test_study_configs_exist():
    names = {os.path.relpath(p, os.path.join(REPO, "configs", "trainers")) for p in STUDY_CONFIGS}
    assert STUDY_FILES <= names


@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_study_config_file_runs(demo_root, tmp_path, path):
    import trainers
    from trainers.engine import build_trainer
    from trainers.engine.utils import set_random_seed

    trainer_name = os.path.basename(os.path.dirname(path))
    # The study's files name their trainer (TRAINER.NAME) themselves, except AdaptiveMaPLe's.
    cfg = trainers.setup_cfg(demo_args(demo_root, tmp_path, trainer_name, config=path, opts=ON_TINY))
    assert cfg.TRAINER.NAME in (trainer_name, trainer_name + "Gated")
    set_random_seed(1)
    trainer = build_trainer(cfg)
    gated = any(cfg.TRAINER[n].get("USE_GATE", False) for n in ("COOP", "COCOOP"))
    if gated:
        assert type(trainer).__name__ == trainer_name + "Gated"
    if trainer_name == "AdaptiveBiDirMaPLe":
        c = cfg.TRAINER.ADAPTIVE_BIDIR_MAPLE
        assert (c.N_CTX_MAX, c.PROMPT_DEPTH_MAX, c.TYPE, c.LAMBDA_SPARSITY, c.LAMBDA_DEPTH_SMOOTH) == \
            (4, 8, "length_only", 0.001, 0.0002)
        assert (cfg.OPTIM.LR, cfg.DATALOADER.TRAIN_X.BATCH_SIZE, c.CYCLE_LOSS_WEIGHT) == (0.0025, 4, 0.1)
    trainer.train()  # one epoch of the real config on demo data
    assert os.path.isfile(os.path.join(tmp_path, "prompt_learner", "model.pth.tar-1"))


@pytest.mark.parametrize("name", ["AdaptiveBiDirMaPLe", "AdaptiveMaPLe", "ParamMatched", "BiasMatched"])
def test_study_demo_config_trains(demo_root, tmp_path, name):
    from test_training import train_set_loss
    trainer = build_demo_trainer(demo_root, tmp_path, trainer=name, opts=("TEST.NO_TEST", True, "OPTIM.MAX_EPOCH", 3))
    before = train_set_loss(trainer)
    trainer.train()
    assert train_set_loss(trainer) < before - 0.01
