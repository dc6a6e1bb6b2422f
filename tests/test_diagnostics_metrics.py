"""diagnostics/metrics.py and diagnostics/verdict.py: hand-computed cases and edge cases.

Each expected value is worked out in the comment beside it, not recomputed with the code under test.
"""
import json
import math

import pytest
import torch

from diagnostics import metrics as M
from diagnostics.verdict import DEFAULT_THRESHOLDS, THRESHOLD_HELP, VERDICTS, gate_verdict, routing_reason

LN2 = math.log(2.0)


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def assert_json_plain(obj):
    """Standard JSON (no NaN/Infinity) survives a round trip unchanged in meaning."""
    json.dumps(obj, allow_nan=False)


# --------------------------------------------------------------------------- grad_stats


def test_grad_stats_hand_computed():
    # entries 3, 0, 4, 0 (first tensor) and 1e-9 (second); None ignored.
    # sum of squares = 9 + 16 + 1e-18 -> l2 = sqrt(25 + 1e-18) = 5 (to float precision)
    # numel = 5 -> rms = 5 / sqrt(5) = sqrt(5); zeros 2/5; |g| < 1e-8: 0, 0, 1e-9 -> 3/5
    grads = [t([[3.0, 0.0], [4.0, 0.0]]), None, t([1e-9])]
    s = M.grad_stats(grads)
    assert s["numel"] == 5
    assert s["l2"] == pytest.approx(5.0, rel=1e-12)
    assert s["rms"] == pytest.approx(math.sqrt(5.0), rel=1e-12)
    assert s["zero_share"] == pytest.approx(0.4)
    assert s["share_below_1e-8"] == pytest.approx(0.6)
    assert s["min_abs_nonzero"] == pytest.approx(1e-9, rel=1e-6)  # 1e-9 as stored in float32
    assert s["dtype"] == "float32"
    assert s["nonfinite_count"] == 0
    assert_json_plain(s)


def test_grad_stats_dtype_of_first_present_grad():
    s = M.grad_stats([None, t([1.0], torch.float16), t([1.0], torch.float64)])
    assert s["dtype"] == "float16"
    # l2 = sqrt(1 + 1) over numel 2 -> rms 1
    assert s["l2"] == pytest.approx(math.sqrt(2.0))
    assert s["rms"] == pytest.approx(1.0)


@pytest.mark.parametrize("grads", [[], [None, None], [torch.zeros(0)]])
def test_grad_stats_no_entries(grads):
    s = M.grad_stats(grads)
    assert s["numel"] == 0
    assert s["l2"] is None and s["rms"] is None
    assert s["zero_share"] is None and s["share_below_1e-8"] is None and s["min_abs_nonzero"] is None
    assert_json_plain(s)


def test_grad_stats_zero_gradient():
    # all 4 entries 0: l2 = rms = 0, zero share 1, nothing non-zero -> min None
    s = M.grad_stats([torch.zeros(2, 2)])
    assert s["l2"] == 0.0 and s["rms"] == 0.0
    assert s["zero_share"] == 1.0 and s["share_below_1e-8"] == 1.0
    assert s["min_abs_nonzero"] is None


def test_grad_stats_non_finite_is_reported_not_nan():
    # 1 NaN and 1 inf out of 4: norms undefined (None), count 2; finite non-zero minimum = 2
    s = M.grad_stats([t([float("nan"), 2.0, float("inf"), 0.0])])
    assert s["l2"] is None and s["rms"] is None
    assert s["nonfinite_count"] == 2
    assert s["min_abs_nonzero"] == 2.0
    assert s["zero_share"] == 0.25
    assert_json_plain(s)


# --------------------------------------------------------------------------- ratio, gap, update


def test_ratio():
    assert M.ratio(1.0, 4.0) == 0.25
    assert M.ratio(1.0, 0.0) is None
    assert M.ratio(1.0, None) is None
    assert M.ratio(None, 2.0) is None
    assert M.ratio(float("nan"), 2.0) is None


def test_magnitude_gap():
    # log10(400 / 1) = 2.602..., the study's reported 2.60
    assert M.magnitude_gap(400.0, 1.0) == pytest.approx(math.log10(400.0))
    # log10(1e-3 / 1e-1) = -2
    assert M.magnitude_gap(1e-3, 1e-1) == pytest.approx(-2.0)
    assert M.magnitude_gap(0.0, 1.0) is None
    assert M.magnitude_gap(1.0, 0.0) is None
    assert M.magnitude_gap(None, 1.0) is None


def test_relative_update_whole_group_is_one_vector():
    # before: [3, 0] and [4] -> ||before|| = 5; after - before: [0, 1] and [0] -> ||step|| = 1 -> 0.2
    before = [t([3.0, 0.0]), t([4.0])]
    after = [t([3.0, 1.0]), t([4.0])]
    assert M.relative_update(before, after) == pytest.approx(0.2)


def test_relative_update_edge_cases():
    assert M.relative_update([torch.zeros(3)], [torch.ones(3)]) is None  # ||before|| = 0
    assert M.relative_update([], []) is None
    assert M.relative_update([t([2.0])], [t([2.0])]) == 0.0  # no step
    with pytest.raises(ValueError, match="same parameters"):
        M.relative_update([t([1.0])], [t([1.0]), t([2.0])])


# --------------------------------------------------------------------------- fp16 underflow


def test_fp16_underflow_min_threshold():
    # smallest non-zero |g| = 5e-8 < 1e-7 -> underflow; below 1e-8: none of 3 -> share 0
    r = M.fp16_underflow([t([1e-3, -5e-8, 2e-2], torch.float64)])
    assert r["min_abs_nonzero"] == pytest.approx(5e-8)
    assert r["share_tiny"] == 0.0
    assert r["underflow"] is True


def test_fp16_underflow_share_rule():
    # 1 of 4 entries below 1e-8 (an exact 0) -> share 0.25 > 0.2; min non-zero 1e-3 is fine
    r = M.fp16_underflow([t([0.0, 1e-3, 1e-2, 1e-1], torch.float64)])
    assert r["share_tiny"] == 0.25
    assert r["min_abs_nonzero"] == pytest.approx(1e-3)
    assert r["underflow"] is True
    # 1 of 5 -> share 0.2, not > 0.2
    r = M.fp16_underflow([t([0.0, 1e-3, 1e-2, 1e-1, 1.0], torch.float64)])
    assert r["share_tiny"] == pytest.approx(0.2)
    assert r["underflow"] is False


def test_fp16_underflow_edge_cases():
    assert M.fp16_underflow([None]) == {"min_abs_nonzero": None, "share_tiny": None, "underflow": False}
    # all zero: share_tiny 1 > 0.2 (the study's rule), no non-zero entry
    r = M.fp16_underflow([torch.zeros(3)])
    assert r == {"min_abs_nonzero": None, "share_tiny": 1.0, "underflow": True}


# --------------------------------------------------------------------------- activation slope


def test_activation_slope_hand_computed():
    z = t([[0.0, 0.0]])
    # sigmoid(0) = 0.5 -> 0.5 * 0.5 = 0.25
    assert M.activation_slope(z, "sigmoid") == pytest.approx(0.25)
    # softmax of equal logits over 2 options: p = 0.5 each -> 0.25
    assert M.activation_slope(z, "softmax") == pytest.approx(0.25)
    # tanh(0) = 0 -> 1
    assert M.activation_slope(z, "tanh") == pytest.approx(1.0)
    # softmax over 4 equal logits: p = 1/4 -> p(1-p) = 3/16
    assert M.activation_slope(torch.zeros(3, 4), "softmax") == pytest.approx(3 / 16)
    # relu: 2 of 4 logits > 0 (0 is not)
    assert M.activation_slope(t([-1.0, 0.0, 2.0, 3.0]), "relu") == 0.5
    # saturated sigmoid at z = 10: s(1-s) = e^-10 / (1 + e^-10)^2 ~ 4.54e-5
    assert M.activation_slope(t([10.0]), "sigmoid") == pytest.approx(math.exp(-10) / (1 + math.exp(-10)) ** 2)


def test_activation_slope_undefined():
    assert M.activation_slope(t([0.0]), None) is None
    assert M.activation_slope(t([0.0]), "argmax") is None
    assert M.activation_slope(None, "sigmoid") is None
    assert M.activation_slope(torch.zeros(0, 3), "sigmoid") is None


# --------------------------------------------------------------------------- gate outputs


def test_gate_output_stats_mask_hand_computed():
    # rows (inputs) x options:
    #   [1.0, 0.2]
    #   [0.0, 0.2]
    # option 0: mean 0.5, population std 0.5; option 1: mean 0.2, std 0 -> input_std 0.25
    # saturation (eps 0.01): 1.0 and 0.0 -> 2 of 4 = 0.5; overall mean (1 + 0.2 + 0 + 0.2) / 4 = 0.35
    # effective length: row 0 has 1 value > 0.5, row 1 none -> 0.5
    # binary entropy: H(1) = H(0) = 0, H(0.2) = -(0.2 ln 0.2 + 0.8 ln 0.8) = 0.500402...; mean = 2 * 0.5004 / 4
    g = t([[1.0, 0.2], [0.0, 0.2]])
    s = M.gate_output_stats(g, "mask")
    h02 = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert s["per_option_mean"] == pytest.approx([0.5, 0.2])
    assert s["per_option_std"] == pytest.approx([0.5, 0.0], abs=1e-7)
    assert s["input_std"] == pytest.approx(0.25)
    assert s["saturation"] == 0.5
    assert s["mean"] == pytest.approx(0.35)
    assert s["effective_length"] == 0.5
    assert s["binary_entropy"] == pytest.approx(h02 / 2)
    assert s["sample_entropy"] is None and s["usage_entropy"] is None
    assert s["effective_options"] is None and s["top_share"] is None
    assert_json_plain(s)


def test_gate_output_stats_simplex_hand_computed():
    # rows: [1, 0] and [0.5, 0.5]
    # sample entropy: 0 and ln 2 -> mean ln2 / 2
    # usage = (0.75, 0.25): H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335...; effective exp(H) = 1.7548...
    # top share 0.75; saturation: 1 and 0 -> 2 of 4; per-option std: |1 - 0.5| / 2 = 0.25 each -> input_std 0.25
    g = t([[1.0, 0.0], [0.5, 0.5]])
    s = M.gate_output_stats(g, "simplex")
    h_usage = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert s["sample_entropy"] == pytest.approx(LN2 / 2)
    assert s["usage_entropy"] == pytest.approx(h_usage)
    assert s["effective_options"] == pytest.approx(math.exp(h_usage))
    assert s["top_share"] == pytest.approx(0.75)
    assert s["saturation"] == 0.5
    assert s["input_std"] == pytest.approx(0.25)
    assert s["effective_length"] is None and s["binary_entropy"] is None
    assert_json_plain(s)


def test_gate_output_stats_same_keys_for_both_kinds():
    g = torch.full((3, 4), 0.25)
    assert set(M.gate_output_stats(g, "mask")) == set(M.gate_output_stats(g, "simplex"))


def test_gate_output_stats_constant_simplex_is_one_option():
    # every row picks option 2: usage one-hot -> H 0, exp(0) = 1 effective option, input std 0
    g = torch.zeros(5, 3)
    g[:, 2] = 1.0
    s = M.gate_output_stats(g, "simplex")
    assert s["usage_entropy"] == 0.0 and s["effective_options"] == 1.0
    assert s["input_std"] == 0.0 and s["top_share"] == 1.0 and s["saturation"] == 1.0


def test_gate_output_stats_single_sample_and_empty():
    s = M.gate_output_stats(t([[0.3, 0.9]]), "mask")  # B = 1: std 0 by definition (ddof 0)
    assert s["per_option_std"] == [0.0, 0.0] and s["input_std"] == 0.0
    assert s["effective_length"] == 1.0
    empty = M.gate_output_stats(torch.zeros(0, 3), "mask")
    assert all(v is None for v in empty.values())
    assert_json_plain(empty)


def test_gate_output_stats_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        M.gate_output_stats(torch.zeros(3), "mask")
    with pytest.raises(ValueError, match="kind"):
        M.gate_output_stats(torch.zeros(2, 2), "soft")


# --------------------------------------------------------------------------- choices and MI


def test_choices_from_gate():
    # simplex: argmax per row
    assert M.choices_from_gate(t([[0.1, 0.9], [0.7, 0.3]]), "simplex").tolist() == [1, 0]
    # mask: bits (g > 0.5) with option k worth 2^k: [1,0,1] -> 1 + 4 = 5; [0,1,0] -> 2; [0,0,0] -> 0
    g = t([[0.9, 0.1, 0.6], [0.2, 0.8, 0.5], [0.0, 0.0, 0.0]])
    codes = M.choices_from_gate(g, "mask")
    assert codes.dtype == torch.long and codes.tolist() == [5, 2, 0]


def test_choices_from_gate_wide_mask_counts_open_options():
    # K = 70 > 62: code = number of open options; row 0 opens 3, row 1 opens 70
    g = torch.zeros(2, 70)
    g[0, [0, 10, 69]] = 1.0
    g[1] = 1.0
    assert M.choices_from_gate(g, "mask").tolist() == [3, 70]


def test_mutual_information_hand_computed():
    # choice = label (2 classes, balanced): MI = H = ln 2; normalised 1
    assert M.mutual_information([0, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx(LN2)
    assert M.normalized_mutual_information([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    # independent: joint uniform over 4 cells -> p(c,y) = p(c)p(y) -> MI 0
    assert M.mutual_information([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    # choices [0,0,1,1], labels [0,0,0,1]: H(c) = ln2, H(y) = H(1/4) = 0.5623, joint over cells
    # (0,0)=1/2, (1,0)=1/4, (1,1)=1/4 -> H(c,y) = 1.5 ln 2 -> MI = ln2 + 0.5623 - 1.5 ln2 = 0.2158
    h_y = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    mi = M.mutual_information(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1]))
    assert mi == pytest.approx(LN2 + h_y - 1.5 * LN2)
    # normalised by min(H(c), H(y)) = H(y) = 0.5623
    assert M.normalized_mutual_information([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(mi / h_y)


def test_mutual_information_edge_cases():
    assert M.mutual_information([], []) is None
    assert M.normalized_mutual_information([], []) is None
    assert M.mutual_information([3], [1]) == 0.0  # single sample: nothing varies
    # constant choice: H(choice) = 0 -> MI 0 and normalised 0.0 by definition
    assert M.mutual_information([2, 2, 2], [0, 1, 2]) == 0.0
    assert M.normalized_mutual_information([2, 2, 2], [0, 1, 2]) == 0.0
    with pytest.raises(ValueError, match="one label per choice"):
        M.mutual_information([0, 1], [0])
    with pytest.raises(TypeError, match="integer codes"):
        M.mutual_information(torch.tensor([0.5]), torch.tensor([1]))


def test_mutual_information_test_correction_and_null_hand_computed():
    # choice = label, N = 4: plug-in ln 2; Miller-Madow adds ((m_c - 1) + (m_y - 1) - (m_cy - 1)) / (2N)
    # = (1 + 1 - 1) / 8. Under shuffling, the 6 equally likely arrangements of the labels [0,0,1,1]
    # give MI ln 2 twice ([0,0,1,1], [1,1,0,0]) and 0 four times: null mean ln 2 / 3, p = 1/3.
    r = M.mutual_information_test([0, 0, 1, 1], [0, 0, 1, 1], permutations=3000, seed=1)
    assert r["plugin"] == pytest.approx(LN2) and r["miller_madow"] == pytest.approx(LN2 + 1 / 8)
    assert r["null_mean"] == pytest.approx(LN2 / 3, abs=0.02) and r["null_p95"] == pytest.approx(LN2)
    assert r["p_value"] == pytest.approx(1 / 3, abs=0.03) and r["excess"] == pytest.approx(2 * LN2 / 3, abs=0.02)
    assert r["n"] == 4
    # independent choices of 8 options on 200 inputs read well above 0 (the bias) and so does their
    # null: the excess is near 0 and the test does not reject
    g = torch.Generator().manual_seed(0)
    c, y = torch.randint(8, (200,), generator=g), torch.randint(10, (200,), generator=g)
    r = M.mutual_information_test(c, y, permutations=300)
    assert r["plugin"] > 0.1 and abs(r["excess"]) < 0.05 and r["p_value"] > 0.05
    assert M.mutual_information_test([0, 1], [0, 1], permutations=0)["null_mean"] is None
    assert M.mutual_information_test([], [])["plugin"] is None


def test_choice_top_share():
    assert M.choice_top_share([3, 3, 1, 2]) == 0.5
    assert M.choice_top_share(torch.tensor([7])) == 1.0
    assert M.choice_top_share([]) is None


# --------------------------------------------------------------------------- layer slope


def test_layer_slope():
    # norms 1, 0.1, 0.01: log10 = 0, -1, -2 -> slope -1 decade per layer
    assert M.layer_slope([1.0, 0.1, 0.01]) == pytest.approx(-1.0)
    # layer 1 unusable (0) -> points (0, 0) and (2, -2): slope -1; layer indices are kept
    assert M.layer_slope([1.0, 0.0, 0.01]) == pytest.approx(-1.0)
    assert M.layer_slope(torch.tensor([10.0, 100.0])) == pytest.approx(1.0)
    assert M.layer_slope([1.0, None, -3.0]) is None  # one usable point
    assert M.layer_slope([]) is None


# --------------------------------------------------------------------------- loss competition


def test_loss_competition_hand_computed():
    # ce = (1, 0), reg = (0, 1): angle 90; sum (1, 1) has norm sqrt 2; norms sum 2
    # cancellation = 1 - sqrt2 / 2 = 0.2929 (< 0.3); regulariser share = 1 / 2 = 0.5 (not > 0.5)
    r = M.loss_competition({"ce": t([1.0, 0.0]), "reg": t([0.0, 1.0])}, regularisers=("reg",))
    assert r["angles"] == {"ce|reg": pytest.approx(90.0)}
    assert r["max_angle"] == pytest.approx(90.0)
    assert r["cancellation"] == pytest.approx(1 - math.sqrt(2) / 2)
    assert r["regulariser_share"] == pytest.approx(0.5)
    assert r["conflict"] is True and r["cancellation_flag"] is False and r["regulariser_flag"] is False
    assert_json_plain(r)


def test_loss_competition_opposed_terms_cancel():
    # ce = (1, 0), sparsity = (-3, 0): angle 180; ||sum|| = 2, sum of norms 4 -> cancellation 0.5
    # regulariser share 3 / 4; a zero term and a None term give None angles and add nothing
    r = M.loss_competition({"ce": t([1.0, 0.0]), "sparsity": t([-3.0, 0.0]), "smooth": torch.zeros(2),
                            "cycle": None}, regularisers=("sparsity", "smooth", "not_configured"))
    assert r["angles"]["ce|sparsity"] == pytest.approx(180.0)
    assert r["angles"]["ce|smooth"] is None and r["angles"]["sparsity|cycle"] is None
    assert len(r["angles"]) == 6  # 4 terms -> 4 * 3 / 2 pairs
    assert r["cancellation"] == pytest.approx(0.5)
    assert r["regulariser_share"] == pytest.approx(0.75)
    assert r["conflict"] and r["cancellation_flag"] and r["regulariser_flag"]


def test_loss_competition_edge_cases():
    r = M.loss_competition({"ce": torch.zeros(3), "reg": None}, regularisers=("reg",))
    assert r["max_angle"] is None and r["cancellation"] is None and r["regulariser_share"] is None
    assert not (r["conflict"] or r["cancellation_flag"] or r["regulariser_flag"])
    # a single aligned term: cancellation 1 - 1 = 0
    single = M.loss_competition({"ce": t([2.0, 0.0])})
    assert single["angles"] == {} and single["cancellation"] == 0.0 and single["regulariser_share"] == 0.0
    with pytest.raises(ValueError, match="same parameters"):
        M.loss_competition({"a": torch.ones(2), "b": torch.ones(3)})


# --------------------------------------------------------------------------- pattern stats


def test_pattern_stats_decay():
    # v = 0.9, 0.7, 0.3, 0.1: mean 0.5, deviations +-0.4, +-0.2 -> var (0.16+0.04)*2/4 = 0.1 -> std 0.3162
    # effective length 2 (0.9, 0.7); corr(index, v): index deviations -1.5, -0.5, 0.5, 1.5 (sum sq 5),
    # value deviations 0.4, 0.2, -0.2, -0.4 (sum sq 0.4), cross sum -0.6 - 0.1 - 0.1 - 0.6 = -1.4
    # -> corr = -1.4 / sqrt(5 * 0.4) = -1.4 / sqrt(2) = -0.98995 < -0.5 (decay)
    v = [0.9, 0.7, 0.3, 0.1]
    s = M.pattern_stats(v)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert s["std"] == pytest.approx(math.sqrt(0.1))
    assert s["uniform"] is False
    assert s["effective_length"] == 2
    assert s["binary_entropy"] == pytest.approx((2 * h(0.9) + 2 * h(0.7)) / 4)
    assert s["depth_monotonicity"] == pytest.approx(-1.4 / math.sqrt(2.0))
    assert s["decay"] is True
    assert_json_plain(s)


def test_pattern_stats_uniform_and_edges():
    # constant 0.73 (sigmoid(1), the study's init): std 0 -> uniform; correlation undefined
    s = M.pattern_stats(torch.full((8,), 0.73))
    assert s["std"] == 0.0 and s["uniform"] is True and s["effective_length"] == 8
    assert s["depth_monotonicity"] is None and s["decay"] is False
    one = M.pattern_stats([0.2])
    assert one["depth_monotonicity"] is None and one["effective_length"] == 0
    empty = M.pattern_stats([])
    assert empty["std"] is None and empty["effective_length"] is None and empty["uniform"] is False
    # the study's hard 0/1 gates: entropy exactly 0 (0 ln 0 = 0), not NaN
    assert M.pattern_stats([0.0, 1.0])["binary_entropy"] == 0.0


# --------------------------------------------------------------------------- logit sensitivity


def test_logit_sensitivity():
    base = torch.zeros(2, 3)
    # sigma 0.1: all moved by 0.001 -> 0.001; sigma 1.0: half the entries moved by 0.04 -> 0.02
    noisy = {0.1: torch.full((2, 3), 0.001), 1.0: t([[0.04, -0.04, 0.04], [0.0, 0.0, 0.0]])}
    r = M.logit_sensitivity(base, noisy)
    assert r["per_sigma"][0.1] == pytest.approx(0.001)
    assert r["per_sigma"][1.0] == pytest.approx(0.02)
    assert r["max"] == pytest.approx(0.02) and r["inert"] is False
    assert M.logit_sensitivity(base, {0.5: torch.full((2, 3), 0.005)})["inert"] is True
    assert M.logit_sensitivity(base, {}) == {"per_sigma": {}, "max": None, "inert": False}
    with pytest.raises(ValueError, match="same batch"):
        M.logit_sensitivity(base, {0.1: torch.zeros(3, 3)})


# --------------------------------------------------------------------------- median, tail


def test_median_and_tail():
    assert M.median([3.0, None, 1.0, 2.0]) == 2.0
    assert M.median([4.0, 1.0, 3.0, 2.0]) == 2.5  # (2 + 3) / 2
    assert M.median([None, float("nan")]) is None
    assert M.median([]) is None
    assert M.tail(range(10), 0.5) == [5, 6, 7, 8, 9]
    assert M.tail(range(10), 0.3) == [7, 8, 9]  # ceil(3) = 3
    assert len(M.tail(range(25), 0.28)) == 7  # 0.28 * 25 = 7.000000000000001 in floats: must not become 8
    assert M.tail(range(3), 0.5) == [1, 2]  # ceil(1.5) = 2
    assert M.tail(range(3), 0.0) == [2]  # at least one
    assert M.tail(range(3), 2.0) == [0, 1, 2]
    assert M.tail([], 0.5) == []


# --------------------------------------------------------------------------- verdict


def verdict(**over):
    """A healthy input-dependent mask gate unless overridden."""
    figures = dict(kind="mask", input_dependent=True, rho_task=0.2, signal_std=0.1, saturation=0.1,
                   choice_top_share=0.3, kl_reference=0.05, kl_effect=0.05, kl_effect_low=0.03)
    thresholds = over.pop("thresholds", None)
    figures.update(over)
    return gate_verdict(figures, thresholds)


def test_thresholds_defaults_and_help():
    assert DEFAULT_THRESHOLDS == dict(RHO_MIN=0.01, STD_MIN=0.01, SAT_MAX=0.9, EFF_MIN=1.1, MOVE_MIN=0.01,
                                      KL_MIN=1e-3, FLIP_MIN=0.01, GAIN_MIN=0.02, SENSITIVITY_MIN=0.01,
                                      SCHEDULE_GAIN_MIN=1.0, PROBE_MARGIN=10.0, MI_P_MAX=0.05, WINDOW=0.5,
                                      GAP_SEVERE=2.0)
    assert set(THRESHOLD_HELP) == set(DEFAULT_THRESHOLDS)
    assert VERDICTS == ("healthy", "imbalanced", "harmful", "inert", "degraded", "collapsed")


def test_verdict_healthy_needs_trainable_varied_and_functional():
    v, reasons = verdict()
    assert v == "healthy"
    assert "trainable: rho of the task loss 0.2 >= RHO_MIN 0.01" in reasons
    assert any(r.startswith("functional:") and "lower 95 % bound 0.03 >= KL_MIN" in r for r in reasons)


def test_verdict_inert_when_removing_the_gate_changes_nothing():
    # lively statistics, but the reproducible KL's lower bound 1e-4 < KL_MIN 1e-3
    v, reasons = verdict(kl_reference=2e-4, kl_effect=2e-4, kl_effect_low=1e-4)
    assert v == "inert"
    assert any(r.startswith("not functional:") for r in reasons)
    # inert outranks imbalanced: a gate that changes nothing is first of all that
    assert verdict(rho_task=0.0, kl_effect_low=0.0)[0] == "inert"


def _changes(test_share, train_share=None, n_test=160, n_train=160, repeat_share=None):
    functional = {"test": {"constant": {"n": n_test, "changed_share": test_share}}}
    if train_share is not None:
        functional["train"] = {"constant": {"n": n_train, "changed_share": train_share}}
    if repeat_share is not None:
        functional["test"]["repeat"] = {"n": n_test, "changed_share": repeat_share}
    return functional


def test_decisions_changed_pools_the_sets_by_size_and_removes_call_to_call_flips():
    from diagnostics.verdict import decisions_changed

    # 1 of 160 test and 4 of 160 training predictions change: 5 / 320
    assert decisions_changed({"functional": _changes(1 / 160, 4 / 160)}) == (pytest.approx(5 / 320), 320)
    # unequal sizes weigh by n: (0.1 * 100 + 0.0 * 300) / 400
    assert decisions_changed({"functional": _changes(0.1, 0.0, n_test=100, n_train=300)})[0] == pytest.approx(0.025)
    # a noisy gate: 2 % change between two calls of the learned gate is noise, not function
    assert decisions_changed({"functional": _changes(0.05, repeat_share=0.02)})[0] == pytest.approx(0.03)
    assert decisions_changed({"functional": _changes(0.01, repeat_share=0.02)})[0] == 0.0
    assert decisions_changed({}) == (None, 0)


def test_verdict_inert_when_probabilities_move_but_no_decision_does():
    # the docs/study.md case: a soft pool gate whose input dependence lowers the loss (KL well above
    # KL_MIN) while a constant mixture predicts the same class for every test and training image
    v, reasons = verdict(functional=_changes(0.0, 0.0))
    assert v == "inert"
    assert any(r.startswith("probabilities move:") and ">= KL_MIN" in r for r in reasons)
    assert any(r.startswith("not functional:") and "0 % of 320 inputs" in r and "< FLIP_MIN 1 %" in r
               for r in reasons)
    # 1 test + 4 training flips of 320 (1.56 %) is a decision-level effect
    v, reasons = verdict(functional=_changes(1 / 160, 4 / 160))
    assert v == "healthy"
    assert any(r.startswith("functional:") and "1.56 % of 320 inputs >= FLIP_MIN 1 %" in r for r in reasons)
    # the threshold is a setting
    assert verdict(functional=_changes(1 / 160, 4 / 160), thresholds={"FLIP_MIN": 0.02})[0] == "inert"
    # not measured: the KL decides, and a reason says decisions were not tested
    v, reasons = verdict()
    assert v == "healthy" and "share of changed predictions not measured; decisions not tested" in reasons


def _losses(learned, reference, n=160, test_share=0.05, acc=None):
    """functional figures where the learned gate's test cross-entropy is `learned` and the
    reference's `reference` (nats), with 5 % of the decisions changed; `acc` (delta, low, high):
    the accuracy change and its interval (points)."""
    functional = _changes(test_share, test_share, n_test=n, n_train=n)
    functional["test"]["constant"].update(loss_base=learned, loss_change=reference - learned, loss_other=reference,
                                          mean_abs_logit_delta=0.1)
    if acc is not None:
        functional["test"]["constant"].update(acc_delta=acc[0], acc_delta_ci=[acc[1], acc[2]])
    return functional


def test_loss_gain_is_the_share_of_the_cross_entropy_the_reference_adds_back():
    from diagnostics.verdict import loss_gain

    # learned 1.6 nats, constant 2.0: the constant adds 0.4 / 1.6 = 25 % of the loss back
    assert loss_gain({"functional": _losses(1.6, 2.0)}) == (pytest.approx(0.25), 160)
    # the constant does better: 1.5 vs 2.0 is -25 %
    assert loss_gain({"functional": _losses(2.0, 1.5)})[0] == pytest.approx(-0.25)
    # a per-task gate's reference is its initial values
    per_task = {"reference": "init", "functional": {"test": {"init": {"n": 10, "loss_base": 2.0,
                                                                    "loss_change": 0.1}}}}
    assert loss_gain(per_task) == (pytest.approx(0.05), 10)
    assert loss_gain({}) == (None, 0)
    assert loss_gain({"functional": _losses(0.0, 0.1)}) == (None, 0)  # no loss to share


def test_a_gate_that_changes_decisions_without_a_gain_is_inert_and_one_that_hurts_is_harmful():
    # the regime map's plain pool gate on the weakest domain signal: 1.9 % of decisions change, the
    # test loss moves by 0.4 % of itself (1.7623 -> 1.7697) and accuracy by 0.00 points [0, 0]
    v, reasons = verdict(functional=_losses(1.7623, 1.7697, acc=(0.0, 0.0, 0.0)))
    assert v == "inert"
    assert any(r.startswith("no gain:") and "(160 inputs): cross-entropy 1.76 vs 1.77 nats, loss_gain 0.42 %" in r
               and "within +-GAIN_MIN 2 %" in r for r in reasons)
    # hard routing that loses to its own mean mixture: 1.60 -> 1.12 nats with the constant (-30 %),
    # accuracy -15.6 points [-23.1, -8.1]
    v, reasons = verdict(functional=_losses(1.60, 1.12, acc=(-15.62, -23.12, -8.12)))
    assert v == "harmful"
    assert any(r.startswith("harmful:") and "cross-entropy 1.6 vs 1.12 nats, loss_gain -30 %" in r and "accuracy -15.62 points" in r for r in reasons)
    # a worse loss alone is not harm when the accuracy is better (a hard router against its better
    # calibrated mean mixture): the control's hard-EM, -2.7 % of the loss, +1.88 points [-1.25, 5]
    assert verdict(functional=_losses(1.60, 1.557, acc=(1.88, -1.25, 5.0)))[0] == "inert"
    assert verdict(functional=_losses(1.60, 1.557, acc=(-0.63, -3.1, 1.9)))[0] == "harmful"
    # the accuracy does not decide alone: 4 changed predictions all the right way make a bootstrap
    # interval [0.625, 5] clear 0 (the 1e-4 case's untrained routing), the loss moves 0.2 %
    assert verdict(functional=_losses(1.60, 1.6036, acc=(2.5, 0.625, 5.0)))[0] == "inert"
    # a lower loss with a worse accuracy: the measures disagree, no gain is shown (the study's
    # CoCoOpGated with gradient equalisation, seed 1: the loss 19 % lower, accuracy -5.0 [-10, 0])
    v, reasons = verdict(functional=_losses(1.60, 1.904, acc=(-5.0, -10.0, 0.0)))
    assert v == "inert" and any("the loss is lower by more than GAIN_MIN 2 % but the accuracy worse" in r
                                for r in reasons)
    # imbalanced outranks harmful: a gate too weakly trained to learn has not learned (the cause first)
    assert verdict(functional=_losses(1.60, 1.12), rho_task=1e-4)[0] == "imbalanced"
    # a gain of 25 % of the loss: healthy
    v, reasons = verdict(functional=_losses(1.6, 2.0))
    assert v == "healthy" and any(r.startswith("useful:") and "loss_gain 25 %" in r for r in reasons)
    # the threshold is a setting; not measured: a reason says so and the verdict stands on the rest
    assert verdict(functional=_losses(1.6, 2.0), thresholds={"GAIN_MIN": 0.3})[0] == "inert"
    v, reasons = verdict(functional=_changes(0.05, 0.05))
    assert v == "healthy" and "loss with the reference not measured; gain not tested" in reasons


def test_verdict_imbalanced_reads_the_task_loss_rho():
    assert verdict(rho_task=1e-4)[0] == "imbalanced"
    # rho over every loss term (an auxiliary loss's gradient included) is not read when rho_task is there
    v, reasons = verdict(rho_task=0.0, rho_median=0.5, aux_share=1.0)
    assert v == "imbalanced" and any("100 % of the gate's gradient norm comes from auxiliary losses" in r
                                     for r in reasons)
    # ... and is the fallback when it is not
    v, reasons = verdict(rho_task=None, rho_median=3.2e-4)
    assert v == "imbalanced" and "not trainable: rho median (all loss terms) 3.2e-04 < RHO_MIN 0.01" in reasons


def test_verdict_no_task_grad_skips_rho():
    v, reasons = verdict(rho_task=0.0, no_task_grad_params=["keys"])
    assert v == "healthy"
    assert any("no task-loss gradient by design" in r and "rho not used" in r for r in reasons)


def test_verdict_degraded_and_collapsed_split_by_function():
    assert verdict(signal_std=0.001)[0] == "degraded"  # functional but not varied
    assert verdict(signal_std=0.001, kl_effect_low=0.0)[0] == "collapsed"
    # simplex with one effective option
    v, reasons = verdict(kind="simplex", effective_options=1.02)
    assert v == "degraded" and any("EFF_MIN 1.1" in r for r in reasons)
    assert verdict(kind="mask", effective_options=1.0)[0] == "healthy"  # not a mask gate's test


def test_verdict_saturation_is_degradation_only_when_the_choice_does_not_differ():
    v, reasons = verdict(saturation=1.0, choice_top_share=0.5)  # a hard router
    assert v == "healthy" and any("a hard router, not degradation" in r for r in reasons)
    v, reasons = verdict(saturation=1.0, choice_top_share=0.95)  # a fixed switch
    assert v == "degraded" and any("a fixed switch" in r for r in reasons)


def test_verdict_noise_is_judged_on_the_lower_bound():
    # estimate 0.05 above STD_MIN but its lower bound 0: call-to-call noise, not input dependence
    v, reasons = verdict(signal_std=0.05, signal_std_low=0.0, repeat_std=0.3, eval_input_std=0.3,
                         kl_reference=0.01, kl_repeat=0.02, kl_effect=0.0, kl_effect_low=-0.004)
    assert v == "collapsed"
    assert any("differently from call to call" in r for r in reasons)
    assert any("less half the call-to-call KL 0.02" in r for r in reasons)


def test_verdict_per_task_gates_ask_whether_they_learned():
    per_task = dict(input_dependent=False, signal_std=None, saturation=None, choice_top_share=None)
    v, reasons = verdict(**per_task, moved=0.0, kl_reference=0.0, kl_effect=0.0, kl_effect_low=0.0, kl_all_on=0.02)
    assert v == "collapsed"
    assert any("per-task gate" in r for r in reasons)
    assert "replacing it by all-on (the ungated model) changes the predictions by KL 0.02 nats (>= KL_MIN)" in reasons
    assert verdict(**per_task, moved=0.2)[0] == "healthy"
    assert verdict(**per_task, moved=0.2, kl_effect_low=0.0)[0] == "inert"
    v, reasons = verdict(**per_task, moved=None)
    assert v == "healthy" and any("initial values not recorded" in r for r in reasons)


def test_verdict_the_noise_probe_decides_only_without_a_counterfactual():
    none = dict(kl_reference=None, kl_effect=None, kl_effect_low=None)
    assert verdict(**none, sensitivity_max=0.001)[0] == "inert"  # the study's inert line 0.01
    assert verdict(**none, sensitivity_max=0.5)[0] == "healthy"
    v, reasons = verdict(**none)
    assert v == "healthy" and "no counterfactual measured; function not tested" in reasons
    # a saturated router ignores small noise on its logits: the counterfactual overrules the probe
    v, reasons = verdict(sensitivity_max=0.001)
    assert v == "healthy" and any("noise test disagrees" in r for r in reasons)


def test_verdict_evidence_schedules_gap_and_accuracy():
    v, reasons = verdict(schedule_gain=0.5, schedule_best="full_on", magnitude_gap=2.6, reference="constant",
                         functional={"test": {"constant": dict(n=160, acc_delta=1.25, acc_delta_ci=[-0.6, 3.1],
                                                               loss_base=0.8, loss_other=0.9, changed_share=0.05,
                                                               mean_abs_logit_delta=0.2),
                                              "shuffled_cond": dict(kl=0.04, acc_delta=2.5)}})
    assert v == "healthy"  # evidence, not a rule
    assert any(r.startswith("no real adaptation (the study's rule)") and "full_on" in r for r in reasons)
    assert any(r.startswith("log10 gradient gap (per-step median, every non-gate value against this gate) 2.6 > "
                            "GAP_SEVERE 2: severe gradient imbalance by the study's rule; disagrees with rho of the "
                            "task loss 0.2 (>= RHO_MIN 0.01)") for r in reasons)
    assert any("accuracy +1.25 points [-0.6, 3.1]" in r and "cross-entropy 0.8 vs 0.9" in r for r in reasons)
    assert ("fed the conditioning of other images of the batch, the model's predictions change by KL 0.04 nats, "
            "accuracy -2.50 points") in reasons


def test_verdict_thresholds_partial_override_and_unmeasured():
    assert verdict(thresholds={"KL_MIN": 0.1, "UNRELATED": 1})[0] == "inert"
    v, reasons = verdict(rho_task=None, signal_std=None, saturation=None, kl_reference=None, kl_effect=None,
                         kl_effect_low=None, choice_top_share=None)
    assert v == "healthy" and v in VERDICTS
    assert any("rho not measured" in r for r in reasons)
    with pytest.raises(ValueError, match="kind"):
        verdict(kind="soft")


def test_routing_reason_tells_missing_signal_from_ignored_signal():
    chance = {"accuracy": 52.0, "chance": 50.0, "margin": 2.0}
    readable = {"accuracy": 100.0, "chance": 50.0, "margin": 50.0}
    null_mi = {"plugin": 0.01, "null_mean": 0.01, "excess": 0.0, "p_value": 0.6}
    routed_mi = {"plugin": 0.69, "null_mean": 0.002, "excess": 0.688, "p_value": 0.005}
    assert routing_reason("domain", chance, None, null_mi).startswith("the domain signal is not there")
    assert routing_reason("domain", readable, chance, null_mi).startswith(
        "the domain signal is there but the gate ignores it")
    assert routing_reason("domain", readable, None, routed_mi).startswith("the gate follows the domain")
    assert routing_reason("domain", readable, readable, null_mi).startswith(
        "the gate's output carries some of the domain but its choice does not follow it")
    assert routing_reason("domain", None, None, None) is None


def test_rms_alone_hand_computed_and_equal_to_grad_stats():
    from diagnostics.metrics import grad_stats, rms
    # [3, 4] and [0, 0, 12]: sum of squares 9 + 16 + 144 = 169, n = 5 -> sqrt(169 / 5)
    grads = [torch.tensor([3.0, 4.0]), None, torch.tensor([0.0, 0.0, 12.0])]
    assert rms(grads) == pytest.approx((169 / 5) ** 0.5, rel=1e-12)
    assert rms(grads) == pytest.approx(grad_stats(grads)["rms"], rel=1e-12)
    assert rms([None]) is None and rms([torch.tensor([float("nan")])]) is None


def test_embedding_alignment_and_separation_hand_computed():
    # Two unit images, two classes. x0 = e0 (label 0), x1 = (0.6, 0.8) (label 1);
    # t0 = e0, t1 = e1. cos: x0 -> (1, 0); x1 -> (0.6, 0.8).
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = M.embedding_alignment(image, text, torch.tensor([0, 1]))
    assert out["alignment"] == pytest.approx((1.0 + 0.8) / 2)
    assert out["separation"] == pytest.approx(((1.0 - 0.0) + (0.8 - 0.6)) / 2)
    # Instance-conditioned text (N, C, D) gives the same when every image sees the same classes.
    per_image = text.unsqueeze(0).expand(2, -1, -1)
    assert M.embedding_alignment(image, per_image, torch.tensor([0, 1])) == out
    assert M.embedding_alignment(image[:0], text, torch.tensor([], dtype=torch.long))["alignment"] is None


def test_silhouette_hand_computed():
    # Class 0: e0, e0; class 1: e1. Cosine distances: d(e0, e0) = 0, d(e0, e1) = 1.
    # Points of class 0: a = 0, b = 1 -> s = 1; the lone class-1 point: s = 0. Mean 2/3.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert M.silhouette(x, torch.tensor([0, 0, 1])) == pytest.approx(2 / 3)
    assert M.silhouette(x, torch.tensor([0, 0, 0])) is None


def test_text_drift_hand_computed():
    before = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    after = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # second class turned by 45 degrees
    assert M.text_drift(before, after) == pytest.approx(1 - (1 + 2 ** -0.5) / 2)
    assert M.text_drift(before, before) == pytest.approx(0.0, abs=1e-12)
    assert M.text_drift(None, after) is None


# --------------------------------------------------------------------------- functional effect


def test_per_example_change_and_summary_hand_computed():
    # row 0: p_base = (1/2, 1/2), p_other = softmax(0, ln 3) = (1/4, 3/4):
    #   KL = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3); |delta logits| mean (0 + ln 3) / 2; argmax 0 -> 1;
    #   loss -ln 1/2 = ln 2 vs -ln 1/4 = ln 4; correct (label 0) then wrong.
    # row 1: identical logits: KL 0, no change, both correct.
    base, other = t([[0.0, 0.0], [2.0, 0.0]]), t([[0.0, math.log(3.0)], [2.0, 0.0]])
    e = M.per_example_change(base, other, [0, 0])
    assert e["kl"].tolist() == pytest.approx([0.5 * math.log(4 / 3), 0.0], abs=1e-7)
    assert e["abs_logit_delta"].tolist() == pytest.approx([math.log(3.0) / 2, 0.0], abs=1e-7)
    assert e["changed"].tolist() == [1.0, 0.0] and e["correct_other"].tolist() == [0.0, 1.0]
    s = M.summarise_change(M.concat_examples([e]), resamples=1000)
    assert s["n"] == 2 and s["kl"] == pytest.approx(0.25 * math.log(4 / 3), abs=1e-7)
    assert s["changed_share"] == 0.5 and s["loss_change"] == pytest.approx(LN2 / 2, abs=1e-6)
    assert (s["acc_base"], s["acc_other"], s["acc_delta"]) == (100.0, 50.0, 50.0)
    # resampling the two per-example deltas (100, 0): means 0, 50 or 100; 95 % interval [0, 100]
    assert s["acc_delta_ci"] == [0.0, 100.0]
    assert_json_plain(s)
    assert M.summarise_change(None)["kl"] is None
    with pytest.raises(ValueError, match="same batch"):
        M.per_example_change(base, t([[0.0, 1.0]]), [0, 0])


def test_bootstrap_mean_ci():
    assert M.bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    low, high = M.bootstrap_mean_ci(torch.arange(100.0), resamples=2000)
    assert low < 49.5 < high and high - low < 15  # about mean +- 2 * 29 / sqrt(100)
    assert M.bootstrap_mean_ci([]) == (None, None)


def test_input_dependence_removes_call_to_call_noise():
    # one option, outputs 0 and 1: variance 1/4, std 1/2; deterministic: all of it is signal
    first = t([[0.0], [1.0]])
    r = M.input_dependence(first)
    assert r == {"input_std": 0.5, "repeat_std": 0.0, "signal_std": 0.5, "signal_std_low": None}
    # a second call answering the opposite: repeat variance mean((1)^2, (1)^2) / 2 = 1/2 > 1/4: no signal
    r = M.input_dependence(first, t([[1.0], [0.0]]))
    assert r["repeat_std"] == pytest.approx(math.sqrt(0.5)) and r["signal_std"] == 0.0 and r["signal_std_low"] == 0.0
    # fresh uniform noise on 500 inputs: std ~ 0.29 across inputs, about as much between calls; the
    # lower end of a 95 % interval reads above STD_MIN for about 1 noise gate in 40 (one-sided 2.5 %)
    g = torch.Generator().manual_seed(0)
    runs = [M.input_dependence(torch.rand(500, 3, generator=g), torch.rand(500, 3, generator=g)) for _ in range(40)]
    assert all(r["input_std"] > 0.25 and r["repeat_std"] > 0.25 for r in runs)
    assert sum(r["signal_std_low"] >= 0.01 for r in runs) <= 4
    # a deterministic part of std 0.2 under noise of std 0.1 is found
    x = torch.rand(500, 3, generator=g) * 0.2 * 12 ** 0.5
    r = M.input_dependence(x + 0.1 * torch.randn(500, 3, generator=g), x + 0.1 * torch.randn(500, 3, generator=g))
    assert r["signal_std"] == pytest.approx(0.2, abs=0.02) and r["signal_std_low"] > 0.15
    assert M.input_dependence(torch.zeros(0, 2))["input_std"] is None


def test_functional_effect_subtracts_half_the_repeat_kl():
    assert M.functional_effect([0.2, 0.4])["effect"] == pytest.approx(0.3)
    r = M.functional_effect([0.2, 0.4], [0.2, 0.2])  # per input 0.2 - 0.1, 0.4 - 0.1
    assert r["effect"] == pytest.approx(0.2) and 0.1 - 1e-12 <= r["effect_low"] <= r["effect_high"] <= 0.3 + 1e-12
    assert M.functional_effect([])["effect"] is None


def test_linear_probe_held_out_accuracy_and_chance():
    # separable at 0 in one dimension; the training set's commonest label (a tie: the first, 0) is a
    # third of the test labels
    r = M.linear_probe(t([[-2.0], [-1.0], [1.0], [2.0]]), [0, 0, 1, 1], t([[-3.0], [3.0], [0.5]]), [0, 1, 1])
    assert r["accuracy"] == 100.0 and r["train_accuracy"] == 100.0
    assert r["chance"] == pytest.approx(100 / 3) and r["margin"] == pytest.approx(200 / 3)
    assert (r["classes"], r["n_train"], r["n_test"]) == (2, 4, 3)
    # a test label never seen in training counts as an error
    assert M.linear_probe(t([[-1.0], [1.0]]), [0, 1], t([[-1.0], [1.0]]), [0, 2])["accuracy"] == 50.0
    # features that carry nothing: the probe cannot beat chance on held-out data by much
    g = torch.Generator().manual_seed(0)
    noise = M.linear_probe(torch.randn(200, 5, generator=g), torch.randint(2, (200,), generator=g),
                           torch.randn(200, 5, generator=g), torch.randint(2, (200,), generator=g))
    assert noise["margin"] < 10.0
    assert M.linear_probe(t([[0.0], [1.0]]), [3, 3], t([[0.0]]), [3]) is None  # one label: nothing to tell apart
    with pytest.raises(ValueError, match="features"):
        M.linear_probe(t([[0.0], [1.0]]), [0], t([[0.0]]), [0])


def test_fp16_underflow_read_from_grad_stats_equals_its_own_pass():
    g = torch.tensor([0.0, 5e-9, -3e-8, 2e-7, 1.0, 0.0, 1e-9], dtype=torch.float32)
    for grads in ([g], [g[:3], None, g[3:]], [torch.zeros(4)], [torch.tensor([0.5, -0.25])], [None]):
        assert M.fp16_underflow_of_stats(M.grad_stats(grads)) == M.fp16_underflow(grads)
