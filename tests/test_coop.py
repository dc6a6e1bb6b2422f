"""CoOp's logits equal a hand computation with open_clip's own modules on the tiny model."""
import torch
import torch.nn.functional as F

from trainers.backbone import ClipBackbone, load_clip
from trainers.coop import CoOpCLIP, CoOpPromptLearner

CLASSNAMES = ["circle", "square", "hot air balloon"]


def hand_text_features(clip, ctx, classnames):
    """[SOS] ctx classname . [EOS] through all 77 positions, as CLIP's encode_text does."""
    n_ctx = ctx.shape[-2]
    tokens = clip_tokenize([" ".join(["X"] * n_ctx) + f" {c}." for c in classnames])
    x = clip.token_embedding(tokens)
    ctx = ctx if ctx.dim() == 3 else ctx.unsqueeze(0).expand(len(classnames), -1, -1)
    x = torch.cat([x[:, :1], ctx, x[:, 1 + n_ctx:]], dim=1)
    x = x + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    x = x[torch.arange(len(classnames)), tokens.argmax(-1)]
    return x @ clip.text_projection


def clip_tokenize(texts):
    import open_clip
    return open_clip.tokenize(texts)


def test_coop_logits_equal_hand_computation():
    torch.manual_seed(0)
    backbone = ClipBackbone(load_clip("gatescope-tiny", ""))
    learner = CoOpPromptLearner(backbone, CLASSNAMES, n_ctx=4)
    model = CoOpCLIP(learner, backbone)
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
        clip = backbone.clip
        img = F.normalize(clip.encode_image(images), dim=-1)
        txt = F.normalize(hand_text_features(clip, learner.ctx, CLASSNAMES), dim=-1)
        expected = clip.logit_scale.exp() * img @ txt.t()
    assert logits.shape == (5, 3)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_class_specific_context_and_init_words():
    torch.manual_seed(0)
    backbone = ClipBackbone(load_clip("gatescope-tiny", ""))
    csc = CoOpPromptLearner(backbone, CLASSNAMES, n_ctx=3, csc=True)
    assert csc.ctx.shape == (3, 3, backbone.ctx_dim)
    init = CoOpPromptLearner(backbone, CLASSNAMES, n_ctx=16, ctx_init="a photo of a")
    assert init.ctx.shape == (4, backbone.ctx_dim)
    words = backbone.token_embedding(backbone.tokenize(["a photo of a"]))[0, 1:5]
    torch.testing.assert_close(init.ctx.detach(), words)
    model = CoOpCLIP(csc, backbone)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = backbone.clip.logit_scale.exp() * F.normalize(backbone.clip.encode_image(images), dim=-1) @ \
            F.normalize(hand_text_features(backbone.clip, csc.ctx, CLASSNAMES), dim=-1).t()
        torch.testing.assert_close(model(images), expected, rtol=1e-5, atol=1e-5)


def test_only_the_context_is_learnable():
    backbone = ClipBackbone(load_clip("gatescope-tiny", ""))
    model = CoOpCLIP(CoOpPromptLearner(backbone, CLASSNAMES, n_ctx=4), backbone)
    learnable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert learnable == ["prompt_learner.ctx"]
    assert list(model.prompt_learner.state_dict()) == ["ctx"]  # what CoOp's checkpoints hold


def test_a_coop_users_grep_finds_the_classes_that_replace_coops():
    """CoOp's CustomCLIP, TextEncoder, load_clip_to_cpu and PromptLearner are named in the docstring
    of what replaces them, so searching the package for them lands there."""
    import inspect

    import trainers.backbone
    from trainers.backbone.adapter import ClipBackbone, encode_text_embeddings
    from trainers.cocoop import CoCoOpCLIP, CoCoOpPromptLearner
    from trainers.maple import MaPLePromptLearner

    expected = {
        "CustomCLIP": (CoOpCLIP, CoCoOpCLIP), "PromptLearner": (CoOpPromptLearner, CoCoOpPromptLearner,
                                                                MaPLePromptLearner),
        "TextEncoder": (CoOpCLIP, ClipBackbone, encode_text_embeddings), "load_clip_to_cpu": (
            trainers.backbone.build_backbone, ClipBackbone)}
    for name, replacements in expected.items():
        for obj in replacements:
            assert f"`{name}" in inspect.getdoc(obj), (name, obj.__qualname__)
