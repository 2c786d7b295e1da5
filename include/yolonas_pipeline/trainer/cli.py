"""The trainer command line. Runs in the trainer environment only (torch + super-gradients).

The requests are the contracts' :class:`~yolonas_pipeline.contracts.TrainRequest` and
:class:`~yolonas_pipeline.contracts.EvaluateRequest`, parsed from the flags the orchestration side renders with
:func:`~yolonas_pipeline.contracts.trainer_argv`. Logging is configured first (:mod:`yolonas_pipeline.trainer.logs`),
then the compatibility fixes, before super-gradients is first imported; the work directory
(``YOLONAS_WORK_DIR``, default a fresh temporary directory) holds the local copies of the dataset and checkpoints
and super-gradients' own logs. S3 credentials come from the standard ``AWS_*`` variables.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from yolonas_pipeline.contracts import EvaluateRequest, TrainRequest
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage
from yolonas_pipeline.trainer import compat, logs

USAGE = "usage: python -m yolonas_pipeline.trainer {train,evaluate} --help"
COMMANDS: dict[str, type[TrainRequest] | type[EvaluateRequest]] = {"train": TrainRequest, "evaluate": EvaluateRequest}


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # As PID 1 in a pod, Python ignores SIGTERM by default; a deleted pod would then only stop after
    # the grace period. SystemExit (not KeyboardInterrupt, which super-gradients swallows and then
    # reports a finished training) unwinds through its cleanup and leaves no result.json behind.
    raise SystemExit(128 + signum)


#: prctl option: the signal this process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def _die_with_the_launcher() -> None:
    """Under torchrun, be killed (SIGKILL) when torchrun dies. torchrun starts each process in a session of its
    own, so killing torchrun's process group (a lost task, ``kill -9``) would leave the processes training on,
    and writing, beside the retry; torchrun forwards SIGTERM itself, but nothing is forwarded from a SIGKILL."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # torchrun died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _die_with_the_launcher()
    logs.configure()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    prog = f"python -m yolonas_pipeline.trainer {command}"
    try:
        request = COMMANDS[command].from_argv(rest, prog=prog)
    except StageInputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2

    work_dir = Path(os.environ.get("YOLONAS_WORK_DIR") or tempfile.mkdtemp(prefix=f"yolonas-{command}-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    compat.apply(log_dir=str(work_dir / "sg_logs"))
    compat.check_environment()
    logs.protect_log_files()  # the first import of super-gradients

    storage = Storage(connection_hint="the trainer's AWS_* environment variables")
    try:
        # Imported only now: super-gradients must see the patched environment on first import.
        if isinstance(request, TrainRequest):
            from yolonas_pipeline.trainer.training import run_train

            run_train(request, work_dir=work_dir, storage=storage)
        else:
            from yolonas_pipeline.trainer.evaluation import run_evaluate

            run_evaluate(request, work_dir=work_dir, storage=storage)
    except (StageInputError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0
