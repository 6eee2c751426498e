"""Shared steps of the operations tests: populate a tracking server with plain MLflow calls,
and check the MLflow UI in a real browser."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric
from servers import Chromium

TRAINING_VIEW_TAG = {"mlflow.experimentKind": "custom_model_development"}


@dataclass(frozen=True)
class Populated:
    experiment_id: str
    run_id: str
    model: str
    versions: list[str]
    best_version: str
    sources: list[str]


def populate_plain(client: MlflowClient, work: Path, model: str = "dqn", n_versions: int = 3,
                   n_steps: int = 60) -> Populated:  # fmt: skip
    """One run with a `loss` series, `n_versions` directory checkpoints registered as versions,
    `best` on the lowest-loss one. Mirrors the core's layout (checkpoints/<name>-<step>-<uuid8>/)."""
    eid = client.create_experiment(f"ops-{uuid.uuid4().hex[:8]}", tags=TRAINING_VIEW_TAG)
    run_id = client.create_run(eid, run_name=model, tags={"mlflow_persist.run_key": model}).info.run_id
    now_ms = int(time.time() * 1000)
    losses = [1.0 / (1 + 0.1 * i) for i in range(n_steps)]
    client.log_batch(run_id, metrics=[Metric("loss", v, now_ms + i, i) for i, v in enumerate(losses)])
    client.create_registered_model(model)
    artifact_uri = client.get_run(run_id).info.artifact_uri
    versions: list[str] = []
    sources: list[str] = []
    values: dict[str, float] = {}
    for k in range(n_versions):
        step = (k + 1) * n_steps // (n_versions + 1)
        name = f"{model}-{step}-{uuid.uuid4().hex[:8]}"
        local = work / name
        local.mkdir(parents=True)
        payload = bytes(range(256)) * (64 * (k + 1))
        (local / "checkpoint.pt").write_bytes(payload)
        (local / "manifest.json").write_text(json.dumps({"step": step, "category": "performance"}))
        client.log_artifacts(run_id, str(local), f"checkpoints/{name}")
        source = f"{artifact_uri}/checkpoints/{name}"
        mv = client.create_model_version(model, source, run_id=run_id, tags={
            "mlflow_persist.category": "performance", "mlflow_persist.step": str(step),
            "mlflow_persist.monitor": "loss", "mlflow_persist.value": f"{losses[step]:.6f}",
        })  # fmt: skip
        versions.append(mv.version)
        sources.append(source)
        values[mv.version] = losses[step]
    best = min(values, key=lambda v: values[v])
    client.set_registered_model_alias(model, "best", best)
    return Populated(eid, run_id, model, versions, best, sources)


def check_model_page(browser: Chromium, server_uri: str, model: str, versions: list[str],
                     screenshot: Path, timeout_s: float = 90.0, texts: tuple[str, ...] = ()) -> str:  # fmt: skip
    """The registered model page lists every version, shows `@ best` in the Aliases column, and every one of
    `texts` (descriptions)."""
    browser.navigate(f"{server_uri}/#/models/{model}")
    needles = ["@ best", *(f"Version {v}" for v in versions), *texts]
    text = browser.wait_for_text(*needles, timeout_s=timeout_s)
    browser.screenshot(screenshot)
    return text


_CHART_JS = """(() => {
    const metric = %s;
    const titles = Array.from(document.querySelectorAll('body *'))
        .filter(e => e.children.length === 0 && e.textContent.trim() === metric);
    for (const title of titles) {
        // The chart card: the smallest ancestor of the title that holds exactly one plotly plot.
        let card = title.parentElement;
        while (card && card.querySelectorAll('.js-plotly-plot').length === 0) card = card.parentElement;
        if (!card || card.querySelectorAll('.js-plotly-plot').length !== 1) {
            title.scrollIntoView({block: 'center'});  // charts render lazily once in view
            continue;
        }
        const lines = Array.from(card.querySelectorAll('.scatterlayer .trace path.js-line'))
            .map(l => l.getAttribute('d') || '').filter(d => d.length > 20);
        if (lines.length) {
            title.scrollIntoView({block: 'center'});
            const points = lines.map(d => d.split(/[LM]/).length - 1).reduce((a, b) => a + b, 0);
            if (points >= MIN_POINTS) return points;  // the UI may draw a first batch of points, then the rest
            continue;
        }
    }
    if (!titles.length) {
        // Not rendered yet: charts below the fold render only once scrolled into view, so scroll on.
        for (const e of document.querySelectorAll('body *')) {
            const style = getComputedStyle(e);
            if (/(auto|scroll)/.test(style.overflowY) && e.scrollHeight > e.clientHeight + 10) e.scrollBy(0, 300);
        }
        window.scrollBy(0, 300);
    }
    return 0;
})()"""


def check_run_chart(browser: Chromium, server_uri: str, experiment_id: str, run_id: str, metric: str,
                    screenshot: Path, timeout_s: float = 90.0, min_points: int = 1) -> int:  # fmt: skip
    """The run's Model metrics tab draws the chart titled `metric` with a plotted line of at least `min_points`
    vertices (waited for: the chart may be drawn in batches); returns its vertex count."""
    browser.navigate(f"{server_uri}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics")
    browser.wait_for_text("Model metrics", timeout_s=timeout_s)
    # Charts render asynchronously and lazily: poll until the chart card of `metric` holds a drawn trace.
    script = _CHART_JS.replace("MIN_POINTS", str(int(min_points))) % json.dumps(metric)
    points = browser.wait_for(script, timeout_s=timeout_s, what=f"a drawn {metric!r} chart of {min_points}+ points")
    time.sleep(0.5)  # let the scroll settle before the screenshot
    browser.screenshot(screenshot)
    return int(points)
