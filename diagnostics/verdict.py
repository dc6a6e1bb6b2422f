"""The per-gate verdict: does this gate do anything? A pure function of one gate's summary figures.

No trainer, no I/O: `gatescope diagnose RUN_DIR --set KEY VALUE` recomputes the verdict of any
finished run from its summary.json with other thresholds.

Four questions (t = the thresholds, DEFAULT_THRESHOLDS for those not given):

  trainable   rho_task >= RHO_MIN. rho_task = RMS(d ce / d gate params) / RMS(d ce / d prompt params),
              the task loss alone (a gate's own auxiliary loss, sparsity and remedies' losses are left
              out), median over DIAGNOSTICS.GRAD_BATCHES training batches at the last test evaluation;
              rho_median (every loss term, median over the last WINDOW of training) when rho_task was
              not measured. Always true for parameters trained by a surrogate loss by design
              (no_task_grad_params).
  varied      input-dependent gate: signal_std >= STD_MIN, where signal_std is the gate's std across
              the evaluation set's inputs with its call-to-call noise taken out (for a gate with noise at
              evaluation, signal_std_low, the lower end of its 95 % bootstrap interval; input_std, the
              training median, when not measured); and not a fixed switch (saturation > SAT_MAX and
              choice_top_share > SAT_MAX: saturated, and nearly every input gets the same on/off
              pattern or option; a hard router whose saturated values differ by input is varied);
              and, for a simplex gate, effective_options >= EFF_MIN.
              per-task gate (the same values for every input by design: sigmoid, scalar, constant,
              AdaptiveMaPLe's length and depth gates): moved >= MOVE_MIN, moved = max_k |value now -
              value at initialisation| (a gate without parameters never moves).
  functional  kl_effect_low >= KL_MIN: the lower end of the 95 % bootstrap interval (over inputs) of
              kl_effect = mean_n (kl_reference[n] - kl_repeat[n] / 2) (nats), where per input n:
              kl_reference[n] = KL(p with the learned gate || p with the gate replaced by its
              reference) on the evaluation set, the reference being the gate's training-set mean (a
              constant gate: the input dependence removed) or, for a per-task gate, its initial
              values (what it learned removed); kl_repeat[n] = the same KL between two calls of the
              learned gate (0 for a gate without noise at evaluation; with noise, half of it is what
              the noise alone adds to kl_reference). When no counterfactual was measured,
              the study's noise test decides: sensitivity_max >= SENSITIVITY_MIN. The interval makes
              the test mean the same on a small test set as on a large one.
              And decisions_changed >= FLIP_MIN: the share of inputs whose predicted class changes
              when the gate is replaced by its reference, pooled over the evaluation and training
              sets (n-weighted), less the share that changes between two calls of the learned gate
              (noise). A gate that moves the probabilities but no decision (a constant gate predicts
              the same classes) changes nothing a classifier is judged on: the study's criterion is
              a gain over fixed prompts, i.e. decisions. Not tested when not measured.
  useful      (a functional gate) gain = (loss_reference - loss_learned) / loss_learned on the
              evaluation set, the cross-entropy with the gate replaced by its reference against the
              learned model's: the share of the task loss the gate's input dependence (a per-task
              gate: what it learned) removes; beside it the accuracy change, learned minus
              reference, with its 95 % bootstrap interval [low, high]. The loss decides: useful when
              gain >= GAIN_MIN, harmful when gain <= -GAIN_MIN, no gain over its own constant in
              between (the study's "no gain over fixed prompts", read on the loss, which is not
              quantised by the test-set size as accuracy is). The accuracy only vetoes: not harmful
              when delta > 0 (a hard router is judged against its mean mixture, which is better
              calibrated: its loss can be worse while its decisions are better), not useful when
              delta < 0. Not tested when the loss was not measured.

  order  verdict     rule (the first that holds)
  1      collapsed   not varied and not functional: a constant in all but name
  2      degraded    not varied (but functional): the output does not follow the input / did not learn
  3      inert       not functional: its statistics look alive, removing it changes no decision
  4      imbalanced  not trainable: it changes the model, but its task gradient is too small to train
                     it (the cause comes before the effect: such a gate has not learned, so whether
                     its untrained output helps is noted in the reasons, not the verdict)
  5      harmful     harmful (above): it changes the model for the worse; its reference (training
                     mean, or initial values) does better
  6      inert       neither useful nor harmful: it changes decisions but not the task, no gain
                     over its own constant
  7      healthy     trainable, varied, functional and useful (or usefulness not measured)

`inert` is the study's word: its released diagnostics call a gate inert when noise on its logits
barely moves the class logits; here the same finding is measured by removing the gate.

A figure that is None (not measured, or not finite) skips its test, and a reason says so. `reasons`
lists every finding with its numbers and threshold, also those outranked by the verdict, and the
evidence that does not decide: the study's severe-gap rule (log10 gap > GAP_SEVERE) beside rho,
saying when the two disagree and why (gap_reason: a group's L2 norm grows with the square root of
its number of values, so gap = -log10(rho') + 0.5 log10(N_prompt / N_gate)), for gatescope's
per-step gap and, with DIAGNOSTICS.DEFINITIONS study, the study's own A1 gap; the study's probes (noise on the gate logits, fixed schedules and a
random gate of the same effective length: within SCHEDULE_GAIN_MIN points of the best means no real
adaptation), the accuracy change with its bootstrap interval, and whether the gate's conditioning
carries the label / domain (a linear probe, PROBE_MARGIN) and whether the gate's choice follows it
(MI against its permutation null, MI_P_MAX).
"""
import math

from gates.contract import GATE_KINDS

from .metrics import finite_or_none as _measured  # None when not measured (None, NaN or inf)

# From the best to the worst answer (summaries list verdict counts in this order).
VERDICTS = ("healthy", "imbalanced", "harmful", "inert", "degraded", "collapsed")

DEFAULT_THRESHOLDS = dict(
    RHO_MIN=0.01,           # imbalanced below: rho of the task loss, RMS(gate grad) / RMS(prompt grad)
    STD_MIN=0.01,           # not varied below: the gate's input std with its call-to-call noise removed
    SAT_MAX=0.9,            # a fixed switch above: share of saturated values AND share of the commonest choice
    EFF_MIN=1.1,            # not varied below (simplex): effective number of options exp(H(mean usage))
    MOVE_MIN=0.01,          # not varied below (per-task gates): max |value now - value at init|
    KL_MIN=1e-3,            # not functional below: reproducible KL(learned || reference) in nats
    FLIP_MIN=0.01,          # not functional below: share of predicted classes the reference changes
    GAIN_MIN=0.02,          # no gain within +-this: share of the evaluation cross-entropy the gate removes
    SENSITIVITY_MIN=0.01,   # the study's inert line: max mean |delta logits| under noise on the gate logits
    SCHEDULE_GAIN_MIN=1.0,  # the study's 1-2 %: learned minus best fixed / random schedule, points
    PROBE_MARGIN=10.0,      # the conditioning carries a label when a linear probe beats chance by this (points)
    MI_P_MAX=0.05,          # the gate's choice follows a label when MI's permutation p-value is below this
    WINDOW=0.5,             # share of training, counted from the end, over which the step medians are taken
    GAP_SEVERE=2.0,         # the study's severe log10 gap: log10(||grad prompt|| / ||grad gate||) above this
)

# One line per threshold, for the config's help text and the README.
THRESHOLD_HELP = {
    "RHO_MIN": "imbalanced when rho of the task loss, RMS(gate grad) / RMS(prompt grad), is below this",
    "STD_MIN": "not varied when an input-dependent gate's std across inputs, call-to-call noise removed, is below this",
    "SAT_MAX": "a fixed switch (not varied) when the share of gate values within EPS of 0 or 1 and the share of "
               "inputs given the commonest option or on/off pattern are both above this",
    "EFF_MIN": "not varied when a simplex gate's effective number of options exp(H(mean usage)) is below this",
    "MOVE_MIN": "not varied when a per-task gate's values moved less than this from their initialisation",
    "KL_MIN": "not functional when replacing the gate by its reference (training mean; per-task: initial values) "
              "changes the predictions by a reproducible mean KL below this (nats)",
    "FLIP_MIN": "not functional when replacing the gate by its reference changes the predicted class of fewer "
                "than this share of the inputs (evaluation and training sets pooled, call-to-call changes "
                "removed): it moves probabilities but no decision",
    "GAIN_MIN": "a functional gate is useful when replacing it by its reference raises the evaluation set's "
                "cross-entropy by at least this share of it with no accuracy loss, harmful "
                "when it lowers it by this share with no accuracy gain, inert otherwise: no gain over its own "
                "constant",
    "SENSITIVITY_MIN": "the study's noise test, used when no counterfactual was measured: not functional when "
                       "noise on the gate logits moves the class logits by a mean |delta| below this",
    "SCHEDULE_GAIN_MIN": "evidence: no real adaptation when the learned gate beats the best fixed schedule or "
                         "random gate by fewer points than this (the study's 1-2 %)",
    "PROBE_MARGIN": "evidence: the gate's conditioning carries the label / domain when a linear probe's held-out "
                    "accuracy beats always answering the commonest value by this many points",
    "MI_P_MAX": "evidence: the gate's choice follows the label / domain when MI's permutation p-value is below this",
    "WINDOW": "share of training steps, counted from the end, over which the step medians are taken",
    "GAP_SEVERE": "evidence: the study's severe gradient magnitude gap log10(||grad prompt||_2 / ||grad gate||_2), "
                  "reported beside rho with the part the group sizes make, 0.5 log10(N_prompt / N_gate)",
}


def _fmt(x):
    """Short, exact-enough number for a reason string: 3.2e-04 for small or huge values, 0.123 otherwise."""
    if x == 0 or 1e-2 <= abs(x) < 1e4:
        return f"{x:.3g}"
    return f"{x:.1e}"


def merged_thresholds(thresholds=None):
    """The defaults overridden by `thresholds` (a dict or the cfg.DIAGNOSTICS node; other keys ignored)."""
    merged = dict(DEFAULT_THRESHOLDS)
    if thresholds:
        merged.update({k: float(thresholds[k]) for k in DEFAULT_THRESHOLDS if k in thresholds})
    return merged


def _get(figures, *path):
    """figures[path[0]][path[1]]..., or None where a level is missing."""
    x = figures
    for key in path:
        if not isinstance(x, dict):
            return None
        x = x.get(key)
    return x


def _rho_used(f):
    """(rho, what it is): rho_task, else rho_median, else (None, ...)."""
    rho, source = _measured(f.get("rho_task")), "rho of the task loss"
    if rho is None:
        rho, source = _measured(f.get("rho_median")), "rho median (all loss terms)"
    return rho, source


def _trainable(f, t, reasons):
    if f.get("no_task_grad_params"):
        reasons.append("gate parameters receive no task-loss gradient by design (trained by a surrogate loss); "
                       "rho not used")
        return True
    rho, source = _rho_used(f)
    aux = _measured(f.get("aux_share"))
    if aux is not None and aux > 0:
        reasons.append(f"{_fmt(100 * aux)} % of the gate's gradient norm comes from auxiliary losses; "
                       "rho is read on the task loss alone")
    if rho is None:
        reasons.append("rho not measured (no gate or prompt gradient recorded); imbalance not tested")
        return True
    if rho < t["RHO_MIN"]:
        reasons.append(f"not trainable: {source} {_fmt(rho)} < RHO_MIN {_fmt(t['RHO_MIN'])}")
        return False
    reasons.append(f"trainable: {source} {_fmt(rho)} >= RHO_MIN {_fmt(t['RHO_MIN'])}")
    return True


def gap_reason(label, gap, n_prompt, n_gate, rho, rho_source, thresholds=None):
    """One sentence: the study's severe-gap rule on `gap` (log10(||grad prompt||_2 / ||grad gate||_2),
    severe above GAP_SEVERE) beside `rho` (the per-element ratio the verdict reads, RHO_MIN), and,
    when the two disagree, why: a group's L2 norm grows with the square root of its number of
    values, so with n_prompt and n_gate values
        gap = log10(1 / rho') + 0.5 log10(n_prompt / n_gate)      (rho' = RMS ratio of the same gradients)
    and the second term (the group sizes alone) can make the gap severe while each gate entry's
    gradient is a fair share of a prompt entry's, or keep it small while it is not (a large gate
    group). None when gap is not measured."""
    t = merged_thresholds(thresholds)
    gap = _measured(gap)
    if gap is None:
        return None
    severe = gap > t["GAP_SEVERE"]
    text = (f"{label} {_fmt(gap)} {'>' if severe else '<='} GAP_SEVERE {_fmt(t['GAP_SEVERE'])}: "
            f"{'severe' if severe else 'no severe'} gradient imbalance by the study's rule")
    count = 0.5 * math.log10(n_prompt / n_gate) if n_prompt and n_gate else None
    sizes = (f"{int(n_prompt):,} prompt values against {int(n_gate):,} gate values" if count is not None
             else "group sizes not recorded")
    rho = _measured(rho)
    if rho is None:
        return f"{text} ({sizes}); rho not measured"
    imbalanced = rho < t["RHO_MIN"]
    beside = f"{rho_source} {_fmt(rho)} ({'<' if imbalanced else '>='} RHO_MIN {_fmt(t['RHO_MIN'])})"
    if severe == imbalanced:
        return f"{text}; agrees with {beside}, per element; {sizes}"
    if count is None:
        return (f"{text}; disagrees with {beside}: the gap compares group L2 norms, which grow with the square root "
                f"of the number of values, rho compares values ({sizes})")
    split = (f"{sizes} make 0.5 log10({int(n_prompt):,}/{int(n_gate):,}) = {_fmt(count)} of the gap, "
             f"{_fmt(gap - count)} is per element")
    if severe:
        return (f"{text}; disagrees with {beside}: the parameter-count effect. A group's L2 norm grows with the "
                f"square root of its number of values: {split}, so each gate entry's gradient is a fair share of a "
                "prompt entry's")
    return (f"{text}; disagrees with {beside}: the parameter-count effect the other way. A group's L2 norm grows "
            f"with the square root of its number of values: {split}, so the gate group's norm is large for its many "
            "values while each entry's gradient is small")


def _gap_beside_rho(f, t, reasons):
    """The study's severe-gap rule beside rho: gatescope's per-step gap (the prompt group against
    this gate) and, with DIAGNOSTICS.DEFINITIONS study, the study's own A1 gap."""
    if f.get("no_task_grad_params"):
        return
    rho, source = _rho_used(f)
    for label, gap, n_prompt, n_gate in (
            ("log10 gradient gap (per-step median, every non-gate value against this gate)", f.get("magnitude_gap"),
             f.get("gap_prompt_numel"), f.get("gap_gate_numel")),
            ("the study's A1 gap (one batch; its ctx / compound_prompts group against every gate)",
             f.get("study_magnitude_gap"), f.get("study_gap_prompt_numel"), f.get("study_gap_gate_numel"))):
        line = gap_reason(label, gap, n_prompt, n_gate, rho, source, t)
        if line:
            reasons.append(line)


def _varied_input_dependent(f, t, reasons):
    varied = True
    std, source = _measured(f.get("signal_std")), "input std at evaluation, call-to-call noise removed"
    low = _measured(f.get("signal_std_low"))
    if low is not None:  # a gate with noise at evaluation: judged on the interval's lower end
        std, source = low, (f"input std at evaluation, call-to-call noise removed (estimate {_fmt(std or 0.0)}, "
                            "lower 95 % bound)")
    if std is None:
        std, source = _measured(f.get("input_std")), "input std (training median)"
    repeat = _measured(f.get("repeat_std"))
    if repeat is not None and repeat > 0:
        reasons.append(f"the gate answers the same input differently from call to call (repeat std {_fmt(repeat)}, "
                       f"input std {_fmt(_measured(f.get('eval_input_std')) or 0.0)}): that part is noise, not input "
                       "dependence")
    if std is None:
        reasons.append("input std not measured; input sensitivity not tested")
    elif std < t["STD_MIN"]:
        varied = False
        reasons.append(f"not varied: {source} {_fmt(std)} < STD_MIN {_fmt(t['STD_MIN'])}: the output does not "
                       "follow the input")
    else:
        reasons.append(f"varied: {source} {_fmt(std)} >= STD_MIN {_fmt(t['STD_MIN'])}")

    sat, top = _measured(f.get("saturation")), _measured(f.get("choice_top_share"))
    if sat is not None and sat > t["SAT_MAX"]:
        if top is not None and top > t["SAT_MAX"]:
            varied = False
            reasons.append(f"not varied: saturated ({_fmt(sat)} > SAT_MAX {_fmt(t['SAT_MAX'])}) and "
                           f"{_fmt(100 * top)} % of inputs get the same choice: a fixed switch")
        elif top is not None:
            reasons.append(f"saturated ({_fmt(sat)} > SAT_MAX {_fmt(t['SAT_MAX'])}) but the choice differs by input "
                           f"(commonest choice {_fmt(100 * top)} % of inputs): a hard router, not degradation")
        else:
            reasons.append(f"saturated ({_fmt(sat)} > SAT_MAX {_fmt(t['SAT_MAX'])}); choice shares not measured")
    elif sat is not None:
        reasons.append(f"saturation {_fmt(sat)} <= SAT_MAX {_fmt(t['SAT_MAX'])}")

    if f.get("kind") == "simplex":
        eff = _measured(f.get("effective_options"))
        if eff is None:
            reasons.append("effective number of options not measured; not tested")
        elif eff < t["EFF_MIN"]:
            varied = False
            reasons.append(f"not varied: effective options {_fmt(eff)} < EFF_MIN {_fmt(t['EFF_MIN'])}: "
                           "one option takes all")
        else:
            reasons.append(f"effective options {_fmt(eff)} >= EFF_MIN {_fmt(t['EFF_MIN'])}")
    return varied


def _varied_per_task(f, t, reasons):
    reasons.append("per-task gate (the same values for every input by design): varied means its learned values "
                   "moved from their initialisation, functional that replacing them by their initial values "
                   "changes the model")
    moved = _measured(f.get("moved"))
    if moved is None:
        reasons.append("initial values not recorded (an evaluation-only run); movement not tested")
        return True
    if moved < t["MOVE_MIN"]:
        reasons.append(f"not varied: values moved {_fmt(moved)} < MOVE_MIN {_fmt(t['MOVE_MIN'])} from their "
                       "initialisation: it is the fixed schedule it started as")
        return False
    reasons.append(f"varied: values moved {_fmt(moved)} >= MOVE_MIN {_fmt(t['MOVE_MIN'])} from their initialisation")
    return True


def _functional(f, t, reasons):
    reference = "its initial values" if not f.get("input_dependent", True) else "its training-set mean (a constant)"
    kl, repeat = _measured(f.get("kl_reference")), _measured(f.get("kl_repeat")) or 0.0
    sens = _measured(f.get("sensitivity_max"))
    if kl is None:
        if sens is None:
            reasons.append("no counterfactual measured; function not tested")
            return True
        if sens < t["SENSITIVITY_MIN"]:
            reasons.append(f"not functional (the study's noise test): noise on the gate logits moves the class "
                           f"logits by {_fmt(sens)} < SENSITIVITY_MIN {_fmt(t['SENSITIVITY_MIN'])}")
            return False
        reasons.append(f"functional (the study's noise test): noise on the gate logits moves the class logits by "
                       f"{_fmt(sens)} >= SENSITIVITY_MIN {_fmt(t['SENSITIVITY_MIN'])}")
        return True
    effect = _measured(f.get("kl_effect"))
    effect = kl - repeat / 2.0 if effect is None else effect
    low = _measured(f.get("kl_effect_low"))
    judged, how = (low, "lower 95 % bound") if low is not None else (effect, "")
    noise = f" less half the call-to-call KL {_fmt(repeat)}" if repeat > 0 else ""
    detail = (f"changes the predictions by KL {_fmt(kl)}{noise}: reproducible effect {_fmt(effect)}"
              + (f", {how} {_fmt(judged)}" if how else ""))
    if judged < t["KL_MIN"]:
        reasons.append(f"not functional: replacing the gate by {reference} {detail} < KL_MIN {_fmt(t['KL_MIN'])} nats")
        functional = False
    else:
        reasons.append(f"functional: replacing the gate by {reference} {detail} >= KL_MIN {_fmt(t['KL_MIN'])} nats")
        functional = True
        share, n = decisions_changed(f)
        if share is None:
            reasons.append("share of changed predictions not measured; decisions not tested")
        elif share < t["FLIP_MIN"]:
            functional = False
            reasons[-1] = "probabilities move: " + reasons[-1][len("functional: "):]
            reasons.append(f"not functional: replacing the gate by {reference} changes the predicted class of "
                           f"{_fmt(100 * share)} % of {n} inputs (evaluation and training sets) < FLIP_MIN "
                           f"{_fmt(100 * t['FLIP_MIN'])} %: it moves probabilities but no decision")
        else:
            reasons.append(f"functional: replacing the gate by {reference} changes the predicted class of "
                           f"{_fmt(100 * share)} % of {n} inputs >= FLIP_MIN {_fmt(100 * t['FLIP_MIN'])} %")
    if sens is not None:
        agree = (sens >= t["SENSITIVITY_MIN"]) == functional
        reasons.append(f"the study's noise test {'agrees' if agree else 'disagrees'}: noise on the gate logits moves "
                       f"the class logits by {_fmt(sens)} ({'>=' if sens >= t['SENSITIVITY_MIN'] else '<'} "
                       f"{_fmt(t['SENSITIVITY_MIN'])}){'' if agree else '; it probes the gate locally (a saturated router ignores small noise), the counterfactual decides'}")
    return functional


def loss_gain(figures):
    """(gain, n): (loss_reference - loss_learned) / loss_learned on the evaluation set, the share of
    the cross-entropy that replacing the gate by its reference (figures["reference"]: its training
    mean, or a per-task gate's initial values) adds back, and the number of inputs; (None, 0) when
    not measured or the learned loss is 0. Read from figures["functional"]["test"][reference]
    ["loss_base", "loss_change" (or "loss_other"), "n"], loss_change = loss_reference - loss_learned (nats)."""
    entry = _get(figures, "functional", "test", figures.get("reference") or "constant")
    if not isinstance(entry, dict):
        return None, 0
    base, change = _measured(entry.get("loss_base")), _measured(entry.get("loss_change"))
    if change is None and base is not None and _measured(entry.get("loss_other")) is not None:
        change = entry["loss_other"] - base
    if base is None or change is None or base <= 0:
        return None, 0
    return change / base, int(entry.get("n") or 0)


def _accuracy_change(f):
    """(delta, ci_low, ci_high) of the evaluation set's accuracy, learned gate minus its reference
    (points, 95 % bootstrap interval), each None when not measured."""
    entry = _get(f, "functional", "test", f.get("reference") or "constant")
    if not isinstance(entry, dict):
        return None, None, None
    ci = entry.get("acc_delta_ci") or [None, None]
    return _measured(entry.get("acc_delta")), _measured(ci[0]), _measured(ci[1])


def _useful(f, t, reasons):
    """+1 (useful), -1 (harmful), 0 (no gain, or the loss and the accuracy disagree), None (not
    measured). The loss decides: useful when gain >= GAIN_MIN, harmful when gain <= -GAIN_MIN. The
    accuracy can only veto, either way: no harm when the accuracy is better (delta > 0; a hard
    router is tested against its mean mixture, which is better calibrated, so its loss can be worse
    while its decisions are better), no use when it is worse (delta < 0: a lower loss bought with
    lost decisions is not a gain). It does not decide alone: when a few predictions change, a
    bootstrap interval over the test set clears 0 with as few as 4 changes in one direction (a sign
    test's p = 0.125)."""
    reference = "its initial values" if not f.get("input_dependent", True) else "its training-set mean"
    gain, n = loss_gain(f)
    acc, low, high = _accuracy_change(f)
    if gain is None:
        reasons.append("loss with the reference not measured; gain not tested")
        return None
    acc_text = (f"accuracy {acc:+.2f} points [{_fmt(low)}, {_fmt(high)}]" if acc is not None and low is not None
                and high is not None else "accuracy change not measured")
    entry = _get(f, "functional", "test", f.get("reference") or "constant")
    base = _measured(entry.get("loss_base"))
    line = (f"learned gate against {reference} on the evaluation set ({n} inputs): cross-entropy {_fmt(base)} vs "
            f"{_fmt(base * (1 + gain))} nats, loss_gain {_fmt(100 * gain)} % (the share of the learned model's loss "
            f"the reference adds); {acc_text}")
    if gain >= t["GAIN_MIN"]:
        if acc is not None and acc < 0:
            reasons.append(f"no gain: {line}: the loss is lower by more than GAIN_MIN {_fmt(100 * t['GAIN_MIN'])} % "
                           f"but the accuracy worse, so neither gain nor harm over {reference} is shown")
            return 0
        reasons.append(f"useful: {line}: the gain {_fmt(100 * gain)} % >= GAIN_MIN {_fmt(100 * t['GAIN_MIN'])} % "
                       "with no accuracy loss")
        return 1
    if gain <= -t["GAIN_MIN"]:
        if acc is not None and acc > 0:
            reasons.append(f"no gain: {line}: the loss is worse by more than GAIN_MIN {_fmt(100 * t['GAIN_MIN'])} % "
                           f"but the accuracy better, so neither gain nor harm over {reference} is shown")
            return 0
        reasons.append(f"harmful: {line}: the gain {_fmt(100 * gain)} % <= -GAIN_MIN {_fmt(100 * t['GAIN_MIN'])} % "
                       f"with no accuracy gain: the model does better with {reference}")
        return -1
    reasons.append(f"no gain: {line}: within +-GAIN_MIN {_fmt(100 * t['GAIN_MIN'])} %: it changes decisions, not "
                   f"the task, no better than {reference}")
    return 0


def decisions_changed(figures):
    """(share, n): the share of inputs whose predicted class changes when the gate is replaced by
    its reference, pooled (n-weighted) over the evaluation and training sets, less the share that
    changes between two calls of the learned gate on the evaluation set (a gate with noise at
    evaluation); (None, 0) when not measured. Read from figures["functional"][set][reference]
    ["changed_share", "n"] and figures["functional"]["test"]["repeat"]["changed_share"]."""
    reference = figures.get("reference") or "constant"
    changed, n = 0.0, 0
    for split in ("test", "train"):
        entry = _get(figures, "functional", split, reference)
        share = _measured(entry.get("changed_share")) if isinstance(entry, dict) else None
        count = entry.get("n") if isinstance(entry, dict) else None
        if share is None or not count:
            continue
        changed += share * count
        n += int(count)
    if not n:
        return None, 0
    noise = _measured(_get(figures, "functional", "test", "repeat", "changed_share")) or 0.0
    return max(0.0, changed / n - noise), n


def _evidence(f, t, reasons):
    """Findings that do not decide the verdict but explain it."""
    reference = _get(f, "functional", "test", f.get("reference") or "constant")
    if reference and reference.get("acc_delta") is not None:
        ci = reference.get("acc_delta_ci") or [None, None]
        ci_text = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci[0] is not None else ""
        reasons.append(f"learned gate vs {f.get('reference') or 'constant'} on the evaluation set ({reference['n']} "
                       f"inputs): accuracy {reference['acc_delta']:+.2f} points{ci_text} (95 % bootstrap), "
                       f"cross-entropy {_fmt(reference['loss_base'])} vs {_fmt(reference['loss_other'])} nats, "
                       f"mean |delta logits| {_fmt(reference['mean_abs_logit_delta'])}, "
                       f"{_fmt(100 * reference['changed_share'])} % of predictions change")
    for name, text in (("shuffled_cond", "the conditioning of other images of the batch"),
                       ("noise_cond", "noise of the conditioning's mean and std")):
        probe = _get(f, "functional", "test", name)
        if probe and probe.get("kl") is not None:
            reasons.append(f"fed {text}, the model's predictions change by KL {_fmt(probe['kl'])} nats, accuracy "
                           f"{-probe['acc_delta']:+.2f} points")
    on = _measured(f.get("kl_all_on"))
    if on is not None:
        reasons.append(f"replacing it by all-on (the ungated model) changes the predictions by KL {_fmt(on)} nats"
                       f" ({'<' if on < t['KL_MIN'] else '>='} KL_MIN)")
    schedules = {k: v for k, v in (f.get("kl_schedules") or {}).items() if _measured(v) is not None}
    if schedules:
        listed = ", ".join(f"{k} {_fmt(v)}" for k, v in schedules.items())
        closest = min(schedules, key=schedules.get)
        reasons.append(f"replacing it by the study's fixed schedules changes the predictions by KL {listed} nats; "
                       f"closest: {closest}" + (" (< KL_MIN: it acts as that schedule)"
                                                if schedules[closest] < t["KL_MIN"] else ""))
    gain = _measured(f.get("schedule_gain"))
    if gain is not None:
        best = f.get("schedule_best") or "a fixed schedule"
        if gain < t["SCHEDULE_GAIN_MIN"]:
            reasons.append(f"no real adaptation (the study's rule): the learned gate is {gain:+.2f} points from the "
                           f"best fixed or random schedule ({best}), < SCHEDULE_GAIN_MIN {_fmt(t['SCHEDULE_GAIN_MIN'])}")
        else:
            reasons.append(f"the learned gate beats the best fixed or random schedule ({best}) by {gain:+.2f} points")
    if f.get("input_dependent", True):
        for target in ("domain", "label"):
            line = routing_reason(target, _get(f, "linear_probe", f"cond_{target}"),
                                  _get(f, "linear_probe", f"gate_{target}"), _get(f, "mi", target), t)
            if line:
                reasons.append(line)


PER_LAYER_POINTS = 1.0  # the study's: per-layer gates "suffice" within this many points of per-token ones


def probe_flags(record, thresholds=None):
    """One gate's probe results of an epoch (recorder.epoch_probes: "schedules" accuracies,
    "sensitivity", "loss_competition") with the study's flags beside its figures:

      sensitivity: inert = max mean |delta logits| < SENSITIVITY_MIN (the study's 0.01)
      schedules:   accuracy (the record's accuracies, %), best (the best fixed schedule or random
                   gate), gain = learned - best, no_real_adaptation = gain < SCHEDULE_GAIN_MIN (the
                   study's 1-2 %); per_layer_delta = learned - per_layer_mean, per_layer_sufficient
                   = |per_layer_delta| < 1 point (the study's per-token vs per-layer rule)
      loss_competition: as recorded (metrics.loss_competition's flags: conflict > 60 degrees,
                   cancellation_flag > 0.3, regulariser_flag > 0.5)
    """
    t = merged_thresholds(thresholds)
    out = {}
    sensitivity = record.get("sensitivity")
    if sensitivity:
        top = _measured(sensitivity.get("max"))
        out["sensitivity"] = {**sensitivity, "inert": top is not None and top < t["SENSITIVITY_MIN"]}
    schedules = record.get("schedules")
    if schedules:
        learned = _measured(schedules.get("learned"))
        entry = {"accuracy": dict(schedules)}
        others = {k: v for k, v in schedules.items()
                  if k not in ("learned", "per_layer_mean") and _measured(v) is not None}
        if learned is not None and others:
            best = max(others, key=others.get)
            entry.update(best=best, gain=learned - others[best],
                         no_real_adaptation=learned - others[best] < t["SCHEDULE_GAIN_MIN"])
        per_layer = _measured(schedules.get("per_layer_mean"))
        if learned is not None and per_layer is not None:
            entry.update(per_layer_delta=learned - per_layer,
                         per_layer_sufficient=abs(learned - per_layer) < PER_LAYER_POINTS)
        out["schedules"] = entry
    if record.get("loss_competition") is not None:
        out["loss_competition"] = record["loss_competition"]
    return out


def routing_reason(target, cond_probe, gate_probe, mi, thresholds=None):
    """One sentence on whether the gate could and does route by `target` ("domain" or "label"):
    "the signal is not there" (the linear probe from the conditioning, cond_probe, is within
    PROBE_MARGIN of chance), "the signal is there but the gate ignores it", "the gate's output
    carries some of it but its choice does not follow it" (the probe from the gate's output,
    gate_probe, beats chance by PROBE_MARGIN, the MI of its choice does not beat its null), or "the
    gate follows it" (MI above its permutation null: p < MI_P_MAX). None when nothing was measured."""
    t = merged_thresholds(thresholds)
    if cond_probe is None and mi is None:
        return None
    chooses, carries, evidence = False, False, []
    if mi and mi.get("plugin") is not None:
        p = mi.get("p_value")
        evidence.append(f"MI(choice; {target}) {_fmt(mi['plugin'])} nats, null mean "
                        f"{_fmt(mi.get('null_mean') or 0.0)}" + (f", p {_fmt(p)}" if p is not None else ""))
        chooses = p is not None and p < t["MI_P_MAX"] and (mi.get("excess") or 0.0) > 0
    if gate_probe:
        evidence.append(f"probe from the gate's output {_fmt(gate_probe['accuracy'])} %")
        carries = gate_probe["margin"] >= t["PROBE_MARGIN"]
    evidence = "; ".join(evidence)
    if chooses:
        follows = f"the gate follows the {target}"
    elif carries:
        follows = f"the gate's output carries some of the {target} but its choice does not follow it"
    else:
        follows = None
    if cond_probe is None:
        return f"{follows or f'the gate does not follow the {target}'} ({evidence})"
    probe = (f"a linear probe from the gate's conditioning reaches {_fmt(cond_probe['accuracy'])} % on held-out "
             f"data, chance {_fmt(cond_probe['chance'])} %")
    if cond_probe["margin"] < t["PROBE_MARGIN"]:
        return f"the {target} signal is not there: {probe}" + (f" ({evidence})" if evidence else "")
    if follows:
        return f"{follows}: {probe}; {evidence}"
    return f"the {target} signal is there but the gate ignores it: {probe}; {evidence}"


def gate_verdict(figures, thresholds=None):
    """Classify one gate of one run from its summary figures; returns (verdict, reasons).

    figures: the gate's entry of summary.json (a dict; keys read: kind, input_dependent,
    no_task_grad_params, rho_task, rho_median, aux_share, signal_std, input_std, eval_input_std,
    repeat_std, saturation, choice_top_share, effective_options, moved, reference, kl_reference,
    kl_repeat, sensitivity_max, functional (its changed_share and n per set: decisions_changed; the
    evaluation set's loss_base and loss_change: loss_gain), and
    as evidence magnitude_gap with gap_prompt_numel and gap_gate_numel, study_magnitude_gap with
    study_gap_prompt_numel and study_gap_gate_numel, kl_all_on, kl_schedules, schedule_gain,
    schedule_best, linear_probe, mi). thresholds: a dict or the cfg.DIAGNOSTICS node
    (missing keys take DEFAULT_THRESHOLDS). The rules are in this module's docstring.
    Raises ValueError for a kind other than mask or simplex.
    """
    kind = figures.get("kind", "mask")
    if kind not in GATE_KINDS:
        raise ValueError(f"gate kind must be one of {GATE_KINDS}, found {kind!r}; pass the gate's declared kind")
    t = merged_thresholds(thresholds)
    reasons = []
    trainable = _trainable(figures, t, reasons)
    _gap_beside_rho(figures, t, reasons)
    if figures.get("input_dependent", True):
        varied = _varied_input_dependent(figures, t, reasons)
    else:
        varied = _varied_per_task(figures, t, reasons)
    functional = _functional(figures, t, reasons)
    useful = _useful(figures, t, reasons) if functional else None
    _evidence(figures, t, reasons)
    if not varied and not functional:
        verdict = "collapsed"
    elif not varied:
        verdict = "degraded"
    elif not functional:
        verdict = "inert"
    elif not trainable:
        verdict = "imbalanced"
    elif useful == -1:
        verdict = "harmful"
    elif useful == 0:
        verdict = "inert"
    else:
        verdict = "healthy"
    return verdict, reasons
