"""`gatescope summarize` on runs that went wrong: damaged files, non-finite training, one phase of
base-to-new given alone. Hand-made run folders with known numbers; no training."""
import json
import os

import pytest

from test_summarize import table_rows, write_json, write_results
from trainers.tools.layout import phase_sibling, run_dir
from trainers.tools.runs import find_runs, is_complete
from trainers.tools.summarize import display_path, summarize

GOOD = {1: 80.0, 2: 84.0}  # two readable runs beside the damaged ones: mean 82, population std 2


def results_record(seed, accuracy=80.0, **changes):
    record = {"trainer": "CoOp", "dataset": "Demo", "seed": seed, "backbone": "ViT-B/16", "num_shots": 16,
              "subsample_classes": "all", "epoch": 5, "max_epoch": 5, "eval_only": False,
              "parent_trainer": None, "results": {"test": {"accuracy": accuracy, "error_rate": 100 - accuracy}}}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not DROP}


DROP = object()  # a field left out of the record

# kind -> (the bytes of results.json, or a function of the folder making the damage; what the reason names)
DAMAGED_RESULTS = {
    "torn results.json": (b'{"trainer": "CoOp", "results": {"test": {"accur', "not valid JSON"),
    "empty results.json": (b"", "is empty"),
    "results.json holding a list": (b"[1, 2, 3]", "JSON list, not an object"),
    "results.json not UTF-8": (b'{"trainer": "Co\xff\xfeOp"}', "not UTF-8"),
    "results a list": (results_record(3, results=[80.0]), "`results` is list"),
    "accuracy a string": (results_record(4, results={"test": {"accuracy": "85%"}}), "`results.test.accuracy` is str"),
    "accuracy out of range": (results_record(5, accuracy=150.0), "outside 0..100"),
    "no results": (results_record(6, results=DROP), "no `results` field"),
    "no max_epoch": (results_record(7, max_epoch=DROP), "no `max_epoch` field"),
    "epoch a string": (results_record(8, epoch="5"), "`epoch` is str"),
    "seed a string": ({**results_record(9), "seed": "one"}, "`seed` is str"),
    "eval_only a string": (results_record(10, eval_only="false"), "`eval_only` is str"),
    "negative skips": (results_record(11, nonfinite_skips=-1), "`nonfinite_skips` is -1"),
    "results.json a folder": (None, "cannot be read"),
}


def make_damaged_tree(out):
    """The two good runs, then one run folder per kind of damage (seeds 3, 4, ...)."""
    for seed, accuracy in GOOD.items():
        write_json(os.path.join(run_dir(out, "fewshot", "", "dsD", 16, "CoOp", "c1", seed), "results.json"),
                   results_record(seed, accuracy))
    folders = {}
    for seed, (kind, (content, _)) in enumerate(DAMAGED_RESULTS.items(), start=3):
        folder = run_dir(out, "fewshot", "", "dsD", 16, "CoOp", "c1", seed)
        os.makedirs(folder)
        path = os.path.join(folder, "results.json")
        if content is None:
            os.makedirs(path)
        elif isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        else:
            write_json(path, content)
        folders[kind] = folder
    return folders


def test_every_kind_of_damaged_run_is_a_row_saying_why_and_the_rest_is_summarised(tmp_path):
    out = str(tmp_path / "output")
    folders = make_damaged_tree(out)
    text = summarize([out], tables=("accuracy", "problems"))
    # the two readable runs are summarised as if the damaged ones were not there
    assert table_rows(text, "plain", "Accuracy") == [["fewshot", "dsD", "CoOp", "c1", "16", "2", "82.00 ± 2.00", "-"]]
    problems = {row[1]: row for row in table_rows(text, "plain", "Runs not counted")}
    for kind, folder in folders.items():
        row = problems[display_path(folder)]
        assert row[0] == "damaged", kind
        assert DAMAGED_RESULTS[kind][1] in row[2], (kind, row[2])
    assert len(problems) == len(DAMAGED_RESULTS)


def test_a_damaged_results_json_is_not_complete_so_a_sweep_runs_it_again(tmp_path):
    folders = make_damaged_tree(str(tmp_path))
    assert not any(is_complete(folder) for folder in folders.values())
    assert is_complete(run_dir(str(tmp_path), "fewshot", "", "dsD", 16, "CoOp", "c1", 1))


def test_damaged_diagnostics_are_warnings_and_the_accuracy_still_counts(tmp_path):
    out = str(tmp_path)
    gate = {"gate": "mlp", "verdict": "healthy", "rho_median": 0.1, "input_std": 0.2, "delta_acc": 1.0}
    damage = {1: b'{"gates": {"length": {"verdict": "hea',  # torn
              2: json.dumps({"gates": {"length": 7}}).encode(),  # an entry that is not an object
              3: json.dumps({"gates": {"length": {**gate, "rho_median": "big"}}}).encode(),  # a wrong type
              4: json.dumps({"gates": {"length": gate}}).encode()}
    for seed, content in damage.items():
        folder = run_dir(out, "fewshot", "", "dsD", 16, "CoOpGated", "c1", seed)
        write_json(os.path.join(folder, "results.json"), results_record(seed, 70.0 + seed, trainer="CoOpGated"))
        os.makedirs(os.path.join(folder, "diagnostics"))
        with open(os.path.join(folder, "diagnostics", "summary.json"), "wb") as f:
            f.write(content)
    text = summarize([out], tables=("accuracy", "gates", "problems"))
    assert table_rows(text, "plain", "Accuracy")[0][5:7] == ["4", "72.50 ± 1.12"]
    # seeds 3 and 4 have a readable gate; seed 3's rho is dropped, so rho's median is seed 4's
    assert table_rows(text, "plain", "Gates") == [
        ["fewshot", "dsD", "CoOpGated", "c1", "16", "length (mlp)", "2", "healthy 2", "yes", "0.1", "0.2", "1.00"]]
    warnings = [row for row in table_rows(text, "plain", "Runs not counted") if row[0] == "warning"]
    reasons = {row[1].rsplit("seed", 1)[1]: row[2] for row in warnings}
    assert "not valid JSON" in reasons["1"] and "is int, not an object" in reasons["2"]
    assert "`rho_median` = 'big'" in reasons["3"] and "4" not in reasons


def test_a_torn_line_of_a_sweeps_failure_records_is_reported(tmp_path):
    out = str(tmp_path)
    write_json(os.path.join(run_dir(out, "fewshot", "", "dsD", 16, "CoOp", "c1", 1), "results.json"),
               results_record(1))
    records = os.path.join(out, "sweeps", "g", "failures.jsonl")
    os.makedirs(os.path.dirname(records))
    with open(records, "w") as f:
        f.write(json.dumps({"cell": "x", "step": "train", "returncode": 1, "error_tail": "boom",
                            "output_dir": run_dir(out, "fewshot", "", "dsD", 16, "CoOp", "c1", 2)}) + "\n")
        f.write('["not", "a record"]\n{"cell": "y", "outp\n')
    rows = table_rows(summarize([out], tables=("problems",)), "plain", "Runs not counted")
    reasons = sorted(row[2] for row in rows if row[0] == "damaged")
    assert reasons == ["failures.jsonl line 2 is not a failure record (an object with `output_dir`)",
                       reasons[1]] and reasons[1].startswith("failures.jsonl line 3 is not JSON")
    assert any(row[0] == "failed" and row[2] == "train exited with 1: boom" for row in rows)


# ------------------------------------------------------------------ non-finite training
def test_non_finite_runs_are_flagged_and_a_non_finite_end_is_not_averaged(tmp_path):
    out = str(tmp_path)
    runs = {1: results_record(1, 80.0, nonfinite_skips=0, finite_end_state=True),
            2: results_record(2, 84.0, nonfinite_skips=3, finite_end_state=True),  # skipped 3 steps, ended finite
            3: results_record(3, 10.0, nonfinite_skips=7, finite_end_state=False)}  # ended with NaN weights
    for seed, record in runs.items():
        write_json(os.path.join(run_dir(out, "fewshot", "", "dsD", 16, "CoOp", "c1", seed), "results.json"), record)
    text = summarize([out], tables=("accuracy", "problems"))
    # seeds 1 and 2 are averaged (82 ± 2), seed 3 is not; the flags column says which is which
    assert table_rows(text, "plain", "Accuracy") == [
        ["fewshot", "dsD", "CoOp", "c1", "16", "2", "82.00 ± 2.00", "-",
         "skipped non-finite steps: seed 2 (3); non-finite end, not averaged: seed 3"]]
    rows = {row[1].rsplit("seed", 1)[1]: row for row in table_rows(text, "plain", "Runs not counted")}
    assert rows["3"][0] == "non-finite" and "10.00 is not averaged" in rows["3"][2] and "7 non-finite" in rows["3"][2]
    assert rows["2"][0] == "warning" and rows["2"][2].startswith("3 non-finite step(s) skipped")
    assert "1" not in rows


def test_without_non_finite_runs_there_is_no_flags_column(tmp_path):
    write_json(os.path.join(run_dir(str(tmp_path), "fewshot", "", "dsD", 16, "CoOp", "c1", 1), "results.json"),
               results_record(1, nonfinite_skips=0, finite_end_state=True))
    text = summarize([str(tmp_path)], tables=("accuracy",))
    assert "flags" not in text


def test_base2new_flags_join_both_phases(tmp_path):
    out = str(tmp_path)
    for seed, skips in ((1, 0), (2, 4)):
        train = run_dir(out, "base2new", "train_base", "dsA", 16, "CoOp", "c1", seed)
        test = run_dir(out, "base2new", "test_new", "dsA", 16, "CoOp", "c1", seed)
        write_json(os.path.join(train, "results.json"),
                   results_record(seed, 80.0, subsample_classes="base", nonfinite_skips=skips, finite_end_state=True))
        write_json(os.path.join(test, "results.json"),
                   results_record(seed, 60.0, subsample_classes="new", eval_only=True, epoch=0))
    rows = table_rows(summarize([out], tables=("base2new",)), "plain", "Base-to-new")
    assert rows == [["dsA", "CoOp", "c1", "16", "2", "80.00 ± 0.00", "60.00 ± 0.00", "68.57", "-",
                     "skipped non-finite steps: seed 2 (4)"]]


# ------------------------------------------------------------------ one phase of base-to-new
@pytest.fixture()
def base2new_tree(tmp_path):
    out = str(tmp_path / "output")
    for seed, (base, new) in {1: (80.0, 60.0), 2: (82.0, 64.0)}.items():
        for phase, acc, subsample in (("train_base", base, "base"), ("test_new", new, "new")):
            folder = run_dir(out, "base2new", phase, "dsA", 16, "CoOp", "c1", seed)
            write_results(folder, "CoOp", seed, acc, subsample, phase == "test_new")
    return out


@pytest.mark.parametrize("phase", ["train_base", "test_new"])
def test_one_phase_given_alone_finds_its_partners_in_the_sibling_folder(base2new_tree, phase):
    text = summarize([os.path.join(base2new_tree, "base2new", phase)])
    # base 81 ± 1, new 62 ± 2, HM 2*81*62/143 = 70.24: the same table as for the whole tree
    assert table_rows(text, "plain", "Base-to-new") == [
        ["dsA", "CoOp", "c1", "16", "2", "81.00 ± 1.00", "62.00 ± 2.00", "70.24", "-"]]
    assert "unpaired" not in text and summarize([base2new_tree]) == text


def test_a_single_run_folder_is_paired_with_its_partner(base2new_tree):
    folder = run_dir(base2new_tree, "base2new", "test_new", "dsA", 16, "CoOp", "c1", 2)
    rows = table_rows(summarize([folder]), "plain", "Base-to-new")
    assert rows == [["dsA", "CoOp", "c1", "16", "1", "82.00 ± 0.00", "64.00 ± 0.00", "71.89", "-"]]


def test_a_phase_without_partners_reports_its_own_accuracies(base2new_tree):
    import shutil

    shutil.rmtree(os.path.join(base2new_tree, "base2new", "test_new"))
    # seed 2's test_new run exists but crashed
    crashed = run_dir(base2new_tree, "base2new", "test_new", "dsA", 16, "CoOp", "c1", 2)
    os.makedirs(crashed)
    with open(os.path.join(crashed, "log.txt"), "w") as f:
        f.write("Traceback (most recent call last):\nRuntimeError: out of memory\n")
    text = summarize([os.path.join(base2new_tree, "base2new", "train_base")])
    # as parse_test_res.py on that folder: the base accuracies, mean 81 ± 1
    assert table_rows(text, "plain", "Accuracy") == [
        ["base2new/train_base", "dsA", "CoOp", "c1", "16", "2", "81.00 ± 1.00", "-"]]
    reasons = {row[1].rsplit("seed", 1)[1]: row[2] for row in table_rows(text, "plain", "Runs not counted")
               if row[0] == "unpaired"}
    expected = display_path(phase_sibling(run_dir(base2new_tree, "base2new", "train_base", "dsA", 16, "CoOp",
                                                  "c1", 1), "test_new"))
    assert f"no test_new run at {expected}" in reasons["1"] and "base2new_test.sh" in reasons["1"]
    assert "is failed: log ends with: RuntimeError: out of memory" in reasons["2"]


def test_phase_sibling_swaps_only_the_phase_folder():
    path = "/x/base2new/train_base/dsA/shots_16/CoOp/c1@mlp~none/seed1"
    assert phase_sibling(path, "test_new") == "/x/base2new/test_new/dsA/shots_16/CoOp/c1@mlp~none/seed1"
    assert phase_sibling(path, "train_base") is None
    assert phase_sibling("/x/fewshot/dsA/shots_16/CoOp/c1/seed1", "test_new") is None


def test_runs_are_read_in_one_pass_even_when_one_folder_raises(tmp_path, monkeypatch):
    """Whatever read_run did not foresee stays in that run's row."""
    from trainers.tools import runs as runs_module

    out = str(tmp_path)
    for seed in (1, 2):
        write_json(os.path.join(run_dir(out, "fewshot", "", "dsD", 16, "CoOp", "c1", seed), "results.json"),
                   results_record(seed))
    real = runs_module.read_run

    def flaky(path):
        if path.endswith("seed2"):
            raise MemoryError("simulated")
        return real(path)
    monkeypatch.setattr(runs_module, "read_run", flaky)
    runs = find_runs(out)
    assert [r.status for r in runs] == ["ok", "damaged"] and "MemoryError: simulated" in runs[1].reason
