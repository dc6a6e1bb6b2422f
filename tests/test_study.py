"""`gatescope study`: the grid it plans, the tables it prints, and a quick run end to end."""
import json
import os

import pytest

from trainers.tools import study


def test_plan_covers_the_grid_and_leaves_out_remedies_that_do_not_apply(tmp_path):
    runs = study.plan(str(tmp_path), seeds=(1, 2, 3), remedies=tuple(study.REMEDIES))
    cells = {(r.task, r.trainer, r.remedy) for r in runs}
    assert {t for t, _, _ in cells} == {"homogeneous", "multidomain"}
    assert {tr for _, tr, _ in cells} == {"CoOp", "CoOpGated", "CoCoOpGated", "MaPLeGated"}
    assert ("multidomain", "CoOp", "none") in cells and ("multidomain", "CoOp", "gradnorm") not in cells
    # Gradient equalisation undoes a sigmoid's slope: only for the sigmoid gates.
    assert ("homogeneous", "CoOpGated", "equalize_grad") not in cells
    assert ("homogeneous", "MaPLeGated", "equalize_grad") in cells
    assert ("homogeneous", "CoOpGated", "temperature") in cells
    assert ("homogeneous", "MaPLeGated", "temperature") not in cells
    assert len(runs) == 3 * len(cells)
    with pytest.raises(ValueError, match="unknown remedy 'magic'; available: none, gradnorm"):
        study.plan(str(tmp_path), seeds=(1,), remedies=("magic",))


def write_run(run, acc, gate=None):
    os.makedirs(run.output_dir, exist_ok=True)
    with open(os.path.join(run.output_dir, "results.json"), "w") as f:
        json.dump({"epoch": 10, "max_epoch": 10, "results": {"test": {"accuracy": acc}}}, f)
    if gate:
        os.makedirs(os.path.join(run.output_dir, "diagnostics"))
        with open(os.path.join(run.output_dir, "diagnostics", "summary.json"), "w") as f:
            json.dump({"gates": {"pool": gate}}, f)


def test_tables_from_known_numbers(tmp_path):
    runs = study.plan(str(tmp_path), seeds=(1, 2), remedies=("none",))
    acc = {("CoOp", 1): 30.0, ("CoOp", 2): 34.0, ("CoOpGated", 1): 35.0, ("CoOpGated", 2): 36.0}
    for run in runs:
        if run.task == "multidomain" and (run.trainer, run.seed) in acc:
            gate = None if run.trainer == "CoOp" else {
                "verdict": "collapsed" if run.seed == 1 else "healthy", "rho_median": 0.001 * run.seed,
                "input_std": 0.01 * run.seed, "delta_acc": 0.5 * run.seed}
            write_run(run, acc[(run.trainer, run.seed)], gate)
    assert study.finished(next(r for r in runs if r.task == "multidomain" and r.trainer == "CoOp"))
    table = study.study_tables(runs)[1]
    rows = {row[0]: row for row in table.rows}
    coop, gated = rows["CoOp"], rows["CoOpGated"]
    # CoOp: mean 32, population std 2; CoOpGated: mean 35.5, std 0.5; delta ((35-30) + (36-34)) / 2 = 3.5
    assert (coop[2].mean, coop[2].std) == (32.0, 2.0)
    assert (gated[2].mean, gated[2].std) == (35.5, 0.5)
    assert gated[3].value == 3.5 and gated[3].count == 2
    assert gated[4] == "collapsed 1, healthy 1"
    assert gated[5] == pytest.approx(0.0015) and gated[6] == pytest.approx(0.015) and gated[7] == pytest.approx(0.75)
    assert study.study_tables(runs)[0].rows == []  # nothing ran on the homogeneous task


def test_quick_study_runs_and_prints_its_tables_then_skips_finished_runs(demo_root, tmp_path, capsys):
    out = str(tmp_path / "study")
    assert study.study_main(["--quick", "--output", out, "--root", demo_root]) == 0
    printed = capsys.readouterr().out
    assert "Study: homogeneous task" in printed and "Study: multidomain task" in printed
    for trainer in ("CoOp ", "CoOpGated", "CoCoOpGated", "MaPLeGated"):
        assert trainer in printed
    assert "gradnorm" in printed and "FAILED" not in printed
    assert os.path.isfile(os.path.join(out, "multidomain", "MaPLeGated", "gradnorm", "seed1", "diagnostics",
                                       "summary.json"))
    assert study.study_main(["--quick", "--output", out, "--root", demo_root]) == 0
    again = capsys.readouterr().out
    assert again.count("done before, skipped") == 14
