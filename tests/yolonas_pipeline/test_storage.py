"""Storage: one interface over local paths and a real S3 API server (moto on loopback)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from conftest import MotoS3, start_moto_server

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage, join_uri, split_s3_uri


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, str]:
    if request.param == "local":
        return Storage(), str(tmp_path / "root")
    moto: MotoS3 = request.getfixturevalue("moto_s3")
    return Storage(moto.client), f"s3://{moto.new_bucket()}/prefix"


def test_bytes_round_trip_and_ranged_reads(root: tuple[Storage, str]) -> None:
    storage, base = root
    uri = join_uri(base, "a", "b.bin")
    storage.write_bytes(uri, bytes(range(256)))
    assert storage.exists(uri) and storage.size(uri) == 256
    assert storage.read_bytes(uri) == bytes(range(256))
    assert storage.read_range(uri, 250, 10) == bytes(range(250, 256))
    assert storage.read_range(uri, 16, 4) == bytes([16, 17, 18, 19])


def test_trees_upload_download_and_list(root: tuple[Storage, str], tmp_path: Path) -> None:
    storage, base = root
    src = tmp_path / "src"
    for rel in ("x.txt", "d/y.txt", "d/e/z.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    storage.upload_tree(src, join_uri(base, "tree"))
    assert storage.list_files(join_uri(base, "tree")) == ["d/e/z.txt", "d/y.txt", "x.txt"]
    out = tmp_path / "out"
    storage.download_tree(join_uri(base, "tree"), out)
    assert (out / "d/e/z.txt").read_text() == "d/e/z.txt"
    storage.delete_tree(join_uri(base, "tree"))
    assert storage.list_files(join_uri(base, "tree")) == []


def test_missing_objects_are_named(root: tuple[Storage, str]) -> None:
    storage, base = root
    missing = join_uri(base, "nope.bin")
    assert not storage.exists(missing)
    with pytest.raises(FileNotFoundError, match=r"nope\.bin"):
        storage.read_bytes(missing)
    with pytest.raises(FileNotFoundError, match="holds no files"):
        storage.download_tree(join_uri(base, "empty"), "/tmp/never-written")


@pytest.fixture(scope="module")
def authenticating_s3() -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server that checks signatures against IAM after its first four requests (readiness probe and
    the IAM setup below)."""
    # The readiness probe in start_moto_server is the first of the four.
    server, endpoint = start_moto_server({**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        setup = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "x",
            "aws_secret_access_key": "x",
        }
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="trainer")
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=json.dumps(policy))
        good = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **good).create_bucket(Bucket="guarded")
        yield endpoint, good
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_refused_credentials_say_where_to_fix_them(authenticating_s3: tuple[str, dict[str, str]]) -> None:
    endpoint, good = authenticating_s3

    def storage(**credentials: str) -> Storage:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)
        return Storage(client, connection_hint="the Airflow connection 'aws_default'")

    storage(**good).write_bytes("s3://guarded/k", b"1")
    wrong_secret = {**good, "aws_secret_access_key": "not-the-secret"}
    with pytest.raises(StageInputError, match=r"refused the credentials for s3://guarded/k .*'aws_default'"):
        storage(**wrong_secret).read_bytes("s3://guarded/k")
    unknown_key = {"aws_access_key_id": "AKIAUNKNOWN000000000", "aws_secret_access_key": "x"}
    with pytest.raises(StageInputError, match="InvalidAccessKeyId"):
        storage(**unknown_key).read_bytes("s3://guarded/k")


def test_missing_bucket_is_reported(moto_s3: MotoS3) -> None:
    with pytest.raises(StageInputError, match="bucket of s3://no-such-bucket-x/k does not exist"):
        Storage(moto_s3.client).write_bytes("s3://no-such-bucket-x/k", b"1")


@pytest.mark.parametrize("uri", ["s3://", "file:///x", "bucket/key"])
def test_bad_s3_uris(uri: str) -> None:
    with pytest.raises(StageInputError):
        split_s3_uri(uri)
