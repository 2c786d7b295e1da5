"""super-gradients' log files (synced to S3 with the run) get the redacting filter, also after super-gradients
replaces its handlers when training starts; botocore's request headers are not logged at all."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from super_gradients.common.auto_logging.auto_logger import AutoLoggerConfig

from yolonas_pipeline.trainer import logs

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
HEADER = (
    f"'Authorization': b'AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20261201/us-east-1/s3/aws4_request, Signature=ab12'"
)


def test_a_secret_logged_after_super_gradients_resets_logging_is_masked_in_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    logs.configure()
    logs.protect_log_files()
    # What Trainer.train does at start: basicConfig(force=True) with a new file handler in the run directory.
    log_file = tmp_path / "run" / "logs_test.txt"
    AutoLoggerConfig.setup_logging(filename=str(log_file), copy_already_logged_messages=False)
    root_handlers = logging.getLogger().handlers
    assert root_handlers and all(any(isinstance(f, logs.RedactingFilter) for f in h.filters) for h in root_handlers), (
        root_handlers
    )

    logging.getLogger("super_gradients.anything").warning("request headers %s", HEADER)
    logging.getLogger("botocore.endpoint").debug("Sending http request: %s", HEADER)
    for handler in root_handlers:
        handler.flush()
    text = log_file.read_text()
    assert "request headers" in text
    assert [n for n in (ACCESS_KEY, "Signature=", "AWS4-HMAC-SHA256 Credential") if n in text] == [], text
    assert "Sending http request" not in text  # botocore is capped at INFO
