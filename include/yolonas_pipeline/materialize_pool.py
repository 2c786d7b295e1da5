"""Image-conversion worker processes for the materializer.

Each worker is a plain ``python -c`` subprocess that imports this module and Pillow, nothing of the host,
reads chunks of jobs from one pipe and writes their results to another.

Why not ``concurrent.futures.ProcessPoolExecutor``: its spawn and forkserver workers re-import the host's
``__main__`` (under Airflow that is the ``airflow`` CLI and everything it imports; from ``python -`` or an
unguarded script it is a crash), and with a ``__main__`` that imports ``datasets``, its forkserver workers
began their first image 0.45-0.5 s after the export started; these begin theirs after 0.2-0.3 s. The caller
(``materialize``) converts too whenever every worker has enough queued, so ``workers=N`` is N processes
on N cores. Measured in BENCHMARKS.md ("PNG source").

Failure behaviour: a worker that dies fails every chunk it held with :class:`ConversionWorkerError` (the
export then fails without writing its manifest); a host that dies closes the pipes, and each worker exits
when it reads end-of-file, so no worker outlives its host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from yolonas_pipeline.materialize_images import ConversionJob, ConversionResult, convert_chunk

__all__ = ["ConversionPool", "ConversionWorkerError"]


class ConversionWorkerError(RuntimeError):
    """A conversion worker process died or could not be reached."""


#: Pipe capacity asked for results: a chunk of converted JPEGs (~4 x 150 KB) fits, so a worker hands over its
#: results in one write and goes on converting, instead of blocking 64 KB at a time on a reader thread that
#: waits for the GIL of a host busy converting too.
RESULT_PIPE_BYTES = 1 << 20


def _widen(fd: int) -> None:
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only; elsewhere pipes keep their size
    if setpipe is None:
        return
    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep the default
        fcntl.fcntl(fd, setpipe, RESULT_PIPE_BYTES)


# The worker finds this package where the host found it, whatever sys.path the host was given at run time
# (Airflow adds its dags and plugins folders); appended, so that nothing it holds shadows the stdlib.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
_BOOTSTRAP = (
    "import sys; sys.path.append(sys.argv[1]); from yolonas_pipeline.materialize_pool import serve; "
    "serve(int(sys.argv[2]), int(sys.argv[3]))"
)


class _Worker:
    """One worker process, the pipe pair to it, and the thread that reads its results in order."""

    def __init__(self, index: int) -> None:
        job_read, job_write = os.pipe()
        result_read, result_write = os.pipe()
        _widen(result_write)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, _PACKAGE_ROOT, str(job_read), str(result_write)],
                pass_fds=(job_read, result_write),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            for fd in (job_read, job_write, result_read, result_write):
                os.close(fd)
            raise
        os.close(job_read)
        os.close(result_write)
        self.name = f"image-conversion worker {index} (pid {self.process.pid})"
        self._jobs = Connection(job_write, readable=False)
        self._results = Connection(result_read, writable=False)
        self._waiting: deque[Future[list[ConversionResult]]] = deque()
        self._lock = threading.Lock()  # orders "append a future, send its chunk" against the reader's failure
        self._error: ConversionWorkerError | None = None
        self._stopping: str | None = None  # why the host is closing this worker, if it is
        self._reader = threading.Thread(target=self._read, name=f"materialize-convert-{index}", daemon=True)
        self._reader.start()

    @property
    def outstanding(self) -> int:
        return len(self._waiting)

    def submit(self, jobs: list[ConversionJob]) -> Future[list[ConversionResult]]:
        future: Future[list[ConversionResult]] = Future()
        with self._lock:
            if self._error is not None:
                raise self._error
            self._waiting.append(future)
        try:
            # blocks only while the worker's pipe is full; the reader thread keeps its results flowing
            self._jobs.send(jobs)
        except OSError as exc:  # its end of the pipe is closed: it is dead or dying, and the reader says why
            self._reader.join()
            assert self._error is not None
            raise self._error from exc
        return future

    def _read(self) -> None:
        while True:
            try:
                results = self._results.recv()
            except (EOFError, OSError):
                break
            self._waiting.popleft().set_result(results)
        # the worker is gone: whatever was or will be sent to it fails, and says why
        code = self.process.wait()
        if self._stopping is not None:
            self._fail(self._stopping)
        else:
            reason = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            self._fail(f"exited ({reason}) with {len(self._waiting)} chunk(s) of images unconverted")

    def _fail(self, why: str) -> None:
        with self._lock:
            if self._error is None:
                self._error = ConversionWorkerError(f"{self.name} {why}")
            waiting, self._waiting = list(self._waiting), deque()
        for future in waiting:
            if not future.done():
                future.set_exception(self._error)

    def close(self, *, wait: bool) -> None:
        """Close the job pipe: the worker exits once the chunks already sent are done; without ``wait``, kill it."""
        self._stopping = "was closed" if wait else "was stopped before it finished"
        if not wait:
            self.process.kill()
        self._jobs.close()
        self.process.wait()
        self._reader.join()
        self._results.close()


class ConversionPool:
    """``workers`` conversion processes; chunks go to the least busy one, results come back as futures."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers}: a conversion pool needs at least one worker")
        self._workers: list[_Worker] = []
        try:
            for index in range(workers):
                self._workers.append(_Worker(index))
        except BaseException:
            self.close(wait=False)
            raise

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def submit(self, jobs: list[ConversionJob]) -> Future[list[ConversionResult]]:
        """Queue one chunk; the future's result lists one (status, payload) per job, in order."""
        return min(self._workers, key=lambda worker: worker.outstanding).submit(jobs)

    def try_submit(self, jobs: list[ConversionJob], *, max_queued: int) -> Future[list[ConversionResult]] | None:
        """Like :meth:`submit`, or None when every worker already has ``max_queued`` chunks waiting."""
        worker = min(self._workers, key=lambda worker: worker.outstanding)
        return worker.submit(jobs) if worker.outstanding < max_queued else None

    def close(self, *, wait: bool = True) -> None:
        """Stop every worker: after its queued chunks with ``wait``, at once (failing them) without."""
        for worker in self._workers:
            worker.close(wait=wait)
        self._workers = []

    def __enter__(self) -> ConversionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(wait=exc_info[0] is None)


def serve(job_fd: int, result_fd: int) -> None:
    """The worker loop: a chunk of jobs in, their results out, until the host closes the job pipe."""
    # Ctrl-C in a terminal reaches the whole process group; the host decides, and closes the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from PIL import Image, JpegImagePlugin, PngImagePlugin  # noqa: F401  (imported while the host reads rows)

    jobs_in = Connection(job_fd, writable=False)
    results_out = Connection(result_fd, readable=False)
    while True:
        try:
            jobs: Any = jobs_in.recv()
        except EOFError:
            return
        try:
            results_out.send(convert_chunk(jobs))
        except BrokenPipeError:  # the host is gone
            return
