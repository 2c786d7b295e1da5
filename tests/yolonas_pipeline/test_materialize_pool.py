"""The materializer's conversion workers: real subprocesses, real pipes, real signals."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolonas_pipeline.materialize_images import CONVERT, ConversionJob, convert_chunk, inspect_image
from yolonas_pipeline.materialize_pool import ConversionPool, ConversionWorkerError

REPO = Path(__file__).resolve().parents[2]


def _png_jobs(count: int, tmp_path: Path) -> list[ConversionJob]:
    """PNG jobs, half as bytes and half as (path, offset, length) references into one file."""
    jobs: list[ConversionJob] = []
    blob = tmp_path / "images.bin"
    with open(blob, "wb") as out:
        for index in range(count):
            pixels = np.random.default_rng(index).integers(0, 255, (24 + index, 32, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            data = buffer.getvalue()
            plan = inspect_image(data, None)
            assert plan.action == CONVERT
            source = data if index % 2 else (str(blob), out.tell(), len(data))
            out.write(data)
            jobs.append((plan.action, source, plan.orientation, plan.output_size))
    return jobs


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in {"Z", "X"}  # exited; a zombie only waits for a parent that is gone too


def test_workers_return_what_this_process_would_in_order(tmp_path: Path) -> None:
    jobs = _png_jobs(12, tmp_path)
    chunks = [jobs[i : i + 3] for i in range(0, len(jobs), 3)]
    with ConversionPool(2) as pool:
        assert len(set(pool.pids)) == 2 and os.getpid() not in pool.pids
        futures = [pool.submit(chunk) for chunk in chunks]
        results = [future.result(timeout=60) for future in futures]
        pids = pool.pids
    assert results == [convert_chunk(chunk) for chunk in chunks]
    assert [Image.open(io.BytesIO(data)).size for chunk in results for _, data in chunk] == [
        (32, 24 + index) for index in range(12)
    ]
    assert all(_gone(pid) for pid in pids)


def test_try_submit_refuses_when_every_worker_has_enough_queued(tmp_path: Path) -> None:
    jobs = _png_jobs(8, tmp_path) * 20  # a chunk takes a good fraction of a second
    with ConversionPool(1) as pool:
        accepted = [pool.try_submit(jobs, max_queued=2), pool.try_submit(jobs, max_queued=2)]
        assert pool.try_submit(jobs, max_queued=2) is None
        expected = convert_chunk(jobs)
        for future in accepted:
            assert future is not None and future.result(timeout=120) == expected
        assert pool.try_submit(jobs, max_queued=2) is not None


def test_a_dead_worker_fails_its_chunks_with_a_clear_error(tmp_path: Path) -> None:
    jobs = _png_jobs(2, tmp_path)
    with ConversionPool(1) as pool:
        assert pool.submit(jobs).result(timeout=60) == convert_chunk(jobs)
        (pid,) = pool.pids
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ConversionWorkerError, match=rf"worker 0 \(pid {pid}\) .*killed by signal 9"):
            pool.submit(jobs).result(timeout=60)
        with pytest.raises(ConversionWorkerError, match=rf"pid {pid}"):  # and every later chunk
            pool.submit(jobs)


def test_close_without_wait_stops_the_workers_and_fails_what_they_held(tmp_path: Path) -> None:
    jobs = _png_jobs(8, tmp_path) * 20  # seconds of work
    pool = ConversionPool(2)
    futures = [pool.submit(jobs) for _ in range(4)]
    pids = pool.pids
    pool.close(wait=False)
    assert all(_gone(pid) for pid in pids)
    failed = [future for future in futures if future.exception(timeout=10) is not None]
    assert failed and all("was stopped before it finished" in str(future.exception()) for future in failed)


HOST = textwrap.dedent(
    """
    import sys, time
    from yolonas_pipeline.materialize_pool import ConversionPool
    pool = ConversionPool(2)
    print(*pool.pids, flush=True)
    time.sleep(60)
    """
)


def test_workers_exit_when_their_host_is_killed() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "include")}
    host = subprocess.Popen([sys.executable, "-c", HOST], env=env, stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    pids = [int(pid) for pid in host.stdout.readline().split()]
    assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    host.kill()  # SIGKILL: no cleanup runs in the host
    host.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids), "a conversion worker outlived its host"


UNGUARDED = textwrap.dedent(
    """
    import io, sys
    from datasets import ClassLabel, Dataset, Features, Image, Sequence, Value
    from PIL import Image as PILImage
    from yolonas_pipeline.materialize import MaterializeRequest, materialize
    from yolonas_pipeline.storage import Storage

    def png(shade):
        buffer = io.BytesIO()
        PILImage.new("RGB", (48, 32), (shade, 0, 0)).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    features = Features({
        "image": Image(),
        "objects": Sequence({"bbox": Sequence(Value("float32"), length=4), "category": ClassLabel(names=["a"])}),
    })
    rows = {"image": [png(i) for i in range(40)], "objects": [{"bbox": [[1, 1, 8, 8]], "category": [0]}] * 40}
    Dataset.from_dict(rows, features=features).save_to_disk(sys.argv[1] + "/src")
    result = materialize(MaterializeRequest(sys.argv[1] + "/src", sys.argv[1] + "/out", workers=3), storage=Storage())
    print("converted", sum(split.images for split in result.splits.values()))
    """
)


def test_materialize_with_workers_needs_no_main_guard(tmp_path: Path) -> None:
    """A script read from stdin, with no ``if __name__ == "__main__":``: what multiprocessing's spawn and
    forkserver workers cannot run, since they re-import the host's ``__main__``."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "include")}
    proc = subprocess.run(
        [sys.executable, "-", str(tmp_path)], input=UNGUARDED, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "converted 40" in proc.stdout
