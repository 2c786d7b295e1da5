"""The GPU check's driver (run by bench/gpu_check.sh): throughput against the baseline, then the trainer end to end.

Steps, each in its own process group with its own time limit (a step that overruns is killed and recorded as such,
and the next steps still run), all inside ``--budget`` seconds:

1. **environment**: torch, CUDA, cuDNN, the GPU, super-gradients, onnxruntime (recorded, nothing run);
2. **baseline**: ``sg_trainer_baseline.py`` (../shared/bench; ``--baseline-script`` / ``BASELINE_SCRIPT``) with
   ``N_TRAIN``/``BATCH``/``EPOCHS`` set: super-gradients' Trainer with the seed's settings, its loader alone and the
   bare model+loss step, on its synthetic 640x480 images;
3. **project**: ``bench/train_throughput.py --only project`` on the same synthetic images (the same generator and
   seeds, written in the materialized layout): the trainer command as a pod runs it, AMP and channels_last on;
   the ratio is its steady images/s (best epoch after the first) over the baseline Trainer's (same definition);
4. **end to end**: the trainer command on a smaller synthetic set: ``train`` (2 epochs, AMP, channels_last), SIGKILL
   of its process group once epoch 1 is committed (state.json), the same command again (it must resume at epoch 2),
   then ``evaluate`` with ``--export-onnx`` when onnxruntime is importable.

``$OUT/gpu_figures.json`` is rewritten after every step. ``--smoke`` shrinks every size so that the whole script can
be exercised on a CPU (figures meaningless there).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BASELINE_CANDIDATES = (
    REPO / ".bench" / "sg_trainer_baseline.py",
    REPO / "shared" / "bench" / "sg_trainer_baseline.py",
    REPO.parent / "shared" / "bench" / "sg_trainer_baseline.py",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for all steps together")
    parser.add_argument("--install-seconds", type=float, default=None, help="(recorded) wheel install time")
    parser.add_argument("--baseline-script", type=Path, default=None)
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--n-val", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=3, help="throughput epochs (the first is warm-up)")
    parser.add_argument("--baseline-workers", type=int, default=8, help="the baseline script's default")
    parser.add_argument("--e2e-train", type=int, default=512)
    parser.add_argument("--e2e-val", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to exercise the script on a CPU")
    parser.add_argument(
        "--skip", default="", help="comma-separated steps not to run: baseline, project, end_to_end (a rerun's time)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.n_train, args.n_val, args.batch, args.size, args.epochs = 16, 8, 4, 128, 2
        args.baseline_workers, args.e2e_train, args.e2e_val = 1, 16, 8
    return args


class Figures:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": {}}

    def step(self, name: str, **values: Any) -> None:
        self.data["steps"].setdefault(name, {}).update(values)
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2, default=str))


def run(argv: list[str], *, env: dict[str, str], timeout: float, log: Path) -> tuple[int | None, float]:
    """``argv`` in its own process group, output to ``log``; killed (group, SIGKILL) after ``timeout`` seconds.
    Returns (exit status or None when killed for time, seconds)."""
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=max(timeout, 1)), round(time.monotonic() - started, 1)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None, round(time.monotonic() - started, 1)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def child_env(**extra: str) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO / "include"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", **extra}


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count(),
        "cpus": len(os.sched_getaffinity(0)),
        "onnxruntime": importlib.util.find_spec("onnxruntime") is not None,
    }
    from importlib.metadata import PackageNotFoundError, version

    for package in ("super-gradients", "numpy", "onnxruntime", "onnx", "opencv-python-headless", "torchmetrics"):
        try:
            info[f"version_{package}"] = version(package)
        except PackageNotFoundError:
            info[f"version_{package}"] = None
    try:
        smi = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        info["nvidia_smi"] = subprocess.run(smi, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["nvidia_smi"] = None
    return info


def baseline_script(args: argparse.Namespace) -> Path | None:
    if args.baseline_script:
        return args.baseline_script
    if os.environ.get("BASELINE_SCRIPT"):
        return Path(os.environ["BASELINE_SCRIPT"])
    return next((path for path in BASELINE_CANDIDATES if path.is_file()), None)


def steady(per_epoch: list[float]) -> float | None:
    """The best epoch after the first (both sides' definition); the only one when there is one."""
    values = [v for v in per_epoch if v]
    return max(values[1:] or values) if values else None


def step_baseline(args: argparse.Namespace, figures: Figures, timeout: float) -> float | None:
    script = baseline_script(args)
    if script is None or not script.is_file():
        figures.step("baseline", skipped="sg_trainer_baseline.py not found; pass --baseline-script")
        return None
    out = args.out / "baseline"
    out.mkdir(parents=True, exist_ok=True)
    env = child_env(
        OUT=str(out),
        N_TRAIN=str(args.n_train),
        N_VAL=str(args.n_val),
        BATCH=str(args.batch),
        WORKERS=str(args.baseline_workers),
        EPOCHS=str(args.epochs),
        SUPER_GRADIENTS_LOG_DIR=str(out / "sg_logs"),
        CRASH_HANDLER="FALSE",
        TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",
    )
    if args.smoke:  # the baseline's input is fixed at 640 px: the least that runs its code on a CPU
        env.update(STEPS="1", WARM="0", N_TRAIN=str(2 * args.batch), N_VAL=str(args.batch), EPOCHS="1")
    status, seconds = run([sys.executable, str(script)], env=env, timeout=timeout, log=args.out / "baseline.log")
    figures.step("baseline", script=str(script), exit=status, seconds=seconds, timeout_s=round(timeout))
    result_path = out / "gpu_baseline.json"
    if status != 0 or not result_path.is_file():
        figures.step("baseline", error=tail(args.out / "baseline.log"))
        return None
    result = json.loads(result_path.read_text())
    figures.step("baseline", result=result)
    return float(result["trainer_img_s"])


def step_project(args: argparse.Namespace, figures: Figures, timeout: float) -> float | None:
    out = args.out / "throughput"
    argv = [
        sys.executable, str(REPO / "bench" / "train_throughput.py"), "--only", "project",
        f"--n-train={args.n_train}", f"--n-val={args.n_val}", f"--batch={args.batch}", f"--size={args.size}",
        f"--epochs={args.epochs}", "--image-width=640", "--image-height=480", f"--out={out}",
    ]  # fmt: skip
    if args.smoke:
        argv[-3:-1] = ["--image-width=320", "--image-height=240"]
    status, seconds = run(argv, env=child_env(), timeout=timeout, log=args.out / "project.log")
    figures.step("project", command=" ".join(argv[1:]), exit=status, seconds=seconds, timeout_s=round(timeout))
    summary_path = out / "train_throughput.json"
    if status != 0 or not summary_path.is_file():
        figures.step("project", error=tail(args.out / "project.log"))
        return None
    summary = json.loads(summary_path.read_text())
    project = summary["runs"][0]["project"]
    figures.step("project", result=project)
    return steady(project["epoch_img_s"])


def step_end_to_end(args: argparse.Namespace, figures: Figures, deadline: float) -> None:
    sys.path.insert(0, str(REPO / "include"))
    sys.path.insert(0, str(REPO / "bench"))
    import train_throughput

    from yolonas_pipeline.contracts import EvaluateRequest, TrainRequest, trainer_argv

    root = args.out / "e2e"
    width, height = (320, 240) if args.smoke else (640, 480)
    data = train_throughput.make_dataset(root / "data", args.e2e_train, args.e2e_val, width, height)
    output = root / "train"
    request = TrainRequest(
        dataset_uri=str(data),
        output_uri=str(output),
        num_classes=len(train_throughput.CLASSES),
        epochs=2,
        batch_size=args.batch,
        input_size=args.size,
        warmup_epochs=1,
        mixed_precision=True,
        channels_last=True,
    )
    argv = [sys.executable, *trainer_argv(request)[1:]]
    record: dict[str, Any] = {"train_command": " ".join(["python", *argv[1:]])}

    def attempt(label: str) -> subprocess.Popen[bytes]:
        env = child_env(YOLONAS_WORK_DIR=str(root / f"{label}_work"), MPLCONFIGDIR=str(root / "mpl"))
        with open(root / f"{label}.log", "w") as log:
            return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    # 1. train until epoch 1 is committed, then SIGKILL the whole process group
    started = time.monotonic()
    first = attempt("attempt1")
    state_path = output / "state.json"
    killed_after = None
    while time.monotonic() < deadline:
        if state_path.is_file():
            try:
                state = json.loads(state_path.read_text())
            except json.JSONDecodeError:
                state = {}
            if state.get("epochs_completed", 0) >= 1:
                killed_after = state["epochs_completed"]
                break
        if first.poll() is not None:
            break
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    record.update(first_attempt_s=round(time.monotonic() - started, 1), killed_after_epoch=killed_after)
    record["first_attempt_exit"] = first.returncode
    figures.step("end_to_end", **record)
    if killed_after is None:
        figures.step("end_to_end", error="no epoch committed before the kill: " + tail(root / "attempt1.log"))
        return

    # 2. the same command again: it resumes
    started = time.monotonic()
    second = attempt("attempt2")
    try:
        status = second.wait(timeout=max(deadline - time.monotonic() - 60, 1))
    except subprocess.TimeoutExpired:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()
        status = None
    log2 = (root / "attempt2.log").read_text(errors="replace")
    resumed = f"after epoch {killed_after}" in log2 and "resuming run" in log2
    record.update(second_attempt_s=round(time.monotonic() - started, 1), second_attempt_exit=status, resumed=resumed)
    result_path = output / "result.json"
    if status != 0 or not result_path.is_file():
        figures.step("end_to_end", **record, error=tail(root / "attempt2.log"))
        return
    result = json.loads(result_path.read_text())
    record["train_result"] = {
        key: result.get(key)
        for key in ("epochs_completed", "device", "gpus", "loader_workers", "steps_per_epoch", "valid_metrics")
    }
    record["epoch_img_s"] = [entry.get("images_per_second") for entry in result["history"]]
    record["channels_last_logged"] = "channels_last=True" in log2
    figures.step("end_to_end", **record)

    # 3. evaluate (and export to ONNX, checked in onnxruntime, when it is there)
    export = importlib.util.find_spec("onnxruntime") is not None
    evaluate = EvaluateRequest(
        dataset_uri=str(data),
        train_result_uri=str(result_path),
        output_uri=str(root / "evaluate"),
        split="validation",
        batch_size=args.batch,
        export_onnx=export,
    )
    eval_argv = [sys.executable, *trainer_argv(evaluate)[1:]]
    env = child_env(YOLONAS_WORK_DIR=str(root / "evaluate_work"), MPLCONFIGDIR=str(root / "mpl"))
    status, seconds = run(eval_argv, env=env, timeout=deadline - time.monotonic(), log=root / "evaluate.log")
    record.update(evaluate_exit=status, evaluate_s=seconds, export_onnx=export)
    metrics_path = root / "evaluate" / "metrics.json"
    if status == 0 and metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        record["metrics"] = {key: metrics.get(key) for key in ("map_50", "map_50_95", "images", "device", "seconds")}
        record["onnx"] = metrics.get("onnx")
    else:
        record["error"] = tail(root / "evaluate.log")
    figures.step("end_to_end", **record)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + args.budget
    figures = Figures(args.out / "gpu_figures.json")
    figures.data.update(budget_s=args.budget, install_s=args.install_seconds, smoke=args.smoke)
    figures.data["environment"] = environment()
    figures.data["settings"] = {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out",)
    }
    figures.save()
    print(json.dumps(figures.data["environment"], indent=1), flush=True)

    # What each step may use: the end-to-end step keeps `reserve` seconds; the throughput steps share the rest.
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    reserve = 0.0 if "end_to_end" in skip else 90.0 if args.smoke else 150.0
    left = deadline - time.monotonic() - reserve
    baseline = ours = None
    if "baseline" not in skip:
        baseline = step_baseline(args, figures, timeout=left * (0.45 if "project" not in skip else 1.0))
        print("baseline trainer images/s:", baseline, flush=True)
    if "project" not in skip:
        ours = step_project(args, figures, timeout=deadline - time.monotonic() - reserve)
        print("project trainer images/s:", ours, flush=True)
    if baseline and ours:
        figures.data["ratio_project_over_baseline"] = round(ours / baseline, 3)
        figures.data["target_2x_met"] = ours >= 2 * baseline
    figures.data.update(baseline_img_s=baseline, project_img_s=ours)
    figures.save()
    if "end_to_end" not in skip:
        step_end_to_end(args, figures, deadline)
    figures.data["total_s"] = round(time.monotonic() - started, 1)
    figures.save()
    print(json.dumps({k: v for k, v in figures.data.items() if k != "steps"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
