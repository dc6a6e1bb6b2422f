"""Deep prompts in both towers, shared by MaPLe, BiDirMaPLe, IVLP and VPT.

Each of those methods produces the same four things per forward pass (`Prompts`): class
prompt embeddings for the text tower (or None for fixed hand-written prompts), deep text
prompts for text layers 1..Jt-1, shallow visual prompt tokens, and deep visual prompts for
vision layers 1..Jv-1. `DeepPromptCLIP` feeds them to the frozen backbone; the methods differ
only in how their prompt learner makes them.
"""
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn as nn

from .backbone.adapter import DeepPrompts, cosine_logits
from .prompting import check_prompts_fit, count_tokens


@dataclass
class Prompts:
    text: Optional[torch.Tensor] = None          # (C, L, W_text), None: fixed hand-written prompts
    text_deep: List[torch.Tensor] = field(default_factory=list)    # each (n_text, W_text)
    vision: Optional[torch.Tensor] = None        # (n_vis, W_vis) shallow visual tokens
    vision_deep: List[torch.Tensor] = field(default_factory=list)  # each (n_vis, W_vis)
    text_gates: Optional[torch.Tensor] = None    # (B, Jt - 1) per-input blend of deep text prompts
    vision_gates: Optional[torch.Tensor] = None  # (B, Jv - 1) per-input blend of deep visual prompts
    gate_mode: str = "blend"  # how gates apply to deep prompts (see DeepPrompts)


def check_depth(depth, n_layers, key):
    if depth < 0 or depth > n_layers:
        raise ValueError(f"{key}={depth} but the tower has {n_layers} layers; use 0..{n_layers}")


def maple_context(backbone, n_ctx, ctx_init):
    """MaPLe's text context: with CTX_INIT (and n_ctx <= 4) the first n_ctx tokens of its words
    are learnable and the rest of the words stay fixed in the prompt ("a photo | of a cls.")."""
    if ctx_init and n_ctx <= 4:
        ctx_init = ctx_init.replace("_", " ")
        if n_ctx > count_tokens(backbone, ctx_init):
            raise ValueError(f'N_CTX={n_ctx} is more than the {count_tokens(backbone, ctx_init)} tokens of '
                             f'CTX_INIT "{ctx_init}"')
        with torch.no_grad():
            vectors = backbone.token_embedding(backbone.tokenize([ctx_init]))[0, 1:1 + n_ctx].clone()
        return vectors, ctx_init
    vectors = torch.empty(n_ctx, backbone.ctx_dim, dtype=backbone.dtype)
    nn.init.normal_(vectors, std=0.02)
    return vectors, " ".join(["X"] * n_ctx)


def prompt_tokens(count, n, width, dtype):
    """`count` learnable (n, width) prompt matrices initialised N(0, 0.02), as VPT and MaPLe do."""
    params = nn.ParameterList()
    for _ in range(count):
        p = torch.empty(n, width, dtype=dtype)
        nn.init.normal_(p, std=0.02)
        params.append(nn.Parameter(p))
    return params


class DeepPromptCLIP(nn.Module):
    """The `CustomCLIP` of MaPLe, IVLP and VPT: CLIP driven by a prompt learner (their
    `PromptLearner`) that returns `Prompts`, with deep prompts in both towers (their
    `TextEncoder` and prompted image encoder are ClipBackbone's).

    With hand-written text prompts (`Prompts.text is None`, VPT) the class text features are
    computed once from `fixed_prompt` ("a photo of a {}.") and kept as a buffer.
    """

    def __init__(self, prompt_learner, backbone, classnames=None, fixed_prompt=None):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.backbone = backbone
        if fixed_prompt is not None:
            check_prompts_fit(backbone, classnames, fixed_prompt)  # the tokenizer would cut it silently
            texts = [fixed_prompt.format(name.replace("_", " ")) for name in classnames]
            with torch.no_grad():
                features = backbone.encode_text_tokens(backbone.tokenize(texts))
            self.register_buffer("fixed_text_features", features, persistent=False)

    def text_features(self, prompts):
        """(C, D) class text features, or (B, C, D) when deep text prompts are gated per input."""
        if prompts.text is None:
            return self.fixed_text_features
        eot = self.prompt_learner.template.eot_idx
        gates = prompts.text_gates
        if not prompts.text_deep:
            return self.backbone.encode_text(prompts.text, eot)
        C = prompts.text.shape[0]
        if gates is None or gates.shape[0] == 1:
            gates = gates.expand(C, -1) if gates is not None else None
            deep = DeepPrompts(prompts.text_deep, start=1, gates=gates, mode=prompts.gate_mode)
            return self.backbone.encode_text(prompts.text, eot, deep)
        # Per-input gates: one prompt set per image, encoded as one batch of B x C prompts.
        B = gates.shape[0]
        x = prompts.text.unsqueeze(0).expand(B, -1, -1, -1).reshape(B * C, *prompts.text.shape[1:])
        deep = DeepPrompts(prompts.text_deep, start=1, gates=gates.repeat_interleave(C, 0), mode=prompts.gate_mode)
        return self.backbone.encode_text(x, eot.repeat(B), deep).view(B, C, -1)

    def image_features(self, image, prompts):
        deep = (DeepPrompts(prompts.vision_deep, gates=prompts.vision_gates, mode=prompts.gate_mode)
                if prompts.vision_deep else None)
        return self.backbone.encode_image(image, prompts.vision, deep)

    def forward(self, image):
        return self.forward_prompts(image, self.prompt_learner())

    def forward_prompts(self, image, prompts):
        return cosine_logits(self.image_features(image, prompts), self.text_features(prompts),
                             self.backbone.logit_scale)


def n_layers(backbone):
    text = len(backbone.clip.transformer.resblocks)
    vision = len(backbone.clip.visual.transformer.resblocks) if backbone.is_vit else 0
    return text, vision
