from __future__ import annotations

from collections.abc import Iterator

import pytest

from reliability.support import ListHandler, capture_logs


@pytest.fixture
def persist_logs() -> Iterator[ListHandler]:
    with capture_logs("mlflow_persist") as handler:
        yield handler
