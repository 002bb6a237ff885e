"""Keep key material out of logs.

botocore's DEBUG logging prints request parameters and response bodies, which for KMS
include the plaintext data key of GenerateDataKey and Decrypt. These loggers are held
at INFO and, belt and braces, given a filter that drops DEBUG records even if some
other code (`boto3.set_stream_logger`, a root DEBUG config) lowers their level later.
"""

from __future__ import annotations

import logging

# Loggers seen printing request params or response bodies at DEBUG.
BODY_LOGGERS = (
    "botocore.parsers",
    "botocore.endpoint",
    "botocore.hooks",
    "botocore.auth",
    "botocore.retryhandler",
    "urllib3.connectionpool",
)


class _DropDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_FILTER = _DropDebug()


def silence_key_material_loggers() -> None:
    """Idempotent; called when a KMS client is built and by the CLI and Dagster resources."""
    for name in ("botocore", *BODY_LOGGERS):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.INFO:
            logger.setLevel(logging.INFO)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
