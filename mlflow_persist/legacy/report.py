"""Rich rendering for the legacy commands: a progress bar and summary tables (stderr/stdout)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mlflow_persist.legacy.importer import ImportReport
from mlflow_persist.legacy.migrate import MigrationReport

__all__ = ["RichProgress", "import_summary", "import_totals", "migration_summary"]

_STYLE = {"imported": "green", "planned": "cyan", "skipped": "yellow", "refused": "red", "failed": "bold red"}


class RichProgress:
    """The importer's progress sink as a rich progress bar (on stderr, so --json output stays clean)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[label]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task: int | None = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, phase: str, total: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=True)  # type: ignore[arg-type]
        self._task = self._progress.add_task(phase, total=max(total, 0), label="")

    def advance(self, label: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, advance=1, label=label[-60:])  # type: ignore[arg-type]


def import_summary(report: ImportReport) -> Table:
    title = f"legacy import of {report.plan.base_dir}" + (" (dry run: nothing written)" if report.dry_run else "")
    table = Table(title=title, show_lines=False)
    for column in ("file", "model", "status", "version", "reason"):
        table.add_column(column, overflow="fold")
    for result in report.results:
        version = "" if result.version is None else f"v{result.version}"
        if result.item.becomes_best:
            version = (version + " best").strip()
        table.add_row(
            result.item.label, result.item.model, f"[{_STYLE[result.status]}]{result.status}[/]", version, result.reason
        )
    return table


def import_totals(report: ImportReport) -> str:
    counts = ", ".join(
        f"{s} {report.count(s)}"
        for s in ("planned", "imported", "skipped", "refused", "failed")
        if report.count(s) or s != "planned"
    )
    note = f"; metadata: {report.plan.metadata_problem}" if report.plan.metadata_problem else ""
    best = ", ".join(f"{m} -> v{v}" if v >= 0 else f"{m} (to be set)" for m, v in sorted(report.best.items()))
    return f"{counts}; best: {best or 'unchanged'}{note}"


def migration_summary(report: MigrationReport) -> Table:
    title = f"migration to checkpoint format {report.target_format}" + (" (dry run)" if report.dry_run else "")
    table = Table(title=title)
    for column in ("model", "old version", "old format", "new version", "aliases moved", "error"):
        table.add_column(column, overflow="fold")
    for step in report.steps:
        table.add_row(
            step.name,
            f"v{step.old_version}",
            str(step.old_format),
            f"v{step.new_version}" if step.new_version else "",
            ", ".join(step.aliases),
            step.error or "",
        )
    return table
