from __future__ import annotations

import logging
from typing import Iterator

import pytest

from reliability.support import ListHandler, capture_logs


@pytest.fixture(autouse=True)
def restore_package_logger() -> Iterator[None]:
    """`cli.main()` run in-process installs a handler bound to the captured stderr and stops propagation;
    undo that after each test so later tests neither write to a closed stream nor lose their log records."""
    logger = logging.getLogger("mlflow_persist")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def persist_logs() -> Iterator[ListHandler]:
    with capture_logs("mlflow_persist") as handler:
        yield handler
