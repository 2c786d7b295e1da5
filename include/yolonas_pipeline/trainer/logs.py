"""The trainer's logging: the stage modules' lines on stdout, and no credentials in any log file.

Stage modules log through ``logging.getLogger(__name__)``; :func:`configure` gives the package logger one
handler on the process's real stdout (super-gradients tees ``sys.stdout`` into its console log; the Airflow task
log streams the process's stdout), so a line appears once, prefixed ``[yolonas]``.

super-gradients logs everything at DEBUG into files under the run directory (``logs_*.txt``, ``console_*.txt``),
which the trainer syncs to S3 with the run. At DEBUG, botocore logs every request's headers, including
``Authorization: AWS4-HMAC-SHA256 Credential=<access key id>/...`` and the session token. So:

- the HTTP and AWS libraries' loggers are capped at INFO/WARNING (:data:`LIBRARY_LEVELS`): the headers are never
  logged at all;
- every handler on the root logger, which is where super-gradients' file handlers live, gets a
  :class:`RedactingFilter`, also each time super-gradients replaces them (:func:`protect_log_files`), so a secret
  logged by anything else is masked before it reaches a file.

The task log should read like a training tool's, so super-gradients' and its dependencies' noise goes to DEBUG
(:data:`NOISE`: the environment check's complaints about sphinx or coverage, "Crash tips is disabled",
matplotlib's font cache, the deprecation warnings of an unmaintained library on a modern stack): it still
reaches super-gradients' DEBUG log files, not the console. Python warnings are log records at WARNING
(:func:`capture_warnings`), printed ``[yolonas] WARNING: ...`` like the package's own. super-gradients' tqdm bars
are off (``TQDM_DISABLE``, :mod:`yolonas_pipeline.trainer.compat`), and the lines its stdout tee prints about
where the console is logged are dropped (:class:`DroppingStream`).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

PACKAGE_LOGGER = "yolonas_pipeline"
PREFIX = "[yolonas] "
#: Loggers whose DEBUG output holds request headers (signatures, tokens) and bodies.
LIBRARY_LEVELS = {
    "botocore": logging.INFO,
    "boto3": logging.INFO,
    "s3transfer": logging.INFO,
    "urllib3": logging.WARNING,
}
#: Environment variables whose values are secrets wherever they appear.
SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
#: Shorter values are not masked literally (they would mask ordinary words); real AWS keys are 16+ characters.
MIN_SECRET_LENGTH = 8
REDACTED = "[REDACTED]"
_VALUE = r"[^\s'\",&;]+"
#: SigV4 material in headers and presigned URLs.
_PATTERNS = (
    # The Authorization header's value, up to the end of the quoted string or line.
    (re.compile(r"AWS4-HMAC-SHA256\s+Credential=[^'\"\n]*"), "AWS4-HMAC-SHA256 " + REDACTED),
    (re.compile(r"\b((?:X-Amz-)?Credential)=" + _VALUE, re.IGNORECASE), r"\1=" + REDACTED),
    (re.compile(r"\b(?:X-Amz-)?Signature=" + _VALUE, re.IGNORECASE), "signature " + REDACTED),
    (re.compile(r"(X-Amz-Security-Token['\"]?\s*[:=]\s*b?['\"]?)" + _VALUE, re.IGNORECASE), r"\1" + REDACTED),
)


#: (logger name, message pattern) of records that are noise in a task log: they are logged at DEBUG instead
#: (:func:`demote_noise`). The name matches the logger or its parents' ("py.warnings" for Python warnings).
NOISE: tuple[tuple[str, re.Pattern[str]], ...] = (
    # The installed-package check at import: it wants sphinx, coverage, pip-tools... (none needed to train).
    ("super_gradients.sanity_check", re.compile(r"Failed to verify|required but not found|version mismatch")),
    ("super_gradients.common.crash_handler", re.compile(r"Crash tips is disabled")),
    ("matplotlib.font_manager", re.compile(r"generated new fontManager|building the font cache")),
    # Per-epoch chatter that the epoch line says better.
    (
        "super_gradients",
        re.compile(r"Dataset Initialization in progress|Checkpoint saved in|Best checkpoint overriden|\[CLEANUP\]"),
    ),
    # Warnings about super-gradients' own code on a modern stack, not about anything a user can change:
    # pkg_resources, torch.cuda.amp, the weights_only default that compat sets on purpose.
    (
        "py.warnings",
        re.compile(
            r"pkg_resources|torch\.cuda\.amp|TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD|declare_namespace|"
            r"(?:Future|Deprecation)Warning: .*(?:deprecated|removed)"
        ),
    ),
)
WARNINGS_LOGGER = "py.warnings"


def is_noise(record: logging.LogRecord) -> bool:
    """Whether ``record`` is one of :data:`NOISE` (only INFO and WARNING records are ever demoted)."""
    if record.levelno not in (logging.INFO, logging.WARNING):
        return False
    message = None
    for name, pattern in NOISE:
        if record.name == name or record.name.startswith(name + "."):
            message = record.getMessage() if message is None else message
            if pattern.search(message):
                return True
    return False


_base_factory: Callable[..., logging.LogRecord] | None = None


def demote_noise() -> None:
    """Log :data:`NOISE` at DEBUG, wherever it is logged from: a log record factory, since super-gradients logs
    some of it while it is first imported, before any of its handlers or loggers could be given a filter.
    Idempotent."""
    global _base_factory
    if _base_factory is not None:
        return
    base = _base_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        if is_noise(record):
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return record

    logging.setLogRecordFactory(factory)


def capture_warnings(handler: logging.Handler) -> None:
    """Python warnings become WARNING records of ``py.warnings`` (not bare text on stderr), printed by
    ``handler`` (the package's console handler) only: a line a log reader can filter by level."""
    logging.captureWarnings(True)
    logger = logging.getLogger(WARNINGS_LOGGER)
    for old in [h for h in logger.handlers if getattr(h, "_yolonas_console", False)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Not again through super-gradients' console handler (root).
    logger.propagate = False


class DroppingStream:
    """A text stream that passes everything on to ``stream`` but the writes that start with one of ``prefixes``.

    super-gradients' stdout tee announces every move of its console log file ("The console stream is logged
    into ..."); the tee writes into whatever ``sys.stdout`` was when it was made, so this goes under it."""

    def __init__(self, stream: TextIO, prefixes: tuple[str, ...]) -> None:
        self.stream = stream
        self.prefixes = prefixes

    def write(self, text: str) -> int:
        if text.startswith(self.prefixes):
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


#: What super-gradients' stdout tee says about itself.
TEE_ANNOUNCEMENTS = ("The console stream is logged into ", "The console stream is now moved to ")


def secrets_from_environment() -> list[str]:
    return [v for name in SECRET_VARIABLES if len(v := os.environ.get(name, "")) >= MIN_SECRET_LENGTH]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with signatures, credential scopes, security tokens and the given secret values masked."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and traceback before a handler writes it (see :func:`redact`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def prefix() -> str:
    """:data:`PREFIX`; ``[yolonas rank N] `` on the other processes of a torchrun run (``RANK`` > 0), whose lines
    share the task log with the first one's."""
    rank = os.environ.get("RANK", "0")
    return PREFIX if rank in ("", "0") else f"[yolonas rank {rank}] "


class _Formatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.prefix = prefix()

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = "" if record.levelno <= logging.INFO else f"{record.levelname}: "
        return "\n".join(self.prefix + level + line for line in text.splitlines())


def configure(level: int = logging.INFO) -> logging.Handler:
    """Send the package's log lines to the real stdout, and cap the libraries that log credentials.

    Idempotent: a second call replaces the handler of the first."""
    for name, cap in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(cap)
    logger = logging.getLogger(PACKAGE_LOGGER)
    for old in [h for h in logger.handlers if getattr(h, "_yolonas_console", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.__stdout__ or sys.stdout)
    # A handler's own level, not only the loggers': demoted noise (demote_noise) passed the loggers' checks
    # at its original level.
    handler.setLevel(level)
    handler.setFormatter(_Formatter())
    handler.addFilter(RedactingFilter(secrets_from_environment()))
    handler._yolonas_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    global _level
    _level = level
    # One line per message: not again through super-gradients' root handlers (its console handler writes to
    # the tee'd stderr).
    logger.propagate = False
    demote_noise()
    capture_warnings(handler)
    return handler


_level = logging.INFO


def keep_package_loggers() -> None:
    """Undo super-gradients' muting of our loggers. On every torchrun process but a node's first
    (``LOCAL_RANK`` > 0) each of its modules, as it is imported, sets every logger that exists to ERROR; the
    package's few lines from those processes are worth keeping (their prefix names the rank, see :func:`prefix`).
    Call it again once super-gradients' modules are imported (the train command does)."""
    logging.getLogger(PACKAGE_LOGGER).setLevel(_level)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith(PACKAGE_LOGGER + ".") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.NOTSET)


def protect_root_handlers(filter_: RedactingFilter) -> None:
    for handler in logging.getLogger().handlers:
        if filter_ not in handler.filters:
            handler.addFilter(filter_)


def protect_log_files() -> RedactingFilter:
    """Put a :class:`RedactingFilter` on the root logger's handlers now and whenever super-gradients sets them up
    again (``AutoLoggerConfig._setup_logging`` replaces them with ``basicConfig(force=True)`` when training
    starts). Imports super-gradients: call it after :func:`yolonas_pipeline.trainer.compat.apply`."""
    if not isinstance(sys.stdout, DroppingStream) and "super_gradients" not in sys.modules:
        sys.stdout = DroppingStream(sys.stdout, TEE_ANNOUNCEMENTS)  # type: ignore[assignment]
    from super_gradients.common.auto_logging.auto_logger import AutoLoggerConfig

    redacting = RedactingFilter(secrets_from_environment())
    protect_root_handlers(redacting)
    original = AutoLoggerConfig._setup_logging
    if not getattr(original, "_yolonas_redacting", False):

        @functools.wraps(original)
        def setup_logging(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            protect_root_handlers(redacting)

        setup_logging._yolonas_redacting = True  # type: ignore[attr-defined]
        AutoLoggerConfig._setup_logging = setup_logging
    keep_package_loggers()
    return redacting
