"""S3 access for operators, from an Airflow AWS connection through the Amazon provider's S3Hook."""

from __future__ import annotations

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.config import Config

from yolonas_pipeline.storage import DEFAULT_TRANSFER_WORKERS, Storage


def storage_for(aws_conn_id: str) -> Storage:
    # One pooled connection per parallel transfer, or urllib3 discards connections under load.
    hook = S3Hook(aws_conn_id=aws_conn_id, config=Config(max_pool_connections=2 * DEFAULT_TRANSFER_WORKERS))
    return Storage(hook.get_conn(), connection_hint=f"the Airflow connection {aws_conn_id!r}")


def trainer_environment(aws_conn_id: str) -> dict[str, str]:
    """The connection as the standard ``AWS_*`` variables for a local trainer subprocess.

    Only the subprocess's environment carries them: never its argv, the task log or XCom.
    """
    hook = S3Hook(aws_conn_id=aws_conn_id)
    credentials = hook.get_credentials()
    env = {"AWS_DEFAULT_REGION": hook.conn_region_name or "us-east-1"}
    if credentials.access_key:
        env["AWS_ACCESS_KEY_ID"] = credentials.access_key
        env["AWS_SECRET_ACCESS_KEY"] = credentials.secret_key
    if credentials.token:
        env["AWS_SESSION_TOKEN"] = credentials.token
    endpoint = hook.conn_config.get_service_endpoint_url("s3")
    if endpoint:
        env["AWS_ENDPOINT_URL_S3"] = endpoint
    return env
