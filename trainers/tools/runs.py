"""One run folder -> a `Run`: what it is, whether it finished, its test accuracy, its gates.

Sources, in order of trust:
- the folder's path, when it follows a known layout (`layout.parse_run_dir`), except for the
  trainer, which results.json names as it ran;
- `results.json` (written by gatescope at every test): metadata and the test accuracy;
- `log.txt` (runs of the original CoOp code have only this): the `** Arguments **` and
  `** Config **` blocks for metadata, and Dassl's `=> result ... * accuracy: X%` block after
  `Finish training` (or anywhere in an `--eval-only` run) for the accuracy, as CoOp's
  `parse_test_res.py` reads it;
- `diagnostics/summary.json`: the gates' verdicts and statistics (gated runs only);
- `failures.jsonl` records written by `gatescope sweep`: why a run failed.

Also a small command line for the protocol scripts:
    python -m trainers.tools.runs --complete DIR     (exit 0 when DIR holds a finished run)
    python -m trainers.tools.runs --last-epoch DIR   (the epoch of DIR's last checkpoint)
"""
import argparse
import glob
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field

import yaml

from gates.plumbing import read_jsonl

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
    its files) and how it ended. `status` is "ok", "incomplete" or "failed"; `reason` says why not ok."""

    path: str
    status: str
    accuracy: float = None  # final test accuracy in %, None unless status is "ok"
    reason: str = ""
    source: str = ""  # "results.json", "log.txt" or "failures.jsonl"
    gates: dict = field(default_factory=dict)  # diagnostics/summary.json's "gates"
    eval_only: bool = False  # an --eval-only run (it trained nothing)


# ------------------------------------------------------------------ completeness
def read_results(path):
    """`results.json` of a run folder as a dict, or None when absent or unreadable."""
    try:
        with open(os.path.join(path, RESULTS_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def final_test_accuracy(record):
    """The test accuracy of a finished run's results.json record, or None if it did not finish.

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
    """`parse_log` of the newest log of a run folder (None when it has none)."""
    files = log_files(path)
    if not files:
        return None
    with open(files[-1], encoding="utf-8", errors="replace") as f:
        return parse_log(f.read())


def is_complete(path):
    """True when the run folder holds a finished run (results.json or, for old runs, log.txt)."""
    record = read_results(path)
    if record is not None:
        return final_test_accuracy(record) is not None
    log = read_log(path) if os.path.isdir(path) else None
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


def read_gates(path):
    """`diagnostics/summary.json`'s per-gate entries ({} for ungated or undiagnosed runs)."""
    try:
        with open(os.path.join(path, SUMMARY_FILE), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return {}, None
    gates = summary.get("gates") if isinstance(summary, dict) else None
    return (gates if isinstance(gates, dict) else {}), summary


def _protocol_from_fields(subsample, eval_only):
    """Protocol and phase of a run outside the known layouts, from what it trained on."""
    if subsample == "base" and not eval_only:
        return "base2new", "train_base"
    if subsample == "new" and eval_only:
        return "base2new", "test_new"
    return "other", ""


def read_run(path):
    """A `Run` for one folder holding results.json and/or a log (see the module docstring)."""
    path = os.path.abspath(path)
    key = parse_run_dir(path)
    record = read_results(path)
    log = read_log(path)
    gates, summary = read_gates(path)
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
    config_file = args.get("config_file", "")
    cfg = _value(key and key.cfg, (summary or {}).get("config_name"),
                 os.path.splitext(os.path.basename(config_file))[0] if config_file not in ("", "None") else "",
                 default="-")
    eval_only = bool(record_or_empty.get("eval_only")) or str(args.get("eval_only")).lower() == "true"
    if key is not None:
        protocol, phase = key.protocol, key.phase
    else:
        subsample = _value(record_or_empty.get("subsample_classes"),
                           _config_get(config, "DATASET", "SUBSAMPLE_CLASSES"), default="all")
        protocol, phase = _protocol_from_fields(subsample, eval_only)

    if record is not None:
        accuracy, source = final_test_accuracy(record), RESULTS_FILE
    else:
        accuracy, source = (log or {}).get("accuracy"), LOG_PREFIX
    status, reason = "ok", ""
    if accuracy is None:
        last_line = (log or {}).get("last_line", "")
        failed = bool(re.search(r"Error|Traceback|Killed", last_line))
        status = "failed" if failed else "incomplete"
        if failed:
            reason = f"log ends with: {last_line}"
        elif record is not None:
            reason = (f"results.json has no final test (epoch {record.get('epoch')} of "
                      f"{record.get('max_epoch')}); last log line: {last_line or '-'}")
        else:
            reason = f"log.txt has no final '* accuracy:' result; last line: {last_line or '-'}"
    return Run(path=path, protocol=protocol, phase=phase, dataset=str(dataset), trainer=str(trainer),
               cfg=str(cfg), shots=int(shots), seed=int(seed), status=status, accuracy=accuracy,
               reason=reason, source=source, gates=gates, eval_only=eval_only)


def is_run_folder(path):
    return os.path.isfile(os.path.join(path, RESULTS_FILE)) or bool(log_files(path))


def read_failures(root):
    """Failure records of `gatescope sweep` under `root` (every `failures.jsonl`), by output folder.

    Only records of runs inside `root` count, so summarising one dataset's folder does not list
    another dataset's failures.
    """
    root, failures = os.path.abspath(root), {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in RUN_SUBFOLDERS]
        if FAILURES_FILE not in filenames:
            continue
        for record in read_jsonl(os.path.join(dirpath, FAILURES_FILE)):
            if not isinstance(record, dict) or not record.get("output_dir"):
                continue
            output_dir = os.path.abspath(record["output_dir"])
            if output_dir == root or output_dir.startswith(root + os.sep):
                failures[output_dir] = record
    return failures


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
    failed run; a path that is neither is an incomplete run ("not run").
    """
    failures = failures or {}
    runs = []
    for path in paths:
        path = os.path.abspath(path)
        record = failures.get(path)
        if os.path.isdir(path) and is_run_folder(path):
            run = read_run(path)
            if record is not None and run.status != "ok":
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
    with the failure records of sweeps under `root` merged in (see `read_runs`)."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder of runs")
    folders = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in RUN_SUBFOLDERS)
        if is_run_folder(dirpath):
            folders.append(dirpath)
    failures = read_failures(root)
    return read_runs(sorted(set(folders) | set(failures)), failures)


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
