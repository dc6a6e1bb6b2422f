"""Test-only plugin: gates built to have a known verdict (and one trainer used directly).

Registered with the plugin manager by tests/test_verdict_cases.py for its runs, then removed; never
part of gatescope. Each class says what is true of it by construction, which is what its verdict
must find:

- `tiny_grad`: the mlp gate with its parameters' gradient multiplied by 1e-4 before the step (the
  value is the mlp's, the gradient flows through x * 1e-4 + (x * (1 - 1e-4)).detach());
- `noise`: fresh uniform noise (mask) or a softmax of fresh Gaussian logits (simplex) at every call,
  training and evaluation alike: it varies, but not with its input;
- `domain_router`: a hard router given the domain: one-hot on option 1 when w . x + b > 0 (the
  conditioning x is the image feature, whose domain a linear rule fitted by the test reads), else
  option 0; no parameters;
- `CoOpIgnoringGate`: CoOpGated whose model calls its gate (so the diagnostics see every output)
  and then uses the ungated prompt: the output provably changes nothing. The test builds it from
  a CoOpGated config directly (no registration: the trainer registry stays the shipped one).
"""
import torch
import torch.nn.functional as F

from gates import Gate, hookimpl
from gates.builtin.mlp import MLPGate
from trainers.backbone.adapter import cosine_logits
from trainers.coop_gated import CoOpGated, CoOpGatedCLIP
from trainers.feature_cache import image_features_of

GRADIENT_SCALE = 1e-4


class TinyGradientGate(MLPGate):
    """sigmoid(mlp(x)) with d loss / d parameters scaled by GRADIENT_SCALE."""

    def forward(self, cond):
        logits = self.net(cond.to(self.net[-1].weight.dtype))
        logits = logits * GRADIENT_SCALE + (logits * (1.0 - GRADIENT_SCALE)).detach()
        return self.remember(torch.sigmoid(logits), logits)


class NoiseGate(Gate):
    """Fresh noise at every call: mask U(0, 1) per value; simplex softmax(2 N(0, 1)) per row."""

    def __init__(self, num_options, cond_dim, kind):
        super().__init__(num_options, cond_dim)
        self.kind = kind

    def forward(self, cond):
        shape = (cond.shape[0], self.num_options)
        if self.kind == "mask":
            return self.remember(torch.rand(shape, device=cond.device))
        return self.remember(torch.softmax(2.0 * torch.randn(shape, device=cond.device), dim=-1))


class DomainRouterGate(Gate):
    """Simplex gate: one-hot on option 1 where w . x + b > 0, else on option 0 (set_rule(w, b))."""

    kind = "simplex"

    def __init__(self, num_options, cond_dim):
        super().__init__(num_options, cond_dim)
        self.register_buffer("w", torch.zeros(cond_dim))
        self.register_buffer("b", torch.zeros(()))

    def set_rule(self, w, b):
        self.w.copy_(w)
        self.b.fill_(float(b))

    def forward(self, cond):
        side = (cond.to(self.w.dtype) @ self.w + self.b > 0).long()
        return self.remember(F.one_hot(side, self.num_options).to(cond.dtype))


class InvertedDomainRouterGate(DomainRouterGate):
    """DomainRouterGate in training; at evaluation it sends every image to the other side's option:
    the prompts it trained for one domain answer the other. Input-dependent, saturated yet varied,
    and worse than its own mean (a mixture of the two prompts) by construction: harmful."""

    def forward(self, cond):
        output = super().forward(cond)
        return output if self.training else self.remember(output.flip(-1))


class IgnoringCLIP(CoOpGatedCLIP):
    def forward(self, image):
        image_features = image_features_of(self.backbone, image)
        self.prompt_learner.gate(F.normalize(image_features, dim=-1))  # computed and reported ...
        # ... then ignored: the class text features of CoOp's own prompt (the gated learner's context).
        learner = self.prompt_learner
        text = self.backbone.encode_text(learner.template(learner.ctx, learner.position), learner.template.eot_idx)
        return cosine_logits(image_features, text, self.backbone.logit_scale)


class CoOpIgnoringGate(CoOpGated):
    TARGETS = {"length": "mask"}

    def build_custom_clip(self, cfg, classnames, backbone):
        clip = super().build_custom_clip(cfg, classnames, backbone)
        return IgnoringCLIP(clip.prompt_learner, backbone)


@hookimpl
def gatescope_register_gates(register):
    register("tiny_grad", lambda cfg, k, d, kind: TinyGradientGate(k, d, hidden=cfg.GATE.MLP.HIDDEN,
                                                                  init_bias=cfg.GATE.MLP.INIT_BIAS,
                                                                  init_std=cfg.GATE.MLP.INIT_STD))
    register("noise", lambda cfg, k, d, kind: NoiseGate(k, d, kind))
    register("domain_router", lambda cfg, k, d, kind: DomainRouterGate(k, d))
    register("domain_router_inverted", lambda cfg, k, d, kind: InvertedDomainRouterGate(k, d))
