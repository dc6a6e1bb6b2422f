"""Prompt construction shared by every CoOp-family trainer.

A prompt for class c is `[SOS] ctx_1 .. ctx_n classname . [EOS]`. `ClassPromptTemplate`
tokenizes the classnames once, keeps the frozen pieces around the context slots (the SOS
prefix and the `classname . [EOS]` suffix) and assembles prompts from any context tensor:
shared (CoOp), class-specific (CoOp CSC) or per image (CoCoOp). `ContextVectors` is the
learnable context itself, initialised like CoOp (from words, or N(0, 0.02)).

Sequences are cut after the longest prompt's EOT token: the text transformer is causal, so
that is exact, and it is what makes encoding cheap (see `ClipBackbone.encode_text`).

Every path that builds a prompt (learned context here; the fixed prompts of VPT, IVLP without
text prompts and zero-shot CLIP) calls `check_prompts_fit` first: the tokenizer would silently
cut a prompt longer than the text encoder's context (77 for CLIP), losing the class name or the
EOT token; instead the error gives the class name's token count, the context's, the limit, and
what makes it fit.
"""
import torch
import torch.nn as nn

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def count_tokens(backbone, text):
    """Number of BPE tokens of `text`, without SOS/EOS (at most context_length - 2: cut as the
    tokenizer cuts; `token_count` gives the uncut count)."""
    tokens = backbone.tokenize([text])
    return int(backbone.eot_positions(tokens)[0]) - 1


def token_count(backbone, text):
    """Number of BPE tokens of `text` without SOS/EOT, never cut at the context length."""
    encode = getattr(backbone.tokenizer, "encode", None)
    if encode is None:  # open_clip.tokenize, a function: its module's SimpleTokenizer encodes
        from open_clip.tokenizer import _tokenizer
        encode = _tokenizer.encode
    return len(encode(text))


class PromptTooLongError(ValueError):
    """A class prompt does not fit in the text encoder's context length."""


def check_prompts_fit(backbone, classnames, template, context_tokens=0, context_key=None, shown_template=None):
    """Raise PromptTooLongError when `template` with any class name is longer than the text encoder's context.

    `template` holds "{}" where the class name goes (e.g. "X X X X {}." for four learned context
    tokens, "a photo of a {}." for a fixed prompt); with learned context, `context_tokens` of its
    tokens are the context and `context_key` is the config key that sets their number. The
    prompt takes SOS + the template's tokens + EOT; the message names the longest class's tokens,
    the context's, the rest, the limit, and what actually helps (a shorter class name when fewer
    context tokens cannot make it fit). `shown_template` is how the message shows the template
    (e.g. "<16 context tokens> {}." rather than sixteen X's).
    """
    limit = backbone.context_length
    names = [name.replace("_", " ") for name in classnames]
    totals = [token_count(backbone, template.replace("{}", name)) + 2 for name in names]
    if not totals or max(totals) <= limit:
        return
    worst = max(range(len(names)), key=totals.__getitem__)
    name, total = names[worst], totals[worst]
    too_long = sum(t > limit for t in totals)
    name_tokens = token_count(backbone, name)
    rest = total - name_tokens - context_tokens  # SOS, EOT and the template's own words
    others = f" ({too_long} classes are too long; this is the longest)" if too_long > 1 else ""
    if context_key:
        parts = (f"the class name is {name_tokens} tokens, the learned context {context_tokens} ({context_key}), and "
                 f"the start and end tokens and the prompt's other words {rest}")
        room = limit - name_tokens - rest
        name_room = limit - rest - context_tokens
        if room >= 0:
            advice = f"Use {context_key} {room} or less"
            if name_room > 0:
                advice += f", or shorten the class name to at most {name_room} tokens"
        else:
            advice = (f"The class name alone is too long: shorten it to at most {limit - rest} tokens in the dataset's "
                      f"class names; fewer context tokens ({context_key}) cannot make it fit")
    else:
        parts = f"the class name is {name_tokens} tokens, the template's words and the start and end tokens {rest}"
        advice = (f"Shorten the class name to at most {limit - rest} tokens in the dataset's class names, or use a "
                  "shorter template")
    raise PromptTooLongError(
        f'the prompt "{shown_template or template}" for class "{name}"{others} is {total} tokens, more than the '
        f"text encoder's context length of {limit}: {parts}. {advice}.")


class ClassPromptTemplate(nn.Module):
    """Frozen token embeddings around `n_ctx` open context slots, one prompt per class.

    Buffers (not saved in checkpoints, rebuilt from the classnames):
        token_prefix: (C, 1, W) the SOS embedding.
        token_suffix: (C, L - 1 - n_ctx, W) `classname . [EOS]`, cut at the longest EOT.
        eot_idx: (C,) EOT position per class.
    Set `truncate=False` to keep all context_length positions (the reference path).
    Raises PromptTooLongError when a class prompt does not fit (`context_key` names the config
    key of the context length in the message).
    """

    def __init__(self, backbone, classnames, n_ctx, prompt_prefix=None, truncate=True, context_key="N_CTX"):
        super().__init__()
        if n_ctx < 0:
            raise ValueError(f"the number of context tokens must be >= 0, got {n_ctx}")
        self.classnames = [name.replace("_", " ") for name in classnames]
        self.n_ctx = n_ctx
        prompt_prefix = prompt_prefix if prompt_prefix is not None else " ".join(["X"] * n_ctx)
        # The tokenizer would cut a longer prompt (class name or EOT lost): refuse it first.
        # Advice about the context length only where the prefix is the context (MaPLe keeps the
        # rest of its CTX_INIT words in the prompt whatever N_CTX is).
        prefix_is_context = token_count(backbone, prompt_prefix) == n_ctx
        check_prompts_fit(backbone, self.classnames, f"{prompt_prefix} {{}}.".strip(),
                          context_tokens=n_ctx if prefix_is_context else 0,
                          context_key=context_key if prefix_is_context else None,
                          shown_template=f"<{n_ctx} context tokens> {{}}." if prefix_is_context and n_ctx > 3 else None)
        texts = [f"{prompt_prefix} {name}.".strip() for name in self.classnames]
        tokens = backbone.tokenize(texts)
        eot_idx = backbone.eot_positions(tokens)
        longest = int(eot_idx.max()) + 1
        seq_len = longest if truncate else backbone.context_length
        with torch.no_grad():
            embedding = backbone.token_embedding(tokens)[:, :seq_len]
        self.register_buffer("token_prefix", embedding[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:].clone(), persistent=False)
        self.register_buffer("eot_idx", eot_idx, persistent=False)
        self.register_buffer("tokenized_prompts", tokens, persistent=False)
        # Tokens of each classname (between the context and the final "."), for CoOp's
        # middle/front class-token positions.
        self.name_lens = [count_tokens(backbone, name) for name in self.classnames]

    @property
    def n_cls(self):
        return len(self.classnames)

    @property
    def seq_len(self):
        return self.token_prefix.shape[1] + self.n_ctx + self.token_suffix.shape[1]

    def forward(self, ctx, position="end"):
        """Assemble prompt embeddings.

        Args:
            ctx: (n_ctx, W) shared, (C, n_ctx, W) class-specific, or (B, n_ctx, W) /
                (B, C, n_ctx, W) per image (with B != C, pass the 4-dim form).
            position: where the classname goes relative to the context (CoOp's
                CLASS_TOKEN_POSITION): end, middle or front.
        Returns:
            (C, L, W), or (B, C, L, W) for per-image context.
        """
        C = self.n_cls
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(C, -1, -1)
        per_image = ctx.dim() == 4
        if per_image:
            B = ctx.shape[0]
            ctx = ctx.expand(B, C, -1, -1)
            prefix = self.token_prefix.unsqueeze(0).expand(B, -1, -1, -1)
            suffix = self.token_suffix.unsqueeze(0).expand(B, -1, -1, -1)
        else:
            prefix, suffix = self.token_prefix, self.token_suffix
        ctx = ctx.to(prefix.dtype)
        if position == "end":
            return torch.cat([prefix, ctx, suffix], dim=-2)
        if position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"CLASS_TOKEN_POSITION must be one of {CLASS_TOKEN_POSITIONS}, got {position!r}")
        prompts = []
        half = self.n_ctx // 2
        for c, name_len in enumerate(self.name_lens):
            pre, ctx_c, suf = prefix[..., c:c + 1, :, :], ctx[..., c:c + 1, :, :], suffix[..., c:c + 1, :, :]
            name, rest = suf[..., :name_len, :], suf[..., name_len:, :]
            if position == "middle":
                parts = [pre, ctx_c[..., :half, :], name, ctx_c[..., half:, :], rest]
            else:
                parts = [pre, name, ctx_c, rest]
            prompts.append(torch.cat(parts, dim=-2))
        return torch.cat(prompts, dim=-3)

    def eot_for(self, position="end"):
        """EOT positions; moving the classname inside the sequence does not move the EOT."""
        return self.eot_idx


def init_context(backbone, n_ctx, ctx_init="", n_cls=None):
    """CoOp's context initialisation.

    Returns (ctx_vectors, prompt_prefix, n_ctx). With `ctx_init` (e.g. "a photo of a") the
    vectors are the word embeddings of its tokens and n_ctx becomes its token count (CoOp
    counts words, which differs only for multi-token words); otherwise N(0, 0.02) of shape
    (n_ctx, W), or (n_cls, n_ctx, W) for class-specific context.
    """
    if ctx_init:
        ctx_init = ctx_init.replace("_", " ")
        tokens = backbone.tokenize([ctx_init])
        n_ctx = count_tokens(backbone, ctx_init)
        with torch.no_grad():
            ctx_vectors = backbone.token_embedding(tokens)[0, 1:1 + n_ctx].clone()
        if n_cls is not None:
            ctx_vectors = ctx_vectors.unsqueeze(0).repeat(n_cls, 1, 1)
        return ctx_vectors, ctx_init, n_ctx
    shape = (n_ctx, backbone.ctx_dim) if n_cls is None else (n_cls, n_ctx, backbone.ctx_dim)
    ctx_vectors = torch.empty(*shape, dtype=backbone.dtype)
    nn.init.normal_(ctx_vectors, std=0.02)
    return ctx_vectors, " ".join(["X"] * n_ctx), n_ctx


def prompts_per_chunk(backbone, seq_len, memory_mb):
    """How many prompts of `seq_len` tokens to encode at once to keep activations under
    `memory_mb` MiB (at least one)."""
    return max(1, int(memory_mb * 2 ** 20 // backbone.text_bytes_per_prompt(seq_len)))
