"""The trainer's logging: its lines on stdout with the ``[yolonas]`` prefix, credentials masked everywhere.

:mod:`yolonas_pipeline.trainer.logs` needs only the standard library, so these run in the Airflow environment;
the end-to-end check (no credential in any uploaded file after a real training run) is in test_training.py.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest

from yolonas_pipeline.trainer.logs import (
    LIBRARY_LEVELS,
    REDACTED,
    TEE_ANNOUNCEMENTS,
    WARNINGS_LOGGER,
    DroppingStream,
    RedactingFilter,
    configure,
    is_noise,
    redact,
)

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


@pytest.fixture
def configured() -> Iterator[None]:
    """:func:`configure` for one test; the package and warnings loggers as they were afterwards."""
    names = ("yolonas_pipeline", WARNINGS_LOGGER)
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate) for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure()
        try:
            yield
        finally:
            logging.captureWarnings(False)
            for name, (handlers, propagate) in saved.items():
                logging.getLogger(name).handlers[:], logging.getLogger(name).propagate = handlers, propagate


#: What super-gradients and its dependencies print at import and during training that a task log does not need.
NOISE_RECORDS = [
    (
        "super_gradients.sanity_check.env_sanity_check",
        logging.WARNING,
        "\x1b[31mFailed to verify installed packages: coverage required but not found\x1b[0m",
    ),
    (
        "super_gradients.common.crash_handler.crash_tips_setup",
        logging.INFO,
        "Crash tips is disabled. You can set your environment variable to CRASH_HANDLER=TRUE to enable it",
    ),
    ("matplotlib.font_manager", logging.INFO, "generated new fontManager"),
    ("super_gradients.common.sg_loggers.base_sg_logger", logging.INFO, "Checkpoint saved in /x/ckpt_best.pth"),
    (
        WARNINGS_LOGGER,
        logging.WARNING,
        "/v/site-packages/super_gradients/common/deprecate.py:5: UserWarning: pkg_resources is deprecated as an API.",
    ),
]


@pytest.mark.parametrize(("name", "level", "message"), NOISE_RECORDS, ids=[r[0] for r in NOISE_RECORDS])
def test_super_gradients_noise_is_logged_at_debug(
    configured: None, capfd: pytest.CaptureFixture[str], name: str, level: int, message: str
) -> None:
    assert is_noise(logging.LogRecord(name, level, __file__, 1, message, None, None))
    record = logging.getLogger(name).makeRecord(name, level, __file__, 1, message, None, None)
    assert (record.levelno, record.levelname) == (logging.DEBUG, "DEBUG")  # demoted as it was made
    logging.getLogger(WARNINGS_LOGGER).handle(record)
    assert capfd.readouterr().out == ""


def test_other_records_of_the_same_loggers_keep_their_level(configured: None) -> None:
    logger = logging.getLogger("super_gradients.training.sg_trainer.sg_trainer")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "metric_to_watch fuzzy-matched", None, None)
    assert not is_noise(record) and record.levelno == logging.WARNING


def test_python_warnings_are_warning_lines(configured: None, capfd: pytest.CaptureFixture[str]) -> None:
    warnings.warn("the learning rate is very high", UserWarning, stacklevel=1)
    warnings.warn("pkg_resources is deprecated as an API", DeprecationWarning, stacklevel=1)
    lines = capfd.readouterr().out.splitlines()
    assert any(line.startswith("[yolonas] WARNING: ") and "UserWarning: the learning rate" in line for line in lines)
    assert not any("pkg_resources" in line for line in lines), lines


def test_the_tees_announcements_are_dropped() -> None:
    out = io.StringIO()
    stream = DroppingStream(out, TEE_ANNOUNCEMENTS)
    stream.write("The console stream is logged into /work/sg_logs/console.log\n")
    stream.write("The console stream is now moved to /work/run/console.txt\n")
    stream.write("[yolonas] epoch 1/2  loss 3.1\n")
    assert out.getvalue() == "[yolonas] epoch 1/2  loss 3.1\n"
