"""The per-gate verdict: healthy, imbalanced, degraded or collapsed, with the reasons in words.

A pure function of the run's summary figures (no trainer, no I/O), so the verdict of any finished
run can be recomputed from its summary.json with other thresholds.
"""
from gates.contract import GATE_KINDS

from .metrics import finite_or_none as _measured  # None when not measured (None, NaN or inf)

VERDICTS = ("healthy", "imbalanced", "degraded", "collapsed")

DEFAULT_THRESHOLDS = dict(
    RHO_MIN=0.01,     # imbalanced below: median rho = RMS(gate grad) / RMS(prompt grad) over the window
    STD_MIN=0.01,     # degraded below: input_std, mean per-option std of an input-conditioned gate's output
    SAT_MAX=0.9,      # degraded above: share of gate outputs within EPS of 0 or 1
    EFF_MIN=1.1,      # degraded below (simplex gates): effective number of options exp(usage entropy)
    DELTA_MIN=0.5,    # collapsed (if degraded): constant-gate counterfactual moves accuracy < this (points)
    WINDOW=0.5,       # share of training, counted from the end, over which rho's median is taken
    GAP_SEVERE=2.0,   # the study's severe log10 gap: log10(||grad prompt|| / ||grad gate||) above this
)

# One line per threshold, for the config's help text and the README.
THRESHOLD_HELP = {
    "RHO_MIN": "imbalanced when the median of rho = RMS(gate grad) / RMS(prompt grad) is below this",
    "STD_MIN": "degraded when an input-conditioned gate's mean per-option std across inputs is below this",
    "SAT_MAX": "degraded when the share of gate outputs within EPS of 0 or 1 is above this",
    "EFF_MIN": "degraded when a simplex gate's effective number of options exp(H(mean usage)) is below this",
    "DELTA_MIN": "collapsed (when degraded) if replacing the gate by its training mean moves accuracy "
                 "by fewer points than this",
    "WINDOW": "share of training steps, counted from the end, over which the median rho is taken",
    "GAP_SEVERE": "the study's severe gradient magnitude gap log10(||grad prompt||_2 / ||grad gate||_2)",
}


def _fmt(x):
    """Short, exact-enough number for a reason string: 3.2e-04 for small or huge values, 0.123 otherwise."""
    if x == 0 or 1e-2 <= abs(x) < 1e4:
        return f"{x:.3g}"
    return f"{x:.1e}"


def _merged(thresholds):
    """The defaults overridden by `thresholds` (a dict or the cfg.DIAGNOSTICS node; other keys ignored)."""
    merged = dict(DEFAULT_THRESHOLDS)
    if thresholds:
        merged.update({k: float(thresholds[k]) for k in DEFAULT_THRESHOLDS if k in thresholds})
    return merged


def gate_verdict(rho_median, input_std, saturation, effective_options, delta_acc, input_dependent, thresholds,
                 kind="mask", no_task_grad=False):
    """Classify one gate of one run; returns (verdict, reasons).

    With t = thresholds (missing keys take DEFAULT_THRESHOLDS):
      imbalanced := rho_median < RHO_MIN                          (skipped when no_task_grad)
      degraded   := (input_dependent and input_std < STD_MIN)
                    or saturation > SAT_MAX
                    or (kind == "simplex" and effective_options < EFF_MIN)
      collapsed  := degraded and |delta_acc| < DELTA_MIN
    verdict = the first that holds of collapsed, degraded, imbalanced; else healthy. A figure that is
    None (or not finite) was not measured and its test is skipped, with a reason saying so.

    delta_acc is acc(learned gate) - acc(gate replaced by its training-set mean), in accuracy points
    (percent), like DELTA_MIN. A per-task gate (input_dependent False) has input_std 0 by
    construction, so the input-sensitivity test does not apply to it. no_task_grad: the gate's
    parameters receive no task-loss gradient by design (trained by a surrogate loss), so rho says
    nothing about them. `reasons` lists every finding, also those outranked by the verdict.
    """
    if kind not in GATE_KINDS:
        raise ValueError(f"gate kind must be one of {GATE_KINDS}, found {kind!r}; pass the gate's declared kind")
    t = _merged(thresholds)
    rho, std, sat = _measured(rho_median), _measured(input_std), _measured(saturation)
    eff, delta = _measured(effective_options), _measured(delta_acc)
    reasons = []

    # Gradient magnitude imbalance.
    imbalanced = False
    if no_task_grad:
        reasons.append("gate parameters receive no task-loss gradient by design (trained by a surrogate loss); "
                       "rho not used")
    elif rho is None:
        reasons.append("rho not measured (no gate or prompt gradient recorded); imbalance not tested")
    elif rho < t["RHO_MIN"]:
        imbalanced = True
        reasons.append(f"rho median {_fmt(rho)} < RHO_MIN {_fmt(t['RHO_MIN'])}")
    else:
        reasons.append(f"rho median {_fmt(rho)} >= RHO_MIN {_fmt(t['RHO_MIN'])}")

    # Gate degradation.
    degraded = False
    if not input_dependent:
        reasons.append("per-task gate: input sensitivity not applicable")
    elif std is None:
        reasons.append("input std not measured; input sensitivity not tested")
    elif std < t["STD_MIN"]:
        degraded = True
        reasons.append(f"input std {_fmt(std)} < STD_MIN {_fmt(t['STD_MIN'])}: output ignores the input")
    else:
        reasons.append(f"input std {_fmt(std)} >= STD_MIN {_fmt(t['STD_MIN'])}")

    if sat is None:
        reasons.append("saturation not measured; not tested")
    elif sat > t["SAT_MAX"]:
        degraded = True
        reasons.append(f"saturation {_fmt(sat)} > SAT_MAX {_fmt(t['SAT_MAX'])}")
    else:
        reasons.append(f"saturation {_fmt(sat)} <= SAT_MAX {_fmt(t['SAT_MAX'])}")

    if kind == "simplex":
        if eff is None:
            reasons.append("effective number of options not measured; not tested")
        elif eff < t["EFF_MIN"]:
            degraded = True
            reasons.append(f"effective options {_fmt(eff)} < EFF_MIN {_fmt(t['EFF_MIN'])}: one option takes all")
        else:
            reasons.append(f"effective options {_fmt(eff)} >= EFF_MIN {_fmt(t['EFF_MIN'])}")

    # Counterfactual: does replacing the gate by a constant change anything?
    collapsed = False
    if delta is None:
        reasons.append("no constant-gate counterfactual measured"
                       + ("; cannot tell collapsed from degraded" if degraded else ""))
    elif abs(delta) < t["DELTA_MIN"]:
        collapsed = degraded
        reasons.append(f"|delta acc| {_fmt(abs(delta))} < DELTA_MIN {_fmt(t['DELTA_MIN'])} points: "
                       "a constant gate does as well")
    else:
        reasons.append(f"|delta acc| {_fmt(abs(delta))} >= DELTA_MIN {_fmt(t['DELTA_MIN'])} points: "
                       "replacing the gate by a constant changes accuracy")

    if collapsed:
        verdict = "collapsed"
    elif degraded:
        verdict = "degraded"
    elif imbalanced:
        verdict = "imbalanced"
    else:
        verdict = "healthy"
    return verdict, reasons
