"""The durable outbox: entries written completely to disk, in order, seen again after a crash by a fresh
`Outbox` over the same folder; half-written and damaged entries skipped (and swept); quarantine keeps the
bytes; `make_room` drops only plain periodic entries, oldest first. Checked against the files on disk."""

from __future__ import annotations

import json
import subprocess
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash
from filelock import Timeout
from runtime_support import PYTHON, payload, subprocess_env

from mlflow_persist._runtime.outbox import Outbox, OutboxEntry, default_outbox_root

MODEL = "dqn"


def _put(
    outbox: Outbox, step: int, category: str = "periodic", *, also: list[str] | None = None, **kw: Any
) -> OutboxEntry:
    return outbox.put(
        model=MODEL,
        registered_name=kw.pop("registered_name", MODEL),
        run_id=kw.pop("run_id", "run-1"),
        dirname=f"{MODEL}-{step:010d}",
        payload=payload(MODEL, step, category, fill=step),
        category=category,
        step=step,
        value=kw.pop("value", None),
        improvement=None,
        also=list(also or []),
        tags=kw.pop("tags", None),
    )


def _dirs(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.is_dir())


def _weights(directory: Path) -> torch.Tensor:
    """The weights stored in an entry, read with torch directly (not through the package's reader)."""
    raw = torch.load(directory / "checkpoint.pt", map_location="cpu", weights_only=True)
    return raw["model_state"]["w"]


def test_put_writes_a_complete_entry_that_describes_its_bytes(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    entry = _put(outbox, 7, "performance", value=0.25, tags={"mlflow_persist.cut": "00000001-abcd"})

    directory = tmp_path / "outbox" / MODEL / f"000000000001-{MODEL}-0000000007"
    assert _dirs(directory.parent) == [directory.name]
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint.pt", "entry.json", "manifest.json"]
    data = json.loads((directory / "entry.json").read_text())
    checkpoint = (directory / "checkpoint.pt").read_bytes()
    assert data["digest_algorithm"] == "xxh3-128" and data["digest"] == xxhash.xxh3_128_hexdigest(checkpoint)
    assert data["size_bytes"] == len(checkpoint)
    assert (data["category"], data["step"], data["value"], data["run_id"]) == ("performance", 7, 0.25, "run-1")
    assert data["tags"] == {"mlflow_persist.cut": "00000001-abcd"} and data["sequence"] == 1
    assert json.loads((directory / "manifest.json").read_text())["digest"] == data["digest"]
    assert torch.equal(_weights(directory), torch.full((4, 4), 7.0))
    assert Path(entry.path) == directory and entry.digest == data["digest"]


def test_entries_come_back_in_the_order_they_were_put_per_model(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    for step in (30, 4, 200, 1):  # directory names by step would sort differently
        _put(outbox, step)
    _put(outbox, 99, registered_name="cnn")
    assert [e.step for e in Outbox(tmp_path).entries(MODEL)] == [30, 4, 200, 1]
    assert [e.sequence for e in Outbox(tmp_path).entries(MODEL)] == [1, 2, 3, 4]
    assert [(e.step, e.sequence) for e in Outbox(tmp_path).entries("cnn")] == [(99, 1)]
    assert Outbox(tmp_path).entries("unknown") == []


def test_entries_survive_a_crash_and_a_half_written_one_is_ignored(tmp_path: Path) -> None:
    """A child process puts one entry, then dies (os._exit) in the middle of the second put, just before its
    staging directory would have been renamed into place. A fresh Outbox sees exactly the first entry."""
    root = tmp_path / "outbox"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from runtime_support import payload
        from mlflow_persist._runtime.outbox import Outbox

        outbox = Outbox(Path({str(root)!r}))
        def put(step):
            return outbox.put(model="dqn", registered_name="dqn", run_id="run-9", dirname=f"dqn-{{step}}",
                              payload=payload("dqn", step, fill=step), category="periodic", step=step, value=None,
                              improvement=None, also=["final"])
        put(11)
        print("PUT 11", flush=True)
        os.rename = lambda *args: os._exit(137)  # crash at the moment the second entry would become visible
        put(12)
        print("NOT REACHED", flush=True)
        """
    )
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert result.returncode == 137, result.stderr
    assert result.stdout.splitlines() == ["PUT 11"]
    model_dir = root / MODEL
    assert any(p.name.startswith(".tmp-") for p in model_dir.iterdir()), "the crash left no half-written entry"

    outbox = Outbox(root)
    (entry,) = outbox.entries(MODEL)
    assert (entry.step, entry.run_id, entry.also, entry.sequence) == (11, "run-9", ["final"], 1)
    assert Outbox.is_intact(entry)
    assert torch.equal(_weights(entry.directory), torch.full((4, 4), 11.0))

    with outbox.lock(MODEL):
        assert [e.step for e in outbox.entries(MODEL, sweep=True)] == [11]
    assert not any(p.name.startswith(".tmp-") for p in model_dir.iterdir()), "sweep left the staging directory"
    assert _put(outbox, 13).sequence == 2  # numbering goes on after the surviving entry


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_an_entry_whose_record_is_unreadable_is_skipped_and_swept(tmp_path: Path, damage: str) -> None:
    outbox = Outbox(tmp_path)
    first, second, third = _put(outbox, 1), _put(outbox, 2), _put(outbox, 3)
    record = second.directory / "entry.json"
    if damage == "truncated":
        record.write_text(record.read_text()[:40])
    elif damage == "empty":
        record.write_bytes(b"")
    else:
        record.unlink()

    assert [e.step for e in outbox.entries(MODEL)] == [1, 3]
    assert second.directory.is_dir(), "a listing without sweep must not delete anything"
    with outbox.lock(MODEL):
        assert [e.step for e in outbox.entries(MODEL, sweep=True)] == [1, 3]
    assert not second.directory.exists()
    assert first.directory.is_dir() and third.directory.is_dir()


@pytest.mark.parametrize("record", ["newer", "empty-object"])
def test_an_entry_record_of_the_wrong_shape_is_skipped_like_an_unreadable_one(tmp_path: Path, record: str) -> None:
    outbox = Outbox(tmp_path)
    _put(outbox, 1)
    odd = _put(outbox, 2)
    path = odd.directory / "entry.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "priority": 5} if record == "newer" else {}))
    assert [e.step for e in outbox.entries(MODEL)] == [1]


def test_an_entry_from_before_checksums_named_their_algorithm_reads_as_sha256(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    entry = _put(outbox, 5)
    path = entry.directory / "entry.json"
    data = json.loads(path.read_text())
    old_digest = "ab" * 32
    del data["digest_algorithm"], data["digest"], data["tags"]
    path.write_text(json.dumps({**data, "sha256": old_digest}))
    (read,) = Outbox(tmp_path).entries(MODEL)
    assert (read.checksum.algorithm, read.checksum.hexdigest) == ("sha256", old_digest)
    assert read.tags == {} and read.step == 5


def test_is_intact_notices_a_missing_manifest_or_a_short_checkpoint(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    whole, short, no_manifest, no_checkpoint = (_put(outbox, n) for n in (1, 2, 3, 4))
    data = (short.directory / "checkpoint.pt").read_bytes()
    (short.directory / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    (no_manifest.directory / "manifest.json").unlink()
    (no_checkpoint.directory / "checkpoint.pt").unlink()
    entries = {e.step: e for e in outbox.entries(MODEL)}
    assert [Outbox.is_intact(entries[n]) for n in (1, 2, 3, 4)] == [True, False, False, False]


def test_quarantine_moves_an_entry_aside_with_its_bytes(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    keep, doomed = _put(outbox, 1), _put(outbox, 2)
    original = {p.name: p.read_bytes() for p in doomed.directory.iterdir()}

    moved = outbox.quarantine(doomed)
    assert moved == tmp_path / "_quarantine" / MODEL / doomed.directory.name
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == original
    assert not doomed.directory.exists()
    assert [e.step for e in Outbox(tmp_path).entries(MODEL)] == [1] and keep.directory.is_dir()


def test_size_bytes_adds_up_the_checkpoints_on_disk(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    entries = [_put(outbox, n) for n in (1, 2, 3)]
    assert outbox.size_bytes(MODEL) == sum((e.directory / "checkpoint.pt").stat().st_size for e in entries)
    outbox.remove(entries[1])
    assert not entries[1].directory.exists()
    assert outbox.size_bytes(MODEL) == sum((e.directory / "checkpoint.pt").stat().st_size for e in entries[::2])


def _room_fixture(outbox: Outbox) -> dict[str, OutboxEntry]:
    return {
        "p1": _put(outbox, 1, "periodic"),
        "perf2": _put(outbox, 2, "performance", value=0.5),
        "p3-final": _put(outbox, 3, "periodic", also=["final"]),
        "p4": _put(outbox, 4, "periodic"),
        "final5": _put(outbox, 5, "final"),
        "p6": _put(outbox, 6, "periodic"),
    }


def test_make_room_drops_plain_periodic_entries_oldest_first_and_nothing_else(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    entries = _room_fixture(outbox)
    sizes = {k: (e.directory / "checkpoint.pt").stat().st_size for k, e in entries.items()}
    need = max(sizes.values())
    budget = sum(sizes.values()) + need - sizes["p1"]  # room for one more once the oldest periodic is gone

    with outbox.lock(MODEL):
        dropped = outbox.make_room(MODEL, need, budget, lambda need_mb: False)
    assert [e.step for e in dropped] == [1]
    assert not entries["p1"].directory.exists()
    assert [e.step for e in outbox.entries(MODEL)] == [2, 3, 4, 5, 6]

    with outbox.lock(MODEL):
        dropped = outbox.make_room(MODEL, need, 0, lambda need_mb: False)  # nothing fits: drop all it may
    assert [e.step for e in dropped] == [4, 6]
    assert [e.step for e in outbox.entries(MODEL)] == [2, 3, 5]  # performance, periodic+final, final stay
    assert all(entries[k].directory.is_dir() for k in ("perf2", "p3-final", "final5"))


def test_make_room_also_drops_while_the_disk_is_short(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    entries = _room_fixture(outbox)
    asked: list[float] = []

    def short(need_mb: float) -> bool:
        asked.append(need_mb)
        return len(asked) <= 2  # short twice, then enough

    with outbox.lock(MODEL):
        dropped = outbox.make_room(MODEL, 10 * 2**20, float("inf"), short)
    assert [e.step for e in dropped] == [1, 4]
    assert asked[0] == pytest.approx(10.0)  # the disk is asked about the size of the coming checkpoint, in MB
    assert [e.step for e in outbox.entries(MODEL)] == [2, 3, 5, 6] and entries["p6"].directory.is_dir()


def test_the_model_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with outbox.lock(MODEL):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert held.wait(10)
    try:
        with pytest.raises(Timeout):
            Outbox(tmp_path).lock(MODEL).acquire(timeout=0.2)
        other = Outbox(tmp_path).lock("cnn")  # another model's lock is independent
        other.acquire(timeout=1)
        other.release()
    finally:
        release.set()
        thread.join(10)
    lock = Outbox(tmp_path).lock(MODEL)
    lock.acquire(timeout=5)
    lock.release()


def test_a_put_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    _put(outbox, 1)
    bad = {**payload(MODEL, 2), "extra_state": threading.Lock()}  # cannot be serialized
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises for it
        outbox.put(
            model=MODEL,
            registered_name=MODEL,
            run_id="run-1",
            dirname="dqn-2",
            payload=bad,
            category="periodic",
            step=2,
            value=None,
            improvement=None,
            also=[],
        )
    assert _dirs(tmp_path / MODEL) == ["000000000001-dqn-0000000001"]
    assert [e.step for e in outbox.entries(MODEL)] == [1]


def test_default_root_is_per_tracking_uri_under_the_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    one = default_outbox_root("http://server-a:5000")
    assert one == default_outbox_root("http://server-a:5000")
    assert one != default_outbox_root("http://server-b:5000")
    assert one.parent == tmp_path / "cache" / "mlflow-persist" / "outbox"
