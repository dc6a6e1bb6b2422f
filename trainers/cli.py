"""Command line: `train.py` (CoOp's flags, unchanged) and the `gatescope` command."""
import argparse
import os
import sys


def build_train_parser(prog="train.py"):
    """CoOp's train.py flags, same names and meaning."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="",
                        help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=-1, help="only positive value enables a fixed seed")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="",
                        help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    add_study_gate_flags(parser)
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options using the command-line")
    return parser


def add_study_gate_flags(parser):
    """The study's train.py gate flags; each sets TRAINER.COOP.* and TRAINER.COCOOP.* (see
    trainers/study_keys.py apply_study_gate_flags). A flag not given leaves the YAML value."""
    study = parser.add_argument_group("the study's gate flags (CoOp / CoCoOp)")
    study.add_argument("--use_gate", action="store_const", const=True, default=None,
                       help="USE_GATE True: the run becomes CoOpGated / CoCoOpGated")
    study.add_argument("--gate_type", type=str, default=None, choices=["scalar", "vector"], help="GATE_TYPE")
    study.add_argument("--gate_init_std", type=float, default=None, help="GATE_INIT_STD")
    study.add_argument("--gate_lr", type=float, default=None,
                       help="absolute gate learning rate: GATE_LR_MUL = gate_lr / OPTIM.LR (the YAML's)")
    study.add_argument("--gate_reg_lambda", type=float, default=None,
                       help="GATE_REG_LAMBDA: entropy penalty pushing the gates towards 0/1")
    study.add_argument("--gate_mode", type=str, default=None, choices=["static", "conditional"],
                       help="GATE_MODE (CoCoOp)")
    study.add_argument("--param_matched", action="store_const", const=True, default=None,
                       help="PARAM_MATCHED True: an additive bias with the gate's size instead of the gate")
    study.add_argument("--equalize_grad", action="store_const", const=True, default=None, help="EQUALIZE_GRAD True")
    study.add_argument("--alpha_max", type=float, default=None, help="ALPHA_MAX")


def print_args(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(args.__dict__):
        print(f"{key}: {args.__dict__[key]}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def run_training(args):
    """CoOp's main(): config, seed, log, trainer, then train / eval-only.

    The whole run holds its output folder's lock (engine/run_folder.py): a second process on the
    same --output-dir is refused before it writes anything there.
    """
    import torch

    import trainers  # noqa: F401  (registers the built-in trainers)
    from trainers.engine import build_trainer
    from trainers.engine.run_folder import hold_run_folder
    from trainers.engine.utils import collect_env_info, set_random_seed, setup_logger

    cfg = trainers.setup_cfg(args)
    with hold_run_folder(cfg.OUTPUT_DIR):
        if cfg.SEED >= 0:
            print(f"Setting fixed seed: {cfg.SEED}")
            set_random_seed(cfg.SEED)
        setup_logger(cfg.OUTPUT_DIR)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            torch.backends.cudnn.benchmark = True
        print_args(args, cfg)
        print("Collecting env info ...")
        print(f"** System info **\n{collect_env_info()}\n")

        trainer = build_trainer(cfg)
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.eval_only = True
            trainer.test()
            return trainer
        if not args.no_train:
            trainer.train()
        return trainer


def _stop_line(stop):
    """The one line printed when a signal stops the run: where, and the command that resumes it."""
    import signal

    from trainers.engine.run_folder import current_command

    signum = getattr(stop, "signum", signal.SIGINT)
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    where = getattr(stop, "where_stopped", None) or "before training started; nothing of this run was written"
    return f"Stopped by {name} {where}. Resume with the same command: {current_command()}"


def train_main(argv=None, prog="train.py"):
    """`train.py`: a config that cannot work (a typo, a value out of range, a missing file) ends with
    one "error:" message and exit status 2, as argparse reports a bad flag, not a traceback; a run
    stopped by SIGTERM or Ctrl-C prints one line (where it stopped, the command that resumes it)
    and ends as killed by that signal; a failure of the machine (disk full, read-only folder,
    permission denied) prints one plain line naming the path and exits 1."""
    import signal

    from gates.config_spec import ConfigError
    from trainers.engine.utils import describe_environment_error, environment_error, guard_console

    parser = build_train_parser(prog)
    args = parser.parse_args(argv)
    guard_console()
    try:
        run_training(args)
    except ConfigError as e:
        parser.exit(2, f"{prog}: error: {e}\n")
    except KeyboardInterrupt as stop:  # SignalInterrupt (SIGTERM, Ctrl-C while training) or a bare Ctrl-C
        # The run stopped cleanly (plugins flushed, writer closed, last checkpoint intact). End
        # the way a process killed by that signal ends, so a shell loop or a sweep sees it.
        signum = getattr(stop, "signum", signal.SIGINT)
        _report(_stop_line(stop))
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    except Exception as error:
        cause = environment_error(error)
        if cause is None:
            raise
        _report(f"gatescope: the run stopped: {describe_environment_error(cause)}. Nothing already written is "
                "lost: once that is fixed, the same command resumes from the last complete epoch.")
        sys.exit(1)


def _report(line):
    """Print `line` on stderr (and so into the log), whatever state the streams are in."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            print(line, file=stream)
            stream.flush()
            return
        except (OSError, ValueError):
            continue


def plugins_main(argv=None):
    """`gatescope plugins`: installed plugins with distribution, version, gates and trainers."""
    from tabulate import tabulate

    import trainers  # noqa: F401  (built-in trainers)
    from trainers.plugins import get_plugins
    from trainers.engine import TRAINER_REGISTRY

    plugins = get_plugins()
    plugins.register_trainers(TRAINER_REGISTRY)
    rows = [[info.name, info.distribution, info.version, ", ".join(sorted(info.gates)) or "-",
             ", ".join(sorted(info.trainers)) or "-"] for info in plugins.info.values()]
    print(tabulate(rows, headers=["plugin", "distribution", "version", "gates", "trainers"]))
    print(f"\nTrainers: {', '.join(sorted(TRAINER_REGISTRY.registered_names()))}")
    return 0


def diagnose_main(argv=None):
    """`gatescope diagnose RUN_DIR... [--set KEY VALUE ...] [--write]`: finished runs' gate verdicts
    recomputed from their diagnostics/summary.json (with other thresholds, or with the current rules
    after a rule change), with the reasons; --write stores them in summary.json."""
    from diagnostics.report import load_run_summary, rediagnose, write_rediagnosed
    from diagnostics.verdict import DEFAULT_THRESHOLDS, THRESHOLD_HELP

    parser = argparse.ArgumentParser(
        prog="gatescope diagnose", description=diagnose_main.__doc__,
        epilog="thresholds: " + "; ".join(f"{k} (default {v:g}): {THRESHOLD_HELP[k]}"
                                          for k, v in DEFAULT_THRESHOLDS.items()))
    parser.add_argument("run_dir", nargs="+",
                        help="a run's --output-dir (or its diagnostics/ folder, or a summary.json); several are read in turn")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a threshold, e.g. --set KL_MIN 0.01 (repeatable)")
    parser.add_argument("--write", action="store_true",
                        help="store the recomputed verdicts, reasons and thresholds in each summary.json (atomically; "
                             "the previous verdicts are kept under 'rediagnosed'), so summarize tables show them")
    args = parser.parse_args(argv)
    overrides = {}
    for key, value in args.set:
        key = key.upper().removeprefix("DIAGNOSTICS.")
        if key not in DEFAULT_THRESHOLDS or key == "WINDOW":
            parser.error(f"cannot set {key!r}: choose one of {', '.join(k for k in DEFAULT_THRESHOLDS if k != 'WINDOW')} "
                         "(WINDOW is applied when a run is made; summary.json holds its medians)")
        try:
            overrides[key] = float(value)
        except ValueError:
            parser.error(f"--set {key} needs a number, got {value!r}")
    status = 0
    for run_dir in args.run_dir:
        try:
            path, summary = load_run_summary(run_dir)
        except (OSError, ValueError) as e:
            print(f"gatescope diagnose: {e}", file=sys.stderr)
            status = 2
            continue
        print(f"{path}" + (f" with {', '.join(f'{k}={v:g}' for k, v in overrides.items())}" if overrides else ""))
        verdicts = rediagnose(summary, overrides)
        for name, (old, new, reasons) in verdicts.items():
            change = f" (was {old})" if old and old != new else ""
            print(f"gate '{name}': {new}{change}")
            for reason in reasons:
                print(f"  - {reason}")
        if args.write:
            write_rediagnosed(path, summary, verdicts, overrides)
            print(f"written: {path}")
    return status


COMMANDS = {
    "train": "train or evaluate a model (the flags of CoOp's train.py)",
    "plugins": "list installed plugins, the gates and trainers they provide",
    "diagnose": "recompute a finished run's gate verdicts with other thresholds (--set KEY VALUE), with reasons",
    "summarize": "tables of a folder of runs: mean ± std over seeds, base / new / HM, gate verdicts",
    "sweep": "run a study grid (GRID.yaml) on Ray, skipping finished runs",
    "study": "the controlled benchmark: when does gating work? (runs the grid, prints its tables)",
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: gatescope COMMAND [ARGS]\n\ncommands:")
        for name, help_text in COMMANDS.items():
            print(f"  {name:12s} {help_text}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        train_main(rest, prog="gatescope train")
        return 0
    if command == "plugins":
        return plugins_main(rest)
    if command == "diagnose":
        return diagnose_main(rest)
    if command == "summarize":
        from trainers.tools.summarize import summarize_main
        return summarize_main(rest)
    if command == "study":
        from trainers.tools.study import study_main
        return study_main(rest)
    if command == "sweep":
        from trainers.tools.sweep import sweep_main
        return sweep_main(rest)
    print(f"gatescope: unknown command {command!r}; available: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
