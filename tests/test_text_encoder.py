"""The prompt text encoder: EOT truncation is exact, and it reproduces open_clip's encode_text."""
import pytest
import torch

from trainers.backbone import ClipBackbone, load_clip
from trainers.prompting import ClassPromptTemplate, init_context

CLASSNAMES = ["circle", "square", "hot air balloon", "x"]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ClipBackbone(load_clip("gatescope-tiny", ""))


def test_token_path_equals_open_clip_encode_text(backbone):
    tokens = backbone.tokenize(["a photo of a dog.", "a long phrase about a hot air balloon."])
    with torch.no_grad():
        ours = backbone.encode_text_tokens(tokens)
        theirs = backbone.clip.encode_text(tokens)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_eot_truncation_matches_all_77_positions(backbone, position):
    torch.manual_seed(1)
    ctx, prefix, n_ctx = init_context(backbone, 16)
    short = ClassPromptTemplate(backbone, CLASSNAMES, n_ctx, prefix, truncate=True)
    full = ClassPromptTemplate(backbone, CLASSNAMES, n_ctx, prefix, truncate=False)
    assert short.seq_len < full.seq_len == backbone.context_length
    ctx = ctx.requires_grad_()
    fast = backbone.encode_text(short(ctx, position), short.eot_idx)
    ref = backbone.encode_text(full(ctx, position), full.eot_idx)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    g_fast, = torch.autograd.grad(fast.square().sum(), ctx)
    g_ref, = torch.autograd.grad(ref.square().sum(), ctx)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-4)


def test_template_with_placeholder_context_equals_tokenized_text(backbone):
    """Assembling 'X X X X' embeddings gives exactly the tokenized prompt's features."""
    template = ClassPromptTemplate(backbone, CLASSNAMES, 4)
    x_tokens = backbone.tokenize(["X X X X"])
    x_embed = backbone.token_embedding(x_tokens)[0, 1:5]
    with torch.no_grad():
        assembled = backbone.encode_text(template(x_embed), template.eot_idx)
        direct = backbone.encode_text_tokens(backbone.tokenize([f"X X X X {c}." for c in CLASSNAMES]))
    torch.testing.assert_close(assembled, direct, rtol=1e-5, atol=1e-6)


def test_per_image_context_gives_one_prompt_set_per_image(backbone):
    template = ClassPromptTemplate(backbone, CLASSNAMES, 2)
    ctx = torch.randn(3, 1, 2, backbone.ctx_dim)
    prompts = template(ctx)
    assert prompts.shape == (3, len(CLASSNAMES), template.seq_len, backbone.ctx_dim)
    torch.testing.assert_close(prompts[1], template(ctx[1, 0]))


def test_context_too_long_for_the_encoder_is_a_clear_error(backbone):
    # "hot air balloon": 3 name tokens + 80 context + SOS, "." and EOT = 86 > 77.
    with pytest.raises(ValueError, match=r"is 86 tokens, more than the text encoder's context length of 77.*"
                                         r"Use N_CTX 71 or less"):
        ClassPromptTemplate(backbone, CLASSNAMES, 80)
