"""One way to read and write artifacts, whether they live on a local disk or in S3.

Every stage hands the next one a URI: a local path or ``s3://bucket/key``. :class:`Storage`
dispatches on the scheme, so stage code never branches on where its data lives. Writes are
atomic on both back ends: a local file appears under its name only when complete (write to a
temporary name, then rename), and an S3 object only exists once its PUT has finished.

The S3 client is passed in (the Airflow side builds it from a connection through ``S3Hook``;
the trainer builds it from the standard ``AWS_*`` environment variables), so this module needs
boto3 only when an ``s3://`` URI is actually used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolonas_pipeline.errors import StageInputError

S3_SCHEME = "s3://"
#: Parallel transfers for whole-tree uploads and downloads; S3 latency, not bandwidth, bounds
#: small-object throughput, so more requests in flight than cores is the point.
DEFAULT_TRANSFER_WORKERS = 16


def is_s3_uri(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; the key may be empty."""
    if not is_s3_uri(uri):
        raise StageInputError(f"{uri!r} is not an S3 URI; expected s3://<bucket>/<key>")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise StageInputError(f"{uri!r} names no bucket; expected s3://<bucket>/<key>")
    return bucket, key


def join_uri(base: str, *parts: str) -> str:
    """Join path segments onto a local path or an S3 URI with exactly one ``/`` between them."""
    pieces = [base.rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")]
    return "/".join(pieces)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def default_s3_client() -> Any:
    """A boto3 S3 client configured from the environment (``AWS_ENDPOINT_URL_S3`` etc.)."""
    import boto3  # deferred: local-only use of this module needs no boto3
    from botocore.config import Config

    # One pooled connection per parallel transfer, or urllib3 discards connections under load.
    return boto3.client("s3", config=Config(max_pool_connections=2 * DEFAULT_TRANSFER_WORKERS))


@dataclass
class TransferStats:
    """Bytes moved over the network by one :class:`Storage`; benchmarks and reports read it."""

    bytes_read: int = 0
    bytes_written: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, *, read: int = 0, written: int = 0) -> None:
        with self._lock:
            self.bytes_read += read
            self.bytes_written += written
            self.requests += 1


class Storage:
    """Read and write local paths and ``s3://`` URIs through one interface.

    :param s3_client: a boto3 S3 client; built from the environment on first S3 use if omitted.
    :param connection_hint: named in S3 error messages, e.g. the Airflow connection id, so a
        refused credential points at the place to fix it.
    """

    def __init__(self, s3_client: Any | None = None, *, connection_hint: str = "the AWS_* environment") -> None:
        self._s3 = s3_client
        self.connection_hint = connection_hint
        self.stats = TransferStats()

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = default_s3_client()
        return self._s3

    def _s3_call(self, uri: str, action: Callable[[], Any]) -> Any:
        """Run one S3 request and turn botocore's errors into messages that name the URI."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        try:
            return action()
        except NoCredentialsError as exc:
            raise StageInputError(f"no S3 credentials found for {uri}; set them in {self.connection_hint}") from exc
        except EndpointConnectionError as exc:
            raise StageInputError(f"cannot reach the S3 endpoint for {uri}: {exc}") from exc
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"}:
                raise StageInputError(
                    f"S3 refused the credentials for {uri} ({code}); check the access key and secret in "
                    f"{self.connection_hint}"
                ) from exc
            if code in {"NoSuchBucket"}:
                raise StageInputError(f"bucket of {uri} does not exist ({code})") from exc
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise FileNotFoundError(f"{uri} does not exist") from exc
            raise

    # -- single objects ---------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        if not is_s3_uri(uri):
            return Path(uri).exists()
        bucket, key = split_s3_uri(uri)
        try:
            self._s3_call(uri, lambda: self.s3.head_object(Bucket=bucket, Key=key))
        except FileNotFoundError:
            return False
        return True

    def size(self, uri: str) -> int:
        if not is_s3_uri(uri):
            path = Path(uri)
            if not path.is_file():
                raise FileNotFoundError(f"{uri} does not exist")
            return path.stat().st_size
        bucket, key = split_s3_uri(uri)
        head = self._s3_call(uri, lambda: self.s3.head_object(Bucket=bucket, Key=key))
        return int(head["ContentLength"])

    def read_bytes(self, uri: str) -> bytes:
        if not is_s3_uri(uri):
            path = Path(uri)
            if not path.is_file():
                raise FileNotFoundError(f"{uri} does not exist")
            return path.read_bytes()
        bucket, key = split_s3_uri(uri)
        body: bytes = self._s3_call(uri, lambda: self.s3.get_object(Bucket=bucket, Key=key))["Body"].read()
        self.stats.add(read=len(body))
        return body

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """Read ``length`` bytes from offset ``start`` (a ranged GET on S3)."""
        if length <= 0:
            return b""
        if not is_s3_uri(uri):
            with open(uri, "rb") as handle:
                handle.seek(start)
                data = handle.read(length)
        else:
            bucket, key = split_s3_uri(uri)
            byte_range = f"bytes={start}-{start + length - 1}"
            response = self._s3_call(uri, lambda: self.s3.get_object(Bucket=bucket, Key=key, Range=byte_range))
            data = response["Body"].read()
        self.stats.add(read=len(data))
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        if not is_s3_uri(uri):
            _atomic_write(Path(uri), data)
            return
        bucket, key = split_s3_uri(uri)
        self._s3_call(
            uri,
            lambda: self.s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256"),
        )
        self.stats.add(written=len(data))

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def upload_file(self, path: str | Path, uri: str) -> None:
        if not is_s3_uri(uri):
            target = Path(uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
            return
        bucket, key = split_s3_uri(uri)
        self._s3_call(
            uri,
            lambda: self.s3.upload_file(str(path), bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"}),
        )
        self.stats.add(written=Path(path).stat().st_size)

    def download_file(self, uri: str, path: str | Path) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        if not is_s3_uri(uri):
            if not Path(uri).is_file():
                raise FileNotFoundError(f"{uri} does not exist")
            shutil.copyfile(uri, tmp)
        else:
            bucket, key = split_s3_uri(uri)
            self._s3_call(uri, lambda: self.s3.download_file(bucket, key, str(tmp)))
            self.stats.add(read=tmp.stat().st_size)
        os.replace(tmp, target)

    def delete(self, uri: str) -> None:
        if not is_s3_uri(uri):
            Path(uri).unlink(missing_ok=True)
            return
        bucket, key = split_s3_uri(uri)
        self._s3_call(uri, lambda: self.s3.delete_object(Bucket=bucket, Key=key))

    # -- trees ------------------------------------------------------------------------------
    def list_files(self, prefix_uri: str) -> list[str]:
        """Relative paths of every file under ``prefix_uri`` (treated as a folder), sorted."""
        if not is_s3_uri(prefix_uri):
            root = Path(prefix_uri)
            if not root.is_dir():
                return []
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        bucket, key = split_s3_uri(prefix_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        paginator = self.s3.get_paginator("list_objects_v2")
        found: list[str] = []

        def collect() -> None:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                found.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []))

        self._s3_call(prefix_uri, collect)
        return sorted(found)

    def upload_tree(
        self,
        local_dir: str | Path,
        uri: str,
        *,
        files: Iterable[str] | None = None,
        workers: int = DEFAULT_TRANSFER_WORKERS,
    ) -> list[str]:
        """Copy every file below ``local_dir`` (or only ``files``, relative) to ``uri``, in parallel."""
        root = Path(local_dir)
        relative = (
            sorted(files)
            if files is not None
            else sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        )
        self._parallel(lambda rel: self.upload_file(root / rel, join_uri(uri, rel)), relative, workers)
        return relative

    def download_tree(self, uri: str, local_dir: str | Path, *, workers: int = DEFAULT_TRANSFER_WORKERS) -> list[str]:
        """Copy every file under ``uri`` into ``local_dir``, in parallel; returns the relative paths."""
        relative = self.list_files(uri)
        if not relative:
            raise FileNotFoundError(f"{uri} holds no files")
        root = Path(local_dir)
        self._parallel(lambda rel: self.download_file(join_uri(uri, rel), root / rel), relative, workers)
        return relative

    def delete_tree(self, uri: str) -> None:
        if not is_s3_uri(uri):
            shutil.rmtree(uri, ignore_errors=True)
            return
        for rel in self.list_files(uri):
            self.delete(join_uri(uri, rel))

    @staticmethod
    def _parallel(action: Callable[[str], None], items: list[str], workers: int) -> None:
        if not items:
            return
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
            for _ in pool.map(action, items):
                pass


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
