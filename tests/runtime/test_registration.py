"""`Registration` (what a written checkpoint carries to its registration), `tensor_bytes`, and the log text of
a save's value (`describe_saved_value`, `format_change`): only a performance save that beat the previous one
shows an arrow; a worse, equal or unknown value is never presented as an improvement.

The oracle for "better" here is the test's own comparison, not the package's `is_better`."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math

import pytest
import torch
from runtime_support2 import MONITOR, captured_logs, persistence

from mlflow_persist._format.digest import digest_bytes
from mlflow_persist._runtime.registration import Registration, describe_saved_value, format_change, tensor_bytes
from mlflow_persist.testing import MemoryStore

NOT_BETTER = "not better than the previous performance save"


@pytest.mark.parametrize(
    ("monitor", "category", "previous", "value", "mode", "expected"),
    [
        ("loss", "performance", 1.0, 0.5, "min", "loss 1 -> 0.5 (-50.0%)"),
        ("loss", "performance", 0.5, 1.0, "min", f"loss 1 ({NOT_BETTER}, 0.5)"),
        ("loss", "performance", 0.5, 0.5, "min", f"loss 0.5 ({NOT_BETTER}, 0.5)"),
        ("accuracy", "performance", 0.5, 0.8, "max", "accuracy 0.5 -> 0.8 (+60.0%)"),
        ("accuracy", "performance", 0.8, 0.5, "max", f"accuracy 0.5 ({NOT_BETTER}, 0.8)"),
        ("loss", "performance", None, 0.25, "min", "loss 0.25"),
        ("loss", "performance", 0.5, None, "min", "loss n/a"),
        ("loss", "performance", 0.5, math.nan, "min", f"loss nan ({NOT_BETTER}, 0.5)"),
        ("loss", "periodic", 1.0, 0.5, "min", "loss 0.5"),
        ("loss", "final", 0.5, 1.0, "min", "loss 1"),
        ("reward", "episode", 1.0, 2.0, "max", "reward 2"),
        ("loss", "performance", 0.0, -1.0, "min", "loss 0 -> -1"),  # no percentage of a zero
        ("loss", "performance", -2.0, -3.0, "min", "loss -2 -> -3 (-50.0%)"),  # relative to |previous|
        ("loss", "performance", 1234567.0, 0.000123456789, "min", "loss 1.23457e+06 -> 0.000123457 (-100.0%)"),
    ],
)
def test_describe_saved_value(
    monitor: str, category: str, previous: float | None, value: float | None, mode: str, expected: str
) -> None:
    assert describe_saved_value(monitor, category, previous, value, mode) == expected


def _strictly_better(value: float, previous: float, mode: str) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(previous):  # a diverged previous value: any real value is better
        return True
    return value < previous if mode == "min" else value > previous


def test_an_arrow_appears_only_for_a_performance_save_strictly_better_than_the_previous() -> None:
    numbers = [-2.0, -0.5, 0.0, 0.5, 1.0, 2.0, math.nan]
    for category, mode, previous, value in itertools.product(
        ("performance", "periodic", "final", "rollback", "legacy"), ("min", "max"), numbers, numbers
    ):
        text = describe_saved_value("m", category, previous, value, mode)
        arrow = category == "performance" and _strictly_better(value, previous, mode)
        assert ("->" in text) == arrow, (category, mode, previous, value, text)
        if category == "performance" and not arrow:
            assert NOT_BETTER in text, (mode, previous, value, text)


def test_format_change_reads_previous_then_value() -> None:
    assert format_change("loss", None, None) == "loss n/a"
    assert format_change("loss", None, 0.3) == "loss 0.3"
    assert format_change("loss", 0.4, 0.3) == "loss 0.4 -> 0.3 (-25.0%)"
    assert format_change("acc", 0.5, 0.75) == "acc 0.5 -> 0.75 (+50.0%)"


def test_tensor_bytes_adds_up_every_tensor_of_a_nested_payload() -> None:
    payload = {
        "model": {"w": torch.zeros(3, 4), "b": torch.zeros(4, dtype=torch.float16)},  # 48 + 8
        "optimizer": {"state": [torch.zeros(5, dtype=torch.int64), (torch.zeros(2, 2, dtype=torch.float64),)]},
        "step": 12,
        "name": "net",
        "nothing": None,
    }
    assert tensor_bytes(payload) == 48 + 8 + 40 + 32
    assert tensor_bytes(torch.zeros(0)) == 0 and tensor_bytes("text") == 0 and tensor_bytes([]) == 0


def test_a_registration_is_a_frozen_record_whose_monitor_comes_from_its_tags() -> None:
    digest = digest_bytes(b"checkpoint bytes")
    plain = Registration("periodic", 5, 0.5, None, [], "2024-01-01T00:00:00+00:00", digest, 123)
    assert plain.monitor is None and plain.retried is False and plain.tags == {}
    episode = Registration(
        "episode", 6, 9.5, None, ["periodic"], "2024-01-01T00:00:01+00:00", digest, 456, tags={MONITOR: "reward"}
    )
    assert episode.monitor == "reward" and episode.also == ["periodic"]
    assert plain.tags is not Registration("final", 1, None, None, [], "", digest, 1).tags  # no shared default
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.step = 6  # type: ignore[misc]


def _saved_lines(messages: list[str]) -> list[str]:
    return [m for m in messages if ", saved v" in m]


def test_the_save_log_never_presents_a_worse_value_as_an_improvement() -> None:
    store = MemoryStore()
    persist = persistence(store)
    try:
        handle = persist.track("net", torch.nn.Linear(2, 1))
        with captured_logs() as logs:
            for loss in (1.0, 0.5):
                handle.step(loss=loss)
                assert persist.flush(timeout=10)
            handle.step(loss=0.9)  # worse: no automatic save
            handle.save("performance")  # forced, at the worse value
            assert persist.flush(timeout=10)
            handle.save("periodic")
            assert persist.flush(timeout=10)
        lines = _saved_lines(logs.messages(logging.INFO))
    finally:
        persist.close(final_checkpoints=False)
    assert [v.category for v in store.list_versions("net")] == ["performance"] * 3 + ["periodic"]
    assert len(lines) == 4
    assert lines[0].startswith("net: loss 1, saved v1 (performance, step 1")
    assert lines[1].startswith("net: loss 1 -> 0.5 (-50.0%), saved v2 (performance, step 2")
    assert lines[2].startswith(f"net: loss 0.9 ({NOT_BETTER}, 0.5), saved v3 (performance, step 3")
    assert lines[3].startswith("net: loss 0.9, saved v4 (periodic, step 3")
    assert all("->" not in line for line in lines[2:])


def test_a_performance_save_of_another_monitor_is_never_compared_with_the_tracked_monitor() -> None:
    store = MemoryStore()
    persist = persistence(store)
    try:
        handle = persist.track("net", torch.nn.Linear(2, 1))
        with captured_logs() as logs:
            handle.step(loss=0.9)
            assert persist.flush(timeout=10)
            handle.save("performance", value=0.2, monitor="reward")  # an evaluation score, another measure
            assert persist.flush(timeout=10)
            handle.step(loss=0.4)  # a real improvement of the loss: 0.9 -> 0.4
            assert persist.flush(timeout=10)
        lines = _saved_lines(logs.messages(logging.INFO))
        descriptions = [v.description or "" for v in store.list_versions("net")]
    finally:
        persist.close(final_checkpoints=False)
    assert len(lines) == 3
    assert "0.9 -> 0.2" not in lines[1]  # a loss of 0.9 is no previous value of the reward
    assert NOT_BETTER not in lines[2] and "0.9 -> 0.4" in lines[2]  # the loss did improve
    assert "vs v1" not in descriptions[1]  # nor does the reward version's description compare it to the loss
