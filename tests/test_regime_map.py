"""The regime map: the grid's dataset entries and oracle, the `regime` table and its `best:` line on
hand-made runs with known numbers, the trajectories figure, and the preset (expanded, and its
quick setting run end to end on a local Ray).

Hand-computed figures of the fixture (`write_regime_runs`), task `taskA`, 16 shots:
  CoOp          seeds 1, 2, 3: 20, 30, 25
  oracle        d0: 60, 50, 40 (seeds 1-3); d1: 40, 30 (seeds 1-2; seed 3 has no d1 run)
                -> per seed: s1 (60+40)/2 = 50, s2 (50+30)/2 = 40; seed 3 incomplete, not counted
  mech          46, 38, 99 -> on the common seeds 1, 2: 42 ± 4; CoOp 25; oracle 45; gap 20;
                recovery (42 - 25) / 20 = 0.85; MI (0.7 + 0.5) / 2 = 0.6; counterfactual (10 + 6) / 2 = 8;
                probe (100 + 90) / 2 = 95; verdicts healthy 1, inert 1
  plain         26, 29 -> 27.5; recovery (27.5 - 25) / 20 = 0.125; MI 0
Task `ctrl`: CoOp 60, 60; oracle d0 62, 61 and d1 61, 62 -> 61.5; gap 1.5 < 5: no recovery.
Task `noor` (no oracle runs): not in the map.
"""
import json
import os

import pytest

from conftest import REPO
from trainers.tools import regime, study
from trainers.tools.grid import GridError, expand_grid
from trainers.tools.layout import oracle_domain, oracle_label, run_dir
from trainers.tools.runs import find_runs
from trainers.tools.summarize import SummaryOptions, summarize, summarize_main, summarize_runs
from trainers.tools.trajectories import plot_trajectories, read_trajectory


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def write_run(out, task, trainer, cfg, seed, accuracy, gate=None):
    folder = run_dir(out, "fewshot", "", task, 16, trainer, cfg, seed)
    write_json(os.path.join(folder, "results.json"), {
        "trainer": trainer, "dataset": "GatescopeGraded", "seed": seed, "num_shots": 16, "epoch": 20,
        "max_epoch": 20, "eval_only": False, "results": {"test": {"accuracy": accuracy}}})
    if gate is not None:
        write_json(os.path.join(folder, "diagnostics", "summary.json"), {"gates": {"pool": gate}})


def gate(verdict, mi, delta, probe):
    return {"gate": "softmax", "verdict": verdict, "delta_acc": delta, "mi": {"domain": {"miller_madow": mi}},
            "linear_probe": {"cond_domain": {"accuracy": probe}}, "rho_median": 1.0, "input_std": 0.3}


def write_regime_runs(out):
    for seed, acc in enumerate((20, 30, 25), 1):
        write_run(out, "taskA", "CoOp", "demo~none", seed, acc)
    for seed, acc in enumerate((60, 50, 40), 1):
        write_run(out, "taskA", "CoOp", oracle_label("demo", "d0"), seed, acc)
    for seed, acc in enumerate((40, 30), 1):
        write_run(out, "taskA", "CoOp", oracle_label("demo", "d1"), seed, acc)
    gates = [gate("healthy", 0.7, 10.0, 100.0), gate("inert", 0.5, 6.0, 90.0), gate("collapsed", 0.0, 0.0, 50.0)]
    for seed, (acc, g) in enumerate(zip((46, 38, 99), gates), 1):
        write_run(out, "taskA", "CoOpGated", "demo~mech", seed, acc, g)
    for seed, acc in enumerate((26, 29), 1):
        write_run(out, "taskA", "CoOpGated", "demo~plain", seed, acc, gate("inert", 0.0, 0.0, 50.0))
    for seed in (1, 2):
        write_run(out, "ctrl", "CoOp", "demo~none", seed, 60)
        write_run(out, "ctrl", "CoOp", oracle_label("demo", "d0"), seed, 61 + (seed == 1))
        write_run(out, "ctrl", "CoOp", oracle_label("demo", "d1"), seed, 61 + (seed == 2))
        write_run(out, "ctrl", "CoOpGated", "demo~mech", seed, 70, gate("healthy", 0.7, 5.0, 100.0))
        write_run(out, "noor", "CoOp", "demo~none", seed, 10)
        write_run(out, "noor", "CoOpGated", "demo~mech", seed, 90, gate("healthy", 0.7, 5.0, 100.0))


OPTIONS = SummaryOptions(tables=("regime",), baseline="CoOp", variant="mechanism", trainers=("CoOp", "CoOpGated"),
                         variants=("none", "mech", "plain"), datasets=("taskA", "ctrl"))


def test_oracle_labels_name_the_domain():
    assert oracle_label("demo", "tint0") == "demo~oracle.tint0"
    assert oracle_domain("demo~oracle.tint0") == "tint0" and oracle_domain("demo~none") is None
    assert oracle_domain("demo@mlp") is None


def test_regime_rows_recover_the_oracle_gap_on_the_seeds_all_three_share(tmp_path):
    out = str(tmp_path)
    write_regime_runs(out)
    [table] = summarize_runs(find_runs(out), options=OPTIONS)
    assert table.headers[:11] == ["task", "shots", "trainer", "cfg", "mechanism", "gate", "seeds", "accuracy", "CoOp",
                                  "oracle", "recovery"]
    rows = {(r[0], r[4]): r for r in table.rows}
    assert list(rows) == [("taskA", "mech"), ("taskA", "plain"), ("ctrl", "mech")]  # the grid's order; no `noor`
    mech = rows[("taskA", "mech")]
    assert mech[6] == 2 and (mech[7].mean, mech[7].std) == (42.0, 4.0)
    assert mech[8:11] == [25.0, 45.0, pytest.approx(0.85)]
    assert mech[11:] == [pytest.approx(0.6), pytest.approx(8.0), "healthy 1, inert 1", pytest.approx(95.0)]
    assert rows[("taskA", "plain")][10] == pytest.approx(0.125) and rows[("taskA", "plain")][11] == 0.0
    ctrl = rows[("ctrl", "mech")]
    assert ctrl[8:11] == [60.0, 61.5, None]  # the oracle beats one prompt by 1.5 < 5 points: no recovery


def test_best_line_names_the_setting_that_recovers_most(tmp_path):
    out = str(tmp_path)
    write_regime_runs(out)
    text = summarize([out], options=OPTIONS)
    assert text.splitlines()[-1] == ("best: CoOpGated demo~mech on taskA, 16 shots recovers 0.85 of the oracle gap, "
                                     "MI(choice; domain) 0.60 nats, counterfactual 8.00 points")
    assert regime.best_line([]).startswith("best: none (no gated setting on a task whose oracle beats")


def test_an_oracle_is_counted_only_on_seeds_with_every_domain():
    from trainers.tools.summarize import group_runs

    class Run:
        def __init__(self, cfg, seed, accuracy):
            self.protocol, self.phase, self.dataset, self.trainer, self.cfg = "fewshot", "", "t", "CoOp", cfg
            self.shots, self.seed, self.accuracy, self.status = 16, seed, accuracy, "ok"

    runs = [Run("demo~oracle.a", 1, 10.0), Run("demo~oracle.b", 1, 20.0), Run("demo~oracle.a", 2, 30.0)]
    groups, _ = group_runs(runs)
    assert regime.oracle_accuracies(list(groups), groups, "CoOp") == {1: 15.0}


def test_summarize_regime_needs_a_baseline_and_prints_the_best_line(tmp_path, capsys):
    out = str(tmp_path)
    write_regime_runs(out)
    assert summarize_main([out, "--table", "regime"]) == 2
    assert "give it, e.g. --baseline CoOp" in capsys.readouterr().err
    assert summarize_main([out, "--table", "regime", "--baseline", "CoOp"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("Regime map") and printed[-1].startswith("best: CoOpGated demo~mech on taskA")


def test_regime_map_png_is_written(tmp_path):
    out = str(tmp_path)
    write_regime_runs(out)
    from trainers.tools.summarize import group_runs
    rows = regime.regime_rows(group_runs(find_runs(out))[0], "CoOp")
    path = regime.plot_regime_map(rows, str(tmp_path / "map.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert regime.plot_regime_map([], str(tmp_path / "none.png")) is None


# ------------------------------------------------------------------ the grid's dataset entries and oracle
def spec(tmp_path, **overrides):
    base = {"name": "t", "output": str(tmp_path / "out"), "data": "", "seeds": [1, 2], "shots": 16,
            "configs": ["demo"], "variants": {"none": [], "fast": ["GATE.LR_MULT", 10]},
            "trainers": {"CoOp": {"variants": ["none"]}, "CoOpGated": {"variants": ["fast"]}},
            "datasets": {"md": {"config": "gatescope_multidomain", "domains": ["light", "dark"]},
                         "g3": {"config": "gatescope_graded", "opts": ["DATASET.DOMAIN_TASK.NUM_DOMAINS", 3],
                                "shots": [4], "seeds": [7], "variants": ["none"]}},
            "oracle": {"trainer": "CoOp", "config": "demo"}}
    base.update(overrides)
    return base


def test_dataset_entries_and_the_oracle_expand_into_runs(tmp_path):
    grid = expand_grid(spec(tmp_path))
    ids = sorted(c.id for c in grid.cells)
    assert ids == sorted([f"fewshot/md/shots_16/CoOp/demo~none/seed{s}" for s in (1, 2)]
                         + [f"fewshot/md/shots_16/CoOpGated/demo~fast/seed{s}" for s in (1, 2)]
                         + [f"fewshot/md/shots_16/CoOp/demo~oracle.{d}/seed{s}"
                            for s in (1, 2) for d in ("light", "dark")]
                         + ["fewshot/g3/shots_4/CoOp/demo~none/seed7"])  # its own shots, seeds and variants
    assert grid.datasets == ["md", "g3"]
    step = next(c for c in grid.cells if c.id.endswith("g3/shots_4/CoOp/demo~none/seed7")).steps[0]
    # the dataset's opts come after the trainer's and variant's, before the protocol keys
    assert step.argv()[:2] == ["--root", ""]  # generated tasks go to gatescope's cache
    assert step.opts == ["DATASET.DOMAIN_TASK.NUM_DOMAINS", "3", "DATASET.NAME", "GatescopeGraded",
                         "DATASET.NUM_SHOTS", "4"]
    oracle = next(c for c in grid.cells if c.id.endswith("demo~oracle.dark/seed2")).steps[0]
    assert oracle.opts[-4:] == ["DATASET.NUM_SHOTS", "16", "DATASET.SOURCE_DOMAINS", '["dark"]']


def test_data_defaults_to_DATA_or_data_unless_given_empty(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    grid = expand_grid({**spec(tmp_path), "data": None})
    assert grid.cells[0].steps[0].argv()[1] == str(tmp_path / "data")


@pytest.mark.parametrize("change, message", [
    ({"datasets": {"md": {"config": "gatescope_multidomain", "domain": ["a"]}}}, r"unknown key\(s\) \['domain'\]"),
    ({"datasets": {"md": {"opts": []}}}, r"datasets.md names no `config`"),
    ({"datasets": {"md": {"config": "gatescope_multidomain", "variants": ["slow"]}}},
     r"datasets.md.variants names \['slow'\]"),
    ({"datasets": {"md": {"config": "gatescope_multidomain", "domains": ["a", "a"]}}}, "lists a domain twice"),
    ({"datasets": {"md": "gatescope_multidomain"}}, "no dataset lists its `domains`"),
    ({"oracle": {"config": "demo"}}, "oracle.trainer is missing"),
    ({"oracle": {"trainer": "CoOp", "gate": "x"}}, r"unknown key\(s\) \['gate'\] in oracle"),
    ({"protocol": "base2new"}, "it needs protocol fewshot"),
])
def test_dataset_entry_and_oracle_errors_say_what_is_wrong(tmp_path, change, message):
    with pytest.raises(GridError, match=message):
        expand_grid(spec(tmp_path, **change))


def test_quick_narrows_datasets_and_replaces_their_own_seeds_and_shots(tmp_path):
    from trainers.tools.grid import apply_quick

    entries = spec(tmp_path)["datasets"]
    entries["md"].update(seeds=[4, 5], shots=[8])
    quick = apply_quick(spec(tmp_path, datasets=entries, quick={"datasets": ["md"], "seeds": [1], "shots": 2,
                                                                 "variants": ["none"]}))
    grid = expand_grid(quick)
    assert sorted(c.id for c in grid.cells) == [f"fewshot/md/shots_2/CoOp/demo~{v}/seed1"
                                                for v in ("none", "oracle.dark", "oracle.light")]
    with pytest.raises(GridError, match=r"unknown dataset\(s\) \['zz'\] in quick.datasets; the grid has: md, g3"):
        apply_quick(spec(tmp_path, quick={"datasets": ["zz"]}))


# ------------------------------------------------------------------ the preset
def plan(*argv):
    return study.study_grid(study.build_parser().parse_args(list(argv)))


def test_the_regime_map_preset_covers_its_axes_with_an_oracle_per_task(tmp_path):
    grid = plan("--preset", "regime_map", "--output", str(tmp_path))
    tasks = {c.steps[0].dataset for c in grid.cells}
    assert tasks == {"multidomain", "s0.10", "s0.25", "s0.50", "s1.00", "n3_swap", "n3_shift", "n4_shift", "same",
                     "s1.00_sparse", "multidomain_sparse"}
    by_task = {t: [c for c in grid.cells if c.steps[0].dataset == t] for t in tasks}
    assert {c.shots for c in by_task["s1.00"]} == {2, 4, 8, 16}
    assert {c.seed for c in by_task["multidomain"]} == {1, 2, 3, 4, 5}
    oracle = sorted(c.cfg for c in by_task["n4_shift"] if c.seed == 1 and oracle_domain(c.cfg))
    assert oracle == [f"demo~oracle.tint{d}" for d in range(4)]
    shift = next(c for c in by_task["n4_shift"] if c.cfg == "demo~hardem_patch" and c.seed == 1).steps[0]
    pool = [v for k, v in zip(shift.opts[::2], shift.opts[1::2]) if k == "GATE.POOL_SIZE"]
    assert pool[-1] == "4"  # one prompt per label mapping: the task's value comes last and wins
    assert study.demo_weights_used(grid) == ["gatescope-demo", "gatescope-demo-sparse"]
    assert grid.summary["tables"] == ["regime", "problems"] and len(grid.cells) == 400
    assert grid.cells[0].steps[0].argv()[:2] == ["--root", ""]  # without --root: gatescope's cache, not ./data
    quick = plan("--preset", "regime_map", "--quick", "--output", str(tmp_path))
    assert sorted(c.cfg for c in quick.cells) == ["demo~hardem_patch", "demo~none", "demo~oracle.dark",
                                                   "demo~oracle.light", "demo~pool_image"]
    assert {c.seed for c in quick.cells} == {1} and study.demo_weights_used(quick) == ["gatescope-demo"]


def test_quick_regime_map_runs_and_ends_with_its_best_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray", reason="the study runs on Ray: pip install -e '.[test,sweep]'")
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = str(tmp_path / "map")
    assert study.study_main(["--preset", "regime_map", "--quick", "--output", out, "--num-cpus", "2",
                             "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("Regime map") for line in printed)
    assert printed[-2] == f"regime map: {os.path.join(out, 'regime_map.png')}"
    import re
    assert re.fullmatch(r"best: CoOpGated demo~(hardem_patch|pool_image) on multidomain, 16 shots recovers -?\d+\.\d\d "
                        r"of the oracle gap, MI\(choice; domain\) -?\d+\.\d\d nats, counterfactual -?\d+\.\d\d points",
                        printed[-1]), printed[-1]
    # the tasks were generated in gatescope's cache, not in ./data
    assert os.path.isdir(os.path.join(os.environ["GATESCOPE_CACHE"], "datasets", "gatescope_multidomain"))


# ------------------------------------------------------------------ trajectories
def write_diagnostics(folder, mi_by_epoch, kl_by_epoch):
    steps = [{"epoch": e, "batch": b, "gates": {"pool": {"rho": 0.1 * (e + 1), "input_std": 0.01 * b}}}
             for e in range(len(mi_by_epoch)) for b in range(2)]
    epochs = [{"epoch": e, "gates": {"pool": {"mi_domain_stats": {"miller_madow": mi}}}}
              for e, mi in enumerate(mi_by_epoch)]
    evaluations = [{"epoch": e, "split": "val", "gates": {"pool": {
        "reference": "constant", "kl_effect": kl,
        "functional": {"test": {"constant": {"changed_share": kl / 2, "loss_base": 2.0 - kl}}}}}}
        for e, kl in enumerate(kl_by_epoch)]
    os.makedirs(os.path.join(folder, "diagnostics"))
    for name, records in (("steps.jsonl", steps), ("epochs.jsonl", epochs)):
        with open(os.path.join(folder, "diagnostics", name), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    write_json(os.path.join(folder, "diagnostics", "summary.json"), {
        "gates": {"pool": {"linear_probe": {"cond_label": {"classes": 10}}}}, "evaluations": evaluations})


def test_trajectories_read_steps_epochs_and_evaluations_and_draw_them(tmp_path):
    write_diagnostics(str(tmp_path / "a"), [0.3, 0.69], [0.1, 0.9])
    write_diagnostics(str(tmp_path / "b"), [0.0, 0.0], [0.0, 0.0])
    a = read_trajectory(str(tmp_path / "a"))
    assert a.rho == [(0.0, 0.1), (0.5, 0.1), (1.0, 0.2), (1.5, 0.2)]  # epoch + batch / batches per epoch
    assert a.mi_domain == [(1, 0.3), (2, 0.69)] and a.kl_effect == [(1, 0.1), (2, 0.9)]
    assert a.changed_share == [(1, 0.05), (2, 0.45)] and a.loss == [(1, 1.9), (2, pytest.approx(1.1))]
    assert a.num_classes == 10
    path = plot_trajectories([a, read_trajectory(str(tmp_path / "b"))], ["routes", "does not"], str(tmp_path / "t.png"))
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="has no gate diagnostics"):
        read_trajectory(str(tmp_path))
    with pytest.raises(ValueError, match="has no gate 'depth'; its gates are pool"):
        read_trajectory(str(tmp_path / "a"), "depth")
