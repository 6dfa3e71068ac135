"""The library's logger.

resumable never configures logging. Its events go through structlog (so a structlog
configuration, and ``structlog.testing.capture_logs()``, apply to them) onto the
standard library logger ``"resumable"``, so that with no configuration at all only
warnings and errors show, as for any library; ``logging.basicConfig(level="INFO")``
shows runs starting, resuming and finishing, and ``DEBUG`` every flush.
"""

from __future__ import annotations

import logging

import structlog

logger: structlog.stdlib.BoundLogger = structlog.wrap_logger(
    logging.getLogger("resumable"), wrapper_class=structlog.stdlib.BoundLogger
)
