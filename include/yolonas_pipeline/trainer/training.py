"""``train``: fine-tune YOLO-NAS with super-gradients' Trainer, syncing the run to its output URI after each epoch
(at most once a minute, see :class:`RunSync`).

Layout under ``output_uri``::

    run/                 super-gradients' run directory (ckpt_latest.pth, ckpt_best.pth, logs, tfevents)
    state.json           {"run_id", "epochs_completed", "history"}: the commit point, rewritten after each
                         synced epoch's files are uploaded (ckpt_latest.pth last of them)
    history.json         the per-epoch history (losses, mAP, learning rate, times), when training is complete
    training_curves.png  losses and mAP per epoch, drawn from it (:func:`.plots.training_curves`)
    result.json          written last, when training is complete (:class:`~yolonas_pipeline.contracts.TrainResult`);
                         the Airflow task and the evaluate command read it

Under ``torchrun`` (several processes, DDP) every process trains its share of each epoch; only the first
process (global rank 0) writes anything to the output URI, and the first process on each node downloads the
dataset and the run for the others. CUDA processes join with NCCL (super-gradients' own setup), CPU
processes with gloo (:func:`_setup_device`).

A retry of the same request finds ``state.json``, restores ``run/`` into a local run directory of the
same id and lets super-gradients resume it (net, EMA, optimizer, scaler, epoch); a retry after
``result.json`` exists does nothing. An epoch's upload runs in the background while the next epoch
trains, and is always complete before super-gradients writes the next checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from super_gradients.common.data_types.enum import MultiGPUMode
from super_gradients.common.environment.ddp_utils import init_trainer, multi_process_safe
from super_gradients.common.environment.device_utils import device_config
from super_gradients.training import Trainer
from super_gradients.training.losses import PPYoloELoss
from super_gradients.training.metrics import DetectionMetrics, DetectionMetrics_050
from super_gradients.training.utils.callbacks.base_callbacks import Callback, PhaseContext
from super_gradients.training.utils.distributed_training_utils import setup_device, wait_for_the_master

from yolonas_pipeline.contracts import TRAIN_RESULT_FILE, TrainRequest, TrainResult
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage, join_uri
from yolonas_pipeline.trainer import data, logs, plots, sg, speed

log = logging.getLogger(__name__)

EXPERIMENT = "yolonas"
STATE_FILE = "state.json"
RUN_DIR = "run"
LATEST_CHECKPOINT = "ckpt_latest.pth"
#: The shortest time between two uploads of the run directory (see :class:`RunSync`).
MIN_SYNC_SECONDS = 60.0
BEST_CHECKPOINT = "ckpt_best.pth"
AVERAGE_CHECKPOINT = "average_model.pth"
#: Per-epoch snapshots are large and only useful locally; everything else in the run directory is synced.
_NOT_SYNCED_PREFIXES = ("ckpt_epoch_",)
HISTORY_FILE = "history.json"
#: super-gradients' own progress bar is off (unreadable in a task log); instead a progress line during an epoch
#: at each tenth of its steps, but not within PROGRESS_MIN_GAP_S of the last (short epochs need none), and
#: at least every PROGRESS_EVERY_S (long steps).
PROGRESS_FRACTION = 0.1
PROGRESS_MIN_GAP_S = 10.0
PROGRESS_EVERY_S = 30.0
LOSS = "PPYoloELoss/loss"
#: The loss components in the epoch line and the results table, by their short names.
LOSS_COMPONENTS = ("loss_cls", "loss_iou", "loss_dfl")
MAP_50, MAP_50_95 = "mAP@0.50", "mAP@0.50:0.95"


def to_jsonable(value: Any) -> Any:
    """numpy / torch scalars (super-gradients returns np.float32) to plain floats; NaN to None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def training_params(request: TrainRequest, class_names: list[str], callbacks: list[Callback]) -> dict[str, Any]:
    """The seed document's training arguments, with the class count set once for loss and metrics."""
    num_classes = len(class_names)
    return {
        "max_epochs": request.epochs,
        "warmup_initial_lr": 1e-5,
        "initial_lr": request.learning_rate,
        "lr_mode": "CosineLRScheduler",
        "cosine_final_lr_ratio": 0.5,
        "optimizer": "AdamW",
        "zero_weight_decay_on_bias_and_bn": True,
        "lr_warmup_epochs": min(request.warmup_epochs, request.epochs - 1),
        "warmup_mode": "LinearEpochLRWarmup",
        "optimizer_params": {"weight_decay": 0.0001},
        "ema": request.ema,
        "ema_params": {"beta": 25, "decay_type": "exp"},
        "average_best_models": True,
        # AMP in super-gradients is torch.cuda.amp: meaningless (and warned about) on the CPU.
        "mixed_precision": request.mixed_precision and torch.cuda.is_available(),
        "loss": PPYoloELoss(use_static_assigner=False, num_classes=num_classes, reg_max=16),
        "valid_metrics_list": [
            DetectionMetrics_050(
                score_thres=0.1,
                top_k_predictions=300,
                num_cls=num_classes,
                normalize_targets=True,
                include_classwise_ap=True,
                class_names=class_names,
                post_prediction_callback=sg.post_prediction_callback(),
            ),
            # mAP@0.50:0.95 for the epoch line and the curves; its best-score thresholds would collide with
            # the first metric's keys (and are the same kind of number).
            DetectionMetrics(
                score_thres=0.1,
                top_k_predictions=300,
                num_cls=num_classes,
                normalize_targets=True,
                calc_best_score_thresholds=False,
                post_prediction_callback=sg.post_prediction_callback(),
            ),
        ],
        "metric_to_watch": MAP_50,
        "phase_callbacks": callbacks,
        # Training batches arrive as uint8 (see data.train_transforms): standardize them on the device.
        "pre_prediction_callback": speed.DevicePrep(channels_last=speed.use_channels_last(request.channels_last)),
        # The progress bar and epoch tables become RunSync's readable lines.
        "silent_mode": True,
        "save_ckpt_epoch_list": [],
        "seed": request.seed,
    }


class RunSync(Callback):  # type: ignore[misc]  # super-gradients is untyped
    """After each epoch's checkpoint is written, upload the run directory and log one readable line.

    super-gradients saves the checkpoint after every callback of the epoch has run, so the upload starts
    at the next hook: the start of the next epoch (in a background thread, overlapping that epoch's
    training), or the average-model phase after the last. The upload must be finished before the next
    save overwrites the files, so the end of the next validation waits for it. Only files that changed
    since the last upload are sent; ``ckpt_latest.pth`` goes last and ``state.json`` after it.

    Epochs shorter than ``min_sync_seconds`` are not each uploaded: an epoch's sync is skipped while the
    last one started less than that long ago (the first epoch's and the last one's always go). A checkpoint
    is hundreds of MB; on small data an epoch takes seconds, and uploading every one of them cost more than
    the training (the S3 server took a core), while a retry loses at most that many seconds of training.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        output_uri: str,
        history: list[dict[str, Any]],
        images_per_epoch: int,
        batches_per_epoch: int,
        epochs: int | None = None,
        restored: Path | None = None,
        writes: bool = True,
        min_sync_seconds: float = MIN_SYNC_SECONDS,
    ) -> None:
        self.storage = storage
        self.min_sync_seconds = min_sync_seconds
        self._last_sync: float | None = None
        #: The run's total epochs (``epoch i/N`` and the ETA); None: unknown.
        self.epochs = epochs
        #: False on every process but the first of a DDP run: it uploads nothing and commits no state.
        #: (super-gradients' ``multi_process_safe`` only looks at the local rank, i.e. one writer per node.)
        self.writes = writes
        self.output_uri = output_uri
        self.history = history
        self.images_per_epoch = images_per_epoch
        self.batches_per_epoch = batches_per_epoch
        self.run_dir: Path | None = None
        self.run_id: str | None = None
        # Files a retry restored from S3 are there already; only what changes after that is sent again.
        self._sent: dict[str, tuple[int, int]] = _file_stats(restored) if restored else {}
        self._pending: dict[str, Any] | None = None
        self._epoch_started = self._train_started = self._last_progress = time.monotonic()
        self._loss_sum: Any = 0.0  # a device tensor while training (see running_loss)
        self._loss_steps = 0
        self._next_progress_step = 0
        #: Seconds of each epoch this attempt trained (the ETA's basis; a resumed run's earlier epochs ran
        #: elsewhere, maybe on other hardware).
        self._epoch_seconds: list[float] = []
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-sync")
        self._upload: Future[None] | None = None

    @property
    def run_uri(self) -> str:
        return join_uri(self.output_uri, RUN_DIR)

    def on_training_start(self, context: PhaseContext) -> None:
        self.run_dir = Path(context.ckpt_dir)
        self.run_id = self.run_dir.name

    @multi_process_safe  # type: ignore[untyped-decorator]
    def on_train_loader_start(self, context: PhaseContext) -> None:
        self._publish_pending(background=True)
        self._epoch_started = self._train_started = self._last_progress = time.monotonic()
        self._loss_sum, self._loss_steps = 0.0, 0
        self._next_progress_step = self._progress_step(1)

    def _progress_step(self, part: int) -> int:
        """The step that completes the ``part``-th :data:`PROGRESS_FRACTION` of the epoch."""
        return max(1, math.ceil(self.batches_per_epoch * PROGRESS_FRACTION * part))

    @multi_process_safe  # type: ignore[untyped-decorator]
    def on_train_batch_end(self, context: PhaseContext) -> None:
        self._loss_sum += running_loss(context)
        self._loss_steps += 1
        done = (context.batch_idx or 0) + 1
        if done >= self.batches_per_epoch:
            return  # the epoch line follows
        now = time.monotonic()
        since = now - self._last_progress
        at_a_tenth = done >= self._next_progress_step
        if at_a_tenth:
            parts_done = math.floor(done / (self.batches_per_epoch * PROGRESS_FRACTION))
            self._next_progress_step = self._progress_step(parts_done + 1)
        if not ((at_a_tenth and since >= PROGRESS_MIN_GAP_S) or since >= PROGRESS_EVERY_S):
            return
        self._last_progress = now
        elapsed = now - self._train_started
        log.info(
            "%s",
            progress_line(
                epoch=context.epoch + 1,
                epochs=self.epochs,
                step=done,
                steps=self.batches_per_epoch,
                loss=float(self._loss_sum) / max(self._loss_steps, 1),
                images_per_second=done * self.images_per_epoch / max(self.batches_per_epoch, 1) / elapsed,
                elapsed=elapsed,
            ),
        )

    def on_train_loader_end(self, context: PhaseContext) -> None:
        seconds = time.monotonic() - self._train_started
        self._pending = {
            "epoch": context.epoch + 1,
            "train": to_jsonable(context.metrics_dict or {}),
            "lr": learning_rate(context),
            "train_seconds": round(seconds, 2),
            "images_per_second": round(self.images_per_epoch / seconds, 1) if seconds > 0 else None,
        }

    @multi_process_safe  # type: ignore[untyped-decorator]
    def on_validation_loader_end(self, context: PhaseContext) -> None:
        if self._pending is not None:
            self._pending["valid"] = to_jsonable(context.metrics_dict or {})
            self._pending["seconds"] = round(time.monotonic() - self._epoch_started, 1)
        # super-gradients writes this epoch's checkpoints right after this hook.
        self.wait()

    @multi_process_safe  # type: ignore[untyped-decorator]
    def on_average_best_models_validation_start(self, context: PhaseContext) -> None:
        self._publish_pending(background=False)

    def _publish_pending(self, *, background: bool) -> None:
        if not self.writes or self._pending is None or self.run_dir is None:
            return
        self.wait()
        entry, self._pending = self._pending, None
        self.history.append(entry)
        self._epoch_seconds.append(float(entry.get("seconds") or entry.get("train_seconds") or 0))
        eta = None
        if self.epochs is not None and self.epochs > entry["epoch"]:
            eta = (self.epochs - entry["epoch"]) * sum(self._epoch_seconds) / len(self._epoch_seconds)
        log.info("%s", epoch_line(entry, epochs=self.epochs, eta_seconds=eta))
        now = time.monotonic()
        if background and self._last_sync is not None and now - self._last_sync < self.min_sync_seconds:
            return  # the files stay unsent; the next sync (at the latest, the last epoch's) takes them
        self._last_sync = now
        state = {"run_id": self.run_id, "epochs_completed": entry["epoch"], "history": list(self.history)}
        # The file list is taken now, while nothing is writing checkpoints; only the bytes move later.
        changed = self._changed_files()
        if background:
            self._upload = self._uploader.submit(self._upload_and_commit, changed, state)
        else:
            self._upload_and_commit(changed, state)

    def wait(self) -> None:
        """Block until the upload in flight (if any) is done; re-raise its error here."""
        upload, self._upload = self._upload, None
        if upload is not None:
            upload.result()

    def _changed_files(self) -> list[str]:
        assert self.run_dir is not None
        changed = []
        for rel, stat in _file_stats(self.run_dir).items():
            if rel.startswith(_NOT_SYNCED_PREFIXES) or self._sent.get(rel) == stat:
                continue
            changed.append(rel)
            self._sent[rel] = stat
        return changed

    def _upload_and_commit(self, changed: list[str], state: dict[str, Any] | None) -> None:
        assert self.run_dir is not None
        # The latest checkpoint last: a retry resumes from it, so everything it refers to is up first.
        self.storage.upload_tree(self.run_dir, self.run_uri, files=[f for f in changed if f != LATEST_CHECKPOINT])
        if LATEST_CHECKPOINT in changed:
            self.storage.upload_file(self.run_dir / LATEST_CHECKPOINT, join_uri(self.run_uri, LATEST_CHECKPOINT))
        if state is not None:
            self.storage.write_text(join_uri(self.output_uri, STATE_FILE), json.dumps(state, indent=2))

    def finish(self) -> list[str]:
        """The last upload (average model, logs), then delete what super-gradients removed locally
        (``averaging_snapshots.pkl``) so that ``run/`` mirrors the finished run. Returns deleted names."""
        self.wait()
        self._uploader.shutdown()
        if not self.writes or self.run_dir is None:
            return []
        self._upload_and_commit(self._changed_files(), None)
        local = {p.relative_to(self.run_dir).as_posix() for p in self.run_dir.rglob("*") if p.is_file()}
        stale = [
            rel
            for rel in self.storage.list_files(self.run_uri)
            if rel not in local and not rel.startswith(_NOT_SYNCED_PREFIXES)
        ]
        for rel in stale:
            self.storage.delete(join_uri(self.run_uri, rel))
        return stale


def _file_stats(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file below ``root``, sorted by path."""
    stats = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        stats[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return stats


def running_loss(context: PhaseContext) -> Any:
    """The batch's total loss (the last of super-gradients' ``loss_log_items``: cls, iou, dfl, total), left on
    its device: summing it there costs no synchronisation per step; only a progress line reads it back."""
    items = context.loss_log_items
    if items is None or len(items) == 0:
        return 0.0
    return items[-1].detach() if hasattr(items, "detach") else float(items[-1])


def learning_rate(context: PhaseContext) -> float | None:
    """The first parameter group's learning rate at the end of the epoch's training."""
    optimizer = getattr(context, "optimizer", None)
    if optimizer is None or not optimizer.param_groups:
        return None
    return float(optimizer.param_groups[0]["lr"])


def duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h07m``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _epoch_of(epoch: int, epochs: int | None) -> str:
    return f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"


def _number(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def progress_line(
    *,
    epoch: int,
    epochs: int | None,
    step: int,
    steps: int,
    loss: float,
    images_per_second: float,
    elapsed: float,
) -> str:
    """``epoch 3/50  step 120/400 (30%)  loss 2.3104  81.2 images/s  epoch ETA 1m12s``."""
    left = elapsed / step * (steps - step) if step else None
    return (
        f"{_epoch_of(epoch, epochs)}  step {step}/{steps} ({step / steps:.0%})  loss {loss:.4f}  "
        f"{images_per_second:.1f} images/s  epoch ETA {duration(left)}"
    )


def epoch_line(entry: dict[str, Any], *, epochs: int | None = None, eta_seconds: float | None = None) -> str:
    """``epoch 2/10  loss 3.2104 (cls 1.8 iou 0.9 dfl 0.5)  valid mAP@0.50 0.4120 mAP@0.50:0.95 0.2010  lr 4.8e-04
    14.1s (train 12.0s)  170.2 images/s  ETA 1m53s``: a training tool's epoch summary, one line."""
    train, valid = entry.get("train") or {}, entry.get("valid") or {}
    parts = [_epoch_of(entry["epoch"], epochs)]
    if train.get(LOSS) is not None:
        components = " ".join(
            f"{name.removeprefix('loss_')} {train[f'PPYoloELoss/{name}']:.3f}"
            for name in LOSS_COMPONENTS
            if train.get(f"PPYoloELoss/{name}") is not None
        )
        parts.append(f"loss {train[LOSS]:.4f}" + (f" ({components})" if components else ""))
    if valid:
        parts.append(
            f"valid {MAP_50} {_number(valid.get(MAP_50), '.4f')} {MAP_50_95} {_number(valid.get(MAP_50_95), '.4f')}"
        )
    if entry.get("lr") is not None:
        parts.append(f"lr {entry['lr']:.2e}")
    if entry.get("seconds") is not None:
        train_part = f" (train {entry['train_seconds']:.1f}s)" if entry.get("train_seconds") is not None else ""
        parts.append(f"{entry['seconds']:.1f}s{train_part}")
    if entry.get("images_per_second"):
        parts.append(f"{entry['images_per_second']:.1f} images/s")
    if eta_seconds is not None:
        parts.append(f"ETA {duration(eta_seconds)}")
    if entry.get("recovered_from_checkpoint"):
        parts.append("(recovered from the checkpoint)")
    return "  ".join(parts)


#: The results table's columns: header, width, value of a history entry.
_COLUMNS: tuple[tuple[str, int, Any], ...] = (
    ("epoch", 5, lambda e: str(e["epoch"])),
    ("loss", 8, lambda e: _number((e.get("train") or {}).get(LOSS), ".4f")),
    *(
        (
            name.removeprefix("loss_"),
            7,
            lambda e, n=name: _number((e.get("train") or {}).get(f"PPYoloELoss/{n}"), ".3f"),
        )
        for name in LOSS_COMPONENTS
    ),
    ("val loss", 8, lambda e: _number((e.get("valid") or {}).get(LOSS), ".4f")),
    (MAP_50, 8, lambda e: _number((e.get("valid") or {}).get(MAP_50), ".4f")),
    (MAP_50_95, 13, lambda e: _number((e.get("valid") or {}).get(MAP_50_95), ".4f")),
    ("lr", 8, lambda e: _number(e.get("lr"), ".2e")),
    ("time", 7, lambda e: _number(e.get("seconds"), ".1f")),
)


def results_table(history: list[dict[str, Any]]) -> list[str]:
    """One row per epoch: losses, mAP@0.50, mAP@0.50:0.95, learning rate, seconds (right-aligned columns)."""
    rows = [[header for header, _, _ in _COLUMNS]]
    rows += [[value(entry) for _, _, value in _COLUMNS] for entry in history]
    widths = [max(width, *(len(row[i]) for row in rows)) for i, (_, width, _) in enumerate(_COLUMNS)]
    return ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]


def checkpoint_progress(path: Path) -> tuple[int, dict[str, Any]]:
    """Epochs completed according to a super-gradients checkpoint, and the metrics it recorded.

    ``mmap`` reads only the small entries; the file is one this run wrote itself (see compat)."""
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return int(checkpoint.get("epoch", 0)), dict(checkpoint.get("metrics") or {})


def reconcile_history(
    history: list[dict[str, Any]], checkpoint_epochs: int, checkpoint_metrics: dict[str, Any]
) -> list[dict[str, Any]]:
    """The history that matches the checkpoint a retry resumes from.

    ``state.json`` is written after ``ckpt_latest.pth``, so a pod lost between the two leaves a
    checkpoint one epoch ahead of the state; that epoch's entry is rebuilt from the checkpoint's metrics.
    """
    kept = [entry for entry in history if entry["epoch"] <= checkpoint_epochs]
    if checkpoint_epochs > (kept[-1]["epoch"] if kept else 0):
        kept.append(
            {
                "epoch": checkpoint_epochs,
                "train": to_jsonable(checkpoint_metrics.get("train", {})),
                "valid": to_jsonable(checkpoint_metrics.get("valid", {})),
                "recovered_from_checkpoint": True,
            }
        )
    return kept


def world_size() -> int:
    """Processes in the run (torchrun's ``WORLD_SIZE``; 1 without torchrun)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def global_rank() -> int:
    """This process's rank in the process group (0 without DDP): only rank 0 writes to the output URI."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return int(os.environ.get("RANK", "0"))


def _setup_device(request: TrainRequest) -> None:
    world = world_size()
    if world > 1 and torch.cuda.is_available():
        # Launched by torchrun: super-gradients joins the process group (NCCL) and takes GPU LOCAL_RANK (its own
        # launcher re-executes sys.argv and breaks on modern torch, so it is never used here).
        setup_device(multi_gpu=MultiGPUMode.DISTRIBUTED_DATA_PARALLEL, num_gpus=world)
    elif world > 1:
        _setup_cpu_ddp(world)
    else:
        setup_device(device="cuda" if torch.cuda.is_available() else "cpu")
    speed.configure_backends()


def _setup_cpu_ddp(world: int) -> None:
    """DDP between CPU processes (gloo). super-gradients' ``setup_device`` cannot: under torchrun it forces CUDA
    and, without a GPU, falls back to one independent CPU process each, no process group, every one a writer.

    The device is ``cpu:<local rank>``: torch treats it as ``cpu``, and super-gradients reads the rank from it
    (per-process random seeds); :class:`_Trainer` wraps the model in a CPU ``DistributedDataParallel``."""
    init_trainer()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo", init_method="env://")
    device_config.device = f"cpu:{local_rank()}"
    device_config.multi_gpu = MultiGPUMode.DISTRIBUTED_DATA_PARALLEL
    device_config.num_gpus = world


def _is_cpu_ddp() -> bool:
    return not device_config.is_cuda and device_config.multi_gpu == MultiGPUMode.DISTRIBUTED_DATA_PARALLEL


class _Trainer(Trainer):  # type: ignore[misc]  # super-gradients is untyped
    """super-gradients' Trainer, with what DDP needs beyond it.

    - On the CPU (gloo) the model is wrapped without ``device_ids`` (super-gradients passes the GPU index).
    - The averaged model is read from the first process's run directory: a new run's id is a timestamp taken by
      each process, so the others' run directories differ from it (only rank 0 saves checkpoints; each of them holds
      just its own unused ``averaging_snapshots.pkl``, in the local work directory, never synced). A resumed run
      has one id (``state.json``'s) and one directory for all.
    """

    net: Any

    def _net_to_device(self) -> None:
        if not _is_cpu_ddp():
            super()._net_to_device()
            return
        self.net.to("cpu")
        self.net = torch.nn.parallel.DistributedDataParallel(self.net, find_unused_parameters=True)

    def _validate_final_average_model(self, context: PhaseContext, checkpoint_dir_path: str, **kwargs: Any) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shared = [checkpoint_dir_path]
            torch.distributed.broadcast_object_list(shared, src=0)
            checkpoint_dir_path = shared[0]
        super()._validate_final_average_model(context=context, checkpoint_dir_path=checkpoint_dir_path, **kwargs)


def write_history(
    history: list[dict[str, Any]], *, work_dir: Path, output_uri: str, storage: Storage
) -> dict[str, str]:
    """``history.json`` and ``training_curves.png`` at ``output_uri``; returns ``{"history": name, ...}``
    (:attr:`TrainResult.files`). A plot that fails to draw is logged, not fatal: the model is what matters."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / HISTORY_FILE).write_text(json.dumps(to_jsonable(history), indent=2))
    files = {"history": HISTORY_FILE}
    try:
        plots.save_figure(plots.training_curves(history), work_dir / plots.TRAINING_CURVES)
        files["training_curves"] = plots.TRAINING_CURVES
    except Exception:  # a drawing bug must not fail a finished training
        log.warning("could not draw %s", plots.TRAINING_CURVES, exc_info=True)
    storage.upload_tree(work_dir, output_uri, files=sorted(files.values()))
    return files


def _restore_run(
    request: TrainRequest, storage: Storage, ckpt_root: Path, *, download: bool
) -> tuple[str | None, list[dict[str, Any]], Path | None]:
    """The run id, history and local run directory to resume with, after restoring ``run/`` there (when
    ``download``, i.e. on the node's first process); (None, [], None) for a new run."""
    state_uri = join_uri(request.output_uri, STATE_FILE)
    if not storage.exists(state_uri):
        return None, [], None
    state = json.loads(storage.read_text(state_uri))
    run_id = str(state["run_id"])
    local_run = ckpt_root / EXPERIMENT / run_id
    if download:
        shutil.rmtree(local_run, ignore_errors=True)  # S3 is the truth; a reused work dir may hold newer files
        storage.download_tree(join_uri(request.output_uri, RUN_DIR), local_run)
    history = list(state.get("history", []))
    if (local_run / LATEST_CHECKPOINT).is_file():
        epochs, metrics = checkpoint_progress(local_run / LATEST_CHECKPOINT)
        history = reconcile_history(history, epochs, metrics)
    if download:
        done = history[-1]["epoch"] if history else 0
        log.info("resuming run %s after epoch %d from %s", run_id, done, request.output_uri)
    return run_id, history, local_run


def run_train(request: TrainRequest, *, work_dir: Path, storage: Storage) -> TrainResult | None:
    """Run the ``train`` command; returns the result it wrote (or found), ``None`` on the other processes of a
    multi-GPU run."""
    result_uri = join_uri(request.output_uri, TRAIN_RESULT_FILE)
    if storage.exists(result_uri):
        log.info("training already complete: %s exists; nothing to do", result_uri)
        return TrainResult.read(result_uri, storage=storage)

    started = time.monotonic()
    _setup_device(request)
    # Under torchrun the processes of a node share its work dir: the node's first downloads, the others wait for it
    # (wait_for_the_master's barriers are global). Only the run's first process writes to the output URI.
    node_rank, rank, world = local_rank(), global_rank(), world_size()
    logs.keep_package_loggers()  # super-gradients' imports mute every logger on the other processes
    if world > 1:
        log.info("process %d of %d (local %d), device %s", rank, world, node_rank, device_config.device)
    dataset_dir = work_dir / "dataset"
    with wait_for_the_master(node_rank):
        if node_rank == 0:
            log.info("downloading dataset %s", request.dataset_uri)
            storage.download_tree(request.dataset_uri, dataset_dir)
    manifest = data.read_manifest(dataset_dir)
    class_names = [str(name) for name in manifest.class_names]
    if len(class_names) != request.num_classes:
        raise StageInputError(
            f"num_classes={request.num_classes} but the dataset at {request.dataset_uri} has {len(class_names)} "
            f"classes ({', '.join(class_names)}); run the inspection stage to derive a consistent set"
        )

    train_loader = data.build_loader(
        data.build_dataset(dataset_dir, manifest, "train", input_size=request.input_size, train=True),
        batch_size=request.batch_size,
        workers=request.workers,
        train=True,
        seed=request.seed,
    )
    valid_loader = data.build_loader(
        data.build_dataset(dataset_dir, manifest, "validation", input_size=request.input_size, train=False),
        batch_size=request.batch_size,
        workers=request.workers,
        train=False,
    )
    log.info(
        "%d training images per epoch%s in %d batches, %d loader workers, channels_last=%s",
        data.images_per_epoch(train_loader),
        f" on this process ({world} processes)" if world > 1 else "",
        len(train_loader),
        train_loader.num_workers,
        speed.use_channels_last(request.channels_last),
    )

    checkpoint_path = None
    if request.checkpoint_uri:
        checkpoint_path = work_dir / "base_checkpoint.pth"
        log.info("downloading base checkpoint %s", request.checkpoint_uri)
        storage.download_file(request.checkpoint_uri, checkpoint_path)
    torch.manual_seed(request.seed)  # the initial weights too: super-gradients seeds only when train() starts
    model = sg.build_model(
        request.model_name,
        num_classes=request.num_classes,
        checkpoint_path=checkpoint_path,
        checkpoint_num_classes=request.checkpoint_num_classes,
    )
    if speed.use_channels_last(request.channels_last):
        model = speed.to_channels_last(model)

    ckpt_root = work_dir / "checkpoints"
    with wait_for_the_master(node_rank):
        run_id, history, restored = _restore_run(request, storage, ckpt_root, download=node_rank == 0)
    sync = RunSync(
        storage=storage,
        output_uri=request.output_uri,
        history=history,
        images_per_epoch=data.images_per_epoch(train_loader) * world,
        batches_per_epoch=len(train_loader),
        epochs=request.epochs,
        restored=restored if rank == 0 else None,
        writes=rank == 0,
    )
    trainer = _Trainer(experiment_name=EXPERIMENT, ckpt_root_dir=str(ckpt_root))
    params = training_params(request, class_names, [sync])
    if run_id is not None:
        params["run_id"] = run_id
    try:
        trainer.train(model=model, training_params=params, train_loader=train_loader, valid_loader=valid_loader)
    finally:
        sync.wait()  # never leave an upload half-done behind a failure

    # Only the first process writes (under torchrun every process runs this function).
    if rank != 0:
        return None
    done = history[-1]["epoch"] if history else 0
    if done < request.epochs:
        # super-gradients turns a KeyboardInterrupt into a normal return; that is not a finished training.
        raise RuntimeError(f"training stopped after epoch {done} of {request.epochs}; a retry resumes it")
    removed = sync.finish()
    if removed:
        log.info("removed from %s what the finished run no longer has: %s", sync.run_uri, ", ".join(removed))
    run_uri = sync.run_uri
    run_dir = Path(trainer.checkpoints_dir_path)
    averaged = (run_dir / AVERAGE_CHECKPOINT).exists()
    final_valid = history[-1]["valid"] if history else {}
    log.info("results (%d epochs):", len(history))
    for row in results_table(history):
        log.info("  %s", row)
    files = write_history(history, work_dir=work_dir / "train_out", output_uri=request.output_uri, storage=storage)
    result = TrainResult(
        run_id=sync.run_id or run_dir.name,
        model_name=request.model_name,
        num_classes=request.num_classes,
        class_names=class_names,
        input_size=request.input_size,
        epochs_completed=done,
        best_checkpoint_uri=join_uri(run_uri, BEST_CHECKPOINT),
        latest_checkpoint_uri=join_uri(run_uri, LATEST_CHECKPOINT),
        average_checkpoint_uri=join_uri(run_uri, AVERAGE_CHECKPOINT) if averaged else None,
        run_uri=run_uri,
        valid_metrics=final_valid,
        history=history,
        files=files,
        channel_order=data.MODEL_CHANNELS,
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        gpus=world if torch.cuda.is_available() else 0,
        loader_workers=train_loader.num_workers,
        steps_per_epoch=len(train_loader),
        seconds_this_attempt=round(time.monotonic() - started, 1),
        request=request,
    )
    result.write(result_uri, storage=storage)
    log.info("training complete: %d epochs; result at %s", result.epochs_completed, result_uri)
    return result
