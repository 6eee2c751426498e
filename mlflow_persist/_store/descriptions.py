"""Pure: the one-line descriptions the MLflow UI shows for a checkpoint version and a registered model."""

from __future__ import annotations

__all__ = ["format_size", "model_description", "version_description"]


def format_size(size_bytes: int) -> str:
    if size_bytes >= 2**20:
        return f"{size_bytes / 2**20:.1f} MB"
    return f"{size_bytes / 2**10:.0f} KB"


def version_description(
    category: str,
    step: int,
    monitor: str,
    value: float | None,
    size_bytes: int,
    previous: tuple[float, int] | None = None,
    cut: str | None = None,
) -> str:
    """`performance · step 812 · loss 0.398 (−3.4% vs v16) · 2.4 MB`; `previous` is (value, version) of the
    model's previous version of the same category, for the change."""
    parts = [category, f"step {step}"]
    if value is not None:
        measure = f"{monitor} {value:.4g}"
        if previous is not None and previous[0]:
            change = (value - previous[0]) / abs(previous[0]) * 100
            measure += f" ({change:+.1f}% vs v{previous[1]})".replace("-", "\u2212")
        parts.append(measure)
    parts.append(format_size(size_bytes))
    if cut:
        parts.append(f"system checkpoint {cut}")
    return " \u00b7 ".join(parts)


def model_description(name: str) -> str:
    """What a registered model of mlflow-persist is and how to load it."""
    return (
        f"Checkpoints of the model `{name}`, written by mlflow-persist while it trains: `performance` "
        "versions when the monitored value improved, `periodic` ones on a schedule, `final` ones at shutdown. "
        f"The alias `best` is the best valid one. Load one with `mlflow_persist.load_checkpoint("
        f'"models:/{name}@best")` (or `models:/{name}/latest`, `models:/{name}/<version>`), inspect them with '
        f'`mlflow-persist history {name}`, resume training with `Persistence(...).track("{name}", model, '
        "optimizer).restore()`."
    )
