"""`gatescope summarize` on hand-written run folders with known numbers, and the protocol scripts.

Expected values are computed by hand from the fixture's accuracies (population std, ddof=0):
  CoOp      dsA base 80,82,84 -> 82.00 ± 1.63   new 60,62,67 -> 63.00 ± 2.94   HM 2*82*63/145 = 71.26
  CoOpGated dsA base 81,83,85 -> 83.00 ± 1.63   new 61,63,65 -> 63.00 ± 1.63   HM 2*83*63/146 = 71.63
  CoOp      dsB base 90,91,92 -> 91.00 ± 0.82   new 50,50,50 -> 50.00 ± 0.00   HM 2*91*50/141 = 64.54
  CoOpGated dsB (seed 3 failed) base 90,92 -> 91.00 ± 1.00   new 55,57 -> 56.00 ± 1.00   HM 69.33
  delta HM, same seeds: dsA 71.630 - 71.255 = +0.37; dsB (seeds 1,2: parent base 90.5, new 50,
  HM 64.4128) 69.333 - 64.413 = +4.92
  average CoOp: base (82+91)/2 = 86.50, new (63+50)/2 = 56.50, HM 2*86.5*56.5/143 = 68.35
  (the mean of the per-dataset HMs would be 67.90); CoOpGated: 87.00, 59.50, HM 70.67;
  delta: HM(87, 59.5) - HM((82+90.5)/2, (63+50)/2) = 70.669 - 68.275 = +2.39
"""
import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from trainers.tools.layout import parse_run_dir, run_dir
from trainers.tools.runs import find_runs, is_complete, last_epoch, parse_log
from trainers.tools.summarize import harmonic_mean, mean_std, summarize, summarize_main
from trainers.tools.tables import Delta, format_cell

BASE_NEW = {  # (dataset, trainer, cfg): {seed: (base, new)}
    ("dsA", "CoOp", "c1"): {1: (80, 60), 2: (82, 62), 3: (84, 67)},
    ("dsA", "CoOpGated", "c1@mlp"): {1: (81, 61), 2: (83, 63), 3: (85, 65)},
    ("dsB", "CoOp", "c1"): {1: (90, 50), 2: (91, 50), 3: (92, 50)},
    ("dsB", "CoOpGated", "c1@mlp"): {1: (90, 55), 2: (92, 57)},
}
EXPECTED_BASE2NEW = [
    ["dsA", "CoOp", "c1", "16", "3", "82.00 ± 1.63", "63.00 ± 2.94", "71.26", "-"],
    ["dsA", "CoOpGated", "c1@mlp", "16", "3", "83.00 ± 1.63", "63.00 ± 1.63", "71.63", "+0.37"],
    ["dsB", "CoOp", "c1", "16", "3", "91.00 ± 0.82", "50.00 ± 0.00", "64.54", "-"],
    ["dsB", "CoOpGated", "c1@mlp", "16", "2", "91.00 ± 1.00", "56.00 ± 1.00", "69.33", "+4.92"],
    ["Average (2 datasets)", "CoOp", "c1", "16", "-", "86.50", "56.50", "68.35", "-"],
    ["Average (2 datasets)", "CoOpGated", "c1@mlp", "16", "-", "87.00", "59.50", "70.67", "+2.39"],
]
# The same rows as CSV: means and stds in columns of their own, 6 decimals.
EXPECTED_BASE2NEW_CSV = [
    ["dsA", "CoOp", "c1", "16", "3", "82.0", "1.632993", "63.0", "2.94392", "71.255172", "", ""],
    ["dsA", "CoOpGated", "c1@mlp", "16", "3", "83.0", "1.632993", "63.0", "1.632993", "71.630137", "0.374965", "3"],
    ["dsB", "CoOp", "c1", "16", "3", "91.0", "0.816497", "50.0", "0.0", "64.539007", "", ""],
    ["dsB", "CoOpGated", "c1@mlp", "16", "2", "91.0", "1.0", "56.0", "1.0", "69.333333", "4.920522", "2"],
    ["Average (2 datasets)", "CoOp", "c1", "16", "", "86.5", "", "56.5", "", "68.353147", "", ""],
    ["Average (2 datasets)", "CoOpGated", "c1@mlp", "16", "", "87.0", "", "59.5", "", "70.668942", "2.393986", "2"],
]
GATE_STATS = [  # CoOpGated dsA seeds 1..3: verdict, rho_median, input_std, delta_acc
    ("collapsed", 0.001, 0.01, 0.0), ("collapsed", 0.002, 0.02, 0.5), ("healthy", 0.01, 0.03, 2.0)]


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def write_results(folder, trainer, seed, accuracy, subsample, eval_only, epoch=5, max_epoch=5, splits=None):
    results = splits or {"test": {"accuracy": accuracy, "error_rate": 100 - accuracy, "macro_f1": accuracy}}
    write_json(os.path.join(folder, "results.json"), {
        "trainer": trainer, "dataset": "Demo", "seed": seed, "backbone": "ViT-B/16", "num_shots": 16,
        "subsample_classes": subsample, "output_dir": folder, "epoch": 0 if eval_only else epoch,
        "max_epoch": max_epoch, "eval_only": eval_only, "results": results})


def coop_log(accuracy, seed, val_accuracy=50.0):
    """A log.txt as the original CoOp code writes it (a validation result before the final test)."""
    return (f"***************\n** Arguments **\n***************\nconfig_file: configs/trainers/CoOp/vit_b16_ep50.yaml\n"
            f"eval_only: False\nseed: {seed}\ntrainer: CoOp\n************\n** Config **\n************\n"
            f"DATASET:\n  NAME: OxfordPets\n  NUM_SHOTS: 16\nSEED: {seed}\nTRAINER:\n  NAME: CoOp\n"
            "Collecting env info ...\n"
            "epoch [1/50] batch [5/5] time 0.1 loss 1.0\n"
            f"=> result\n* total: 100\n* correct: 50\n* accuracy: {val_accuracy}%\n* error: 50.0%\n"
            "Finish training\nDeploy the last-epoch model\nEvaluate on the *test* set\n"
            f"=> result\n* total: 3669\n* correct: 0\n* accuracy: {accuracy}%\n* error: {100 - accuracy:.1f}%\n"
            f"* macro_f1: {accuracy}%\nElapsed: 0:10:00\n")


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runs"))
    out = os.path.join(root, "output")
    for (dataset, trainer, cfg), by_seed in BASE_NEW.items():
        for seed, (base, new) in by_seed.items():
            train = run_dir(out, "base2new", "train_base", dataset, 16, trainer, cfg, seed)
            test = run_dir(out, "base2new", "test_new", dataset, 16, trainer, cfg, seed)
            write_results(train, trainer, seed, base, "base", False)
            write_results(test, trainer, seed, new, "new", True)
            if trainer == "CoOpGated" and dataset == "dsA":
                verdict, rho, std, delta = GATE_STATS[seed - 1]
                gate = {"gate": "mlp", "verdict": verdict, "rho_median": rho, "input_std": std, "delta_acc": delta}
                write_json(os.path.join(train, "diagnostics", "summary.json"), {"gates": {"length": gate}})
                # an eval-only run's diagnosis has no gradients: it must not count
                write_json(os.path.join(test, "diagnostics", "summary.json"),
                           {"gates": {"length": {**gate, "verdict": "healthy"}}})
    # seed 3 of CoOpGated on dsB crashed during training
    failed = run_dir(out, "base2new", "train_base", "dsB", 16, "CoOpGated", "c1@mlp", 3)
    os.makedirs(failed)
    with open(os.path.join(failed, "log.txt"), "w") as f:
        f.write("epoch [1/5] batch [1/4] loss 2.3\nTraceback (most recent call last):\n"
                '  File "train.py", line 1\nRuntimeError: boom\n')
    # a run killed after two of five epochs: only a validation result
    write_results(run_dir(out, "fewshot", "", "dsA", 16, "CoOp", "c1", 1), "CoOp", 1, None, "all", False,
                  epoch=2, splits={"val": {"accuracy": 40.0}})
    # a sweep's record of a run that died before its log was opened
    os.makedirs(os.path.join(out, "sweeps", "g"))
    with open(os.path.join(out, "sweeps", "g", "failures.jsonl"), "w") as f:
        f.write(json.dumps({"cell": "x", "step": "train", "returncode": 1, "error_tail": "...\nValueError: bad key",
                            "output_dir": run_dir(out, "fewshot", "", "dsA", 16, "CoOp", "c1", 2)}) + "\n")
    # runs of the original CoOp code: only log.txt, in CoOp's main.sh layout
    for seed, accuracy in ((1, 70.0), (2, 72.5)):
        folder = os.path.join(out, "oxford_pets", "CoOp", "vit_b16_ep50_16shots", "nctx16_cscFalse_ctpend",
                              f"seed{seed}")
        os.makedirs(folder)
        with open(os.path.join(folder, "log.txt"), "w") as f:
            f.write(coop_log(accuracy, seed))
    return out


def table_rows(text, fmt, title):
    """Rows of the table called `title` in rendered output, as lists of cell strings."""
    start = text.index(title)
    block = text[start:].split("\n\n")[0] if fmt != "github" else "\n".join(text[start:].split("\n\n")[:2])
    lines = block.splitlines()[1:]
    if fmt == "csv":
        return list(csv.reader(io.StringIO("\n".join(lines))))[1:]
    rows = []
    for line in lines:
        if fmt == "plain":
            if set(line) <= {"-", " "}:
                continue
            rows.append(re.split(r"\s{2,}", line.strip()))
        elif fmt == "github":
            if line.startswith("|") and not set(line) <= {"|", "-", ":"}:
                rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif fmt == "latex":
            if "&" in line:
                rows.append([cell.strip() for cell in line.rstrip().removesuffix("\\\\").split("&")])
    header, body = rows[0], rows[1:]
    return [row for row in body if len(row) == len(header)]  # not the note under the table


@pytest.mark.parametrize("fmt", ["plain", "github", "latex", "csv"])
def test_base2new_means_stds_and_harmonic_means(runs_root, fmt):
    text = summarize([runs_root], fmt=fmt, tables=("base2new",))
    rows = table_rows(text, fmt, "Base-to-new generalisation")
    if fmt == "csv":
        assert rows == EXPECTED_BASE2NEW_CSV
    else:
        expected = EXPECTED_BASE2NEW
        if fmt == "latex":
            expected = [[cell.replace(" ± ", " $\\pm$ ") for cell in row] for row in expected]
        assert rows == expected


def test_average_row_takes_hm_of_averaged_base_and_new():
    base, new = (82 + 91) / 2, (63 + 50) / 2
    assert harmonic_mean(base, new) == pytest.approx(68.353147, abs=1e-6)
    mean_of_hms = (harmonic_mean(82, 63) + harmonic_mean(91, 50)) / 2
    assert abs(mean_of_hms - 68.35) > 0.4  # the fixture tells the two apart


def test_std_is_population_std_like_coops_parser():
    assert mean_std([80, 82, 84]) == pytest.approx((82.0, (8 / 3) ** 0.5))


def test_failed_incomplete_and_unstarted_runs_are_listed(runs_root):
    text = summarize([runs_root], tables=("problems",))
    assert "RuntimeError: boom" in text
    rows = {row[1].split("output/")[-1]: row for row in table_rows(text, "plain", "Runs not counted")}
    assert rows["base2new/train_base/dsB/shots_16/CoOpGated/c1@mlp/seed3"][0] == "failed"
    assert rows["fewshot/dsA/shots_16/CoOp/c1/seed1"][0] == "incomplete"
    assert "epoch 2 of 5" in rows["fewshot/dsA/shots_16/CoOp/c1/seed1"][2]
    unstarted = rows["fewshot/dsA/shots_16/CoOp/c1/seed2"]
    assert unstarted[0] == "failed" and unstarted[2] == "train exited with 1: ValueError: bad key"
    assert len(rows) == 3


def test_original_coop_logs_are_read(runs_root):
    text = summarize([runs_root], tables=("accuracy",))
    rows = table_rows(text, "plain", "Accuracy")
    # mean of 70.0 and 72.5, population std 1.25; the validation result (50%) before
    # "Finish training" is not the test result
    assert rows == [["fewshot", "oxford_pets", "CoOp", "vit_b16_ep50/nctx16_cscFalse_ctpend", "16", "2",
                     "71.25 ± 1.25", "-"]]


def test_gate_verdict_counts_and_medians(runs_root):
    rows = table_rows(summarize([runs_root], tables=("gates",)), "plain", "Gates")
    # medians of (0.001, 0.002, 0.01), (0.01, 0.02, 0.03) and (0.0, 0.5, 2.0); 3 training runs
    # whose verdicts differ (collapsed, collapsed, healthy): the seeds do not agree
    assert rows == [["base2new/train_base", "dsA", "CoOpGated", "c1@mlp", "16", "length (mlp)", "3",
                     "collapsed 2, healthy 1", "no", "0.002", "0.02", "0.50"]]


def test_delta_names_how_many_seeds_it_rests_on():
    assert format_cell(Delta(1.234, 2, 3), "plain", 2) == "+1.23 (2 seeds)"
    assert format_cell(Delta(-0.5, 3, 3), "plain", 2) == "-0.50"


def test_layouts_of_gatescope_and_the_original_code():
    key = parse_run_dir("/o/base2new/test_new/eurosat/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed3")
    assert (key.protocol, key.phase, key.dataset, key.trainer, key.shots, key.seed) == (
        "base2new", "test_new", "eurosat", "MaPLe", 16, 3)
    key = parse_run_dir("/o/evaluation/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/imagenet_a/seed1")
    assert (key.protocol, key.phase, key.cfg, key.dataset) == (
        "dg", "test", "vit_b16_c4_ep10_batch1_ctxv1", "imagenet_a")
    key = parse_run_dir("/o/xd/test/dtd/shots_16/CoOpGated/demo@mlp/seed2")
    assert (key.protocol, key.phase, key.cfg) == ("xd", "test", "demo@mlp")
    assert parse_run_dir("/o/somewhere/else") is None


def test_log_parser_ignores_results_of_an_unfinished_training():
    log = coop_log(70.0, 1).split("Finish training")[0]
    assert parse_log(log)["accuracy"] is None
    assert parse_log(coop_log(70.0, 1))["accuracy"] == 70.0


def test_summarize_without_runs_says_so(tmp_path, capsys):
    assert summarize_main([str(tmp_path)]) == 1
    assert "no runs under" in capsys.readouterr().err


def test_base2new_scripts_train_test_skip_and_summarize(demo_root, tmp_path):
    """scripts/base2new_train.sh then base2new_test.sh on the demo (1 epoch), in the layout."""
    env = {**os.environ, "DATA": demo_root, "OUTPUT": str(tmp_path / "output"), "HF_HUB_OFFLINE": "1",
           "PYTHON": sys.executable}
    args = ["gatescope_demo", "1", "CoOp", "demo", "2", "OPTIM.MAX_EPOCH", "1"]

    def script(name):
        done = subprocess.run(["bash", os.path.join(REPO, "scripts", name), *args], env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout
    script("base2new_train.sh")
    script("base2new_test.sh")
    train = run_dir(str(tmp_path / "output"), "base2new", "train_base", "gatescope_demo", 2, "CoOp", "demo", 1)
    test = run_dir(str(tmp_path / "output"), "base2new", "test_new", "gatescope_demo", 2, "CoOp", "demo", 1)
    assert is_complete(train) and is_complete(test) and last_epoch(train) == 1
    assert "so skip this job" in script("base2new_test.sh")
    rows = table_rows(summarize([str(tmp_path / "output")]), "plain", "Base-to-new")
    assert [row[:5] for row in rows] == [["gatescope_demo", "CoOp", "demo", "2", "1"]]
    with open(os.path.join(test, "results.json")) as f:
        assert rows[0][6] == f"{json.load(f)['results']['test']['accuracy']:.2f} ± 0.00"


def test_a_run_counts_as_the_trainer_that_ran(tmp_path):
    """The study's CoOp configs with USE_GATE run CoOpGated: results.json says so, and the delta
    is taken against CoOp's only config on that dataset."""
    out = str(tmp_path)
    for trainer, folder, cfg, accuracy in (("CoOp", "CoOp", "vit_b16_ep50", 70.0),
                                           ("CoOpGated", "CoOp", "vit_b16_ep50_gate_scalar", 71.5)):
        write_results(run_dir(out, "fewshot", "", "eurosat", 16, folder, cfg, 1), trainer, 1, accuracy, "all", False)
    rows = table_rows(summarize([out], tables=("accuracy",)), "plain", "Accuracy")
    assert rows == [["fewshot", "eurosat", "CoOp", "vit_b16_ep50", "16", "1", "70.00 ± 0.00", "-"],
                    ["fewshot", "eurosat", "CoOpGated", "vit_b16_ep50_gate_scalar", "16", "1", "71.50 ± 0.00",
                     "+1.50"]]


def write_gated_runs(out, trainer, cfg, verdicts, accuracy=70.0, record_parent=True, parent="CoOp"):
    """One fewshot run per seed of `trainer`, each with one gate of the given verdict (None: ungated)."""
    for seed, verdict in enumerate(verdicts, 1):
        folder = run_dir(out, "fewshot", "", "dsV", 16, trainer, cfg, seed)
        write_results(folder, trainer, seed, accuracy + seed, "all", False)
        if record_parent:
            with open(os.path.join(folder, "results.json")) as f:
                record = json.load(f)
            write_json(os.path.join(folder, "results.json"), {**record, "parent_trainer": parent})
        if verdict is not None:
            gate = {"gate": "mlp", "verdict": verdict, "rho_median": 0.1, "input_std": 0.1, "delta_acc": 0.0}
            write_json(os.path.join(folder, "diagnostics", "summary.json"), {"gates": {"length": gate}})


def test_verdict_counts_take_any_verdict_and_flag_cells_whose_seeds_disagree(tmp_path):
    """No list of verdicts is assumed: a new one (here `inert`) is counted like the others."""
    out = str(tmp_path)
    write_gated_runs(out, "CoOpGated", "c1", ["healthy", "inert", "healthy"])
    write_gated_runs(out, "CoCoOpGated", "c1", ["inert", "inert"], parent="CoCoOp")
    write_gated_runs(out, "MaPLeGated", "c1", ["collapsed"], parent="MaPLe")
    rows = {row[2]: row[7:9] for row in table_rows(summarize([out], tables=("gates",)), "plain", "Gates")}
    assert rows == {"CoOpGated": ["healthy 2, inert 1", "no"], "CoCoOpGated": ["inert 2", "yes"],
                    "MaPLeGated": ["collapsed 1", "-"]}


def test_the_parent_recorded_by_the_run_gives_any_trainer_its_delta(tmp_path):
    """A plugin's trainer, unknown to this installation, declares its parent on its class; the run
    records it in results.json and the delta column follows."""
    out = str(tmp_path)
    write_gated_runs(out, "CoOp", "c1", [None, None], accuracy=60.0, parent=None)
    write_gated_runs(out, "PluginRoutedCoOp", "c1", [None, None], accuracy=65.0, parent="CoOp")
    rows = table_rows(summarize([out], tables=("accuracy",)), "plain", "Accuracy")
    assert [row[2] for row in rows] == ["CoOp", "PluginRoutedCoOp"] and rows[1][-1] == "+5.00"


def test_runs_without_a_recorded_parent_use_the_installed_trainers_class(tmp_path):
    """Runs written before results.json recorded the parent: CoOpGated's class names CoOp; a
    trainer that is not installed gets no delta rather than a guess."""
    out = str(tmp_path)
    write_gated_runs(out, "CoOp", "c1", [None], accuracy=60.0, record_parent=False)
    write_gated_runs(out, "CoOpGated", "c1", [None], accuracy=61.5, record_parent=False)
    write_gated_runs(out, "NotInstalledGated", "c1", [None], accuracy=70.0, record_parent=False)
    rows = {row[2]: row[-1] for row in table_rows(summarize([out], tables=("accuracy",)), "plain", "Accuracy")}
    assert rows == {"CoOp": "-", "CoOpGated": "+1.50", "NotInstalledGated": "-"}


def test_every_gated_trainer_names_a_registered_parent():
    import trainers  # noqa: F401
    from trainers.engine import TRAINER_REGISTRY

    parents = {name: getattr(TRAINER_REGISTRY.get(name), "PARENT_TRAINER", None)
               for name in TRAINER_REGISTRY.registered_names()}
    assert {k: v for k, v in parents.items() if v} == {
        "CoOpGated": "CoOp", "CoCoOpGated": "CoCoOp", "MaPLeGated": "MaPLe", "AdaptiveMaPLe": "MaPLe",
        "AdaptiveBiDirMaPLe": "BiDirMaPLe", "ParamMatched": "BiDirMaPLe", "BiasMatched": "MaPLe",
        # the study's variants and controls of AdaptiveBiDirMaPLe inherit its parent
        "AdaptiveTrain": "BiDirMaPLe", "AdaptiveFreezeEarly": "BiDirMaPLe", "AdaptiveAlwaysFrozen": "BiDirMaPLe",
        "AdaptiveExplicitReg": "BiDirMaPLe", "ImprovedAdaptiveBiDirMaPLe": "BiDirMaPLe"}
    assert all(parent in TRAINER_REGISTRY for parent in parents.values() if parent)


def test_variants_table_compares_with_the_baseline_in_the_grids_order(tmp_path):
    """The study's view: a row per trainer and variant (`<cfg>~<variant>` folders), Δ vs a baseline
    trainer on the same seeds, verdict counts with the seeds' agreement."""
    from trainers.tools.summarize import SummaryOptions, summarize_runs

    out = str(tmp_path)
    acc = {("CoOp", "demo~none"): (30.0, 34.0), ("CoOpGated", "demo~none"): (35.0, 36.0),
           ("CoOpGated", "demo~gradnorm"): (31.0, 33.0)}
    for (trainer, cfg), by_seed in acc.items():
        for seed, accuracy in enumerate(by_seed, 1):
            folder = run_dir(out, "fewshot", "", "multidomain", 16, trainer, cfg, seed)
            write_results(folder, trainer, seed, accuracy, "all", False)
            if trainer != "CoOp":
                gate = {"gate": "softmax", "verdict": "collapsed" if seed == 1 else "healthy",
                        "rho_median": 0.001 * seed, "input_std": 0.01 * seed, "delta_acc": 0.5 * seed}
                write_json(os.path.join(folder, "diagnostics", "summary.json"), {"gates": {"pool": gate}})
    options = SummaryOptions(tables=("variants",), baseline="CoOp", title="Study: {dataset} task", variant="remedy",
                             trainers=("CoOp", "CoOpGated"), variants=("none", "gradnorm"))
    [table] = summarize_runs(find_runs(out), options=options)
    assert table.title == "Study: multidomain task"
    assert table.headers[:6] == ["trainer", "cfg", "remedy", "seeds", "accuracy", "Δ vs CoOp"]
    coop, gated, gradnorm = table.rows
    # CoOp: mean 32, population std 2; CoOpGated: 35.5 ± 0.5, delta ((35-30) + (36-34)) / 2 = 3.5
    assert coop[:3] == ["CoOp", "demo", "none"] and (coop[4].mean, coop[4].std) == (32.0, 2.0) and coop[5] is None
    assert gated[:3] == ["CoOpGated", "demo", "none"] and (gated[4].mean, gated[4].std) == (35.5, 0.5)
    assert (gated[5].value, gated[5].count) == (3.5, 2)
    assert gated[6:9] == ["pool (softmax)", "collapsed 1, healthy 1", "no"]
    assert gated[9:12] == [pytest.approx(0.0015), pytest.approx(0.015), pytest.approx(0.75)]
    assert gradnorm[2] == "gradnorm" and gradnorm[5].value == pytest.approx(0.0)
