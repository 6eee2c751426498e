"""The command line's contract in one place: the exit codes and the top-level keys of every `--json` output.

docs/cli.md documents the same table; tests/cli/test_cli_contract.py runs every
command on a real store and checks its actual output against docs/cli.md and against this module.
Raise `SCHEMA_VERSION` whenever a key is removed, renamed or changes meaning (adding a key does not).
"""

from __future__ import annotations

from typing import Any

from mlflow_persist._runtime.close_report import EXIT_NO_FINAL_CHECKPOINT  # a process without its final checkpoint

#: Integer carried as `schema_version` at the top level of every `--json` output.
SCHEMA_VERSION = 1

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # click's own code for usage errors (unknown option, missing argument, bad value)
EXIT_CORRUPT = 3  # `verify` found damaged versions
EXIT_UNREACHABLE = 4  # the store cannot be reached (or refuses the login): StoreUnavailableError
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "error",
    EXIT_USAGE: "usage error",
    EXIT_CORRUPT: "verify found corrupt versions",
    EXIT_UNREACHABLE: "store unreachable",
    EXIT_NO_FINAL_CHECKPOINT: "ended without its final checkpoint",
    EXIT_INTERRUPTED: "interrupted",
}

#: Per command, the top-level keys of its `--json` output after `schema_version`, in output order.
JSON_KEYS: dict[str, tuple[str, ...]] = {
    "status": ("tracking_uri", "models", "disk"),
    "history": ("model", "versions", "alias_moves", "sparkline"),
    "verify": ("checked", "corrupt", "false_corrupt"),
    "gc": ("dry_run", "deleted"),
    "rollback": ("model", "rollback_of", "new_version", "best_moved"),
    "import-legacy": ("base_dir", "dry_run", "metric", "mode", "metadata_problem", "counts", "best", "items"),
    "migrate": ("dry_run", "target_format", "steps"),
    "replay": ("replayed", "reproduced", "failed"),
    "export": ("model", "version", "step", "format", "files"),
}


def with_schema(command: str, data: dict[str, Any]) -> dict[str, Any]:
    """`data` as `command` prints it: `schema_version` first, then the documented keys in order, then any other."""
    known = JSON_KEYS.get(command, ())
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    out.update((key, data[key]) for key in known if key in data)
    out.update((key, value) for key, value in data.items() if key not in out)
    return out


__all__ = [
    "EXIT_CODES",
    "EXIT_CORRUPT",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NO_FINAL_CHECKPOINT",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "JSON_KEYS",
    "SCHEMA_VERSION",
    "with_schema",
]
