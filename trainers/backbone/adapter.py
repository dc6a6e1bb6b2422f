"""The frozen CLIP as prompt learners see it: token embeddings in, EOT features out.

`ClipBackbone` wraps an open_clip `CLIP` and exposes exactly what the CoOp family needs:
the tokenizer, the token embedding, a text encoder that takes prompt *embeddings* (with
optional deep prompts per layer), an image encoder that takes optional visual prompts, and
`logit_scale`. Everything in it is frozen; prompt learners own every learnable tensor.

Why the text encoder accepts sequences shorter than the context length: the text transformer
is causal, so the feature at the EOT position never depends on positions after it. Feeding
only the first `max(eot) + 1` positions gives the same EOT features as all 77, several times
cheaper (prompt templates cut their buffers to that length; see `trainers.prompting`).
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..lazy_import import LazyModule

open_clip = LazyModule("open_clip")  # imported when a backbone is built (lazy_import.py)


class DeepPrompts:
    """Prompt tokens that replace a slice of the sequence before chosen transformer layers.

    `tokens[i]` is inserted before layer `i + 1` (layer 0 sees the shallow prompts that are
    part of the input), at sequence positions `[start, start + n)`; `start=None` means the
    last n positions (where visual prompts sit). A tensor of shape (n, W)
    is shared by the batch; (B, n, W) is per sample. `gates`, when given, has shape (B, J)
    with J = len(tokens) and, with mode "blend", gives g * new + (1 - g) * carried, so g = 1
    is plain insertion and g = 0 keeps the tokens the previous layer produced (MaPLeGated);
    with mode "scale" it inserts g * new (the study's adaptive depth gates).
    """

    MODES = ("blend", "scale")

    def __init__(self, tokens, start=None, gates=None, mode="blend"):
        if mode not in self.MODES:
            raise ValueError(f"deep-prompt gate mode must be one of {self.MODES}, got {mode!r}")
        self.tokens = list(tokens)
        self.start = start
        self.gates = gates
        self.mode = mode

    def __len__(self):
        return len(self.tokens)

    def select(self, rows):
        """The same insertion for a subset of the batch (per-sample tokens and gates are sliced)."""
        tokens = [t[rows] if t.dim() == 3 else t for t in self.tokens]
        gates = self.gates[rows] if self.gates is not None else None
        return DeepPrompts(tokens, self.start, gates, self.mode)

    def apply(self, x, layer):
        """Return x with the prompt slice replaced before transformer layer `layer` (>= 1)."""
        j = layer - 1
        if j < 0 or j >= len(self.tokens):
            return x
        new = self.tokens[j].to(x.dtype)
        n = new.shape[-2]
        if new.dim() == 2:
            new = new.unsqueeze(0).expand(x.shape[0], -1, -1)
        start = x.shape[1] - n if self.start is None else self.start
        end = start + n
        if self.gates is not None:
            g = self.gates[:, j].to(x.dtype).view(-1, 1, 1)
            new = g * new if self.mode == "scale" else g * new + (1 - g) * x[:, start:end]
        return torch.cat([x[:, :start], new, x[:, end:]], dim=1)


def encode_text_embeddings(clip, x, eot_idx, deep_prompts=None):
    """open_clip's text tower from token embeddings (N, L, W), L <= context length, to EOT features
    (CoOp's `TextEncoder.forward`, with deep prompts).

    Shared by the frozen adapter and by the demo weights' pretraining, so both run exactly the
    same computation.
    """
    L = x.shape[1]
    x = x + clip.positional_embedding[:L].to(x.dtype)
    attn_mask = clip.attn_mask
    if attn_mask is not None:
        attn_mask = attn_mask[:L, :L]
    for i, block in enumerate(clip.transformer.resblocks):
        if deep_prompts is not None and i > 0:
            x = deep_prompts.apply(x, i)
        x = block(x, attn_mask=attn_mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot_idx]
    proj = clip.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class ClipBackbone(nn.Module):
    """A frozen open_clip CLIP with prompt-learning entry points: what CoOp's code takes from the
    CLIP model `load_clip_to_cpu` returns, plus its `TextEncoder` (`encode_text`: prompt
    embeddings in, EOT features out) and a prompted image encoder (`encode_image`).

    Attributes:
        ctx_dim: width of the text transformer (the dimension of prompt token embeddings).
        vis_dim: width of the vision transformer (None for ResNet towers).
        embed_dim: dimension of the joint image-text space.
        context_length: tokenizer context length (77 for CLIP).
    """

    def __init__(self, clip_model, tokenizer=None):
        super().__init__()
        if getattr(clip_model, "text_pool_type", "argmax") not in ("argmax", "eos"):
            raise ValueError(
                f"this backbone pools its text features with '{clip_model.text_pool_type}'; "
                "prompt learning reads the feature at the EOT token, so it needs an open_clip "
                "model with text_pool_type 'argmax' (every OpenAI-style CLIP)"
            )
        self.clip = clip_model
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()
        self.tokenizer = tokenizer or open_clip.tokenize
        self.ctx_dim = clip_model.transformer.width
        self.context_length = clip_model.context_length
        visual = clip_model.visual
        self.is_vit = hasattr(visual, "class_embedding") and hasattr(visual, "conv1")
        self.vis_dim = visual.transformer.width if self.is_vit else None
        proj = clip_model.text_projection
        self.embed_dim = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]
        # The text transformer must be causal for EOT truncation to be exact.
        self.text_is_causal = clip_model.attn_mask is not None

    def train(self, mode=True):
        # The backbone is frozen: it stays in eval mode whatever its parent does, so that
        # dropout or patch-dropout never fires inside a prompt learner's training step.
        super().train(False)
        return self

    @property
    def dtype(self):
        return self.clip.transformer.get_cast_dtype()

    @property
    def logit_scale(self):
        return self.clip.logit_scale

    # ---------------------------------------------------------------- text
    def tokenize(self, texts):
        """(N, context_length) token ids; the EOT token has the largest id in each row."""
        return self.tokenizer(list(texts))

    def token_embedding(self, tokens):
        return self.clip.token_embedding(tokens).to(self.dtype)

    def eot_positions(self, tokens):
        """Position of the EOT token in each tokenized prompt (it holds the largest id)."""
        return tokens.argmax(dim=-1)

    def encode_text(self, prompts, eot_idx, deep_prompts=None, max_prompts=None, truncate=True):
        """EOT features of prompt embeddings.

        Args:
            prompts: (N, L, ctx_dim) token embeddings with L <= context_length; positions
                after a prompt's EOT may be cut (exact, the transformer is causal).
            eot_idx: (N,) EOT position of each prompt (< L).
            deep_prompts: optional `DeepPrompts` replacing prompt tokens before layers >= 1.
            max_prompts: encode at most this many prompts at a time. With gradients on, each
                chunk is recomputed in the backward pass instead of kept (activation
                checkpointing), so the memory held is one chunk's, and results are unchanged.
            truncate: run only the first max(eot_idx) + 1 positions (exact on a causal text
                transformer; see `eot_truncation_length`). False runs all L positions, the
                reference path of the benchmarks and tests.
        Returns:
            (N, embed_dim) text features (not normalised).
        """
        if prompts.shape[1] < self.context_length and not self.text_is_causal:
            raise ValueError("this backbone's text transformer is not causal; feed all "
                             f"{self.context_length} positions")
        if truncate:
            length = self.eot_truncation_length(prompts, eot_idx, deep_prompts)
            if length < prompts.shape[1]:
                prompts = prompts[:, :length]
        prompts = prompts.to(self.dtype)
        n = prompts.shape[0]
        if max_prompts is None or n <= max_prompts:
            return encode_text_embeddings(self.clip, prompts, eot_idx, deep_prompts)
        outputs = []
        for start in range(0, n, max_prompts):
            rows = slice(start, start + max_prompts)
            deep = deep_prompts.select(rows) if deep_prompts is not None else None

            def encode_chunk(x, eot, _deep=deep):
                return encode_text_embeddings(self.clip, x, eot, _deep)
            if torch.is_grad_enabled():
                outputs.append(checkpoint(encode_chunk, prompts[rows], eot_idx[rows], use_reentrant=False))
            else:
                outputs.append(encode_chunk(prompts[rows], eot_idx[rows]))
        return torch.cat(outputs)

    def eot_truncation_length(self, prompts, eot_idx, deep_prompts=None):
        """How many leading positions of `prompts` the EOT features depend on: max(eot) + 1.

        Exact only on a causal transformer, and only when every deep prompt sits at a fixed
        start (a `DeepPrompts` with start=None means "the last n positions", which cutting the
        sequence would move); otherwise all positions are kept. Templates already cut their
        buffers (`ClassPromptTemplate`), so this mostly serves 77-token inputs such as
        `encode_text_tokens`. int() reads the maximum on the host: one sync per call.
        """
        full = prompts.shape[1]
        if not self.text_is_causal or eot_idx.numel() == 0:
            return full
        if deep_prompts is not None and deep_prompts.start is None:
            return full
        length = int(eot_idx.max()) + 1
        if deep_prompts is not None and len(deep_prompts):
            n = max(t.shape[-2] for t in deep_prompts.tokens)
            length = max(length, deep_prompts.start + n)
        return min(length, full)

    def text_bytes_per_prompt(self, seq_len):
        """Rough activation memory of encoding one prompt of `seq_len` tokens with gradients:
        per layer about 24 width-sized vectors per token plus the attention maps."""
        blocks = self.clip.transformer.resblocks
        heads = blocks[0].attn.num_heads
        elt = torch.finfo(self.dtype).bits // 8
        return len(blocks) * (seq_len * self.ctx_dim * 24 + heads * seq_len * seq_len * 2) * elt

    def encode_text_tokens(self, tokens):
        """Plain CLIP text features of token ids, through the same path as prompts."""
        return self.encode_text(self.token_embedding(tokens), self.eot_positions(tokens))

    # ---------------------------------------------------------------- image
    def patch_mean(self, images):
        """(B, vis_dim) mean over the patches of the frozen patch embedding (the ViT's conv1),
        before any transformer layer: a cheap summary of an image's low-level statistics
        (colour, brightness), which the last layers of a CLIP trained for semantics may drop.
        Gates read it as GATE.COND patch_mean. Raises ValueError for a ResNet image tower."""
        if not self.is_vit:
            raise ValueError("GATE.COND patch_mean reads the patch embedding of a ViT image tower; this backbone "
                             "has a ResNet: use GATE.COND image_feature")
        patches = self.clip.visual.conv1(images.to(self.dtype))  # (B, width, grid, grid)
        return patches.flatten(2).mean(-1)

    def encode_image(self, images, prompts=None, deep_prompts=None):
        """Image features, optionally with visual prompt tokens (ViT towers only).

        Args:
            images: (B, 3, H, W).
            prompts: optional (n, vis_dim) or (B, n, vis_dim) shallow visual prompts, appended
                after the positional embedding and before `ln_pre` (MaPLe / VPT placement).
            deep_prompts: optional `DeepPrompts` replacing those n tokens before layers >= 1.
        """
        if prompts is None and deep_prompts is None:
            return self.clip.visual(images.to(self.dtype))
        if not self.is_vit:
            raise ValueError("visual prompts need a ViT image tower; this backbone has a ResNet")
        v = self.clip.visual
        x = v.conv1(images.to(self.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        if prompts is not None:
            p = prompts.to(x.dtype)
            if p.dim() == 2:
                p = p.unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x, p], dim=1)
        x = v.patch_dropout(x)
        x = v.ln_pre(x)
        for i, block in enumerate(v.transformer.resblocks):
            if deep_prompts is not None and i > 0:
                x = deep_prompts.apply(x, i)
            x = block(x)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled


# When a list, every cosine_logits call appends its normalised (image, text) features to it: the
# diagnostics read the embeddings of an evaluation this way (see `capture_embeddings`).
_EMBEDDING_SINK = None


@contextlib.contextmanager
def capture_embeddings():
    """Collect the normalised (image features, text features) of every cosine_logits call made
    inside the block (detached): the one place where every CLIP wrapper meets its embeddings."""
    global _EMBEDDING_SINK
    previous, _EMBEDDING_SINK = _EMBEDDING_SINK, []
    try:
        yield _EMBEDDING_SINK
    finally:
        _EMBEDDING_SINK = previous


def cosine_logits(image_features, text_features, logit_scale):
    """logit_scale.exp() * cos(image, text).

    text_features is (C, D) for one set of class features, or (B, C, D) for
    instance-conditioned ones (one set per image); returns (B, C).
    """
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    if _EMBEDDING_SINK is not None:
        _EMBEDDING_SINK.append((image_features.detach(), text_features.detach()))
    scale = logit_scale.exp()
    if text_features.dim() == 2:
        return scale * image_features @ text_features.t()
    return scale * torch.einsum("bd,bcd->bc", image_features, text_features)
