"""`gatescope sweep GRID.yaml`: every run of a study grid as a Ray task, resumable.

- Ray starts locally (`ray.init()`, the machine's cores, or `--num-cpus`) unless a cluster is
  given by `--address` or `RAY_ADDRESS`. On a cluster every node needs gatescope installed and
  the grid's output, data and config paths on a shared filesystem (the driver decides what is
  finished by reading the run folders, and the tasks write them).
- Each run (a `grid.Cell`: e.g. train on base, then test on new) is one Ray task with the
  grid's `resources` (num_cpus, num_gpus; `--cpus-per-run`, `--gpus-per-run`). Inside it each
  step is `python -m trainers.cli train ...` in a subprocess, so a crash, an abort or an
  out-of-memory kill of one run never takes the driver or other runs down. A step's console
  output goes to `<run>/sweep_output.txt`. The subprocess leads a process group of its own: a
  timeout (`resources.timeout_s`) or a cancel (Ctrl-C of the sweep; Ray's `ray.cancel`, which
  raises KeyboardInterrupt in the task) ends the whole group (SIGTERM, then SIGKILL after
  `KILL_GRACE_S`), so no process that train.py started outlives its step. (Ray itself, when it
  stops a worker, kills only the worker's direct children.)
- Finished runs (complete results.json, or a final `* accuracy:` in an old log) are skipped, also
  step by step inside a run, so rerunning a sweep starts only what is missing.
- A failed step is recorded with the tail of its output in `<output>/sweeps/<name>/failures.jsonl`
  (rewritten by each sweep: it lists the failures of the latest sweep) and the rest go on; a
  failed training stops the later steps of its own run only.
- A tqdm bar shows done / running / failed / skipped; at the end the summary tables of the
  grid's runs are printed (`gatescope summarize` on exactly those runs, with the tables and
  options of the grid's `summary` section). With the regime table, the map is also drawn in
  `<output>/regime_map.png` and the last line printed is its `best: ...` line (see `regime`).
"""
import argparse
import contextlib
import datetime
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from gates.plumbing import append_jsonl

from .grid import GridError, Step, load_grid
from .runs import FAILURES_FILE, is_complete, last_epoch, read_runs
from .regime import plot_regime_map
from .summarize import SummaryOptions, best_setting_line, group_runs, regime_rows_of, summarize_runs
from .tables import FORMATS, render

STEP_OUTPUT = "sweep_output.txt"
REGIME_PNG = "regime_map.png"  # written in the grid's output folder when its summary has the regime table
ERROR_TAIL_LINES = 30
# Seconds a step's process group gets after SIGTERM (train.py then writes its diagnostics and
# says how to resume) before SIGKILL ends whatever is left of it.
KILL_GRACE_S = 10.0
RAY_MISSING = ("gatescope sweep runs on Ray, which is not installed: pip install 'gatescope[sweep]' "
               "(or pip install ray)")


@dataclass
class SweepReport:
    """What a sweep did: cells by outcome (ids), failure records, where they were written."""

    total: int
    skipped: list = field(default_factory=list)
    finished: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # failure records (dicts), one per failed step
    failures_path: str = ""

    @property
    def started(self):
        return self.total - len(self.skipped)


def train_command(argv):
    """The subprocess command of one step (the interpreter the task runs in, so a cluster node's own)."""
    return [sys.executable, "-m", "trainers.cli", "train", *argv]


def _tail(path, lines=ERROR_TAIL_LINES):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def kill_process_group(process, grace_s=None):
    """End `process` and every process in its group (it was started as a group leader): SIGTERM,
    up to `grace_s` seconds for the leader to exit, then SIGKILL to the group, which also reaches
    children that outlived the leader. Returns the leader's exit status."""
    grace_s = KILL_GRACE_S if grace_s is None else grace_s
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # the group has no process left
        if sig == signal.SIGTERM:
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
    return process.wait()


@contextlib.contextmanager
def cancellable():
    """Python's own SIGINT handler while the block runs in the main thread. A cancel arrives as
    _thread.interrupt_main(), which does nothing when SIGINT is ignored or left to the OS, and a
    shell starts background jobs (`cmd &`, nohup) with SIGINT ignored, which their children
    inherit: there the step would outlive its cancel. The previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def run_step(step, env=None, timeout_s=None, cwd=None):
    """Run one step unless it already finished. Returns a dict with its status and, if it failed,
    its return code, command and the tail of its output. On a timeout, and when the caller is
    interrupted (KeyboardInterrupt, SystemExit: a cancelled task), the step's whole process group
    is ended first (see `kill_process_group`)."""
    result = {"phase": step.phase or "train", "output_dir": step.output_dir}
    if is_complete(step.output_dir):
        return {**result, "status": "skipped"}
    try:
        argv = step.argv(last_epoch(step.model_dir) if step.model_dir else None)
    except FileNotFoundError as e:
        return {**result, "status": "failed", "returncode": None, "command": "", "error_tail": str(e)}
    command = train_command(argv)
    os.makedirs(step.output_dir, exist_ok=True)
    output_path = os.path.join(step.output_dir, STEP_OUTPUT)
    run_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(output_path, "w", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=run_env,
                                   cwd=cwd if cwd and os.path.isdir(cwd) else None, start_new_session=True)
        try:
            # With a timeout, wait() polls (sleeps of <= 50 ms); a blocking waitpid would never
            # see Ray's cancel, which arrives by _thread.interrupt_main and wakes no system call.
            with cancellable():
                returncode = process.wait(timeout=timeout_s if timeout_s is not None else threading.TIMEOUT_MAX)
        except subprocess.TimeoutExpired:
            kill_process_group(process)
            returncode = "timeout"
            out.write(f"\ngatescope sweep: stopped after timeout_s={timeout_s} s (its process group was ended)\n")
        except BaseException:
            kill_process_group(process)
            out.write("\ngatescope sweep: cancelled (its process group was ended)\n")
            raise
    if returncode == 0 and is_complete(step.output_dir):
        return {**result, "status": "ok"}
    tail = _tail(output_path)
    if returncode == 0:  # exited cleanly but wrote no final result: say so rather than count it
        tail += "\ngatescope sweep: the run exited with 0 but left no final test result"
    return {**result, "status": "failed", "returncode": returncode, "command": shlex.join(command),
            "error_tail": tail}


def run_cell(payload, tracker=None):
    """Run one cell's steps in order (the body of a Ray task). A failed training step stops the
    steps after it; a failed evaluation does not stop the other evaluations of the run."""
    if tracker is not None:
        tracker.start.remote(payload["id"])
    results = []
    for step_dict in payload["steps"]:
        step = Step(**step_dict)
        outcome = run_step(step, payload.get("env"), payload.get("timeout_s"), payload.get("cwd"))
        results.append(outcome)
        if outcome["status"] == "failed" and not step.model_dir:
            break
    return {"id": payload["id"], "steps": results}


class SweepTracker:
    """A zero-CPU Ray actor the tasks report their start to, so the bar can show what is running."""

    def __init__(self):
        self.started = set()

    def start(self, cell_id):
        self.started.add(cell_id)

    def started_ids(self):
        return sorted(self.started)


def _init_ray(address, num_cpus):
    try:
        import ray
    except ImportError as e:
        raise RuntimeError(RAY_MISSING) from e
    if ray.is_initialized():
        return ray, False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:  # a cluster brings its own resources: Ray refuses num_cpus when connecting
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray, True


def _failure_records(cell_id, outcome, when):
    return [{"cell": cell_id, "step": step["phase"], "output_dir": step["output_dir"],
             "returncode": step.get("returncode"), "command": step.get("command", ""),
             "error_tail": step.get("error_tail", ""), "time": when}
            for step in outcome["steps"] if step["status"] == "failed"]


def run_sweep(grid, address=None, num_cpus=None, cpus_per_run=None, gpus_per_run=None, progress=True):
    """Run every unfinished cell of `grid` on Ray and return a SweepReport (see the module docstring)."""
    from tqdm import tqdm

    resources = grid.resources
    num_cpus_per_run = float(cpus_per_run if cpus_per_run is not None else resources.get("num_cpus", 1))
    num_gpus_per_run = float(gpus_per_run if gpus_per_run is not None else resources.get("num_gpus", 0))
    env = dict(grid.env)
    env.setdefault("OMP_NUM_THREADS", str(max(1, int(num_cpus_per_run))))  # parallel runs, no oversubscription
    sweep_dir = os.path.join(grid.output, "sweeps", grid.name)
    os.makedirs(sweep_dir, exist_ok=True)
    report = SweepReport(total=len(grid.cells), failures_path=os.path.join(sweep_dir, FAILURES_FILE))
    todo = []
    for cell in grid.cells:
        if all(is_complete(step.output_dir) for step in cell.steps):
            report.skipped.append(cell.id)
        else:
            todo.append(cell)
    with open(report.failures_path, "w", encoding="utf-8"):
        pass  # the file lists the failures of the latest sweep only
    if not todo:
        return report

    ray, started_here = _init_ray(address, num_cpus)
    try:
        tracker = ray.remote(SweepTracker).options(num_cpus=0).remote()
        task = ray.remote(run_cell).options(num_cpus=num_cpus_per_run, num_gpus=num_gpus_per_run, max_retries=0)
        pending = {}
        for cell in todo:
            payload = {"id": cell.id, "steps": [asdict(step) for step in cell.steps], "env": env,
                       "timeout_s": resources.get("timeout_s"), "cwd": os.getcwd()}
            pending[task.remote(payload, tracker)] = cell
        bar = tqdm(total=report.total, initial=len(report.skipped), desc=f"sweep {grid.name}", unit="run",
                   disable=not progress, file=sys.stderr)
        done_ids, shown = set(), None
        with bar, _cancel_on_interrupt(ray, pending):
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    cell = pending.pop(ref)
                    when = datetime.datetime.now().isoformat(timespec="seconds")
                    try:
                        outcome = ray.get(ref)
                    except Exception as e:  # the task itself died (node lost, worker killed)
                        outcome = {"id": cell.id, "steps": [{"phase": "ray", "output_dir": cell.steps[0].output_dir,
                                                             "status": "failed", "returncode": None,
                                                             "error_tail": f"{type(e).__name__}: {e}"}]}
                    records = _failure_records(cell.id, outcome, when)
                    append_jsonl(report.failures_path, records)
                    report.failed += records
                    if not records:
                        report.finished.append(cell.id)
                    done_ids.add(cell.id)
                    bar.update(1)
                running = len(set(ray.get(tracker.started_ids.remote())) - done_ids)
                counts = dict(done=len(report.finished), running=running,
                              failed=len({r["cell"] for r in report.failed}), skipped=len(report.skipped))
                if counts != shown:  # redraw on change only, so a log file gets one line per change
                    bar.set_postfix(counts)
                    shown = counts
    finally:
        if started_here:
            ray.shutdown()
    return report


@contextlib.contextmanager
def _cancel_on_interrupt(ray, pending):
    """On Ctrl-C (or any error) in the driver: cancel the tasks still pending, which raises
    KeyboardInterrupt inside each running one, so `run_step` ends its step's process group; wait
    for that before Ray is shut down (a worker killed by the shutdown could not do it)."""
    try:
        yield
    except BaseException:
        refs = list(pending)
        for ref in refs:
            ray.cancel(ref)
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=KILL_GRACE_S + 5)
        raise


def grid_runs(grid, report=None):
    """The `Run`s of every step of the grid, with this sweep's failures merged in."""
    failures = {os.path.abspath(r["output_dir"]): r for r in (report.failed if report else [])}
    return read_runs([step.output_dir for cell in grid.cells for step in cell.steps], failures)


def describe(grid):
    """The commands a sweep would run, one line per step, marked when already finished."""
    lines = []
    for cell in grid.cells:
        lines.append(f"# {cell.id}")
        for step in cell.steps:
            mark = "done " if is_complete(step.output_dir) else ""
            epoch = "<last epoch of the training>" if step.model_dir else None
            argv = step.flags + (["--load-epoch", epoch] if epoch else []) + step.opts
            lines.append(f"{mark}{shlex.join(train_command(argv))}")
    return "\n".join(lines)


def add_run_arguments(parser):
    """The flags of where and how a grid runs, shared by `gatescope sweep` and `gatescope study`."""
    parser.add_argument("--address", default=None,
                        help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray on this machine)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray instance (default: all of this machine's)")
    parser.add_argument("--cpus-per-run", type=float, default=None, help="CPUs per run (default: the grid's, else 1)")
    parser.add_argument("--gpus-per-run", type=float, default=None, help="GPUs per run (default: the grid's, else 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--format", default="plain", choices=FORMATS, help="format of the summary tables")


def run_and_report(grid, args, prog, tables_only=False):
    """Run the grid's unfinished cells (unless `tables_only`), print its summary tables and what
    happened. Returns the exit status: 0 all finished, 1 some failed, 2 no Ray, 130 interrupted."""
    started, report = time.time(), None
    if not tables_only:
        try:
            report = run_sweep(grid, args.address, args.num_cpus, args.cpus_per_run, args.gpus_per_run,
                               progress=not args.no_progress)
        except RuntimeError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"\n{prog}: interrupted; the runs in progress were stopped. The same command continues "
                  "where it stopped (finished runs are skipped).", file=sys.stderr)
            return 130
    runs = grid_runs(grid, report)
    options = SummaryOptions.from_grid(grid)
    tables = summarize_runs(runs, options=options)
    print("\n\n".join(render(table, args.format) for table in tables))
    status = 0
    if report is not None:
        failed_cells = sorted({r["cell"] for r in report.failed})
        print(f"\nsweep {grid.name}: {report.total} runs; {len(report.skipped)} already finished, "
              f"{len(report.finished)} finished now, {len(failed_cells)} failed "
              f"({time.time() - started:.0f} s)")
        for record in report.failed:
            tail = [line for line in record["error_tail"].splitlines() if line.strip()]
            print(f"  FAILED {record['cell']} [{record['step']}]: {tail[-1] if tail else 'no output'}")
        if report.failed:
            print(f"  details: {report.failures_path}")
        status = 1 if report.failed else 0
    if "regime" in options.tables:  # the map as a picture, then its answer as the last line
        picture = plot_regime_map(regime_rows_of(group_runs(runs)[0], options), os.path.join(grid.output, REGIME_PNG))
        if picture:
            print(f"\nregime map: {picture}")
        print(best_setting_line(runs, options))
    return status


def build_parser(prog="gatescope sweep"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("grid", metavar="GRID.yaml", help="the study grid (see trainers/tools/grid.py)")
    add_run_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="apply the grid's `quick` section (a smoke run)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands of every run and exit")
    return parser


def sweep_main(argv=None, prog="gatescope sweep"):
    args = build_parser(prog).parse_args(argv)
    try:
        grid = load_grid(args.grid, quick=args.quick)
    except GridError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(describe(grid))
        return 0
    return run_and_report(grid, args, prog)


if __name__ == "__main__":
    sys.exit(sweep_main())
