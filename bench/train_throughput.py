"""Training throughput: super-gradients' Trainer with the seed's settings (the baseline of
../shared/bench/sg_trainer_baseline.py) against the project's training command, on the same data, in one run.

It writes the baseline's synthetic dataset (random-noise images with filled rectangles, 5 classes) once, in the
layout the materialize stage produces (manifest.json, images/<split>/, annotations/<split>.json), then runs each
side in its own process:

- **baseline**: ``sg_trainer_baseline.py``'s section 3, unchanged but for the size knobs: its transforms, its
  loaders (``WORKERS`` workers, pinned memory, persistent workers), ``Trainer.train`` with its parameters, and
  its timer (start to end of each training loader pass);
- **project**: ``python -m yolonas_pipeline.trainer train`` on the same folder, exactly as a pod runs it; its
  ``result.json`` has the same per-epoch figure (``images_per_second``: start to end of the training pass).

Before that, the data loaders alone (the baseline script's section 1): the baseline's and the project's, with
the same number of workers, passes alternating so that other load on the machine slows both alike. ``--rounds``
repeats the baseline/project pair (useful on a shared CPU machine, whose load drifts between runs).

Both trainer figures count the images of full batches (``drop_last``). "steady" is the best epoch after the first, as in
the baseline script (the first carries worker start-up and cuDNN autotuning). mAP@0.50 is the validation
figure after the last epoch, for the quality check (at least as good as the baseline's).

Usage, from the repository root, in the trainer environment::

    # GPU: the issue's setting (batch 32, 640x640, 2,048 images, 3 epochs, baseline with 8 workers)
    PYTHONPATH=include .venvs/trainer/bin/python bench/train_throughput.py
    # CPU: small (the defaults without a GPU), or any size through flags / environment
    PYTHONPATH=include .venvs/trainer/bin/python bench/train_throughput.py --n-train 64 --size 128 --batch 8

Flags default from environment variables of the same name in capitals (N_TRAIN, N_VAL, BATCH, SIZE, EPOCHS,
WORKERS, PROJECT_WORKERS, IMAGE_WIDTH, IMAGE_HEIGHT, ROUNDS, LOADER_PASSES, OUT). Writes
``$OUT/train_throughput.json`` and each run's log next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLASSES = [f"c{i}" for i in range(5)]


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    gpu = has_cuda()
    env = os.environ

    def default(name: str, gpu_value: Any, cpu_value: Any) -> Any:
        return type(gpu_value)(env.get(name, gpu_value if gpu else cpu_value))

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=default("N_TRAIN", 2048, 64))
    parser.add_argument("--n-val", type=int, default=default("N_VAL", 128, 16))
    parser.add_argument("--batch", type=int, default=default("BATCH", 32, 8))
    parser.add_argument("--size", type=int, default=default("SIZE", 640, 128), help="square input size")
    parser.add_argument("--epochs", type=int, default=default("EPOCHS", 3, 2))
    parser.add_argument("--image-width", type=int, default=default("IMAGE_WIDTH", 640, 320))
    parser.add_argument("--image-height", type=int, default=default("IMAGE_HEIGHT", 480, 240))
    parser.add_argument(
        "--workers", type=int, default=default("WORKERS", 8, 1), help="baseline loader workers (its script: 8)"
    )
    parser.add_argument(
        "--project-workers", type=int, default=default("PROJECT_WORKERS", 0, 0), help="project: 0 = auto"
    )
    parser.add_argument("--out", type=Path, default=Path(env.get("OUT", "/tmp/out")))
    parser.add_argument("--rounds", type=int, default=default("ROUNDS", 1, 1), help="baseline/project alternations")
    parser.add_argument("--loader-passes", type=int, default=default("LOADER_PASSES", 3, 3))
    parser.add_argument("--only", choices=("baseline", "project", "loaders"), help="run one part only")
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loader-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- data: sg_trainer_baseline.py's generator, written in the materialized layout ---------------------------------
def _make_one(job: tuple[str, str, int, int, int]) -> tuple[int, str, int, int, list[tuple[int, list[int]]]]:
    import numpy as np
    from PIL import Image, ImageDraw

    root, split, i, w, h = job
    rng = np.random.default_rng(i + (0 if split == "train" else 10**6))
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    anns = []
    for _ in range(int(rng.integers(1, 8))):
        c = int(rng.integers(0, len(CLASSES)))
        bw, bh = int(rng.integers(w // 32, w * 5 // 16)), int(rng.integers(h // 24, h * 5 // 12))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        draw.rectangle([x, y, x + bw, y + bh], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        anns.append((c, [x, y, bw, bh]))
    name = f"{i:06d}.jpg"
    img.save(f"{root}/images/{split}/{name}", quality=90)
    return i, name, w, h, anns


def make_dataset(root: Path, n_train: int, n_val: int, width: int, height: int) -> Path:
    """The baseline's synthetic images (random noise + rectangles, 640x480 by default); reused when present."""
    manifest_path = root / "manifest.json"
    fingerprint = f"bench-{n_train}-{n_val}-{width}x{height}"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == fingerprint:
            return root
    splits = {}
    for split, n in (("train", n_train), ("validation", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        jobs = [(str(root), split, i, width, height) for i in range(n)]
        with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
            for i, name, w, h, anns in pool.map(_make_one, jobs, chunksize=32):
                images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
                for c, box in anns:
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": i + 1,
                            "category_id": c + 1,
                            "bbox": box,
                            "area": box[2] * box[3],
                            "iscrowd": 0,
                        }
                    )
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
        splits[split] = {
            "images": n,
            "annotations": len(annotations),
            "images_dir": f"images/{split}",
            "annotation_file": f"annotations/{split}.json",
        }
    from yolonas_pipeline.contracts import DatasetManifest

    histogram = dict.fromkeys(CLASSES, 0)  # not needed by the loaders; the contract only requires the field
    manifest = DatasetManifest(
        fingerprint=fingerprint,
        class_names=list(CLASSES),
        splits=splits,
        class_histogram=histogram,
        source={"source": "bench/train_throughput.py synthetic images"},
        files=n_train + n_val + len(splits),
    )
    manifest_path.write_text(manifest.to_json())
    return root


# -- baseline: sg_trainer_baseline.py's loaders and section 3, in a child process -----------------------------------
def _numpy_aliases() -> None:
    import numpy as np

    for name, value in (("Inf", np.inf), ("NaN", np.nan), ("row_stack", np.vstack)):
        if not hasattr(np, name):
            setattr(np, name, value)  # removed in numpy 2; super-gradients still names them


def baseline_dataset(args: argparse.Namespace, root: Path, split: str, train: bool) -> Any:
    from super_gradients.training.datasets.detection_datasets.coco_format_detection import (
        COCOFormatDetectionDataset,
    )
    from super_gradients.training.transforms.transforms import (
        DetectionHorizontalFlip,
        DetectionHSV,
        DetectionPaddedRescale,
        DetectionRandomAffine,
        DetectionStandardize,
        DetectionTargetsFormatTransform,
    )

    dim = (args.size, args.size)
    augment = [
        DetectionRandomAffine(
            degrees=0.0, scales=(0.5, 1.5), shear=0.0, target_size=dim, filter_box_candidates=False, border_value=128
        ),
        DetectionHSV(prob=1.0, hgain=5, vgain=30, sgain=30),
        DetectionHorizontalFlip(prob=0.5),
    ]
    final = [
        DetectionPaddedRescale(input_dim=dim, max_targets=300),
        DetectionStandardize(max_value=255),
        DetectionTargetsFormatTransform(input_dim=dim, output_format="LABEL_CXCYWH"),
    ]
    return COCOFormatDetectionDataset(
        data_dir=str(root),
        images_dir=f"images/{split}",
        json_annotation_file=f"annotations/{split}.json",
        input_dim=dim,
        ignore_empty_annotations=False,
        with_crowd=False,
        all_classes_list=CLASSES,
        transforms=(augment if train else []) + final,
    )


def baseline_loader(args: argparse.Namespace, dataset: Any, shuffle: bool) -> Any:
    import torch
    from super_gradients.training.utils.collate_fn import DetectionCollateFN
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=shuffle,
        num_workers=args.workers,
        collate_fn=DetectionCollateFN(),
        pin_memory=torch.cuda.is_available(),  # the script's True (a warning and no effect without a GPU)
        drop_last=shuffle,
        persistent_workers=args.workers > 0,  # the script's True, which torch refuses without workers
    )


def run_loader_child(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The data loaders alone (the baseline script's section 1): baseline's and the project's, with the same
    number of workers, alternating passes so that a busy machine slows both alike."""
    from yolonas_pipeline.trainer import compat

    compat.apply()
    from yolonas_pipeline.trainer import data

    manifest = data.read_manifest(root)
    loaders = {
        "baseline": baseline_loader(args, baseline_dataset(args, root, "train", True), True),
        "project": data.build_loader(
            data.build_dataset(root, manifest, "train", input_size=args.size, train=True),
            batch_size=args.batch,
            workers=args.workers,
            train=True,
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for loader in loaders.values():
        for _ in loader:  # start the workers, warm the page cache
            pass
    for _ in range(args.loader_passes):
        for name, loader in loaders.items():
            started, images = time.time(), 0
            for batch, _targets in loader:
                images += batch.shape[0]
            rates[name].append(round(images / (time.time() - started), 1))
    return {name: {"img_s": values, "workers": loaders[name].num_workers} for name, values in rates.items()}


def run_baseline_child(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    _numpy_aliases()
    import torch
    from super_gradients.common.object_names import Models
    from super_gradients.training import Trainer, models
    from super_gradients.training.losses import PPYoloELoss
    from super_gradients.training.metrics import DetectionMetrics_050
    from super_gradients.training.models.detection_models.pp_yolo_e import PPYoloEPostPredictionCallback
    from super_gradients.training.utils.callbacks.base_callbacks import Callback

    dev = "cuda" if torch.cuda.is_available() else "cpu"

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.marks: list[tuple[str, int, float]] = []
            self.map50: list[float] = []

        def on_train_loader_start(self, context: Any) -> None:
            self.marks.append(("start", context.epoch, time.time()))

        def on_train_loader_end(self, context: Any) -> None:
            self.marks.append(("end", context.epoch, time.time()))

        def on_validation_loader_end(self, context: Any) -> None:
            self.map50.append(float(context.metrics_dict["mAP@0.50"]))

    nc = len(CLASSES)
    timer = EpochTimer()
    model = models.get(Models.YOLO_NAS_S, num_classes=nc, pretrained_weights=None)
    trainer = Trainer(experiment_name="bench", ckpt_root_dir=str(args.out / "baseline_ckpt"))
    params = {
        "warmup_initial_lr": 1e-5,
        "initial_lr": 5e-4,
        "lr_mode": "cosine",
        "cosine_final_lr_ratio": 0.5,
        "optimizer": "AdamW",
        "zero_weight_decay_on_bias_and_bn": True,
        "lr_warmup_epochs": 1,
        "warmup_mode": "LinearEpochLRWarmup",
        "optimizer_params": {"weight_decay": 0.0001},
        "ema": False,
        "average_best_models": False,
        "max_epochs": args.epochs,
        "mixed_precision": dev == "cuda",
        "loss": PPYoloELoss(num_classes=nc, use_static_assigner=False, reg_max=16),
        "valid_metrics_list": [
            DetectionMetrics_050(
                score_thres=0.1,
                top_k_predictions=300,
                num_cls=nc,
                normalize_targets=True,
                post_prediction_callback=PPYoloEPostPredictionCallback(
                    score_threshold=0.01, nms_top_k=1000, max_predictions=300, nms_threshold=0.7
                ),
            )
        ],
        "metric_to_watch": "mAP@0.50",
        "phase_callbacks": [timer],
    }
    train_ds = baseline_dataset(args, root, "train", True)
    started = time.time()
    trainer.train(
        model=model,
        training_params=params,
        train_loader=baseline_loader(args, train_ds, True),
        valid_loader=baseline_loader(args, baseline_dataset(args, root, "validation", False), False),
    )
    epochs: dict[int, dict[str, float]] = {}
    for kind, epoch, stamp in timer.marks:
        epochs.setdefault(epoch, {})[kind] = stamp
    images = len(train_ds) // args.batch * args.batch
    per_epoch = [images / (v["end"] - v["start"]) for _, v in sorted(epochs.items()) if {"start", "end"} <= set(v)]
    return {
        "epoch_img_s": [round(v, 2) for v in per_epoch],
        "map50": timer.map50,
        "total_s": round(time.time() - started, 1),
        "workers": args.workers,
    }


def _child(args: argparse.Namespace, mode: str, tag: str) -> dict[str, Any]:
    argv = [sys.executable, __file__, mode, *_size_flags(args)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "include"), os.environ.get("PYTHONPATH")])),
        "SUPER_GRADIENTS_LOG_DIR": str(args.out / "sg_logs"),
        "CRASH_HANDLER": "FALSE",
    }
    env.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # super-gradients' checkpoints hold numpy arrays
    run = subprocess.run(argv, env=env, capture_output=True, text=True)
    log = args.out / f"{tag}.log"
    log.write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise SystemExit(f"{tag} failed ({run.returncode}); see {log}")
    line = next(line for line in reversed(run.stdout.splitlines()) if line.startswith("CHILD "))
    return json.loads(line[len("CHILD ") :])


def _size_flags(args: argparse.Namespace) -> list[str]:
    return [
        f"--n-train={args.n_train}",
        f"--n-val={args.n_val}",
        f"--batch={args.batch}",
        f"--size={args.size}",
        f"--epochs={args.epochs}",
        f"--image-width={args.image_width}",
        f"--image-height={args.image_height}",
        f"--workers={args.workers}",
        f"--loader-passes={args.loader_passes}",
        f"--out={args.out}",
    ]


# -- project: the training command, as a pod runs it ---------------------------------------------------------------
def run_project(args: argparse.Namespace, root: Path, tag: str) -> dict[str, Any]:
    output = args.out / f"{tag}_run"
    work = args.out / f"{tag}_work"
    for folder in (output, work):
        shutil.rmtree(folder, ignore_errors=True)
    gpu = has_cuda()
    argv = [
        sys.executable, "-m", "yolonas_pipeline.trainer", "train",
        "--dataset-uri", str(root), "--output-uri", str(output), "--num-classes", str(len(CLASSES)),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch), "--input-size", str(args.size),
        "--workers", str(args.project_workers), "--mixed-precision" if gpu else "--no-mixed-precision",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "include"), os.environ.get("PYTHONPATH")])),
        "YOLONAS_WORK_DIR": str(work),
        "MPLCONFIGDIR": str(work / "matplotlib"),
    }
    started = time.time()
    run = subprocess.run(argv, env=env, capture_output=True, text=True)
    log = args.out / f"{tag}.log"
    log.write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise SystemExit(f"{tag} failed ({run.returncode}); see {log}")
    result = json.loads((output / "result.json").read_text())
    history = result["history"]
    shutil.rmtree(work, ignore_errors=True)  # the dataset copy and checkpoints: large at the GPU setting
    return {
        "epoch_img_s": [entry["images_per_second"] for entry in history],
        "map50": [entry["valid"].get("mAP@0.50") for entry in history],
        "total_s": round(time.time() - started, 1),
        "workers": result.get("loader_workers"),
        "command": " ".join(["python", *argv[1:]]),
    }


def steady(per_epoch: list[float]) -> float:
    """The baseline script's figure: the best epoch after the first (the only one when there is one)."""
    return max(per_epoch[1:] or per_epoch)


def report(args: argparse.Namespace, runs: list[dict[str, Any]], loaders: dict[str, Any] | None) -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({_cpu_model()})"
    summary: dict[str, Any] = {
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("only", "baseline_child", "loader_child")
        },
        "loaders": loaders,
        "runs": runs,
    }
    print(f"\ntraining throughput on {device}: {args.n_train} images {args.image_width}x{args.image_height}, "
          f"input {args.size}x{args.size}, batch {args.batch}, {args.epochs} epochs")  # fmt: skip
    if loaders:
        print("\ndata loader alone (images/s per pass; same workers for both):")
        for name, r in loaders.items():
            print(f"  {name:9s} workers {r['workers']:>2}  median {statistics.median(r['img_s']):8.1f}  {r['img_s']}")
        ratio = statistics.median(loaders["project"]["img_s"]) / statistics.median(loaders["baseline"]["img_s"])
        summary["loader_ratio"] = round(ratio, 3)
        print(f"  project / baseline: {ratio:.2f}x")
    if runs:
        print(f"\n{'round':5s} {'':9s} {'workers':>7s} {'steady img/s':>13s} {'per epoch':>24s} {'mAP@0.50':>9s}")
        ratios = []
        for number, results in enumerate(runs, 1):
            for name, r in results.items():
                per_epoch = " ".join(f"{v:.1f}" for v in r["epoch_img_s"])
                final_map = r["map50"][-1] if r["map50"] and r["map50"][-1] is not None else float("nan")
                print(
                    f"{number:5d} {name:9s} {r['workers']!s:>7s} {steady(r['epoch_img_s']):13.2f} "
                    f"{per_epoch:>24s} {final_map:9.4f}"
                )
            if {"baseline", "project"} <= set(results):
                ratios.append(steady(results["project"]["epoch_img_s"]) / steady(results["baseline"]["epoch_img_s"]))
        if ratios:
            summary["trainer_ratios"] = [round(r, 3) for r in ratios]
            print(f"project / baseline (steady), per round: {', '.join(f'{r:.2f}x' for r in ratios)}")
    return summary


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.out / f"data_{args.n_train}_{args.n_val}_{args.image_width}x{args.image_height}"
    if args.baseline_child:
        print("CHILD " + json.dumps(run_baseline_child(args, root)), flush=True)
        return 0
    if args.loader_child:
        print("CHILD " + json.dumps(run_loader_child(args, root)), flush=True)
        return 0
    started = time.time()
    make_dataset(root, args.n_train, args.n_val, args.image_width, args.image_height)
    print(f"data ready in {time.time() - started:.1f}s at {root}", flush=True)
    loaders = None
    if args.only in (None, "loaders"):
        loaders = _child(args, "--loader-child", "loaders")
        print("loaders", json.dumps(loaders), flush=True)
    runs: list[dict[str, Any]] = []
    for number in range(1, args.rounds + 1 if args.only != "loaders" else 1):
        results: dict[str, Any] = {}
        if args.only in (None, "baseline"):
            results["baseline"] = _child(args, "--baseline-child", f"baseline{number}")
            print(f"round {number} baseline", json.dumps(results["baseline"]), flush=True)
        if args.only in (None, "project"):
            results["project"] = run_project(args, root, f"project{number}")
            print(f"round {number} project", json.dumps(results["project"]), flush=True)
        runs.append(results)
    summary = report(args, runs, loaders)
    (args.out / "train_throughput.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
