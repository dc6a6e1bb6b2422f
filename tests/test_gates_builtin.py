"""The built-in gates (gates/builtin/): contract, formulas, and their plugin hooks."""
import math

import pluggy
import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

import gates.builtin as builtin
from gates import hookspecs
from gates.builtin.topk import squared_cv
from gates.contract import validate_gate

NAMES = ("constant", "scalar", "sigmoid", "mlp", "softmax", "topk", "gumbel", "keyquery")

# (gate name, kind asked for, config overrides under GATE.<NAME>): every built-in gate, in
# each of its modes.
CASES = [
    ("constant", "mask", {}),
    ("constant", "simplex", {}),
    ("constant", "simplex", {"UNIFORM": True}),
    ("scalar", "mask", {"INIT": 0.3}),
    ("scalar", "simplex", {"INIT": 0.3}),
    ("sigmoid", "mask", {}),
    ("mlp", "mask", {}),
    ("mlp", "mask", {"HIDDEN": 0, "INIT_STD": 0.02}),
    ("sigmoid", "mask", {"INIT_LOGIT": 0.0, "INIT_STD": 0.02}),
    ("softmax", "simplex", {}),
    ("softmax", "simplex", {"HIDDEN": 8}),
    ("topk", "simplex", {}),
    ("topk", "simplex", {"K": 2}),
    ("gumbel", "simplex", {}),
    ("gumbel", "simplex", {"STRAIGHT_THROUGH": True}),
    ("keyquery", "simplex", {}),
    ("keyquery", "simplex", {"HARD": True, "KEY_INIT": "normal"}),
]
CASE_IDS = [f"{name}-{kind}-" + ",".join(f"{k}={v}" for k, v in over.items()) for name, kind, over in CASES]
PER_TASK = {"constant", "scalar", "sigmoid"}


def make_cfg(name=None, **overrides):
    """A config with an empty core GATE node plus what the built-in plugin adds."""
    cfg = CN()
    cfg.GATE = CN()
    builtin.gatescope_add_config(cfg)
    for key, value in overrides.items():
        setattr(cfg.GATE[name.upper()], key, value)
    return cfg


def build(name, kind, num_options=4, cond_dim=8, fit_k=False, **overrides):
    """The gate from its factory, seeded; fit_k clamps GATE.TOPK.K to the number of options."""
    if fit_k and "K" in overrides:
        overrides["K"] = min(overrides["K"], num_options)
    torch.manual_seed(0)
    return builtin.GATE_MODULES[name].build(make_cfg(name, **overrides), num_options, cond_dim, kind)


def assert_gate_values(out, kind, batch, num_options):
    assert out.shape == (batch, num_options)
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    if kind == "simplex":
        torch.testing.assert_close(out.sum(-1), torch.ones(batch), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the plugin hooks
def test_register_gates_registers_all_eight_factories():
    registered = {}
    builtin.gatescope_register_gates(register=lambda name, factory: registered.setdefault(name, factory))
    assert set(registered) == set(NAMES)
    assert all(callable(factory) for factory in registered.values())


def test_plugin_hooks_match_the_hookspecs():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="gates.builtin")
    pm.check_pending()  # a misspelled hook or argument name fails here
    registered = []
    pm.hook.gatescope_register_gates(register=lambda name, factory: registered.append(name))
    assert sorted(registered) == sorted(NAMES)
    cfg = CN()
    cfg.GATE = CN()
    pm.hook.gatescope_add_config(cfg=cfg)
    assert "TOPK" in cfg.GATE


def test_add_config_adds_each_gate_node_with_its_defaults_and_leaves_core_keys_alone():
    cfg = CN()
    cfg.GATE = CN()
    cfg.GATE.NAME = "mlp"
    builtin.gatescope_add_config(cfg)
    expected = {
        "CONSTANT": {"VALUE": 1.0, "INDEX": -1, "UNIFORM": False},
        "SCALAR": {"INIT": 0.0, "INIT_STD": 0.0},
        "SIGMOID": {"INIT_LOGIT": 1.0, "INIT_STD": 0.0},
        "MLP": {"HIDDEN": 32, "INIT_BIAS": 0.0, "INIT_STD": 0.0},
        "SOFTMAX": {"TEMPERATURE": 1.0, "HIDDEN": 0},
        "TOPK": {"K": 1, "AUX_WEIGHT": 0.01, "ZERO_INIT": False},
        "GUMBEL": {"TEMPERATURE": 1.0, "STRAIGHT_THROUGH": False},
        "KEYQUERY": {"TEMPERATURE": 0.1, "HARD": False, "SURROGATE_WEIGHT": 0.1, "KEY_INIT": "uniform"},
    }
    assert set(cfg.GATE) == {"NAME", *expected}
    assert cfg.GATE.NAME == "mlp"
    for node, keys in expected.items():
        assert dict(cfg.GATE[node]) == keys, node
    # The nodes take YAML-style overrides like any yacs key.
    cfg.merge_from_list(["GATE.TOPK.K", "2", "GATE.KEYQUERY.HARD", "True"])
    assert cfg.GATE.TOPK.K == 2 and cfg.GATE.KEYQUERY.HARD is True


def test_add_config_without_core_gate_node_says_what_is_missing():
    with pytest.raises(KeyError, match="cfg.GATE is missing"):
        builtin.gatescope_add_config(CN())


def test_factory_without_its_config_node_says_how_to_build_the_config():
    cfg = CN()
    cfg.GATE = CN()
    with pytest.raises(KeyError, match=r"cfg.GATE.MLP is missing.*gatescope_add_config"):
        builtin.GATE_MODULES["mlp"].build(cfg, 4, 8, "mask")


# ---------------------------------------------------------------- the contract, every gate
@pytest.mark.parametrize("name,kind,overrides", CASES, ids=CASE_IDS)
def test_every_gate_passes_validate_gate(name, kind, overrides):
    for num_options, cond_dim in ((1, 3), (4, 8), (6, 2)):
        gate = build(name, kind, num_options, cond_dim, fit_k=True, **overrides)
        validate_gate(gate, name, num_options, cond_dim, kind)


@pytest.mark.parametrize("name,kind,overrides", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("batch,num_options,cond_dim", [(1, 1, 1), (3, 2, 4), (7, 5, 16)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_gate_shape_range_and_remembered_output(name, kind, overrides, batch, num_options, cond_dim,
                                                      training):
    gate = build(name, kind, num_options, cond_dim, fit_k=True, **overrides).train(training)
    assert gate.kind == kind
    out = gate(torch.randn(batch, cond_dim))
    assert_gate_values(out, kind, batch, num_options)
    assert gate.last_output is out
    if gate.last_logits is not None:
        assert gate.last_logits.shape == (batch, num_options)
        assert gate.activation is not None


@pytest.mark.parametrize("name", ["mlp", "softmax", "topk", "gumbel", "keyquery", "scalar"])
def test_gates_accept_conditioning_of_another_dtype(name):
    kind = "mask" if name in ("mlp", "scalar") else "simplex"
    gate = build(name, kind)
    out = gate(torch.randn(3, 8, dtype=torch.float64))
    assert out.dtype == torch.float32
    assert_gate_values(out, kind, 3, 4)


def test_constant_and_scalar_follow_the_requested_kind_and_the_others_keep_their_own():
    for name in ("constant", "scalar"):
        for kind in ("mask", "simplex"):
            assert build(name, kind).kind == kind
    fixed = {"sigmoid": "mask", "mlp": "mask", "softmax": "simplex", "topk": "simplex",
             "gumbel": "simplex", "keyquery": "simplex"}
    for name, own_kind in fixed.items():
        for kind in ("mask", "simplex"):
            assert build(name, kind).kind == own_kind
    with pytest.raises(ValueError, match="kind 'ranking'"):
        build("scalar", "ranking")


# ---------------------------------------------------------------- gradients
def _task_loss(out):
    torch.manual_seed(1)
    return (out * torch.randn_like(out)).sum()


@pytest.mark.parametrize("name,kind,overrides", CASES, ids=CASE_IDS)
def test_task_gradient_reaches_every_parameter_except_declared_ones(name, kind, overrides):
    gate = build(name, kind, num_options=4, cond_dim=8, **overrides).train()
    out = gate(torch.randn(6, 8))
    params = dict(gate.named_parameters())
    if name == "constant":
        assert not params and not out.requires_grad
        return
    if out.requires_grad:
        _task_loss(out).backward()
    declared = set(gate.no_task_grad_params)
    assert declared <= set(params)
    for pname, p in params.items():
        got_grad = p.grad is not None and p.grad.abs().sum() > 0
        # Declared parameters must really get none (else the declaration lies to the diagnostics).
        assert got_grad == (pname not in declared), pname


@pytest.mark.parametrize("name,overrides,declared", [
    ("topk", {"K": 1}, ("w_gate", "w_noise")),
    ("keyquery", {"HARD": True}, ("keys",)),
])
def test_auxiliary_loss_trains_the_parameters_the_task_loss_cannot(name, overrides, declared):
    gate = build(name, "simplex", **overrides).train()
    assert tuple(gate.no_task_grad_params) == declared
    gate(torch.randn(16, 8))
    gate.aux_loss().backward()
    for pname in declared:
        grad = dict(gate.named_parameters())[pname].grad
        assert grad is not None and grad.abs().sum() > 0, pname


def test_gates_without_declarations_and_aux_loss_defaults():
    assert build("topk", "simplex", K=2).no_task_grad_params == ()
    assert build("keyquery", "simplex").no_task_grad_params == ()
    for name in ("constant", "scalar", "sigmoid", "mlp", "softmax", "gumbel"):
        gate = build(name, "mask" if name in ("sigmoid", "mlp") else "simplex")
        gate(torch.randn(2, 8))
        assert gate.aux_loss() is None, name
    assert build("topk", "simplex").aux_loss() is None  # before any forward pass


# ---------------------------------------------------------------- input dependence, train vs eval
@pytest.mark.parametrize("name,kind,overrides", CASES, ids=CASE_IDS)
def test_per_task_gates_give_identical_rows_and_conditioned_gates_do_not(name, kind, overrides):
    if name == "topk":
        overrides = {**overrides, "K": 2}  # k = 1 rows are one-hot: equal rows would prove nothing
    gate = build(name, kind, num_options=4, cond_dim=8, **overrides).eval()
    torch.manual_seed(2)
    out = gate(torch.randn(5, 8) * 3)
    rows_equal = torch.equal(out, out[:1].expand_as(out))
    if name in PER_TASK:
        assert gate.input_dependent is False and rows_equal
    else:
        assert gate.input_dependent is True and not rows_equal


@pytest.mark.parametrize("name,overrides", [("topk", {"K": 2}), ("topk", {"K": 1}), ("gumbel", {}),
                                            ("gumbel", {"STRAIGHT_THROUGH": True})])
def test_noisy_gates_draw_noise_in_training_only(name, overrides):
    gate = build(name, "simplex", num_options=6, cond_dim=8, **overrides)
    torch.manual_seed(3)
    cond = torch.randn(32, 8)
    gate.train()
    assert not torch.equal(gate(cond), gate(cond))
    gate.eval()
    first = gate(cond)
    assert torch.equal(first, gate(cond))
    if name == "gumbel":
        torch.testing.assert_close(first, torch.softmax(gate.net(cond) / gate.temperature, -1))
    else:
        clean = cond @ gate.w_gate
        top = clean.topk(gate.k, dim=-1)
        expected = torch.zeros_like(clean).scatter(-1, top.indices, torch.softmax(top.values, -1))
        torch.testing.assert_close(first, expected)


@pytest.mark.parametrize("name,kind,overrides", [("scalar", "mask", {}), ("sigmoid", "mask", {}), ("mlp", "mask", {}),
                                                 ("softmax", "simplex", {}), ("keyquery", "simplex", {}),
                                                 ("keyquery", "simplex", {"HARD": True})])
def test_noiseless_gates_are_the_same_in_train_and_eval(name, kind, overrides):
    gate = build(name, kind, **overrides)
    cond = torch.randn(4, 8)
    assert torch.equal(gate.train()(cond), gate.eval()(cond))


# ---------------------------------------------------------------- constant
def test_constant_mask_is_exactly_one_and_simplex_exactly_one_hot_on_the_last_option():
    cond = torch.randn(5, 8)
    assert torch.equal(build("constant", "mask")(cond), torch.ones(5, 4))
    expected = torch.zeros(5, 4)
    expected[:, -1] = 1.0
    assert torch.equal(build("constant", "simplex")(cond), expected)
    assert build("constant", "mask").input_dependent is False


def test_constant_value_index_and_uniform_options():
    cond = torch.randn(2, 8)
    assert torch.equal(build("constant", "mask", VALUE=0.25)(cond), torch.full((2, 4), 0.25))
    assert torch.equal(build("constant", "simplex", INDEX=1)(cond), F.one_hot(torch.tensor([1, 1]), 4).float())
    assert torch.equal(build("constant", "simplex", INDEX=-4)(cond), F.one_hot(torch.tensor([0, 0]), 4).float())
    assert torch.equal(build("constant", "simplex", UNIFORM=True)(cond), torch.full((2, 4), 0.25))
    assert build("constant", "mask")(cond.double()).dtype == torch.float64  # follows the conditioning
    with pytest.raises(ValueError, match="GATE.CONSTANT.INDEX = 4 but the target has 4 options"):
        build("constant", "simplex", INDEX=4)
    with pytest.raises(ValueError, match=r"GATE.CONSTANT.VALUE must lie in \[0, 1\]"):
        build("constant", "mask", VALUE=1.5)
    # Nothing of the constant goes into checkpoints.
    assert build("constant", "mask").state_dict() == {}


# ---------------------------------------------------------------- scalar, sigmoid, mlp
def test_scalar_and_sigmoid_initial_values():
    cond = torch.randn(3, 8)
    torch.testing.assert_close(build("scalar", "mask")(cond), torch.full((3, 4), 0.5))
    torch.testing.assert_close(build("scalar", "simplex", INIT=2.0)(cond), torch.full((3, 4), 0.25))
    torch.testing.assert_close(build("sigmoid", "mask")(cond), torch.full((3, 4), 1 / (1 + math.exp(-1.0))))
    torch.testing.assert_close(build("sigmoid", "mask", INIT_LOGIT=-2.0)(cond),
                               torch.full((3, 4), 1 / (1 + math.exp(2.0))))
    gate = build("scalar", "simplex")
    with torch.no_grad():
        gate.logits.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(gate(cond)[0], torch.softmax(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0))
    assert gate.activation == "softmax" and build("sigmoid", "mask").activation == "sigmoid"
    # INIT_STD: logits ~ N(INIT, INIT_STD^2), different per option.
    for name, init_key in (("scalar", "INIT"), ("sigmoid", "INIT_LOGIT")):
        noisy = build(name, "mask", num_options=256, **{init_key: 0.5, "INIT_STD": 0.1}).logits.detach()
        assert abs(float(noisy.mean()) - 0.5) < 0.03 and 0.08 < float(noisy.std()) < 0.12, name


def test_mlp_formula_and_init_options():
    gate = build("mlp", "mask", HIDDEN=5)
    cond = torch.randn(4, 8)
    w1, b1, w2, b2 = gate.net[0].weight, gate.net[0].bias, gate.net[2].weight, gate.net[2].bias
    torch.testing.assert_close(gate(cond), torch.sigmoid(torch.relu(cond @ w1.t() + b1) @ w2.t() + b2))
    # Default init: PyTorch's, |w| <= 1/sqrt(H).
    assert w2.abs().max() <= 1 / math.sqrt(5)

    saturated = build("mlp", "mask", INIT_BIAS=10.0)
    assert saturated(torch.randn(16, 8)).min() > 0.999
    torch.manual_seed(0)
    reference = build("mlp", "mask")
    torch.testing.assert_close(saturated.net[2].bias, reference.net[2].bias + 10.0)
    assert reference.net[2].bias.abs().min() > 0  # added to PyTorch's init, which is kept

    wide = build("mlp", "mask", num_options=16, HIDDEN=64, INIT_STD=0.5)
    assert 0.4 < float(wide.net[2].weight.detach().std()) < 0.6
    linear = build("mlp", "mask", HIDDEN=0, INIT_STD=0.02, num_options=32, cond_dim=64)
    assert len(linear.net) == 1 and 0.015 < float(linear.net[0].weight.detach().std()) < 0.025
    cond = torch.randn(4, 64)
    torch.testing.assert_close(linear(cond), torch.sigmoid(cond @ linear.net[0].weight.t() + linear.net[0].bias))
    with pytest.raises(ValueError, match="GATE.MLP.HIDDEN must be >= 0"):
        build("mlp", "mask", HIDDEN=-1)


# ---------------------------------------------------------------- temperatures
def _entropy(p):
    p = p.detach()
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())


@pytest.mark.parametrize("name", ["softmax", "gumbel", "keyquery"])
def test_temperature_sharpens_and_is_a_plain_attribute_read_at_every_forward(name):
    gate = build(name, "simplex", TEMPERATURE=1.0).eval()
    cond = torch.randn(8, 8)
    warm = gate(cond)
    logits_at_1 = gate.last_logits.clone()
    gate.temperature = 0.05  # what an annealing schedule does
    cold = gate(cond)
    torch.testing.assert_close(cold, torch.softmax(logits_at_1 / 0.05, -1))
    assert _entropy(cold) < _entropy(warm)
    assert torch.equal(cold.argmax(-1), warm.argmax(-1))
    with pytest.raises(ValueError, match="TEMPERATURE must be > 0"):
        build(name, "simplex", TEMPERATURE=0.0)


def test_softmax_gate_formula_with_and_without_hidden_layer():
    cond = torch.randn(4, 8)
    gate = build("softmax", "simplex", TEMPERATURE=2.0)
    linear = gate.net[0]
    torch.testing.assert_close(gate(cond), torch.softmax((cond @ linear.weight.t() + linear.bias) / 2.0, -1))
    torch.testing.assert_close(gate.last_logits, (cond @ linear.weight.t() + linear.bias) / 2.0)
    deep = build("softmax", "simplex", HIDDEN=6)
    assert len(deep.net) == 3 and deep.net[0].out_features == 6


# ---------------------------------------------------------------- gumbel
def test_gumbel_soft_and_straight_through_with_fixed_noise():
    cond = torch.randn(5, 8)
    noise = torch.tensor([[0.3, -1.0, 2.0, 0.1]]).expand(5, 4)
    soft_gate = build("gumbel", "simplex", TEMPERATURE=0.5).train()
    soft_gate.sample_gumbel = lambda like: noise
    soft = soft_gate(cond)
    expected_soft = torch.softmax((soft_gate.net(cond) + noise) / 0.5, -1)
    torch.testing.assert_close(soft, expected_soft)

    hard_gate = build("gumbel", "simplex", TEMPERATURE=0.5, STRAIGHT_THROUGH=True).train()
    hard_gate.sample_gumbel = lambda like: noise
    hard = hard_gate(cond)
    assert torch.equal(hard, F.one_hot(expected_soft.argmax(-1), 4).float())
    # Soft gradient: d(sum w * hard)/dz equals that of the soft sample.
    w = torch.randn(5, 4)
    (hard * w).sum().backward()
    grad_hard = hard_gate.net.weight.grad.clone()
    hard_gate.zero_grad()
    soft_again = torch.softmax((hard_gate.net(cond) + noise) / 0.5, -1)
    (soft_again * w).sum().backward()
    torch.testing.assert_close(grad_hard, hard_gate.net.weight.grad)


def test_gumbel_sampler_draws_standard_gumbel_noise():
    gate = build("gumbel", "simplex")
    torch.manual_seed(4)
    sample = gate.sample_gumbel(torch.empty(200_000))
    # Gumbel(0, 1): mean = Euler-Mascheroni constant, variance = pi^2 / 6.
    assert abs(float(sample.mean()) - 0.5772) < 0.01
    assert abs(float(sample.var()) - math.pi ** 2 / 6) < 0.03


# ---------------------------------------------------------------- topk
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_topk_keeps_exactly_k_options_per_row(k, training):
    gate = build("topk", "simplex", num_options=5, K=k).train(training)
    out = gate(torch.randn(64, 8))
    assert ((out > 0).sum(-1) == k).all()
    assert_gate_values(out, "simplex", 64, 5)


def test_topk_rejects_more_kept_options_than_there_are():
    with pytest.raises(ValueError, match=r"GATE.TOPK.K = 5 but the target has 4 options"):
        build("topk", "simplex", num_options=4, K=5)


def test_squared_coefficient_of_variation_by_hand():
    # mean 2, population variance 2/3 -> CV^2 = (2/3) / 4.
    torch.testing.assert_close(squared_cv(torch.tensor([1.0, 2.0, 3.0])), torch.tensor(1 / 6))
    assert float(squared_cv(torch.tensor([3.0, 3.0]))) == 0.0
    assert float(squared_cv(torch.tensor([3.0]))) == 0.0


def _identity_topk(k, num_options=3, **overrides):
    """A top-k gate whose clean logits are the conditioning itself (W_g = I, W_noise = 0)."""
    gate = build("topk", "simplex", num_options=num_options, cond_dim=num_options, K=k, **overrides)
    with torch.no_grad():
        gate.w_gate.copy_(torch.eye(num_options))
        gate.w_noise.zero_()
    return gate


def test_topk_aux_loss_at_eval_counts_routed_inputs():
    gate = _identity_topk(1, AUX_WEIGHT=0.01).eval()
    gate(torch.tensor([[3.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0], [0, 0, 5.0]]))
    # Routed to options 0, 0, 1, 2 with value 1: importance = load = [2, 1, 1];
    # mean 4/3, population variance 2/9 -> CV^2 = 1/8 each.
    torch.testing.assert_close(gate._importance, torch.tensor([2.0, 1.0, 1.0]))
    torch.testing.assert_close(gate._load, torch.tensor([2.0, 1.0, 1.0]))
    torch.testing.assert_close(gate.aux_loss(), torch.tensor(0.01 * (1 / 8 + 1 / 8)))

    # k = 2: importance sums the (fractional) gate values, load still counts routed inputs.
    gate = _identity_topk(2, AUX_WEIGHT=1.0).eval()
    out = gate(torch.tensor([[1.0, 0, -9.0], [2.0, -9.0, 0]]))
    s1, s2 = torch.softmax(torch.tensor([1.0, 0.0]), 0), torch.softmax(torch.tensor([2.0, 0.0]), 0)
    torch.testing.assert_close(out, torch.tensor([[s1[0], s1[1], 0.0], [s2[0], 0.0, s2[1]]]))
    torch.testing.assert_close(gate._importance, torch.tensor([s1[0] + s2[0], s1[1], s2[1]]))
    torch.testing.assert_close(gate._load, torch.tensor([2.0, 1.0, 1.0]))
    torch.testing.assert_close(gate.aux_loss(), squared_cv(gate._importance) + torch.tensor(1 / 8))


def _phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_topk_smooth_load_and_aux_loss_by_hand():
    gate = _identity_topk(1, AUX_WEIGHT=0.5).train()
    gate.sample_noise = lambda like: torch.tensor([[0.0, 1.0, 0.0]])
    clean = [1.0, 0.5, 0.0]
    std = math.log(2) + 0.01  # softplus(0) + the noise floor
    noisy = [1.0, 0.5 + std, 0.0]  # option 1 wins
    out = gate(torch.tensor([clean]))
    assert torch.equal(out, torch.tensor([[0.0, 1.0, 0.0]]))
    # Option 1 (in the top 1) competes with the best other, noisy[0]; the others with noisy[1].
    load = [_phi((clean[0] - noisy[1]) / std), _phi((clean[1] - noisy[0]) / std), _phi((clean[2] - noisy[1]) / std)]
    torch.testing.assert_close(gate._load, torch.tensor(load))

    def cv2(values):
        mean = sum(values) / len(values)
        return sum((v - mean) ** 2 for v in values) / len(values) / mean ** 2

    torch.testing.assert_close(gate.aux_loss(), torch.tensor(0.5 * (cv2([0.0, 1.0, 0.0]) + cv2(load))))


def test_topk_smooth_load_is_the_probability_of_staying_in_the_top_k():
    """P(x, i) against a Monte-Carlo estimate: redraw option i's noise only, count how often
    it lands in the top k of the (otherwise fixed) noisy logits."""
    k, num_options = 2, 5
    gate = _identity_topk(k, num_options).train()
    torch.manual_seed(5)
    fixed_noise = torch.randn(1, num_options)
    gate.sample_noise = lambda like: fixed_noise
    clean = torch.tensor([[0.4, 0.1, -0.3, 0.9, 0.0]])
    gate(clean)
    std = math.log(2) + 0.01
    noisy = clean + fixed_noise * std
    redraws = 200_000
    for i in range(num_options):
        trial = noisy.expand(redraws, -1).clone()
        trial[:, i] = clean[0, i] + torch.randn(redraws) * std
        in_top_k = (trial.topk(k, dim=-1).indices == i).any(-1).float().mean()
        assert abs(float(gate._load[i].detach()) - float(in_top_k)) < 0.01, i


def test_topk_zero_init_starts_balanced_and_default_init_does_not():
    assert torch.equal(build("topk", "simplex", ZERO_INIT=True).w_gate, torch.zeros(8, 4))
    gate = build("topk", "simplex")
    assert gate.w_gate.abs().max() <= 1 / math.sqrt(8) and gate.w_gate.abs().sum() > 0
    assert torch.equal(gate.w_noise, torch.zeros(8, 4))


# ---------------------------------------------------------------- keyquery
def _two_key_gate(**overrides):
    gate = build("keyquery", "simplex", num_options=2, cond_dim=2, **overrides)
    with torch.no_grad():
        gate.keys.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))  # cosine ignores the keys' norms
    return gate


KQ_COND = torch.tensor([[3.0, 4.0], [1.0, 0.0], [-1.0, -1.0]])
KQ_COS = torch.tensor([[0.6, 0.8], [1.0, 0.0], [-0.5 ** 0.5, -0.5 ** 0.5]])


@pytest.mark.parametrize("hard", [False, True])
def test_keyquery_scores_output_and_surrogate_loss_by_hand(hard):
    gate = _two_key_gate(HARD=hard, TEMPERATURE=0.1, SURROGATE_WEIGHT=0.1)
    out = gate(KQ_COND)
    torch.testing.assert_close(gate.similarity(KQ_COND), KQ_COS)
    if hard:
        assert torch.equal(out, torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]))
        assert not out.requires_grad and gate.activation == "argmax"
    else:
        torch.testing.assert_close(out, torch.softmax(KQ_COS / 0.1, -1))
    # Best cosines 0.8, 1.0, -0.7071: surrogate = 0.1 * mean(1 - best).
    expected = 0.1 * ((1 - 0.8) + (1 - 1.0) + (1 + 0.5 ** 0.5)) / 3
    torch.testing.assert_close(gate.aux_loss(), torch.tensor(expected))


def test_keyquery_surrogate_pulls_the_selected_key_towards_the_query():
    gate = _two_key_gate(HARD=True)
    cond = torch.tensor([[3.0, 4.0]])
    gate(cond)
    gate.aux_loss().backward()
    assert gate.keys.grad[0].abs().sum() == 0  # key 0 was not selected
    with torch.no_grad():
        gate.keys -= 1.0 * gate.keys.grad
    assert float(gate.similarity(cond)[0, 1].detach()) > 0.8


def test_keyquery_key_inits():
    uniform = build("keyquery", "simplex", num_options=16, cond_dim=64)
    assert uniform.keys.min() >= -1 and uniform.keys.max() <= 1 and uniform.keys.abs().max() > 0.9
    normal = build("keyquery", "simplex", num_options=16, cond_dim=64, KEY_INIT="normal")
    assert normal.keys.abs().max() > 1.5 and 0.85 < float(normal.keys.detach().std()) < 1.15
    with pytest.raises(ValueError, match="GATE.KEYQUERY.KEY_INIT must be one of"):
        build("keyquery", "simplex", KEY_INIT="orthogonal")
