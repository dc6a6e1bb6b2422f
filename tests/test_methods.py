"""CoCoOp, MaPLe, BiDirMaPLe, IVLP and VPT: faithful definitions, learnable-only state, training."""
import pytest
import torch
import torch.nn.functional as F

from conftest import build_demo_trainer
from test_training import train_set_loss
from trainers.backbone import ClipBackbone, DeepPrompts, load_clip
from trainers.cocoop import CoCoOpCLIP, CoCoOpPromptLearner
from trainers.maple import MaPLePromptLearner

TRAINERS = ["CoOp", "CoCoOp", "MaPLe", "BiDirMaPLe", "IVLP", "VPT"]
CLASSNAMES = ["circle", "square", "hot air balloon", "star"]
FAST = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ClipBackbone(load_clip("gatescope-tiny", ""))


@pytest.mark.parametrize("max_prompts", [None, 3])
def test_batched_cocoop_equals_the_per_image_loop(backbone, max_prompts):
    torch.manual_seed(0)
    model = CoCoOpCLIP(CoCoOpPromptLearner(backbone, CLASSNAMES, 4), backbone)
    model.max_prompts = max_prompts  # 3 < 4 images x 4 classes: chunked and recomputed in backward
    images = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3])
    params = [p for p in model.prompt_learner.parameters() if p.requires_grad]

    batched = model(images)
    g_batched = torch.autograd.grad(F.cross_entropy(batched, labels), params)
    loop = model.forward_per_image(images)
    g_loop = torch.autograd.grad(F.cross_entropy(loop, labels), params)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_batched, g_loop):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cocoop_shift_is_added_to_every_context_vector(backbone):
    learner = CoCoOpPromptLearner(backbone, CLASSNAMES, 4)
    features = F.normalize(torch.randn(2, backbone.embed_dim), dim=-1)
    shifted = learner.shifted_context(features)
    bias = learner.meta_net(features)
    for i in range(4):
        torch.testing.assert_close(shifted[:, i], learner.ctx[i] + bias)


def test_maple_depth_1_is_shallow_prompting(backbone):
    learner = MaPLePromptLearner(backbone, CLASSNAMES, 2, "a photo of a", depth=1)
    prompts = learner()
    assert len(learner.compound_prompts_text) == 0 and len(learner.compound_prompt_projections) == 0
    assert prompts.text_deep == [] and prompts.vision_deep == []
    torch.testing.assert_close(prompts.vision, learner.proj(learner.ctx))


def hand_vision_with_prompts(visual, images, shallow, deep):
    """The ViT with prompt tokens appended before ln_pre and replaced before layer 1."""
    x = visual.conv1(images).flatten(2).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], 1) + visual.positional_embedding
    x = visual.ln_pre(torch.cat([x, shallow.expand(x.shape[0], -1, -1)], 1))
    for i, block in enumerate(visual.transformer.resblocks):
        if i == 1:
            x = torch.cat([x[:, :-shallow.shape[0]], deep.expand(x.shape[0], -1, -1)], 1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def hand_text_with_deep_prompts(clip, prompts, eot, deep, n_ctx):
    x = prompts + clip.positional_embedding[:prompts.shape[1]]
    mask = clip.attn_mask[:prompts.shape[1], :prompts.shape[1]]
    for i, block in enumerate(clip.transformer.resblocks):
        if i == 1:
            x = torch.cat([x[:, :1], deep.expand(x.shape[0], -1, -1), x[:, 1 + n_ctx:]], 1)
        x = block(x, attn_mask=mask)
    return clip.ln_final(x)[torch.arange(len(eot)), eot] @ clip.text_projection


def test_maple_deep_prompts_replace_the_prompt_tokens_in_both_towers(backbone):
    torch.manual_seed(0)
    learner = MaPLePromptLearner(backbone, CLASSNAMES, 2, "a photo of a", depth=2)
    p = learner()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours_img = backbone.encode_image(images, p.vision, DeepPrompts(p.vision_deep))
        ours_txt = backbone.encode_text(p.text, learner.template.eot_idx, DeepPrompts(p.text_deep, start=1))
        hand_img = hand_vision_with_prompts(backbone.clip.visual, images, p.vision, p.vision_deep[0])
        hand_txt = hand_text_with_deep_prompts(backbone.clip, p.text, learner.template.eot_idx, p.text_deep[0], 2)
    torch.testing.assert_close(ours_img, hand_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_txt, hand_txt, rtol=1e-5, atol=1e-5)
    # MaPLe's context: the first 2 tokens of "a photo of a" learnable, "of a" kept in the prompt.
    words = backbone.token_embedding(backbone.tokenize(["a photo of a"]))[0, 1:3]
    torch.testing.assert_close(learner.ctx.detach(), words)


def step_grads(trainer, batch=None):
    batch = batch or next(iter(trainer.train_loader_x))
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, len(trainer.train_loader_x) + 1
    image, label = trainer.parse_batch_train(batch)
    losses = trainer.compute_losses(trainer.model(image), label)
    trainer.optim.zero_grad()
    sum(losses.values()).backward()
    return losses


@pytest.mark.parametrize("name", TRAINERS)
def test_gradients_reach_every_learnable_tensor_and_no_frozen_one(demo_root, tmp_path, name):
    opts = FAST + (("TRAINER.BIDIR_MAPLE.CYCLE_WARMUP_EPOCHS", 0) if name == "BiDirMaPLe" else ())
    trainer = build_demo_trainer(demo_root, tmp_path, trainer=name, opts=opts)
    step_grads(trainer)
    learnable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert learnable and all(n.startswith("prompt_learner.") for n in learnable)
    no_grad = [n for n, p in learnable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    frozen_with_grad = [n for n, p in trainer.model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen_with_grad == []
    groups = [p for g in trainer.optim.param_groups for p in g["params"]]
    assert len(groups) == len(learnable) and {id(p) for p in groups} == {id(p) for p in learnable.values()}


@pytest.mark.parametrize("name", TRAINERS)
def test_checkpoint_holds_learnable_tensors_only_and_reloads_for_eval(demo_root, tmp_path, name):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer=name, opts=FAST)
    trainer.train()
    accuracy = trainer.test()
    state = torch.load(tmp_path / "prompt_learner" / "model.pth.tar-1", weights_only=True)["state_dict"]
    learnable = {n for n, p in trainer.model.prompt_learner.named_parameters() if p.requires_grad}
    assert set(state) == learnable
    fresh = build_demo_trainer(demo_root, tmp_path / "eval", trainer=name, opts=FAST)
    fresh.load_model(str(tmp_path), epoch=1)
    assert fresh.test() == accuracy


@pytest.mark.parametrize("name", TRAINERS[1:])
def test_demo_config_trains_and_lowers_the_training_loss(demo_root, tmp_path, name):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer=name, opts=("TEST.NO_TEST", True))
    before = train_set_loss(trainer)
    trainer.train()
    assert train_set_loss(trainer) < before - 0.01


def test_bidir_maple_without_coupling_or_cycle_equals_maple(demo_root, tmp_path):
    maple = build_demo_trainer(demo_root, tmp_path / "m", trainer="MaPLe", opts=FAST)
    bidir = build_demo_trainer(demo_root, tmp_path / "b", trainer="BiDirMaPLe", opts=FAST + (
        "TRAINER.BIDIR_MAPLE.BIDIRECTIONAL", False, "TRAINER.BIDIR_MAPLE.CYCLE_LOSS_WEIGHT", 0.0))
    assert list(maple.model.prompt_learner.state_dict()) == list(bidir.model.prompt_learner.state_dict())
    for a, b in zip(maple.model.prompt_learner.parameters(), bidir.model.prompt_learner.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    batch = next(iter(maple.train_loader_x))
    losses_m, losses_b = step_grads(maple, batch), step_grads(bidir, batch)
    assert list(losses_b) == ["ce"]
    torch.testing.assert_close(losses_m["ce"], losses_b["ce"], rtol=0, atol=0)
    for a, b in zip(maple.model.prompt_learner.parameters(), bidir.model.prompt_learner.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_cycle_loss_ramps_up_over_its_warm_up(demo_root, tmp_path):
    """The study's linear CycleLossScheduler: weight * epoch / CYCLE_WARMUP_EPOCHS before, weight after."""
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="BiDirMaPLe",
                                 opts=FAST + ("TRAINER.BIDIR_MAPLE.CYCLE_WARMUP_EPOCHS", 2))
    learner = trainer.model.prompt_learner
    t = learner.compound_prompts_text[0]
    for epoch, weight in [(0, 0.0), (1, 0.05), (2, 0.1)]:
        trainer.epoch = epoch
        losses = step_grads(trainer)
        assert ("cycle" in losses) is (weight > 0)
        if weight > 0:
            expected_cycle = F.mse_loss(learner.v2l_mappings[0](learner.l2v_mappings[0](t)), t)
            torch.testing.assert_close(losses["cycle"], weight * expected_cycle)


def test_bidirectional_mixing_follows_its_formula(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="BiDirMaPLe", opts=FAST)
    L = trainer.model.prompt_learner
    text, vision = L.coupled()
    t0, v0 = L.compound_prompts_text[0], L.compound_prompt_projections[0](L.compound_prompts_text[0])
    a, b = torch.sigmoid(L.alpha_params[0]), torch.sigmoid(L.beta_params[0])
    t1 = a * t0 + (1 - a) * L.v2l_mappings[0](v0)
    torch.testing.assert_close(text[1], t1)
    torch.testing.assert_close(vision[1], b * v0 + (1 - b) * L.l2v_mappings[0](t1))


def test_ema_is_evaluated_and_checkpointed(demo_root, tmp_path):
    opts = FAST + ("OPTIM.MAX_EPOCH", 2, "TRAINER.BIDIR_MAPLE.USE_EMA", True,
                   "TRAINER.BIDIR_MAPLE.EMA_START_EPOCH", 1, "TRAINER.BIDIR_MAPLE.EMA_DECAY", 0.5)
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="BiDirMaPLe", opts=opts)
    trainer.train()
    assert trainer.ema.shadow is not None
    ctx = trainer.model.prompt_learner.ctx
    assert not torch.equal(trainer.ema.shadow["ctx"], ctx)
    with trainer.ema.applied():
        torch.testing.assert_close(ctx.detach(), trainer.ema.shadow["ctx"])
    state = torch.load(tmp_path / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    torch.testing.assert_close(state["ema"]["ctx"], trainer.ema.shadow["ctx"])


def test_ivlp_language_only_and_vpt_text_are_fixed(demo_root, tmp_path):
    ivlp = build_demo_trainer(demo_root, tmp_path / "i", trainer="IVLP", opts=FAST + (
        "TRAINER.IVLP.PROMPT_DEPTH_VISION", 0, "TRAINER.IVLP.N_CTX_VISION", 0))
    p = ivlp.model.prompt_learner()
    assert p.vision is None and p.vision_deep == [] and p.text is not None
    vpt = build_demo_trainer(demo_root, tmp_path / "v", trainer="VPT", opts=FAST)
    p = vpt.model.prompt_learner()
    assert p.text is None and p.vision.shape == (4, vpt.model.backbone.vis_dim) and len(p.vision_deep) == 1
    backbone = vpt.model.backbone
    expected = backbone.clip.encode_text(backbone.tokenize([f"a photo of a {c}." for c in vpt.dm.dataset.classnames]))
    torch.testing.assert_close(vpt.model.fixed_text_features, expected, rtol=1e-5, atol=1e-5)


def test_prompt_depth_beyond_the_layers_is_a_clear_error(demo_root, tmp_path):
    with pytest.raises(ValueError, match="PROMPT_DEPTH=5 but the tower has 2 layers"):
        build_demo_trainer(demo_root, tmp_path, trainer="MaPLe", opts=FAST + ("TRAINER.MAPLE.PROMPT_DEPTH", 5))
