"""Tensor and structured-value codecs, and the Episode model."""

from __future__ import annotations

import random
import struct

import numpy as np
import pandas as pd
import pytest
import torch

from mlflow_persist.episodes import Episode
from mlflow_persist.episodes.errors import EpisodeEncodingError
from mlflow_persist.episodes.model import as_episode
from mlflow_persist.episodes.tensors import decode_tensor, encode_tensor, tensors_identical
from mlflow_persist.episodes.values import decode, encode, values_identical


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(3, 4),
        torch.randn(2, 3, dtype=torch.float64).t(),
        torch.randn(5).to(torch.bfloat16),
        torch.randn(4).to(torch.float16),
        torch.tensor([True, False]),
        torch.arange(7, dtype=torch.int8),
        torch.randn(2, dtype=torch.complex64),
        torch.empty(0, 3),
        torch.tensor(3.5),
        torch.tensor([-0.0, 0.0]),
        torch.frombuffer(bytearray(struct.pack("<I", 0x7FC00123)), dtype=torch.float32),  # NaN with payload
    ],
)
def test_tensor_roundtrip_is_bitwise(tensor: torch.Tensor) -> None:
    out = decode_tensor(encode_tensor(tensor))
    assert out.dtype == tensor.dtype and out.shape == tensor.shape
    assert tensors_identical(tensor, out)
    assert encode_tensor(out).data == encode_tensor(tensor).data


def test_tensors_identical_is_stricter_than_equal() -> None:
    assert not tensors_identical(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not tensors_identical(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))
    nan = torch.tensor([float("nan")])
    assert tensors_identical(nan, nan.clone())


def test_values_roundtrip_rng_states_and_tagged_types() -> None:
    value = {
        "python": random.Random(3).getstate(),
        "numpy": np.random.RandomState(4).get_state(),
        "torch": torch.get_rng_state(),
        "nan": struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000042))[0],
        "neg0": -0.0,
        "bytes": b"\x00\xff",
        3: "int key",
        "np": np.float32(1.5),
        "ts": pd.Timestamp("2024-03-31 01:59:59.123456789", tz="Europe/Berlin"),
    }
    text = encode(value)
    out = decode(text)
    assert encode(out) == text
    assert out["python"] == value["python"] and out[3] == "int key"
    assert torch.equal(out["torch"], value["torch"]) and out["ts"] == value["ts"]
    assert struct.pack("<d", out["nan"]) == struct.pack("<d", value["nan"])
    assert values_identical(1, 1) and not values_identical(0.0, -0.0) and not values_identical(1, 1.0)


def test_values_refuse_unencodable_objects_with_where() -> None:
    with pytest.raises(EpisodeEncodingError, match="episode x market.bad is a object"):
        encode({"bad": object()}, where="episode x market")


def test_episode_from_dict_normalises_times_and_keeps_extra_fields() -> None:
    ep = Episode.from_dict(
        {
            "episode_id": "a",
            "bar_time": pd.Timestamp("2024-01-01 10:00"),
            "wall_time": 1.7e9,
            "action": 2,
            "step": 17,
            "position": -1,
            "checkpoint_versions": {"dqn": "3"},
        }
    )
    assert str(ep.bar_time.tz) == "UTC" and ep.wall_time == pd.Timestamp(1.7e9, unit="s", tz="UTC")
    assert ep.extra == {"step": 17, "position": -1} and ep.checkpoint_versions == {"dqn": 3}


def test_as_episode_accepts_objects_with_to_dict() -> None:
    class Trading:
        def to_dict(self) -> dict:
            return {"episode_id": "t1", "bar_time": "2024-01-01T00:00Z", "wall_time": 0.0, "action_name": "buy"}

    assert as_episode(Trading()).extra == {"action_name": "buy"}


def test_episode_rejects_a_non_tensor() -> None:
    with pytest.raises(EpisodeEncodingError, match="tensors\\['x'\\] is a list"):
        Episode(episode_id="e", bar_time=0, wall_time=0, tensors={"x": [1, 2]})  # type: ignore[dict-item]


def test_detached_copy_is_independent() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0]})
    tensor = torch.zeros(2)
    ep = Episode(episode_id="e", bar_time=0, wall_time=0, frames={"f": frame}, tensors={"t": tensor})
    copy = ep.detached_copy()
    frame.iloc[0, 0] = 99.0
    tensor += 1
    assert copy.frames["f"].iloc[0, 0] == 1.0 and float(copy.tensors["t"].sum()) == 0.0
