"""The trainer's logging: its lines on stdout with the ``[yolonas]`` prefix, credentials masked everywhere.

:mod:`yolonas_pipeline.trainer.logs` needs only the standard library, so these run in the Airflow environment;
the end-to-end check (no credential in any uploaded file after a real training run) is in test_training.py.
"""

from __future__ import annotations

import logging

import pytest

from yolonas_pipeline.trainer.logs import LIBRARY_LEVELS, REDACTED, RedactingFilter, configure, redact

# What botocore logs at DEBUG for one request (headers as a dict of bytes), and a presigned URL.
BOTOCORE_LINE = (
    "Sending http request: <AWSPreparedRequest stream_output=False, method=PUT, url=http://127.0.0.1:5000/b/k, "
    "headers={'User-Agent': b'Boto3/1.44.8', 'X-Amz-Date': b'20261201T190000Z', "
    "'X-Amz-Security-Token': b'FwoGZXIvYXdzEJrTOKEN', 'Authorization': b'AWS4-HMAC-SHA256 "
    "Credential=AKIAEXAMPLEKEY123/20261201/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=0123456789abcdef0123456789abcdef'}>"
)
PRESIGNED = (
    "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLEKEY123%2F20261201"
    "&X-Amz-Date=20261201T190000Z&X-Amz-Signature=abcdef0123&X-Amz-Security-Token=FwoGZXIvYXdzEJrTOKEN"
)
NEEDLES = ("AKIAEXAMPLEKEY123", "FwoGZXIvYXdzEJrTOKEN", "Signature=", "AWS4-HMAC-SHA256 Credential", "0123456789abcdef")


@pytest.mark.parametrize("text", [BOTOCORE_LINE, PRESIGNED], ids=["botocore-headers", "presigned-url"])
def test_signatures_tokens_and_key_ids_are_masked(text: str) -> None:
    masked = redact(text)
    assert [needle for needle in NEEDLES if needle in masked] == [], masked
    assert REDACTED in masked


def test_secret_values_are_masked_wherever_they_appear() -> None:
    assert redact("key=my-secret-value!", ["my-secret-value"]) == f"key={REDACTED}!"
    assert redact("an ordinary line with no secrets") == "an ordinary line with no secrets"


def test_the_filter_masks_messages_arguments_and_tracebacks() -> None:
    filter_ = RedactingFilter(["s3cr3t-access-key"])
    record = logging.LogRecord("botocore.endpoint", logging.DEBUG, __file__, 1, "request: %s", (BOTOCORE_LINE,), None)
    try:
        raise RuntimeError("failed with s3cr3t-access-key")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert filter_.filter(record) is True
    formatted = logging.Formatter().format(record)
    assert [needle for needle in (*NEEDLES, "s3cr3t-access-key") if needle in formatted] == [], formatted


def test_configure_caps_the_libraries_that_log_headers_and_prints_prefixed_lines(
    capfd: pytest.CaptureFixture[str],
) -> None:
    logger = logging.getLogger("yolonas_pipeline")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        configure()
        configure()  # idempotent: still one handler
        assert {name: logging.getLogger(name).getEffectiveLevel() for name in LIBRARY_LEVELS} == LIBRARY_LEVELS
        assert logging.getLogger("botocore.endpoint").isEnabledFor(logging.DEBUG) is False
        assert len([h for h in logger.handlers if getattr(h, "_yolonas_console", False)]) == 1
        logging.getLogger("yolonas_pipeline.trainer.training").info("epoch %d: done", 3)
        logging.getLogger("yolonas_pipeline.trainer.training").warning("two\nlines")
        out = capfd.readouterr().out
        assert out.splitlines()[-3:] == [
            "[yolonas] epoch 3: done",
            "[yolonas] WARNING: two",
            "[yolonas] WARNING: lines",
        ]
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
        for name in LIBRARY_LEVELS:
            logging.getLogger(name).setLevel(logging.NOTSET)
