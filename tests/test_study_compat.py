"""The study's model, keys and flags: fixed-batch, hand-checked pieces on the tiny deep backbone.

Each test pins one behaviour of the study's released code (or, where paper.md lists a defect,
the fixed behaviour) that gatescope reproduces; docs/coming_from_the_study.md lists them.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import build_demo_trainer, demo_args

# The 12-layer tiny backbone with random weights, one epoch, few images.
TINY_DEEP = ("MODEL.BACKBONE.NAME", "gatescope-tiny-deep", "MODEL.BACKBONE.PRETRAINED", "",
             "OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 1)


def shape(node, n_ctx=4, depth=4, typ="full"):
    return (f"TRAINER.{node}.N_CTX_MAX", n_ctx, f"TRAINER.{node}.PROMPT_DEPTH_MAX", depth,
            f"TRAINER.{node}.TYPE", typ, f"TRAINER.{node}.FIXED_N_CTX", n_ctx,
            f"TRAINER.{node}.FIXED_PROMPT_DEPTH", depth)


def build(root, path, trainer, *opts):
    return build_demo_trainer(root, path, trainer=trainer, opts=TINY_DEEP + tuple(o for group in opts for o in group))


def set_logits(head, values):
    with torch.no_grad():
        head.gate.logits.copy_(torch.tensor(values, dtype=head.gate.logits.dtype))


def fixed_batch(trainer, n=4):
    batch = next(iter(trainer.train_loader_x))
    return batch["img"][:n], batch["label"][:n]


# ------------------------------------------------------------------ BiDirMaPLe's mapping MLPs
def test_bidir_mappings_are_linear_relu_linear(demo_root, tmp_path):
    """The study's CrossModalMappingNetwork: Linear - ReLU - Linear (GELU gives other values)."""
    trainer = build(demo_root, tmp_path, "BiDirMaPLe", ("TRAINER.BIDIR_MAPLE.PROMPT_DEPTH", 3))
    mlp = trainer.model.prompt_learner.l2v_mappings[0]
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear]
    x = torch.randn(4, mlp[0].in_features)
    first, second = mlp[0], mlp[2]
    hand = (x @ first.weight.T + first.bias).clamp(min=0) @ second.weight.T + second.bias
    torch.testing.assert_close(mlp(x), hand)
    gelu = F.gelu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias
    assert not torch.allclose(mlp(x), gelu)


# ------------------------------------------------------------------ which prompts each gate scales
G_LEN = [2.0, -1.0, 0.5, 3.0]


@pytest.mark.parametrize("trainer_name,node,depth_text", [
    ("AdaptiveBiDirMaPLe", "ADAPTIVE_BIDIR_MAPLE", False), ("AdaptiveTrain", "ADAPTIVE_TRAIN", True)])
def test_adaptive_bidir_length_gates_scale_only_the_shallow_context(demo_root, tmp_path, trainer_name, node,
                                                                    depth_text):
    trainer = build(demo_root, tmp_path, trainer_name, shape(node))
    learner = trainer.model.prompt_learner
    set_logits(learner.length_gate, G_LEN)
    learner.train()
    prompts = learner()
    g = torch.sigmoid(torch.tensor(G_LEN)).unsqueeze(-1)
    n = learner.template.n_ctx
    # The text prompt holds g * ctx in its context slots, for every class.
    torch.testing.assert_close(prompts.text[:, 1:1 + n], (g * learner.ctx).expand(prompts.text.shape[0], -1, -1))
    # The shallow visual prompt: proj(mean_i g_i ctx_i), one copy per class (the study's code).
    hand = learner.proj((g * learner.ctx).mean(0))
    assert prompts.vision.shape[0] == prompts.text.shape[0]
    torch.testing.assert_close(prompts.vision, hand.expand_as(prompts.vision))
    # The deep prompts are those of the ungated model: the length gates do not reach them.
    text, vision = learner.couple(learner.text_prompts())
    for a, b in zip(prompts.text_deep, text[1:]):
        torch.testing.assert_close(a, b)
    for a, b in zip(prompts.vision_deep, vision[1:]):
        torch.testing.assert_close(a, b)
    # Depth gates: deep visual prompts always; deep text prompts only where the study's text encoder applies them.
    assert prompts.vision_gates is not None
    assert (prompts.text_gates is not None) == depth_text


def test_adaptive_maple_length_gates_scale_the_shallow_context_and_the_deep_visual_prompts(demo_root, tmp_path):
    trainer = build(demo_root, tmp_path, "AdaptiveMaPLe", shape("ADAPTIVE_MAPLE"))
    learner = trainer.model.prompt_learner
    set_logits(learner.length_gate, G_LEN)
    learner.train()
    prompts = learner()
    g = torch.sigmoid(torch.tensor(G_LEN)).unsqueeze(-1)
    torch.testing.assert_close(prompts.vision, learner.proj(g * learner.ctx))
    for j, (t, v) in enumerate(zip(prompts.text_deep, prompts.vision_deep)):
        torch.testing.assert_close(t, learner.compound_prompts_text[j])  # deep text: ungated
        torch.testing.assert_close(v, learner.compound_prompt_projections[j](g * learner.compound_prompts_text[j]))
    assert prompts.text_gates is not None and prompts.vision_gates is not None  # depth gates on both towers


# ------------------------------------------------------------------ hard gates at test, depth insert-or-carry
def test_study_yaml_gives_hard_gates_at_test_and_soft_in_training(demo_root, tmp_path):
    import os

    import trainers
    from conftest import REPO
    from trainers.engine import build_trainer

    path = os.path.join(REPO, "configs", "trainers", "AdaptiveBiDirMaPLe", "vit_b16_adaptive_bidir_maple.yaml")
    opts = ("MODEL.BACKBONE.NAME", "gatescope-tiny-deep", "MODEL.BACKBONE.PRETRAINED", "", "INPUT.SIZE", "(32, 32)",
            "DATASET.NAME", "GatescopeDemo", "DATASET.NUM_SHOTS", 1, "DATALOADER.NUM_WORKERS", 0)
    cfg = trainers.setup_cfg(demo_args(demo_root, tmp_path, "AdaptiveBiDirMaPLe", config=path, opts=opts))
    assert cfg.GATE.TEST_MODE == ""  # the study's YAML sets no GATE key
    trainer = build_trainer(cfg)
    learner = trainer.model.prompt_learner
    assert learner.length_gate.test_mode == "hard"
    set_logits(learner.length_gate, [2.0, -1.0, 0.5, -3.0])
    learner.train()
    learner()
    torch.testing.assert_close(learner.last_gates["length"][0], torch.sigmoid(torch.tensor([2.0, -1.0, 0.5, -3.0])))
    learner.eval()
    learner()
    torch.testing.assert_close(learner.last_gates["length"][0], torch.tensor([1.0, 0.0, 1.0, 0.0]))


def test_other_gated_trainers_stay_soft_at_test_and_an_explicit_mode_wins(demo_root, tmp_path):
    coop = build_demo_trainer(demo_root, tmp_path / "c", trainer="CoOpGated", opts=("OPTIM.MAX_EPOCH", 1))
    assert coop.gate_head.test_mode == "soft"
    ada = build(demo_root, tmp_path / "a", "AdaptiveMaPLe", shape("ADAPTIVE_MAPLE"), ("GATE.TEST_MODE", "soft"))
    assert {h.test_mode for h in ada.gate_heads} == {"soft"}


def test_a_depth_gate_off_at_test_keeps_the_carried_tokens(demo_root, tmp_path):
    """The study inserts a deep prompt at test only where its depth gate > 0.5 (unscaled), else the
    tokens of the layer below go on; in training the prompt is scaled by the gate."""
    trainer = build(demo_root, tmp_path, "AdaptiveMaPLe", shape("ADAPTIVE_MAPLE", 2, 3))
    learner, backbone = trainer.model.prompt_learner, trainer.model.backbone
    set_logits(learner.depth_gate, [3.0, -3.0])  # layer 1 on, layer 2 off
    images, _ = fixed_batch(trainer, 2)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        prompts = learner()
        assert prompts.gate_mode == "blend"
        from trainers.backbone import DeepPrompts
        hand = backbone.encode_image(images, prompts.vision, DeepPrompts(prompts.vision_deep[:1]))
        torch.testing.assert_close(trainer.model.image_features(images, prompts), hand)
        learner.depth_gate.override = torch.tensor([0.5, 0.5])  # a probe's soft value scales, as in training
        assert learner().gate_mode == "scale"
        learner.depth_gate.override = None
    learner.train()
    assert learner().gate_mode == "scale"


# ------------------------------------------------------------------ the regularisers
def test_adaptive_regularisers_as_the_study_defines_them(demo_root, tmp_path):
    """sparsity = lambda_s * sum_i sigmoid(a_i) over the length gates only; smoothness =
    lambda_d * sum_j |w_{j+1} - w_j| over the depth gates' logits (not their sigmoid)."""
    trainer = build(demo_root, tmp_path, "AdaptiveMaPLe", shape("ADAPTIVE_MAPLE", 2, 4))
    learner = trainer.model.prompt_learner
    set_logits(learner.length_gate, [0.0, 1.0])
    set_logits(learner.depth_gate, [2.0, -1.0, 0.5])
    learner.train()
    learner()
    terms = learner.regularisers(0.5, 0.25)
    assert terms["sparsity"].item() == pytest.approx(0.5 * (0.5 + torch.sigmoid(torch.tensor(1.0)).item()), rel=1e-6)
    assert terms["depth_smooth"].item() == pytest.approx(0.25 * (3.0 + 1.5), rel=1e-6)
    assert set(learner.regularisers(0.0, 0.0)) == set()


def test_length_only_still_regularises_its_length_gates(demo_root, tmp_path):
    """The study's code added zero under length_only; here the sparsity term is present."""
    trainer = build(demo_root, tmp_path, "AdaptiveBiDirMaPLe", shape("ADAPTIVE_BIDIR_MAPLE", 4, 2, "length_only"))
    trainer.set_model_mode("train")
    images, labels = fixed_batch(trainer)
    losses = trainer.compute_losses(trainer.model(images), labels)
    expected = trainer.method_cfg.LAMBDA_SPARSITY * 4 * torch.sigmoid(torch.tensor(1.0)).item()
    assert losses["sparsity"].item() == pytest.approx(expected, rel=1e-5)
    assert "depth_smooth" not in losses  # no depth gates under length_only


# ------------------------------------------------------------------ the cycle loss
def test_adaptive_bidir_cycle_loss_is_on_the_coupled_deep_text(demo_root, tmp_path):
    trainer = build(demo_root, tmp_path, "AdaptiveBiDirMaPLe", shape("ADAPTIVE_BIDIR_MAPLE", 4, 3))
    learner = trainer.model.prompt_learner
    learner.train()
    prompts = learner()
    hand = torch.stack([F.mse_loss(v2l(l2v(t)), t) for t, l2v, v2l in
                        zip(prompts.text_deep, learner.l2v_mappings, learner.v2l_mappings)]).mean()
    torch.testing.assert_close(learner.cycle_loss(), hand)
    raw = torch.stack([F.mse_loss(v2l(l2v(t)), t) for t, l2v, v2l in
                       zip(learner.compound_prompts_text, learner.l2v_mappings, learner.v2l_mappings)]).mean()
    assert not torch.allclose(hand, raw)


def test_bidir_cycle_weight_ramps_up_linearly(demo_root, tmp_path):
    trainer = build(demo_root, tmp_path, "BiDirMaPLe", ("TRAINER.BIDIR_MAPLE.CYCLE_LOSS_WEIGHT", 0.2,
                                                        "TRAINER.BIDIR_MAPLE.CYCLE_WARMUP_EPOCHS", 2))
    weights = []
    for epoch in range(4):
        trainer.epoch = epoch
        weights.append(trainer.cycle_weight())
    assert weights == pytest.approx([0.0, 0.1, 0.2, 0.2])


# ------------------------------------------------------------------ entropy penalties and their directions
def binary_entropy_grad(a):
    """d/da of h(sigmoid(a)) = -a * p * (1 - p)."""
    p = torch.sigmoid(a)
    return -a * p * (1 - p)


def test_coop_gate_reg_lambda_is_an_entropy_penalty_towards_0_and_1(demo_root, tmp_path):
    """The study's CoOp: loss + lambda * sum_k h(sigmoid(a_k)) (sharpen), not a sparsity term."""
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOp", opts=(
        "OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2, "TRAINER.COOP.USE_GATE", True,
        "TRAINER.COOP.GATE_REG_LAMBDA", 0.3))
    r = trainer.cfg.REMEDY.ENTROPY
    assert (r.WEIGHT, r.DIRECTION, r.REDUCTION, trainer.cfg.GATE.REG_SPARSITY) == (0.3, "sharpen", "sum", 0.0)
    logits = trainer.gate_head.gate.logits
    set_logits(trainer.gate_head, torch.linspace(-2, 2, logits.numel()).tolist())
    trainer.set_model_mode("train")
    images, labels = fixed_batch(trainer, 2)
    losses = trainer.compute_losses(trainer.model(images), labels)
    (grad,) = torch.autograd.grad(losses["remedy_entropy"], logits)
    torch.testing.assert_close(grad, 0.3 * binary_entropy_grad(logits.detach()), rtol=1e-5, atol=1e-7)


def test_improved_entropy_pushes_the_gates_towards_one_half(demo_root, tmp_path):
    """ImprovedAdaptiveBiDirMaPLe: loss - lambda * sum h(sigmoid(a)) over each gate (flatten), the
    opposite sign of the CoOp penalty."""
    trainer = build(demo_root, tmp_path, "ImprovedAdaptiveBiDirMaPLe", shape("ADAPTIVE_BIDIR_MAPLE", 4, 3),
                    ("TRAINER.ADAPTIVE_BIDIR_MAPLE.USE_ENTROPY_REG", True,
                     "TRAINER.ADAPTIVE_BIDIR_MAPLE.LAMBDA_ENTROPY", 0.05,
                     "TRAINER.ADAPTIVE_BIDIR_MAPLE.USE_GRADIENT_SCALING", False))
    assert (trainer.cfg.REMEDY.ENTROPY.DIRECTION, trainer.cfg.REMEDY.ENTROPY.REDUCTION) == ("flatten", "sum")
    learner = trainer.model.prompt_learner
    set_logits(learner.length_gate, G_LEN)
    set_logits(learner.depth_gate, [0.3, -2.0])
    trainer.set_model_mode("train")
    images, labels = fixed_batch(trainer, 2)
    losses = trainer.compute_losses(trainer.model(images), labels)
    heads = [learner.length_gate.gate.logits, learner.depth_gate.gate.logits]
    grads = torch.autograd.grad(losses["remedy_entropy"], heads)
    for grad, a in zip(grads, heads):
        torch.testing.assert_close(grad, -0.05 * binary_entropy_grad(a.detach()), rtol=1e-5, atol=1e-7)


def test_improved_gradient_scaling_multiplies_the_gate_gradient(demo_root, tmp_path):
    """USE_GRADIENT_SCALING: dL/da * min(1 / (g (1 - g)), GRADIENT_SCALE_MAX)."""
    opts = shape("ADAPTIVE_BIDIR_MAPLE", 4, 3)
    plain = build(demo_root, tmp_path / "p", "ImprovedAdaptiveBiDirMaPLe", opts,
                  ("TRAINER.ADAPTIVE_BIDIR_MAPLE.USE_GRADIENT_SCALING", False))
    scaled = build(demo_root, tmp_path / "s", "ImprovedAdaptiveBiDirMaPLe", opts,
                   ("TRAINER.ADAPTIVE_BIDIR_MAPLE.USE_GRADIENT_SCALING", True,
                    "TRAINER.ADAPTIVE_BIDIR_MAPLE.GRADIENT_SCALE_MAX", 6.0))
    scaled.model.prompt_learner.load_state_dict(plain.model.prompt_learner.state_dict())
    logits = [-3.0, 0.0, 1.0, 2.5]
    images, labels = fixed_batch(plain, 2)
    grads = []
    for t in (plain, scaled):
        set_logits(t.model.prompt_learner.length_gate, logits)
        t.set_model_mode("train")
        loss = F.cross_entropy(t.model(images), labels)
        grads.append(torch.autograd.grad(loss, t.model.prompt_learner.length_gate.gate.logits)[0])
    p = torch.sigmoid(torch.tensor(logits))
    torch.testing.assert_close(grads[1], grads[0] * (1 / (p * (1 - p))).clamp(max=6.0), rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------ MaPLe's projections
def test_maple_deep_projections_start_as_the_reference_clones(demo_root, tmp_path):
    """MaPLe's code: proj, then the deep prompts N(0, 0.02), then one Linear cloned J-1 times."""
    from trainers.backbone import ClipBackbone, load_clip
    from trainers.maple import MaPLePromptLearner

    backbone = ClipBackbone(load_clip("gatescope-tiny-deep", ""))
    wt, wv = backbone.ctx_dim, backbone.vis_dim
    torch.manual_seed(7)
    learner = MaPLePromptLearner(backbone, ["circle", "square"], 2, "a photo of a", depth=4)
    torch.manual_seed(7)
    proj = nn.Linear(wt, wv)
    prompts = [nn.init.normal_(torch.empty(2, wt), std=0.02) for _ in range(3)]
    single = nn.Linear(wt, wv)
    torch.testing.assert_close(learner.proj.weight, proj.weight, rtol=0, atol=0)
    for p, ref in zip(learner.compound_prompts_text, prompts):
        torch.testing.assert_close(p, ref, rtol=0, atol=0)
    for layer in learner.compound_prompt_projections:
        torch.testing.assert_close(layer.weight, single.weight, rtol=0, atol=0)
        torch.testing.assert_close(layer.bias, single.bias, rtol=0, atol=0)
    first, second = learner.compound_prompt_projections[:2]
    assert first.weight.data_ptr() != second.weight.data_ptr()  # copies, not one shared layer


# ------------------------------------------------------------------ optimizer
@pytest.mark.parametrize("trainer_name,node,expected", [
    ("AdaptiveBiDirMaPLe", "ADAPTIVE_BIDIR_MAPLE", True), ("ImprovedAdaptiveBiDirMaPLe", "ADAPTIVE_BIDIR_MAPLE", True),
    ("AdaptiveMaPLe", "ADAPTIVE_MAPLE", False), ("AdaptiveTrain", "ADAPTIVE_TRAIN", False)])
def test_nesterov_where_the_study_builds_its_sgd_with_it(demo_root, tmp_path, trainer_name, node, expected):
    trainer = build(demo_root, tmp_path, trainer_name, shape(node, 2, 2))
    assert {g["nesterov"] for g in trainer.optim.param_groups} == {expected}


def test_nesterov_can_be_switched_off(demo_root, tmp_path):
    trainer = build(demo_root, tmp_path, "AdaptiveBiDirMaPLe", shape("ADAPTIVE_BIDIR_MAPLE", 2, 2),
                    ("TRAINER.ADAPTIVE_BIDIR_MAPLE.NESTEROV", False))
    assert {g["nesterov"] for g in trainer.optim.param_groups} == {False}


@pytest.mark.parametrize("trainer_name,expected", [
    ("BiDirMaPLe", 1.0), ("AdaptiveBiDirMaPLe", 1.0), ("ImprovedAdaptiveBiDirMaPLe", 1.0),
    ("MaPLe", 0.0), ("AdaptiveMaPLe", 0.0), ("AdaptiveTrain", 0.0), ("AdaptiveFreezeEarly", 0.0),
    ("AdaptiveAlwaysFrozen", 0.0), ("AdaptiveExplicitReg", 0.0), ("ParamMatched", 0.0), ("CoOp", 0.0),
    ("CoCoOp", 0.0)])
def test_grad_clip_where_the_study_clips(demo_root, tmp_path, trainer_name, expected):
    """The study's clip_grad_norm_(model.parameters(), 1): in BiDirMaPLe and its adaptive BiDir
    trainers; not in AdaptiveMaPLe, the controls, ParamMatched, CoOp, CoCoOp, nor in MaPLe's reference."""
    import trainers

    cfg = trainers.setup_cfg(demo_args(demo_root, tmp_path, trainer_name))
    assert cfg.OPTIM.GRAD_CLIP == expected


def test_grad_clip_of_a_study_trainer_can_be_changed_or_switched_off_but_not_set_twice(demo_root, tmp_path):
    import trainers

    def cfg_of(*opts):
        return trainers.setup_cfg(demo_args(demo_root, tmp_path, "AdaptiveBiDirMaPLe", opts=opts))
    assert cfg_of("TRAINER.ADAPTIVE_BIDIR_MAPLE.GRAD_CLIP", 0.0).OPTIM.GRAD_CLIP == 0.0
    assert cfg_of("TRAINER.ADAPTIVE_BIDIR_MAPLE.GRAD_CLIP", 0.0, "OPTIM.GRAD_CLIP", 5.0).OPTIM.GRAD_CLIP == 5.0
    assert cfg_of("OPTIM.GRAD_CLIP", 1.0).OPTIM.GRAD_CLIP == 1.0
    with pytest.raises(ValueError, match=r"TRAINER.ADAPTIVE_BIDIR_MAPLE.GRAD_CLIP sets OPTIM.GRAD_CLIP to 1.0, but "
                                         r"OPTIM.GRAD_CLIP is also set to 5.0; set TRAINER.ADAPTIVE_BIDIR_MAPLE.GRAD_CLIP 5.0"):
        cfg_of("OPTIM.GRAD_CLIP", 5.0)
    maple = trainers.setup_cfg(demo_args(demo_root, tmp_path, "MaPLe", opts=("OPTIM.GRAD_CLIP", 1.0)))
    assert maple.OPTIM.GRAD_CLIP == 1.0  # the study's MaPLe runs: MaPLe's reference never clips


# ------------------------------------------------------------------ the controls as remedies
def test_controls_become_remedy_settings(demo_root, tmp_path):
    early = build(demo_root, tmp_path / "e", "AdaptiveFreezeEarly", shape("ADAPTIVE_FREEZE_EARLY", 2, 2))
    assert early.cfg.REMEDY.FREEZE.AFTER_EPOCH == 1
    frozen = build(demo_root, tmp_path / "f", "AdaptiveAlwaysFrozen", shape("ADAPTIVE_ALWAYS_FROZEN", 2, 2))
    assert (frozen.cfg.REMEDY.FREEZE.ALWAYS, frozen.cfg.REMEDY.FREEZE.LOGIT) == (True, 5.0)
    reg = build(demo_root, tmp_path / "r", "AdaptiveExplicitReg", shape("ADAPTIVE_EXPLICIT_REG", 2, 2))
    assert (reg.cfg.REMEDY.EXPLICIT_REG.CTX_DROPOUT, reg.cfg.REMEDY.EXPLICIT_REG.WEIGHT_DECAY) == (0.1, 0.01)
    main = build(demo_root, tmp_path / "m", "AdaptiveBiDirMaPLe", shape("ADAPTIVE_BIDIR_MAPLE", 2, 2))
    assert main.cfg.REMEDY.WARMUP.EPOCHS == 0  # the study's freeze there froze nothing: no freeze


def test_improved_gates_really_do_not_move_in_the_warmup_epochs(demo_root, tmp_path):
    """The study's ImprovedAdaptiveBiDirMaPLe fixes its gates for epochs 0 and 1 (REMEDY.WARMUP fix_gate)."""
    trainer = build(demo_root, tmp_path, "ImprovedAdaptiveBiDirMaPLe", shape("ADAPTIVE_BIDIR_MAPLE", 2, 2),
                    ("OPTIM.WARMUP_EPOCH", 0))
    assert (trainer.cfg.REMEDY.WARMUP.EPOCHS, trainer.cfg.REMEDY.WARMUP.MODE) == (2, "fix_gate")
    learner = trainer.model.prompt_learner
    gates = [h.gate.logits.detach().clone() for h in trainer.gate_heads]
    ctx = learner.ctx.detach().clone()
    trainer.train()
    for head, before in zip(trainer.gate_heads, gates):
        torch.testing.assert_close(head.gate.logits.detach(), before, rtol=0, atol=0)
    assert not torch.equal(learner.ctx.detach(), ctx)


def test_a_remedy_key_set_twice_is_refused(demo_root, tmp_path):
    with pytest.raises(ValueError, match="TRAINER.ADAPTIVE_FREEZE_EARLY.FREEZE_EPOCH sets REMEDY.FREEZE.AFTER_EPOCH"):
        build(demo_root, tmp_path, "AdaptiveFreezeEarly", shape("ADAPTIVE_FREEZE_EARLY", 2, 2),
              ("REMEDY.FREEZE.AFTER_EPOCH", 3))


# ------------------------------------------------------------------ the study's ParamMatched
def test_param_matched_budget_hand_computed():
    """ViT-B/16 widths (512, 768), the adaptive shape 4 x 8 as in the study's config."""
    from types import SimpleNamespace

    from trainers.param_matched import param_buffer_shape

    def node(n, d):
        return SimpleNamespace(N_CTX_MAX=4, PROMPT_DEPTH_MAX=8, FIXED_N_CTX=n, FIXED_PROMPT_DEPTH=d, BIDIRECTIONAL=True)

    # Same shape: 4 + 7 gate values to match, a 64-wide buffer MLP (the study's floor), no extra layer.
    assert param_buffer_shape(node(4, 8), 512, 768) == (0, 64)
    # Depth 6: two layers short (each 4*512 + 512*768 + 512*256 + 256*768 + 768*384 + 384*512 + 2 values).
    per_layer = 4 * 512 + 512 * 768 + 512 * 256 + 256 * 768 + 768 * 384 + 384 * 512 + 2
    assert per_layer == 1_214_466
    assert param_buffer_shape(node(4, 6), 512, 768) == (2, 64)


def test_param_matched_is_maple_plus_a_context_buffer_without_coupling(demo_root, tmp_path):
    trainer = build(demo_root, tmp_path, "ParamMatched", shape("PARAM_MATCHED", 4, 3))
    learner = trainer.model.prompt_learner
    assert not hasattr(trainer, "gate_heads")  # no gate: a control, not a gated trainer
    mlp = learner.param_buffer_mlp
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear] and mlp[0].out_features == 64
    learner.train()
    prompts = learner()
    ctx = learner.ctx + mlp(learner.ctx)
    n = learner.template.n_ctx
    torch.testing.assert_close(prompts.text[0, 1:1 + n], ctx)
    torch.testing.assert_close(prompts.vision, learner.proj(ctx.mean(0)).expand_as(prompts.vision))
    for j, (t, v) in enumerate(zip(prompts.text_deep, prompts.vision_deep)):  # no bidirectional coupling
        torch.testing.assert_close(t, learner.compound_prompts_text[j])
        torch.testing.assert_close(v, learner.compound_prompt_projections[j](learner.compound_prompts_text[j]))
    images, labels = fixed_batch(trainer, 2)
    losses = trainer.compute_losses(trainer.model(images), labels)
    assert "cycle" in losses  # the mappings are trained by the cycle loss alone


def test_bias_matched_has_the_adaptive_models_parameter_count(demo_root, tmp_path):
    ada = build(demo_root, tmp_path / "a", "AdaptiveMaPLe", shape("ADAPTIVE_MAPLE", 4, 2))
    bias = build(demo_root, tmp_path / "b", "BiasMatched", shape("BIAS_MATCHED", 4, 2))
    count = lambda t: sum(p.numel() for p in t.model.prompt_learner.parameters() if p.requires_grad)  # noqa: E731
    assert count(bias) == count(ada)
    maple = build(demo_root, tmp_path / "p", "MaPLe", ("TRAINER.MAPLE.N_CTX", 4, "TRAINER.MAPLE.PROMPT_DEPTH", 2))
    bias.model.prompt_learner.load_state_dict({**bias.model.prompt_learner.state_dict(),
                                               **maple.model.prompt_learner.state_dict()})
    images, _ = fixed_batch(bias, 3)
    with torch.no_grad():
        torch.testing.assert_close(bias.model(images), maple.model(images), rtol=0, atol=0)


# ------------------------------------------------------------------ command-line flags
def test_study_gate_flags_set_the_coop_and_cocoop_keys(demo_root, tmp_path):
    import os

    import trainers
    from conftest import DEMO_DATASET_CONFIG, REPO
    from trainers.cli import build_train_parser

    config = os.path.join(REPO, "configs", "trainers", "CoOp", "demo.yaml")
    args = build_train_parser().parse_args(
        ["--trainer", "CoOp", "--config-file", config, "--dataset-config-file", DEMO_DATASET_CONFIG, "--root", demo_root,
         "--output-dir", str(tmp_path), "--use_gate", "--gate_type", "vector", "--gate_lr", "0.07", "--gate_reg_lambda", "0.2",
         "--gate_mode", "conditional", "--equalize_grad", "--alpha_max", "5"])
    cfg = trainers.setup_cfg(args)
    lr = cfg.OPTIM.LR  # the demo YAML's
    for node in ("COOP", "COCOOP"):
        c = cfg.TRAINER[node]
        assert (c.USE_GATE, c.GATE_TYPE, c.GATE_REG_LAMBDA, c.EQUALIZE_GRAD, c.ALPHA_MAX) == \
            (True, "vector", 0.2, True, 5.0)
        assert c.GATE_LR_MUL == pytest.approx(0.07 / lr)
    assert cfg.TRAINER.COCOOP.GATE_MODE == "conditional"
    assert cfg.TRAINER.NAME == "CoOpGated" and cfg.GATE.TARGET == "token_dim"
    plain = trainers.setup_cfg(build_train_parser().parse_args(
        ["--trainer", "CoOp", "--config-file", config, "--dataset-config-file", DEMO_DATASET_CONFIG, "--root", demo_root,
         "--output-dir", str(tmp_path)]))
    assert (plain.TRAINER.NAME, plain.TRAINER.COOP.USE_GATE, plain.TRAINER.COOP.GATE_LR_MUL) == ("CoOp", False, 1.0)
    with pytest.raises(ValueError, match="--gate_lr"):
        trainers.setup_cfg(build_train_parser().parse_args(
            ["--trainer", "CoOp", "--config-file", config, "--output-dir", str(tmp_path), "--gate_lr", "0"]))


# ------------------------------------------------------------------ zero-shot CLIP
@pytest.mark.parametrize("name", ["ZeroshotCLIP", "ZeroshotCLIP2"])
def test_zeroshot_clip_logits_hand_computed(demo_root, tmp_path, name):
    from trainers.zsclip import DEFAULT_TEMPLATE, ENSEMBLE_TEMPLATES

    trainer = build_demo_trainer(demo_root, tmp_path, trainer=name)
    backbone = trainer.model.backbone
    classnames = trainer.dm.dataset.classnames
    templates = [DEFAULT_TEMPLATE] if name == "ZeroshotCLIP" else [*ENSEMBLE_TEMPLATES, DEFAULT_TEMPLATE]
    with torch.no_grad():
        feats = [F.normalize(backbone.encode_text_tokens(backbone.tokenize([t.format(c) for c in classnames])), dim=-1)
                 for t in templates]
        text = F.normalize(torch.stack(feats).mean(0), dim=-1)
        images, _ = fixed_batch(trainer, 3)
        image = F.normalize(backbone.encode_image(images), dim=-1)
        hand = backbone.logit_scale.exp() * image @ text.T
        torch.testing.assert_close(trainer.model_inference(images), hand)
    with pytest.raises(RuntimeError, match="--eval-only"):
        trainer.train()


@pytest.mark.parametrize("trainer_name,node", [("AdaptiveBiDirMaPLe", "ADAPTIVE_BIDIR_MAPLE"),
                                               ("AdaptiveMaPLe", "ADAPTIVE_MAPLE")])
def test_the_study_s_trainable_visual_ln_post_is_a_switch(demo_root, tmp_path, trainer_name, node):
    """The study's prompt learner holds the image encoder's ln_post (`shared_proj_out`), so it is
    trained with the prompts; here only with TRAIN_VISUAL_LN_POST (the backbone stays frozen by default)."""
    frozen = build(demo_root, tmp_path / "f", trainer_name, shape(node, 2, 2))
    assert not any(p.requires_grad for p in frozen.model.backbone.parameters())
    trainer = build(demo_root, tmp_path / "t", trainer_name, shape(node, 2, 2),
                    (f"TRAINER.{node}.TRAIN_VISUAL_LN_POST", True))
    ln_post = trainer.model.backbone.clip.visual.ln_post
    prompt_group = {id(p) for g in trainer.optim.param_groups if g["name"] == "prompt" for p in g["params"]}
    assert {id(ln_post.weight), id(ln_post.bias)} <= prompt_group
    assert {"shared_proj_out.weight", "shared_proj_out.bias"} <= set(trainer.model.prompt_learner.state_dict())
    trainer.set_model_mode("train")
    images, labels = fixed_batch(trainer, 2)
    (grad,) = torch.autograd.grad(F.cross_entropy(trainer.model(images), labels), [ln_post.weight])
    assert grad.abs().sum() > 0
