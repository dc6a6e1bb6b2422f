"""One run folder -> a `Run`: what it is, whether it finished, its test accuracy, its gates.

Sources, in order of trust:
- the folder's path, when it follows a known layout (`layout.parse_run_dir`), except for the
  trainer, which results.json names as it ran;
- `results.json` (written by gatescope at every test): metadata, the test accuracy, the
  trainer's parent (`parent_trainer`, for the "Δ vs parent" column), the count of skipped
  non-finite steps (`nonfinite_skips`) and whether the parameters ended finite
  (`finite_end_state`); each field is checked for its type and meaning (`check_record`);
- `log.txt` (runs of the original CoOp code have only this): the `** Arguments **` and
  `** Config **` blocks for metadata, and Dassl's `=> result ... * accuracy: X%` block after
  `Finish training` (or anywhere in an `--eval-only` run) for the accuracy, as CoOp's
  `parse_test_res.py` reads it;
- `diagnostics/summary.json`: the gates' verdicts and statistics (gated runs only);
- `failures.jsonl` records written by `gatescope sweep`: why a run failed.

A folder that cannot be read as a run is never an exception that stops a summary: it becomes a
`Run` with status "damaged" and a reason naming the file and what is wrong with it; a fault
that leaves the accuracy readable (a torn summary.json, a bad gate entry) is kept in the run's
`notes` and the run still counts.

Also a small command line for the protocol scripts:
    python -m trainers.tools.runs --complete DIR     (exit 0 when DIR holds a finished run)
    python -m trainers.tools.runs --last-epoch DIR   (the epoch of DIR's last checkpoint)
"""
import argparse
import glob
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field

import yaml


from .layout import RunKey, parse_run_dir

RESULTS_FILE = "results.json"
SUMMARY_FILE = os.path.join("diagnostics", "summary.json")
FAILURES_FILE = "failures.jsonl"
LOG_PREFIX = "log.txt"
# Dassl >= 0.6.1 prints the first, older Dassl (MaPLe's, PromptSRC's) the second.
END_OF_TRAINING = ("Finish training", "Finished training")
# Folders a run writes inside its own folder; never runs themselves.
RUN_SUBFOLDERS = {"tensorboard", "diagnostics"}

_ACCURACY = re.compile(r"^\* accuracy: ([-+0-9.eE]+)%", re.M)
_RESULT = re.compile(r"^=> result\s*$", re.M)
_ARG_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): (.*)$")
_LAST_CHECKPOINT = re.compile(r"model\.pth\.tar-(\d+)")


@dataclass
class Run(RunKey):
    """One run folder, read: what it is (the `RunKey` fields, from its path or, for other layouts,
    its files) and how it ended.

    `status`: "ok" (counted), "incomplete", "failed", "damaged" (a file that cannot be read as
    it should) or "non-finite" (finished with non-finite parameters: its accuracy is not
    averaged); `reason` says why not ok. `notes` lists what is wrong in a run that still counts."""

    path: str
    status: str
    accuracy: float = None  # final test accuracy in %, None unless status is "ok" or "non-finite"
    reason: str = ""
    source: str = ""  # "results.json", "log.txt" or "failures.jsonl"
    gates: dict = field(default_factory=dict)  # diagnostics/summary.json's "gates"
    eval_only: bool = False  # an --eval-only run (it trained nothing)
    nonfinite_skips: int = 0  # optimizer steps skipped for non-finite values (TRAIN.NONFINITE skip)
    parent: str = None  # results.json's `parent_trainer`: the ungated trainer this one extends
    parent_known: bool = False  # whether results.json records the parent (runs before it did not)
    notes: list = field(default_factory=list)


# ------------------------------------------------------------------ results.json: read and checked
# The fields summarize reads -> the types they may have (bool is kept apart from int: JSON true
# is not a seed; null: not known). Fields it does not read are not checked, so a writer may add its own.
NULL = type(None)
RECORD_TYPES = {
    "trainer": (str,), "dataset": (str,), "subsample_classes": (str,), "seed": (int,), "num_shots": (int,),
    "epoch": (int,), "max_epoch": (int,), "nonfinite_skips": (int, NULL), "eval_only": (bool,),
    "finite_end_state": (bool, NULL), "parent_trainer": (str, NULL), "results": (dict,),
}


def _is_type(value, types):
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_name(value):
    return "null" if value is None else type(value).__name__


def check_record(record):
    """What is wrong with a results.json record (a list of sentences; empty when it can be used).

    Checked: each field summarize reads has its type (`RECORD_TYPES`); `results` maps each split
    to an object whose `accuracy`, if there, is a number, and the test accuracy lies in [0, 100];
    a training run (not `eval_only`) says `epoch` and `max_epoch`, without which nobody can tell
    whether it finished; `nonfinite_skips` >= 0.
    """
    problems = []
    for name, types in RECORD_TYPES.items():
        if name in record and not _is_type(record[name], types):
            expected = " or ".join("null" if t is NULL else t.__name__ for t in types)
            problems.append(f"`{name}` is {_type_name(record[name])} {record[name]!r:.40}, expected {expected}")
    if "results" not in record:
        problems.append("no `results` field")
    elif isinstance(record["results"], dict):
        for split, metrics in record["results"].items():
            if not isinstance(metrics, dict):
                problems.append(f"`results.{split}` is {_type_name(metrics)}, expected an object of metrics")
                continue
            value = metrics.get("accuracy", 0)
            if not _is_type(value, (int, float)):
                problems.append(f"`results.{split}.accuracy` is {_type_name(value)} {value!r:.40}, expected a number")
        accuracy = (record["results"].get("test") or {}) if isinstance(record["results"].get("test"), dict) else {}
        value = accuracy.get("accuracy")
        if _is_type(value, (int, float)) and not (math.isfinite(value) and 0 <= value <= 100):
            problems.append(f"`results.test.accuracy` is {value}, outside 0..100")
    if record.get("eval_only") is not True:
        missing = [name for name in ("epoch", "max_epoch") if name not in record]
        if missing:
            problems.append(f"no {' or '.join(f'`{m}`' for m in missing)} field, so it cannot tell whether "
                            "training finished")
    if _is_type(record.get("nonfinite_skips"), (int,)) and record["nonfinite_skips"] < 0:
        problems.append(f"`nonfinite_skips` is {record['nonfinite_skips']}, expected >= 0")
    return problems


def load_results(path):
    """(record, problem) for a run folder's results.json: (None, None) when there is none;
    (None, why) when it cannot be read, is not JSON, not an object or fails `check_record`."""
    file = os.path.join(path, RESULTS_FILE)
    if not os.path.lexists(file):
        return None, None
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        return None, f"{RESULTS_FILE} cannot be read: {e.strerror or e}"
    except UnicodeDecodeError as e:
        return None, f"{RESULTS_FILE} is not UTF-8 text (damaged file?): {e.reason} at byte {e.start}"
    try:
        record = json.loads(text)
    except ValueError as e:
        what = "is empty" if not text.strip() else f"is not valid JSON (a torn or damaged write?): {e}"
        return None, f"{RESULTS_FILE} {what}"
    if not isinstance(record, dict):
        return None, f"{RESULTS_FILE} holds a JSON {_type_name(record)}, not an object"
    problems = check_record(record)
    if problems:
        return None, f"{RESULTS_FILE}: " + "; ".join(problems)
    return record, None


def read_results(path):
    """`results.json` of a run folder as a checked dict, or None when absent or unusable."""
    return load_results(path)[0]


def final_test_accuracy(record):
    """The test accuracy of a finished run's (checked) results.json record, or None if it did not finish.

    Finished: a `test` result exists and either the run was `--eval-only` or it trained all
    `max_epoch` epochs (a killed run keeps the val results of earlier epochs, never a final test).
    """
    test = (record.get("results") or {}).get("test") or {}
    if "accuracy" not in test:
        return None
    max_epoch = record.get("max_epoch")
    if not record.get("eval_only") and max_epoch is not None and record.get("epoch", 0) < max_epoch:
        return None
    return float(test["accuracy"])


def log_files(path):
    """The run's logs, oldest first: `log.txt`, then `log.txt-<timestamp>` of later restarts."""
    names = [n for n in os.listdir(path) if n == LOG_PREFIX or n.startswith(LOG_PREFIX + "-")]
    return [os.path.join(path, n) for n in sorted(names, key=lambda n: (n != LOG_PREFIX, n))]


def parse_log(text):
    """Read a Dassl/CoOp `log.txt`: its arguments, config, and final test accuracy.

    Returns dict(args=..., config=..., accuracy=float|None, last_line=str). The accuracy is that
    of the last `=> result` block after the end-of-training line; in an `--eval-only` run (or a
    log that never trained) that of the last block anywhere. Blocks printed during training
    (validation with TEST.FINAL_MODEL best_val) never count as the final test.
    """
    args = _parse_args_block(text)
    config = _parse_config_block(text)
    ends = [text.rfind(signal) for signal in END_OF_TRAINING]
    end = max(ends)
    eval_only = str(args.get("eval_only", "")).lower() == "true"
    trained = "epoch [" in text or end >= 0
    start = 0 if eval_only or not trained else end
    accuracy = None
    if start >= 0:
        for block in _RESULT.finditer(text, start):
            found = _ACCURACY.search(text, block.end())
            if found is not None:
                accuracy = float(found.group(1))
    lines = [line for line in text.splitlines() if line.strip()]
    return {"args": args, "config": config, "accuracy": accuracy, "last_line": lines[-1] if lines else ""}


def _parse_args_block(text):
    """`key: value` lines between `** Arguments **` and `** Config **` (CoOp's print_args)."""
    start, end = text.find("** Arguments **"), text.find("** Config **")
    if start < 0 or end < start:
        return {}
    args = {}
    for line in text[start:end].splitlines():
        match = _ARG_LINE.match(line)
        if match:
            args[match.group(1)] = match.group(2).strip()
    return args


def _parse_config_block(text):
    """The yacs dump after `** Config **` as a dict; {} when it is not readable YAML."""
    start = text.find("** Config **")
    if start < 0:
        return {}
    lines = text[start:].splitlines()[2:]  # the title and its row of stars
    block = []
    for line in lines:
        if line.startswith(("Collecting env info", "** System info")):
            break
        block.append(line)
    try:
        config = yaml.safe_load("\n".join(block))
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def read_log(path):
    """`parse_log` of the newest log of a run folder (None when it has none). An unreadable log
    raises OSError (read_run keeps that as a note)."""
    files = log_files(path)
    if not files:
        return None
    with open(files[-1], encoding="utf-8", errors="replace") as f:
        return parse_log(f.read())


def is_complete(path):
    """True when the run folder holds a finished run: a usable results.json with its final test
    (a damaged one is not complete, so a sweep runs it again, which rewrites it), or for old
    runs without one, a final `* accuracy:` in log.txt. A results.json marked "stopped" (the run
    stopped after writing it, e.g. a plugin failed after the final test) is not complete."""
    if not os.path.isdir(path):
        return False
    if os.path.lexists(os.path.join(path, RESULTS_FILE)):
        record, _ = load_results(path)
        return record is not None and not record.get("stopped") and final_test_accuracy(record) is not None
    try:
        log = read_log(path)
    except OSError:
        return False
    return log is not None and log["accuracy"] is not None


def last_epoch(path):
    """The epoch of the last checkpoint saved in a run folder (its `<model>/checkpoint` file)."""
    for pointer in sorted(glob.glob(os.path.join(path, "*", "checkpoint"))):
        with open(pointer, encoding="utf-8") as f:
            match = _LAST_CHECKPOINT.search(f.read())
        if match:
            return int(match.group(1))
    raise FileNotFoundError(
        f"no checkpoint in {path} (expected <model>/checkpoint naming model.pth.tar-N): "
        "has this training run finished? Set LOADEP to choose the epoch yourself")


# ------------------------------------------------------------------ reading runs
def _value(*candidates, default=None):
    for value in candidates:
        if value not in (None, ""):
            return value
    return default


def _config_get(config, section, key):
    node = config.get(section)
    return node.get(key) if isinstance(node, dict) else None


# summary.json gate-entry fields the tables read, and their types.
GATE_FIELDS = {"gate": (str,), "verdict": (str,), "rho_median": (int, float, NULL),
               "input_std": (int, float, NULL), "delta_acc": (int, float, NULL)}


def read_gates(path):
    """(gates, summary, notes) from `diagnostics/summary.json`: its per-gate entries ({} for
    ungated or undiagnosed runs), the whole summary, and what is wrong with it. An entry that is
    not a mapping is dropped; a field of the wrong type is removed from its entry; both noted."""
    file = os.path.join(path, SUMMARY_FILE)
    if not os.path.lexists(file):
        return {}, None, []
    try:
        with open(file, encoding="utf-8") as f:
            summary = json.load(f)
    except OSError as e:
        return {}, None, [f"{SUMMARY_FILE} cannot be read ({e.strerror or e}): its gates are not counted"]
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        return {}, None, [f"{SUMMARY_FILE} is not valid JSON (torn or damaged: {e}): its gates are not counted"]
    if not isinstance(summary, dict):
        return {}, None, [f"{SUMMARY_FILE} holds a JSON {_type_name(summary)}, not an object: "
                          "its gates are not counted"]
    gates = summary.get("gates", {})
    if not isinstance(gates, dict):
        return {}, summary, [f"{SUMMARY_FILE}: `gates` is {_type_name(gates)}, not an object: "
                             "its gates are not counted"]
    kept, notes = {}, []
    for place, entry in gates.items():
        if not isinstance(entry, dict):
            notes.append(f"{SUMMARY_FILE}: gate `{place}` is {_type_name(entry)}, not an object: not counted")
            continue
        entry = dict(entry)
        for name, types in GATE_FIELDS.items():
            if name in entry and not _is_type(entry[name], types):
                notes.append(f"{SUMMARY_FILE}: gate `{place}` has `{name}` = {entry[name]!r:.40}, "
                             f"not a {' or '.join(t.__name__ for t in types if t is not NULL)}: ignored")
                del entry[name]
        kept[str(place)] = entry
    return kept, summary, notes


def _protocol_from_fields(subsample, eval_only):
    """Protocol and phase of a run outside the known layouts, from what it trained on."""
    if subsample == "base" and not eval_only:
        return "base2new", "train_base"
    if subsample == "new" and eval_only:
        return "base2new", "test_new"
    return "other", ""


def _as_int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def read_run(path):
    """A `Run` for one folder holding results.json and/or a log (see the module docstring)."""
    path = os.path.abspath(path)
    key = parse_run_dir(path)
    record, problem = load_results(path)
    notes = []
    try:
        log = read_log(path)
    except OSError as e:
        log = None
        notes.append(f"{LOG_PREFIX} cannot be read: {e.strerror or e}")
    gates, summary, gate_notes = read_gates(path)
    notes += gate_notes
    args = (log or {}).get("args", {})
    config = (log or {}).get("config", {})
    record_or_empty = record or {}

    # The trainer that ran (results.json) before the folder's: the study's `CoOp` configs with
    # TRAINER.COOP.USE_GATE run CoOpGated, and count as that (with CoOp as their parent).
    trainer = _value(record_or_empty.get("trainer"), key and key.trainer, args.get("trainer"),
                     _config_get(config, "TRAINER", "NAME"), default="?")
    dataset = _value(key and key.dataset, record_or_empty.get("dataset"),
                     _config_get(config, "DATASET", "NAME"), default="?")
    seed = _value(key and key.seed, record_or_empty.get("seed"), args.get("seed"), config.get("SEED"), default=-1)
    shots = _value(key and key.shots, record_or_empty.get("num_shots"),
                   _config_get(config, "DATASET", "NUM_SHOTS"), default=-1)
    config_file = str(args.get("config_file", ""))
    config_name = (summary or {}).get("config_name")
    cfg = _value(key and key.cfg, config_name if isinstance(config_name, str) else None,
                 os.path.splitext(os.path.basename(config_file))[0] if config_file not in ("", "None") else "",
                 default="-")
    eval_only = record_or_empty.get("eval_only") is True or str(args.get("eval_only")).lower() == "true"
    if key is not None:
        protocol, phase = key.protocol, key.phase
    else:
        subsample = _value(record_or_empty.get("subsample_classes"),
                           _config_get(config, "DATASET", "SUBSAMPLE_CLASSES"), default="all")
        protocol, phase = _protocol_from_fields(subsample, eval_only)

    run = Run(path=path, protocol=protocol, phase=phase, dataset=str(dataset), trainer=str(trainer),
              cfg=str(cfg), shots=_as_int(shots, -1), seed=_as_int(seed, -1), status="ok", gates=gates,
              eval_only=eval_only, notes=notes,
              nonfinite_skips=record_or_empty.get("nonfinite_skips") or 0,
              parent=record_or_empty.get("parent_trainer"), parent_known="parent_trainer" in record_or_empty)
    if problem is not None:
        run.status, run.reason, run.source = "damaged", problem, RESULTS_FILE
        return run
    if record is not None and record.get("stopped"):
        run.status, run.source = "failed", RESULTS_FILE
        run.reason = f"stopped after its results were written: {record['stopped']}; the same command resumes it"
        return run
    if record is not None:
        run.accuracy, run.source = final_test_accuracy(record), RESULTS_FILE
    else:
        run.accuracy, run.source = (log or {}).get("accuracy"), LOG_PREFIX
    if run.accuracy is None:
        last_line = (log or {}).get("last_line", "")
        failed = bool(re.search(r"Error|Traceback|Killed", last_line))
        run.status = "failed" if failed else "incomplete"
        if failed:
            run.reason = f"log ends with: {last_line}"
        elif record is not None:
            run.reason = (f"results.json has no final test (epoch {record.get('epoch')} of "
                          f"{record.get('max_epoch')}); last log line: {last_line or '-'}")
        else:
            run.reason = f"log.txt has no final '* accuracy:' result; last line: {last_line or '-'}"
    elif record_or_empty.get("finite_end_state") is False:
        run.status = "non-finite"
        run.reason = (f"training ended with non-finite parameters ({run.nonfinite_skips} non-finite step(s) "
                      f"skipped): its test accuracy {run.accuracy:.2f} is not averaged")
    elif run.nonfinite_skips:
        run.notes.append(f"{run.nonfinite_skips} non-finite step(s) skipped (TRAIN.NONFINITE skip); "
                         "ended finite, so it is counted")
    return run


def is_run_folder(path):
    try:
        return os.path.lexists(os.path.join(path, RESULTS_FILE)) or bool(log_files(path))
    except OSError:  # an unlistable folder: reported by read_run as damaged
        return True


def read_failures(root):
    """Failure records of `gatescope sweep` under `root` (every `failures.jsonl`), by output folder,
    and the `Run`s ("damaged") of lines that are not such records.

    Only records of runs inside `root` count, so summarising one dataset's folder does not list
    another dataset's failures.
    """
    root, failures, damaged = os.path.abspath(root), {}, []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in RUN_SUBFOLDERS]
        if FAILURES_FILE not in filenames:
            continue
        file = os.path.join(dirpath, FAILURES_FILE)
        try:
            with open(file, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except OSError as e:
            damaged.append(_damaged_file(file, f"cannot be read: {e.strerror or e}"))
            continue
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                damaged.append(_damaged_file(file, f"line {number} is not JSON (torn write?): {e}"))
                continue
            if not isinstance(record, dict) or not isinstance(record.get("output_dir"), str):
                damaged.append(_damaged_file(file, f"line {number} is not a failure record (an object with "
                                                   "`output_dir`)"))
                continue
            output_dir = os.path.abspath(record["output_dir"])
            if output_dir == root or output_dir.startswith(root + os.sep):
                failures[output_dir] = record
    return failures, damaged


def _damaged_file(path, reason):
    """A Run standing for a file that is not a run (a sweep's failures.jsonl) but is damaged."""
    return Run(protocol="other", phase="", dataset="?", trainer="?", cfg="-", shots=-1, seed=-1, path=path,
               status="damaged", reason=f"{os.path.basename(path)} {reason}", source=FAILURES_FILE)


def failure_reason(record):
    """One line for a sweep failure record: its step, exit status and the last line of its error."""
    tail = [line for line in str(record.get("error_tail", "")).splitlines() if line.strip()]
    last = tail[-1].strip() if tail else "no output"
    return f"{record.get('step', 'run')} exited with {record.get('returncode')}: {last}"


def _failed_run(output_dir, record):
    """A Run for a recorded failure that left no run folder behind."""
    key = parse_run_dir(output_dir) or RunKey(protocol="other", phase="", dataset="?", trainer="?", cfg="-",
                                               shots=-1, seed=-1)
    return Run(**asdict(key), path=output_dir, status="failed", reason=failure_reason(record), source=FAILURES_FILE)


def read_runs(paths, failures=None):
    """A `Run` for each run folder in `paths`, with sweep failure records merged in.

    A run that did not finish gets its recorded error as the reason; a recorded failure with no
    run folder (a run that died before its log was opened, e.g. on a bad config) is listed as a
    failed run; a path that is neither is an incomplete run ("not run"). A folder that cannot be
    read at all is a "damaged" run saying why; reading goes on with the next.
    """
    failures = failures or {}
    runs = []
    for path in paths:
        path = os.path.abspath(path)
        record = failures.get(path)
        if os.path.isdir(path) and is_run_folder(path):
            try:
                run = read_run(path)
            except Exception as e:  # noqa: BLE001 - one unreadable folder must not stop the others
                run = _failed_run(path, {})
                run.status, run.source = "damaged", ""
                run.reason = f"cannot be read as a run: {type(e).__name__}: {e}"
            if record is not None and run.status not in ("ok", "damaged", "non-finite"):
                run.status, run.reason = "failed", failure_reason(record)
        elif record is not None:
            run = _failed_run(path, record)
        else:
            run = _failed_run(path, {})
            run.status, run.reason, run.source = "incomplete", "not run (no results.json or log.txt)", ""
        runs.append(run)
    return runs


def find_runs(root):
    """Every run under `root` (a run folder itself, or any folder above runs), sorted by path,
    with the failure records of sweeps under `root` merged in (see `read_runs`) and damaged
    failure records listed as damaged runs."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder of runs")
    folders = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in RUN_SUBFOLDERS)
        if is_run_folder(dirpath):
            folders.append(dirpath)
    failures, damaged = read_failures(root)
    return read_runs(sorted(set(folders) | set(failures)), failures) + damaged


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainers.tools.runs",
                                     description="Checks the protocol scripts make on run folders.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--complete", metavar="DIR", help="exit 0 if DIR holds a finished run, 1 if not")
    action.add_argument("--last-epoch", metavar="DIR", help="print the epoch of DIR's last checkpoint")
    args = parser.parse_args(argv)
    if args.complete:
        return 0 if is_complete(args.complete) else 1
    try:
        print(last_epoch(args.last_epoch))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
