"""A durable log of alias moves, kept as tags on the registered model, so `history MODEL` can show them.

Each move is one tag `mlflow_persist.alias_move.<ms since epoch>-<4 hex>` whose value is JSON:
{"alias": "best", "from": 3 | null, "to": 7, "at": ISO-8601 UTC, "by": user@host, "reason": "...", "source": "..."}.
Read them back, oldest first, with `alias_moves(client, name)`.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["ALIAS_MOVE_PREFIX", "AliasMove", "alias_moves", "move_alias", "operator", "record_alias_move"]

ALIAS_MOVE_PREFIX = "mlflow_persist.alias_move."


@dataclass(frozen=True)
class AliasMove:
    alias: str
    from_version: int | None
    to_version: int
    at: str
    by: str
    reason: str
    source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def operator() -> str:
    """Who is acting: user@host (the tag `who` of rollbacks and alias moves)."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers  # noqa: BLE001
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def move_alias(client: Any, name: str, alias: str, version: int, reason: str, source: str) -> AliasMove:
    """Point `alias` at `version` and record the move (from where, to where, who, when, why)."""
    try:
        previous: int | None = int(client.get_model_version_by_alias(name, alias).version)
    except Exception:  # the alias did not exist yet  # noqa: BLE001
        previous = None
    client.set_registered_model_alias(name, alias, str(version))
    move = AliasMove(
        alias,
        previous,
        int(version),
        datetime.now(UTC).isoformat(timespec="milliseconds"),
        operator(),
        reason,
        source,
    )
    record_alias_move(client, name, move)
    return move


def record_alias_move(client: Any, name: str, move: AliasMove) -> None:
    key = f"{ALIAS_MOVE_PREFIX}{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:4]}"
    client.set_registered_model_tag(name, key, json.dumps(move.to_json(), sort_keys=True)[:4900])


def alias_moves(client: Any, name: str) -> list[AliasMove]:
    """Every recorded alias move of a registered model, oldest first."""
    tags = client.get_registered_model(name).tags or {}
    moves = []
    for key in sorted(k for k in tags if k.startswith(ALIAS_MOVE_PREFIX)):
        try:
            data = json.loads(tags[key])
            moves.append(
                AliasMove(
                    str(data["alias"]),
                    data.get("from_version"),
                    int(data["to_version"]),
                    str(data.get("at", "")),
                    str(data.get("by", "")),
                    str(data.get("reason", "")),
                    str(data.get("source", "")),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return moves
