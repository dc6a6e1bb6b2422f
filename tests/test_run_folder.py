"""A run folder has one writer and one identity, and faults of the machine stay in their box (issue 21).

One writer: two real train.py processes started together into one --output-dir; the second is
refused at once, naming the first. One identity: config.yaml carries a checksum, a resume is
refused only for keys that change the computation. Faults: a log file that cannot be written,
a console that is gone, a full disk, temp files of killed writes, SIGTERM and Ctrl-C.
"""
import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

from conftest import build_demo_trainer, demo_args
from test_kill_resume import ENV, command

FAST = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2, "TRAIN.PRINT_FREQ", 100)


def dead_pid():
    """The PID of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def wait_for(path, text, process, timeout=240):
    """Wait until the file `path` contains `text` (False if `process` ends first or time runs out)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isfile(path) and text in open(path, encoding="utf-8", errors="replace").read():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.2)
    return False


# ---------------------------------------------------------------- one writer
def test_two_runs_started_together_into_one_folder_one_is_refused_naming_the_other(demo_root, tmp_path):
    out = tmp_path / "run"
    # Long enough that the winner still trains when the loser reaches the lock.
    cmd = command("CoOpGated", demo_root, out, ("OPTIM.MAX_EPOCH", 2000, "DATASET.NUM_SHOTS", 2,
                                                "DIAGNOSTICS.PLOTS", False, "TRAIN.PRINT_FREQ", 1))
    logs = [tmp_path / f"{n}.out" for n in "ab"]
    errs = [tmp_path / f"{n}.err" for n in "ab"]
    processes = [subprocess.Popen(cmd, env=ENV, stdout=open(o, "w"), stderr=open(e, "w")) for o, e in zip(logs, errs)]
    try:
        deadline = time.time() + 240
        while all(p.poll() is None for p in processes) and time.time() < deadline:
            time.sleep(0.2)
        ended = [i for i, p in enumerate(processes) if p.poll() is not None]
        assert len(ended) == 1, "one of the two should have been refused at once"
        loser, winner = ended[0], 1 - ended[0]
        assert processes[loser].returncode != 0
        refusal = errs[loser].read_text()
        assert "RunFolderBusyError" in refusal and f"PID {processes[winner].pid}" in refusal, refusal[-2000:]
        assert "train.py --trainer CoOpGated" in refusal and f"kill {processes[winner].pid}" in refusal
        assert not os.path.exists(out / "log.txt-2") and len([n for n in os.listdir(out) if n.startswith("log")]) == 1

        # The winner trains on; SIGTERM stops it with one line saying where and how to resume.
        assert wait_for(logs[winner], "epoch [3/2000]", processes[winner])
        processes[winner].send_signal(signal.SIGTERM)
        processes[winner].wait(timeout=120)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert processes[winner].returncode == -signal.SIGTERM
    last = errs[winner].read_text().strip().splitlines()[-1]
    assert re.match(r"Stopped by SIGTERM in epoch \d+/2000 \(batch 1/1\); no checkpoint was written yet, so a "
                    r"resume starts from epoch 1\. Resume with the same command: python .*train.py --trainer "
                    r"CoOpGated .*--output-dir " + re.escape(str(out)), last), last
    # One writer's records: every step once, in order.
    steps = [json.loads(line)["step"] for line in open(out / "diagnostics" / "steps.jsonl")]
    assert steps == list(range(len(steps))) and len(steps) >= 3
    assert not (out / ".gatescope.lock.json").exists()  # the holder record goes with the holder


def test_eval_only_into_a_training_folder_keeps_the_training_record(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, opts=FAST)
    trainer.train()
    record = (tmp_path / "results.json").read_text()
    evaluation = build_demo_trainer(demo_root, tmp_path, opts=FAST)
    evaluation.load_model(str(tmp_path), epoch=1)
    evaluation.eval_only = True
    evaluation.test()
    assert (tmp_path / "results.json").read_text() == record  # the training run's record, untouched
    separate = json.loads((tmp_path / "results_eval.json").read_text())
    assert separate["eval_only"] is True and "accuracy" in separate["results"]["test"]
    # In a folder of its own an evaluation writes results.json, as CoOp's protocol expects.
    alone = build_demo_trainer(demo_root, tmp_path / "eval", opts=FAST)
    alone.load_model(str(tmp_path), epoch=1)
    alone.eval_only = True
    alone.test()
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["eval_only"] is True


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    from trainers.engine.run_folder import HOLDER_FILE, hold_run_folder, holds_run_folder

    with hold_run_folder(str(tmp_path), command="python train.py --x"):
        with hold_run_folder(str(tmp_path)):  # the command line's hold and the trainer's nest
            holder = json.loads((tmp_path / HOLDER_FILE).read_text())
            assert holder["pid"] == os.getpid() and holder["command"] == "python train.py --x"
        assert holds_run_folder(str(tmp_path))
    assert not holds_run_folder(str(tmp_path)) and not (tmp_path / HOLDER_FILE).exists()
    # Another process can take it now (the same OS lock; plain filelock keeps the child light).
    code = ("from filelock import FileLock\n"
            f"FileLock({str(tmp_path / '.gatescope.lock')!r}).acquire(timeout=0); print('held')")
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "held", result.stderr[-2000:]


# ---------------------------------------------------------------- one identity
def setup(root, out, opts=()):
    import trainers

    return trainers.setup_cfg(demo_args(root, out, opts=opts))


def test_a_damaged_config_yaml_is_reported_as_damaged_with_the_file_to_delete(demo_root, tmp_path):
    from trainers.engine.run_folder import DamagedRunFileError, claim_output_dir

    cfg = setup(demo_root, tmp_path)
    claim_output_dir(cfg, str(tmp_path))
    path = tmp_path / "config.yaml"
    whole = path.read_text()
    assert whole.splitlines()[-1].startswith("# gatescope config sha256: ")
    damaged = {
        "cut off": whole[: len(whole) // 2],
        "edited": whole.replace("LR: 0.002", "LR: 0.003"),
        "cut off, written before the checksum": whole[: whole.index("TRAINER:") + 40],
    }
    for why, text in damaged.items():
        path.write_text(text)
        with pytest.raises(DamagedRunFileError, match=r'config.yaml" is damaged: .*Delete it and run the same command'):
            claim_output_dir(cfg, str(tmp_path))
    # TRAIN.OVERWRITE replaces it; a whole file of an older version (no checksum line) still resumes.
    assert claim_output_dir(cfg, str(tmp_path), overwrite=True) == ["config.yaml"]
    path.write_text(cfg.dump())
    assert claim_output_dir(cfg, str(tmp_path)) == []


def test_resume_ignores_paths_cache_locations_and_keys_of_uninstalled_plugins(demo_root, tmp_path, capsys):
    from trainers.engine.run_folder import claim_output_dir, run_config_text

    out = str(tmp_path)
    first = setup(demo_root, out, ("DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "cache_a")))
    claim_output_dir(first, out)
    moved = setup(demo_root, out, ("DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "cache_b"),
                                   "TRAIN.CHECKPOINT_FREQ", 5, "DIAGNOSTICS.PLOTS", False,
                                   "DIAGNOSTICS.ENABLED", False))
    assert claim_output_dir(moved, out) == []
    # The folder's config names a key of a plugin that is not installed any more.
    text = run_config_text(first).replace("OPTIM:\n", "MYPLUGIN:\n  STRENGTH: 3\nOPTIM:\n", 1)
    body = text[: text.rindex("# gatescope")]
    import hashlib
    checksum = hashlib.sha256(body.encode()).hexdigest()
    (tmp_path / "config.yaml").write_text(body + f"# gatescope config sha256: {checksum}\n")
    assert claim_output_dir(first, out) == []
    assert "MYPLUGIN.STRENGTH" in capsys.readouterr().out
    # What changes the computation still blocks.
    with pytest.raises(RuntimeError, match=r"OPTIM.LR: 0.002 in the folder, 0.01 now"):
        claim_output_dir(setup(demo_root, out, ("OPTIM.LR", 0.01)), out)


# ---------------------------------------------------------------- faults of the machine
class BrokenConsole:
    def write(self, msg):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def fileno(self):
        raise OSError("no descriptor")


class Console:
    def __init__(self):
        self.text = ""

    def write(self, msg):
        self.text += msg

    def flush(self):
        pass


def test_the_logger_reports_a_full_disk_and_a_lost_console_once_and_never_raises(tmp_path):
    from trainers.engine.utils import Logger, LogFile

    console = Console()
    full = LogFile("/dev/full", open("/dev/full", "a", encoding="utf-8"))  # every write: ENOSPC
    stream = Logger(console, full)
    for _ in range(3):
        print("epoch [1/2] loss 1.0", file=stream)
    stream.flush()
    notices = [line for line in console.text.splitlines() if line.startswith("gatescope:")]
    assert len(notices) == 1 and '"/dev/full" stops here: cannot write' in notices[0] and "space" in notices[0]
    assert console.text.count("epoch [1/2] loss 1.0") == 3  # the run's output goes on

    log = LogFile(str(tmp_path / "log.txt"), open(tmp_path / "log.txt", "a", encoding="utf-8"))
    stream = Logger(BrokenConsole(), log)
    for _ in range(3):
        print("still training", file=stream)
    stream.flush()
    text = (tmp_path / "log.txt").read_text()
    assert text.count("the console (stdout) is gone (BrokenPipeError") == 1 and text.count("still training") == 3


def file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_disk_that_fills_mid_run_stops_it_with_one_plain_line_naming_the_file(demo_root, tmp_path):
    out = tmp_path / "run"
    cmd = command("CoOp", demo_root, out, FAST + ("OPTIM.MAX_EPOCH", 2, "DATALOADER.FEATURE_CACHE.DIR", tmp_path))
    # Files may grow to 10 kB: config.yaml (~8 kB) fits, the log (~11 kB) fills up mid-run, a
    # checkpoint (~19 kB) does not fit: as a disk that fills while the run goes.
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300,
                            preexec_fn=file_size_limit(10_000))
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f'gatescope: the run stopped: cannot write "{out}/prompt_learner/model.pth.tar-2": '
                           "File too large"), last
    assert "the same command resumes" in last and "Traceback" not in result.stderr
    notice = [line for line in result.stdout.splitlines() if line.startswith("gatescope: the log file")]
    assert len(notice) == 1 and str(out / "log.txt") in notice[0]
    assert "epoch [2/2]" in result.stdout  # the run went on after its log filled up


def test_a_lost_stdout_does_not_stop_the_run_and_the_log_says_so(demo_root, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(command("CoOp", demo_root, out, FAST), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader goes away (`train.py ... | head -1`, a closed terminal)
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 0, stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert log.count("the console (stdout) is gone (BrokenPipeError") == 1
    assert "* accuracy:" in log and (out / "results.json").exists()


def test_ctrl_c_stops_training_with_one_line_saying_where_and_how_to_resume(demo_root, tmp_path):
    out = tmp_path / "run"
    cmd = command("CoOp", demo_root, out, ("OPTIM.MAX_EPOCH", 5000, "DATASET.NUM_SHOTS", 2, "TRAIN.CHECKPOINT_FREQ",
                                           2, "TRAIN.PRINT_FREQ", 1))
    log = tmp_path / "out.txt"
    process = subprocess.Popen(cmd, env=ENV, stdout=open(log, "w"), stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(log, "epoch [5/5000]", process)
        process.send_signal(signal.SIGINT)
        stderr = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGINT
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    match = re.match(r"Stopped by Ctrl-C \(SIGINT\) in epoch (\d+)/5000 \(batch 1/1\); the last complete checkpoint "
                     r"is epoch (\d+) \(.*model\.pth\.tar-(\d+)\)\. Resume with the same command: python .*train.py ",
                     last)
    assert match, last
    stopped, checkpoint = int(match.group(1)), int(match.group(2))
    assert checkpoint % 2 == 0 and stopped - 2 <= checkpoint < stopped
    assert (out / "prompt_learner" / f"model.pth.tar-{checkpoint}").exists()


def test_temp_files_of_interrupted_writes_are_removed_when_the_run_starts_again(demo_root, tmp_path):
    from gates.plumbing import temp_path_for

    out = tmp_path / "run"
    trainer = build_demo_trainer(demo_root, out, opts=FAST)
    pid = dead_pid()
    # What writes killed half-way leave: config.yaml, results.json, the diagnostics' files, a checkpoint.
    debris = [out / f".config.yaml.{pid}.0123abcd.tmp", out / f".results.json.{pid}.0123abcd89abcdef.tmp",
              out / "diagnostics" / f".summary.json.{pid}.0123abcd.tmp",
              out / "prompt_learner" / f".model.pth.tar-1.{pid}.0123abcd.tmp"]
    for path in debris:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    # A nested run folder of its own (another process may be writing there) is left alone.
    nested = out / "other_run"
    nested.mkdir()
    (nested / "config.yaml").write_text("x")
    kept = nested / f".results.json.{pid}.0123abcd.tmp"
    kept.write_bytes(b"half")
    trainer.train()
    assert [p for p in debris if p.exists()] == [] and kept.exists()
    assert not any(name.endswith(".tmp") for _, _, names in os.walk(out / "prompt_learner") for name in names)
    assert temp_path_for(out / "x").startswith(str(out / ".x."))


def test_a_shared_folder_loses_only_the_temp_files_of_writers_that_are_gone(tmp_path):
    """Dataset folders and caches are shared by concurrent runs: the next write of a file removes
    the temp files of earlier writes of it whose process has ended, never those of a live one."""
    from gates.plumbing import atomic_write_bytes, remove_stale_temp_files
    from trainers.data.demo_images import generate_demo_dataset

    gone, alive = dead_pid(), os.getppid()
    fewshot = tmp_path / "split_fewshot"
    fewshot.mkdir()
    stale = fewshot / f".shot_2-seed_1.pkl.{gone}.0123abcd.tmp"
    live = fewshot / f".shot_2-seed_1.pkl.{alive}.0123abcd.tmp"
    other_file = fewshot / f".shot_4-seed_1.pkl.{gone}.0123abcd.tmp"
    for path in (stale, live, other_file):
        path.write_bytes(b"half")
    atomic_write_bytes(fewshot / "shot_2-seed_1.pkl", b"whole")
    assert not stale.exists() and live.exists() and other_file.exists()
    assert remove_stale_temp_files(str(fewshot)) == [str(other_file)] and live.exists()

    # A generated dataset is built in a temp folder and renamed into place; a killed generation's
    # folder is removed by the next one.
    leftover = tmp_path / f".demo.tmp-{gone}-0123abcd"
    (leftover / "images").mkdir(parents=True)
    generate_demo_dataset(str(tmp_path / "demo"), n_train=1, n_val=1, n_test=1, image_size=8,
                          classes=("circle", "square"), domains=("light",))
    assert not leftover.exists() and (tmp_path / "demo").is_dir()


def test_a_read_only_output_folder_is_one_plain_line_naming_it(demo_root, tmp_path, monkeypatch, capsys):
    """Refused before anything is written: the lock is the run's first write in its folder."""
    from trainers.cli import train_main

    out = tmp_path / "read_only"
    out.mkdir()
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only_open)
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # train_main guards the streams; put them back after
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    args = demo_args(demo_root, out)
    argv = ["--trainer", "CoOp", "--config-file", args.config_file, "--dataset-config-file", args.dataset_config_file,
            "--root", demo_root, "--output-dir", str(out), *map(str, FAST)]
    with pytest.raises(SystemExit) as stopped:
        train_main(argv)
    assert stopped.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f'gatescope: the run stopped: cannot write "{out}/.gatescope.lock": Read-only file '
                              "system (that file system is read-only: use a writable --output-dir)"), err[-1]
    assert os.listdir(out) == []
