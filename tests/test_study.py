"""`gatescope study`: the grid file it runs, and a quick run end to end (through `sweep` on a local
Ray, tabulated by `summarize`). The study's tables from known numbers are tested in
test_summarize.py (`test_variants_table_compares_with_the_baseline_in_the_grids_order`)."""
import json
import os

import pytest

from conftest import REPO
from trainers.tools import study
from trainers.tools.grid import GridError
from trainers.tools.layout import split_cfg_label


def plan(*argv):
    return study.study_grid(study.build_parser().parse_args(list(argv)))


def test_the_study_is_a_grid_file_covering_tasks_trainers_remedies_and_seeds(tmp_path):
    grid = plan("--output", str(tmp_path))
    cells = {(c.steps[0].dataset, c.trainer, split_cfg_label(c.cfg).variant) for c in grid.cells}
    assert {t for t, _, _ in cells} == {"homogeneous", "multidomain"}
    assert {tr for _, tr, _ in cells} == {"CoOp", "CoOpGated", "CoCoOpGated", "MaPLeGated"}
    assert ("multidomain", "CoOp", "none") in cells and ("multidomain", "CoOp", "gradnorm") not in cells
    # Gradient equalisation undoes a sigmoid's slope: only for the sigmoid gates.
    assert ("homogeneous", "CoOpGated", "equalize_grad") not in cells
    assert ("homogeneous", "MaPLeGated", "equalize_grad") in cells
    assert ("homogeneous", "CoOpGated", "temperature") in cells
    assert ("homogeneous", "MaPLeGated", "temperature") not in cells
    assert len(grid.cells) == 3 * len(cells) == 192
    # each run trains on its task, whatever the trainer's demo.yaml names as its dataset
    step = next(c.steps[0] for c in grid.cells if c.trainer == "CoOpGated" and c.cfg == "demo~balance")
    opts = step.argv()[step.argv().index("--output-dir") + 2:]
    assert opts[-4:] == ["DATASET.NAME", "GatescopeMultiDomain", "DATASET.NUM_SHOTS", "16"] or \
        opts[-4:] == ["DATASET.NAME", "GatescopeHomogeneous", "DATASET.NUM_SHOTS", "16"]
    assert opts[:8] == ["GATE.NAME", "softmax", "GATE.TARGET", "pool", "GATE.POOL_SIZE", "2",
                        "REMEDY.BALANCE.WEIGHT", "0.01"]
    assert grid.summary == {"tables": ["variants", "problems"], "baseline": "CoOp", "title": "Study: {dataset} task",
                            "variant": "remedy"}


def test_quick_seeds_remedies_and_options_from_the_command_line(tmp_path):
    quick = plan("--quick", "--output", str(tmp_path))
    assert len(quick.cells) == 14 and {c.seed for c in quick.cells} == {1} and {c.shots for c in quick.cells} == {4}
    assert {split_cfg_label(c.cfg).variant for c in quick.cells} == {"none", "gradnorm"}
    assert quick.cells[0].steps[0].opts[:2] == ["OPTIM.MAX_EPOCH", "2"]
    narrowed = plan("--output", str(tmp_path), "--seeds", "4", "5", "--remedies", "none", "zloss")
    assert {c.seed for c in narrowed.cells} == {4, 5} and len(narrowed.cells) == 2 * 2 * (1 + 3 * 2)
    assert all(c.steps[0].opts[:4] == ["OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.01"]
               for c in plan("--quick", "OPTIM.LR", "0.01").cells)
    with pytest.raises(GridError, match=r"unknown variant\(s\) \['magic'\] in --remedies; the grid has: none, "):
        plan("--remedies", "magic")
    with pytest.raises(GridError, match="no study preset named 'nope'; the presets are regime_map, study"):
        plan("--preset", "nope")


def test_a_new_preset_is_a_grid_file(tmp_path):
    """What the README promises: a grid file with variants and a summary section is a study."""
    preset = tmp_path / "regimes.yaml"
    preset.write_text("protocol: fewshot\ndatasets: {multidomain: gatescope_multidomain}\nseeds: [1]\n"
                      "configs: [demo]\ntrainers: {CoOp: {variants: [base]}, CoOpGated: {}}\n"
                      "variants: {base: [], lr: [GATE.LR_MULT, 100]}\n"
                      "summary: {tables: [variants], baseline: CoOp}\n")
    grid = plan("--preset", str(preset), "--output", str(tmp_path / "out"))
    assert sorted((c.trainer, c.cfg) for c in grid.cells) == [
        ("CoOp", "demo~base"), ("CoOpGated", "demo~base"), ("CoOpGated", "demo~lr")]
    assert grid.name == "regimes" and grid.variants == ["base", "lr"]


def test_quick_study_runs_and_prints_its_tables_then_skips_finished_runs(demo_root, tmp_path, capsys, monkeypatch):
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.fail("the study runs on Ray: install the extra, pip install -e '.[test,sweep]'")
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = str(tmp_path / "study")
    argv = ["--quick", "--output", out, "--root", demo_root, "--num-cpus", "2", "--no-progress"]
    assert study.study_main(argv) == 0
    printed = capsys.readouterr().out
    assert "Study: homogeneous task" in printed and "Study: multidomain task" in printed
    for trainer in ("CoOp ", "CoOpGated", "CoCoOpGated", "MaPLeGated"):
        assert trainer in printed
    assert "Δ vs CoOp" in printed and "gradnorm" in printed and "FAILED" not in printed
    assert "14 runs; 0 already finished, 14 finished now, 0 failed" in printed
    run = os.path.join(out, "fewshot", "multidomain", "shots_4", "MaPLeGated", "demo~gradnorm", "seed1")
    assert os.path.isfile(os.path.join(run, "diagnostics", "summary.json"))
    with open(os.path.join(run, "results.json")) as f:
        record = json.load(f)
    assert (record["dataset"], record["parent_trainer"]) == ("GatescopeMultiDomain", "MaPLe")
    assert study.study_main(argv) == 0
    assert "14 runs; 14 already finished, 0 finished now, 0 failed" in capsys.readouterr().out
    assert study.study_main(["--quick", "--output", out, "--tables-only", "--format", "github"]) == 0
    assert "### Study: multidomain task" in capsys.readouterr().out
