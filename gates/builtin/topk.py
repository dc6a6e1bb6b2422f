"""`topk`: noisy top-k routing (Shazeer et al. 2017, "Outrageously large neural networks")."""
import math

from yacs.config import CfgNode as CN

import torch
import torch.nn as nn

from ..config_spec import at_least, declare
from ..contract import Gate
from .common import gate_node

# Floor of the noise std, as in the authors' reference code: keeps P(x, i) below defined
# when softplus(x W_noise) underflows.
NOISE_EPSILON = 1e-2


def squared_cv(values, eps=1e-10):
    """CV(v)^2 = Var(v) / (mean(v)^2 + eps), population variance over the K options
    (0 for a single option)."""
    return values.var(unbiased=False) / (values.mean() ** 2 + eps)


def normal_cdf(z):
    """Phi(z) = (1 + erf(z / sqrt(2))) / 2."""
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


class NoisyTopKGate(Gate):
    """Noisy top-k gating, a simplex gate that is zero outside k options per input:

        H(x)_i = (x W_g)_i + n_i * softplus((x W_noise)_i),  n_i ~ N(0, 1), training only
        g(x) = softmax(KeepTopK(H(x), k)),  KeepTopK sets all but the k largest to -inf.

    The noise std is softplus(.) + 0.01 (as in the authors' code). W_noise starts at 0 (some
    noise, no signal), W_g at 0 too when `zero_init` (the paper's balanced start), else
    uniform(-1/sqrt(D), 1/sqrt(D)) like PyTorch's Linear. At eval there is no noise.

    Auxiliary loss for the last forward pass, over a batch X:

        aux = w * (CV(Importance(X))^2 + CV(Load(X))^2)
        Importance(X)_i = sum_x g(x)_i
        Load(X)_i = sum_x P(x, i),  P(x, i) = Phi(((x W_g)_i - kth_excluding(H(x), k, i)) / std_i(x))

    P(x, i) is the probability that option i stays in the top k when only its own noise is
    drawn again; kth_excluding(H(x), k, i) is the k-th largest of H(x) without option i. The
    smooth load needs noise, so at eval (and when k = K, where every option is kept) Load
    counts the inputs routed to each option instead: Load_i = #{x : g(x)_i > 0}.

    With k = 1 every row is exactly one-hot, so the task loss gives W_g and W_noise no
    gradient: they learn from the auxiliary loss alone (declared in no_task_grad_params).
    """

    kind = "simplex"
    activation = "topk_softmax"

    def __init__(self, num_options, cond_dim, k=1, aux_weight=0.01, zero_init=False):
        super().__init__(num_options, cond_dim)
        if not 1 <= k <= num_options:
            raise ValueError(f"GATE.TOPK.K = {k} but the target has {num_options} options; "
                             f"choose K in [1, {num_options}]")
        self.k = int(k)
        self.aux_weight = float(aux_weight)
        w_gate = torch.zeros(cond_dim, num_options)
        if not zero_init:
            bound = 1.0 / math.sqrt(cond_dim)
            w_gate.uniform_(-bound, bound)
        self.w_gate = nn.Parameter(w_gate)
        self.w_noise = nn.Parameter(torch.zeros(cond_dim, num_options))
        if self.k == 1:
            self.no_task_grad_params = ("w_gate", "w_noise")
        self._importance = None
        self._load = None

    def sample_noise(self, like):
        """n ~ N(0, 1) of the shape of `like` (a method so tests can fix the noise)."""
        return torch.randn_like(like)

    def forward(self, cond):
        cond = cond.to(self.w_gate.dtype)
        clean = cond @ self.w_gate
        noisy_training = self.training
        if noisy_training:
            noise_std = nn.functional.softplus(cond @ self.w_noise) + NOISE_EPSILON
            logits = clean + self.sample_noise(clean) * noise_std
        else:
            logits = clean
        num_top = min(self.k + 1, self.num_options)
        top_values, top_indices = logits.topk(num_top, dim=-1)
        kept = torch.softmax(top_values[:, :self.k], dim=-1)
        out = torch.zeros_like(logits).scatter(-1, top_indices[:, :self.k], kept)

        self._importance = out.sum(dim=0)
        if noisy_training and self.k < self.num_options:
            self._load = self._smooth_load(clean, noise_std, top_values, top_indices)
        else:
            self._load = (out > 0).to(out.dtype).sum(dim=0)
        return self.remember(out, logits)

    def _smooth_load(self, clean, noise_std, top_values, top_indices):
        """sum over the batch of P(x, i): for an option in the top k, the k-th largest of the
        others is the (k+1)-th largest overall; for one outside, it is the k-th largest."""
        in_top_k = torch.zeros_like(clean, dtype=torch.bool).scatter(-1, top_indices[:, :self.k], True)
        threshold_if_in = top_values[:, self.k:self.k + 1]
        threshold_if_out = top_values[:, self.k - 1:self.k]
        prob_if_in = normal_cdf((clean - threshold_if_in) / noise_std)
        prob_if_out = normal_cdf((clean - threshold_if_out) / noise_std)
        return torch.where(in_top_k, prob_if_in, prob_if_out).sum(dim=0)

    def aux_loss(self):
        if self._importance is None:
            return None
        return self.aux_weight * (squared_cv(self._importance) + squared_cv(self._load))

    def extra_repr(self):
        return f"k={self.k}, num_options={self.num_options}, aux_weight={self.aux_weight}"


def add_config(gate_cfg):
    gate_cfg.TOPK = CN()
    gate_cfg.TOPK.K = 1  # options kept per input
    gate_cfg.TOPK.AUX_WEIGHT = 0.01  # w in w * (CV(importance)^2 + CV(load)^2)
    gate_cfg.TOPK.ZERO_INIT = False  # True: W_g = 0 at init (the paper's balanced start)
    declare(gate_cfg.TOPK, K=at_least(1, "at most the target's options, checked when the gate is built"),
            AUX_WEIGHT=at_least(0))


def build(cfg, num_options, cond_dim, kind):
    node = gate_node(cfg, "TOPK")
    return NoisyTopKGate(num_options, cond_dim, k=node.K, aux_weight=node.AUX_WEIGHT, zero_init=node.ZERO_INIT)
