"""CoOpGated: CoOp plus a gate on its context.

Targets (GATE.TARGET):
- `length` (mask, K = N_CTX): per-input weights on the context tokens, ctx_i * g_i; prompts are
  then per image and encoded with CoCoOp's batched path;
- `token_dim` (mask, K = N_CTX x width): per token and dimension (the study's "vector" gate);
- `prefix` (simplex, K = N_CTX): a distribution over prefix lengths 1..N_CTX; the text features
  of each length are computed once per step (K encodes of C prompts) and mixed per image;
- `pool` (simplex, K = GATE.POOL_SIZE): a distribution over P learnable prompts, mixed the same way.
Conditioning (GATE.COND): `image_feature`, the frozen CLIP image feature that CoOp computes
anyway (normalised); or `patch_mean`, the mean patch embedding before the first transformer layer
(low-level statistics such as colour, which the last layers may drop; it needs the images, so the
image-feature cache is not used).
Training of the simplex targets: a soft mixture (default), or hard-EM (GATE.HARD_EM.ENABLED, see
trainers/hard_em.py): each image trains only the option chosen for it, the gate learns the choice.
A constant gate of 1 (or a one-hot simplex on the full prompt) gives CoOp's logits exactly.
The study's keys TRAINER.COOP.USE_GATE etc. select this trainer (see study_keys.py).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from gates.config_spec import at_least, declare

from .backbone.adapter import cosine_logits
from .coop import CoOp, CoOpCLIP, CoOpPromptLearner
from .engine import TRAINER_REGISTRY
from .feature_cache import image_features_of
from .gating import GatedTrainer
from .hard_em import check_router, declare_router_trained_by_its_own_loss, hard_em_losses, router_log_probs
from .prompting import ClassPromptTemplate, init_context, prompts_per_chunk
from .study_keys import add_study_gate_keys, resolve_study_keys


class CoOpGatedPromptLearner(CoOpPromptLearner):
    def __init__(self, backbone, classnames, c, target, build_gate, pool_size, memory_mb, param_matched=False,
                 cond_dim=None):
        super().__init__(backbone, classnames, c.N_CTX, c.CTX_INIT, c.CSC, c.CLASS_TOKEN_POSITION)
        n, width = self.template.n_ctx, backbone.ctx_dim
        self.target = target
        if c.CSC and target != "length":
            raise ValueError(f"TRAINER.COOP.CSC works with GATE.TARGET length only, not {target!r}")
        if target == "pool":
            # P prompts, each initialised as CoOp initialises its one (the first one exactly so).
            extra = [init_context(backbone, n, c.CTX_INIT)[0] for _ in range(pool_size - 1)]
            self.ctx = nn.Parameter(torch.stack([self.ctx.detach(), *extra]))
        if target == "prefix":
            self.prefix_templates = nn.ModuleList(
                ClassPromptTemplate(backbone, classnames, k, " ".join(["X"] * k)) for k in range(1, n))
        num_options = {"length": n, "token_dim": n * width, "prefix": n, "pool": pool_size}[target]
        self.gate = build_gate(num_options, cond_dim or backbone.embed_dim)
        # The study's parameter-matched baseline: an additive bias with the gate's shape.
        self.ctx_bias = nn.Parameter(torch.zeros(n, 1 if target == "length" else width, dtype=self.ctx.dtype)) \
            if param_matched else None
        self.max_prompts = prompts_per_chunk(backbone, self.template.seq_len, memory_mb)

    def option_text_features(self, backbone):
        """(K, C, D) normalised text features of each option of a simplex target."""
        if self.target == "pool":
            prompts = [self.template(ctx, self.position) for ctx in self.ctx]
            templates = [self.template] * len(prompts)
        else:
            templates = [*self.prefix_templates, self.template]
            prompts = [t(self.ctx[:t.n_ctx], self.position) for t in templates]
        return torch.stack([F.normalize(backbone.encode_text(p, t.eot_idx), dim=-1)
                            for p, t in zip(prompts, templates)])

    def text_features(self, backbone, g, options=None):
        """(C, D) when the gate does not depend on the input, else (B, C, D). `options`: the
        (K, C, D) option_text_features of a simplex target when already computed."""
        per_input = self.gate.input_dependent
        if self.target in ("prefix", "pool"):
            options = self.option_text_features(backbone) if options is None else options
            if not per_input:
                return torch.einsum("k,kcd->cd", g[0], options)
            return torch.einsum("bk,kcd->bcd", g, options)
        n = self.template.n_ctx
        ctx = self.ctx if self.ctx_bias is None else self.ctx + self.ctx_bias
        weights = g.view(g.shape[0], n, 1) if self.target == "length" else g.view(g.shape[0], n, -1)
        if ctx.dim() == 3:  # class-specific context: (B, C, n, W)
            weights = weights.unsqueeze(1)
        if not per_input:
            return backbone.encode_text(self.template(ctx * weights[0], self.position), self.template.eot_idx)
        ctx = ctx * weights if ctx.dim() == 3 else (ctx.unsqueeze(0) * weights).unsqueeze(1)
        prompts = self.template(ctx, self.position)  # (B, C, L, W)
        B, C = prompts.shape[:2]
        features = backbone.encode_text(prompts.flatten(0, 1), self.template.eot_idx.repeat(B),
                                        max_prompts=self.max_prompts)
        return features.view(B, C, -1)


class CoOpGatedCLIP(CoOpCLIP):
    def __init__(self, prompt_learner, backbone, cond="image_feature", keep_option_logits=False):
        super().__init__(prompt_learner, backbone)
        self.cond = cond
        # Hard-EM: in training, keep the (B, K, C) class logits under each option for the loss.
        self.keep_option_logits = keep_option_logits
        self.last_option_logits = None

    def condition(self, image, image_features):
        if self.cond == "image_feature":
            return F.normalize(image_features, dim=-1)
        if image.dim() == 2:
            raise ValueError(f"GATE.COND {self.cond} reads the images, but the batch holds cached image features; "
                             "set DATALOADER.FEATURE_CACHE.ENABLED False")
        return self.backbone.patch_mean(image)

    def forward(self, image):
        image_features = image_features_of(self.backbone, image)  # (B, D) cached features pass through
        learner = self.prompt_learner
        g = learner.gate(self.condition(image, image_features))
        options = None
        if self.keep_option_logits and self.training:
            options = learner.option_text_features(self.backbone)  # (K, C, D)
            scale = self.backbone.logit_scale
            self.last_option_logits = torch.stack([cosine_logits(image_features, t, scale) for t in options], 1)
        text = learner.text_features(self.backbone, g, options)
        return cosine_logits(image_features, text, self.backbone.logit_scale)


@TRAINER_REGISTRY.register()
class CoOpGated(GatedTrainer, CoOp):
    PARENT_TRAINER = "CoOp"
    TARGETS = {"length": "mask", "token_dim": "mask", "prefix": "simplex", "pool": "simplex"}
    CONDS = ("image_feature", "patch_mean")
    DEFAULT_TARGET = "length"
    SIMPLEX_TARGETS = ("prefix", "pool")

    @staticmethod
    def add_config(cfg):
        add_study_gate_keys(cfg.TRAINER.COOP)
        # Hard-EM for the simplex targets (trainers/hard_em.py).
        cfg.GATE.HARD_EM = CN()
        cfg.GATE.HARD_EM.ENABLED = False  # each image trains only its chosen option; the gate learns the choice
        cfg.GATE.HARD_EM.PRIOR = True  # E-step argmax of log p_k(y|x) + log pi_k(x); False: of log p_k(y|x)
        cfg.GATE.HARD_EM.ROUTER_WEIGHT = 1.0  # w of the router loss w * mean -log pi_k*(x)
        declare(cfg.GATE.HARD_EM, ROUTER_WEIGHT=at_least(0))

    @classmethod
    def config_problems(cls, cfg):
        yield from super().config_problems(cfg)
        target = cfg.GATE.TARGET or cls.DEFAULT_TARGET
        if cfg.GATE.HARD_EM.ENABLED and target in cls.TARGETS and target not in cls.SIMPLEX_TARGETS:
            yield "GATE.HARD_EM.ENABLED", (f"GATE.HARD_EM chooses one option per image, so it needs GATE.TARGET "
                                           f"{' or '.join(cls.SIMPLEX_TARGETS)}, not {target!r}")

    @staticmethod
    def resolve_config(cfg):
        resolve_study_keys(cfg, "CoOp", "CoOpGated", "COOP")

    def build_custom_clip(self, cfg, classnames, backbone):
        if cfg.GATE.PARAM_MATCHED_BIAS and self.gate_target not in ("length", "token_dim"):
            raise ValueError("GATE.PARAM_MATCHED_BIAS needs GATE.TARGET length or token_dim")
        hard_em = cfg.GATE.HARD_EM.ENABLED  # its target and weight were checked with the config
        cond = self.gate_cond  # validates GATE.COND
        cond_dim = backbone.vis_dim if cond == "patch_mean" else backbone.embed_dim
        if cond == "patch_mean" and not backbone.is_vit:
            raise ValueError("GATE.COND patch_mean reads the patch embedding of a ViT image tower; "
                             f"{cfg.MODEL.BACKBONE.NAME} has a ResNet: use GATE.COND image_feature")
        learner = CoOpGatedPromptLearner(backbone, classnames, cfg.TRAINER.COOP, self.gate_target, self.build_gate,
                                         cfg.GATE.POOL_SIZE, cfg.GATE.ENCODE_MEMORY_MB, cfg.GATE.PARAM_MATCHED_BIAS,
                                         cond_dim)
        if hard_em:
            check_router(learner.gate.gate, self.gate_name)
            declare_router_trained_by_its_own_loss(learner.gate.gate)
        return CoOpGatedCLIP(learner, backbone, cond, keep_option_logits=hard_em)

    def feature_cache_plan(self):
        if self.gate_cond != "image_feature":
            return None, f"GATE.COND {self.gate_cond} reads the images, which the image-feature cache does not hold"
        return super().feature_cache_plan()

    def compute_losses(self, output, label):
        """The gated losses; with GATE.HARD_EM, "ce" is the hard-EM loss of each image under its
        chosen option and "hard_em_router" trains the gate to predict the choice."""
        losses = super().compute_losses(output, label)
        node = self.cfg.GATE.HARD_EM
        if node.ENABLED and self.model.last_option_logits is not None:
            head = self.gate_head
            em, assignment = hard_em_losses(self.model.last_option_logits, label,
                                            router_log_probs(head.gate, head.gate_name), node.PRIOR,
                                            node.ROUTER_WEIGHT)
            self.model.last_option_logits = None  # used once: a stale value never trains the next step
            self.hard_em_assignment = assignment
            losses["ce"] = em["ce"]
            losses["hard_em_router"] = em["router"]
        return losses
