"""The Models page and the artifact viewer's rules, without Airflow: what the UI plugin shows and serves.

The plugin (``plugins/yolonas_plugin.py``) mounts a small FastAPI app at :data:`URL_PREFIX`; this module decides
which S3 keys it may stream (:func:`allowed_key`), with which content type (:func:`content_type`), the viewer URL
of an ``s3://`` URI (:func:`viewer_path`, also used by the operators' extra links), and reads the published
layout into a :class:`ModelView` that :func:`render_model_page` turns into HTML::

    models/<model>/champion.json            ChampionPointer
    models/<model>/<run>/manifest.json      BundleManifest (written last: a bundle without it is skipped)
    models/<model>/<run>/plots/*.png, ...   the files the manifest lists
"""

from __future__ import annotations

import html
import logging
import mimetypes
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from yolonas_pipeline.contracts import (
    BUNDLE_MANIFEST_FILE,
    CHAMPION_FILE,
    BundleManifest,
    ChampionPointer,
    safe_segment,
)
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage, join_uri, split_s3_uri

log = logging.getLogger(__name__)

#: Where the API server mounts the plugin's app.
URL_PREFIX = "/yolonas"
#: The bucket's top-level folders the viewer serves: bundles, run outputs, drift reports. Never datasets.
SERVED_PREFIXES = ("models/", "runs/", "drift/")
#: The DAG whose runs publish bundles (rows link to ``/dags/<dag>/runs/<run>``).
TRAINING_DAG_ID = "yolonas_training"
#: Files shown inline; anything else is offered as a download.
INLINE_TYPES = ("image/", "application/json", "text/")
#: Plot files in display order (others follow alphabetically): training curves, PR curves, confusion, samples.
PLOT_ORDER = ("training_curves.png", "results.png", "pr_curves.png", "confusion_matrix.png", "sample_predictions.png")
_EXTRA_TYPES = {".json": "application/json", ".onnx": "application/octet-stream", ".pth": "application/octet-stream"}


# -- the viewer's rules ------------------------------------------------------------------------------------------
def allowed_key(key: str) -> bool:
    """Whether the viewer may serve ``key``: under a served prefix, no empty, ``.`` or ``..`` segment."""
    if not key.startswith(SERVED_PREFIXES) or key.endswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))


def content_type(key: str) -> str:
    """The Content-Type for ``key``, by its extension (``application/octet-stream`` when unknown)."""
    suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type("x" + suffix)
    return guessed or "application/octet-stream"


def is_inline(key: str) -> bool:
    return content_type(key).startswith(INLINE_TYPES)


def viewer_path(uri: str | None, *, bucket: str, base: str = "") -> str | None:
    """``s3://<bucket>/<key>`` -> ``<base>/yolonas/files/<key>``; None for another bucket or a key not served."""
    if not uri or not uri.startswith("s3://"):
        return None
    try:
        found, key = split_s3_uri(uri)
    except StageInputError:
        return None
    if found != bucket or not allowed_key(key):
        return None
    return f"{base.rstrip('/')}{URL_PREFIX}/files/{urllib.parse.quote(key)}"


def model_page_path(model: str, run_id: str | None = None, *, base: str = "") -> str:
    """The Models page of ``model``, at the row of ``run_id`` when given."""
    path = f"{base.rstrip('/')}{URL_PREFIX}/models/{urllib.parse.quote(model)}"
    return f"{path}#{run_anchor(run_id)}" if run_id else path


def run_anchor(run_id: str) -> str:
    return "run-" + safe_segment(run_id)


def plot_files(files: Iterable[str]) -> list[str]:
    """The PNG files among ``files`` (bundle-relative names), in :data:`PLOT_ORDER` then by name."""
    pngs = [name for name in files if name.lower().endswith(".png")]

    def rank(name: str) -> tuple[int, str]:
        base = name.rsplit("/", 1)[-1]
        return (PLOT_ORDER.index(base) if base in PLOT_ORDER else len(PLOT_ORDER), name)

    return sorted(pngs, key=rank)


def plot_title(name: str) -> str:
    """``plots/pr_curves.png`` -> ``PR curves``; ``results.png`` -> ``Training curves``."""
    base = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    special = {"results": "Training curves", "pr_curves": "PR curves", "training_curves": "Training curves"}
    return special.get(base, base.replace("_", " ").capitalize())


# -- the data ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunView:
    """One published bundle as the page shows it."""

    run_id: str
    bundle_uri: str
    published_at: str
    map_50: float | None
    map_50_95: float | None
    promoted: bool | None  # None: published without the gate
    reasons: list[str]
    per_class: dict[str, float | None]
    plots: list[str]  # bundle-relative PNG names
    files: list[str]
    is_champion: bool = False

    @property
    def dag_run_path(self) -> str:
        return f"/dags/{TRAINING_DAG_ID}/runs/{urllib.parse.quote(self.run_id, safe='')}"


@dataclass(frozen=True)
class ModelView:
    """A model's champion, its champion history (newest first) and every published run (newest first)."""

    model: str
    models_uri: str
    champion: ChampionPointer | None
    runs: list[RunView]
    history: list[RunView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def champion_run(self) -> RunView | None:
        return next((run for run in self.runs if run.is_champion), None)


def list_models(models_uri: str, *, storage: Storage) -> list[str]:
    """Model names that have a champion or at least one bundle under ``models_uri``."""
    names = {rel.split("/", 1)[0] for rel in storage.list_files(models_uri) if "/" in rel}
    return sorted(names)


def read_model(models_uri: str, model: str, *, storage: Storage) -> ModelView:
    """Read ``champion.json`` and every complete bundle's manifest of ``model``; unreadable ones become problems."""
    root = join_uri(models_uri, model)
    problems: list[str] = []
    champion: ChampionPointer | None = None
    try:
        champion = ChampionPointer.read(join_uri(root, CHAMPION_FILE), storage=storage)
    except FileNotFoundError:
        pass
    except StageInputError as exc:
        problems.append(str(exc))

    runs: list[RunView] = []
    listed = storage.list_files(root)
    for folder in sorted({rel.split("/", 1)[0] for rel in listed if rel.endswith("/" + BUNDLE_MANIFEST_FILE)}):
        bundle = join_uri(root, folder)
        try:
            manifest = BundleManifest.read_bundle(bundle, storage=storage)
        except StageInputError as exc:
            problems.append(str(exc))
            continue
        runs.append(_run_view(manifest, bundle, champion))
    runs.sort(key=lambda run: (run.published_at, run.run_id), reverse=True)
    return ModelView(
        model=model,
        models_uri=models_uri,
        champion=champion,
        runs=runs,
        history=champion_history(champion, runs),
        problems=problems,
    )


def _run_view(manifest: BundleManifest, bundle: str, champion: ChampionPointer | None) -> RunView:
    evaluation = manifest.evaluation
    promotion = manifest.promotion
    return RunView(
        run_id=manifest.run_id,
        bundle_uri=bundle,
        published_at=manifest.published_at,
        map_50=_number(evaluation.get("map_50")),
        map_50_95=_number(evaluation.get("map_50_95")),
        promoted=promotion.promote if promotion else None,
        reasons=list(promotion.reasons) if promotion else [],
        per_class={str(k): _number(v) for k, v in (evaluation.get("per_class_ap_50_95") or {}).items()},
        plots=plot_files(manifest.files),
        files=sorted(manifest.files),
        is_champion=bool(champion and champion.bundle_uri.rstrip("/") == bundle.rstrip("/")),
    )


def champion_history(champion: ChampionPointer | None, runs: Sequence[RunView]) -> list[RunView]:
    """The champion, then each champion before it: ``previous`` links of the pointer, then the promoted bundles.

    The pointer names only its predecessor; the rest of the chain is the bundles whose gate promoted them,
    newest first (a promoted run that another replaced later is a former champion).
    """
    if champion is None:
        return []
    by_bundle = {run.bundle_uri.rstrip("/"): run for run in runs}
    history: list[RunView] = []
    current = by_bundle.get(champion.bundle_uri.rstrip("/"))
    if current:
        history.append(current)
    previous = (champion.previous or {}).get("bundle_uri")
    if previous and previous.rstrip("/") in by_bundle and by_bundle[previous.rstrip("/")] not in history:
        history.append(by_bundle[previous.rstrip("/")])
    newest = history[0].published_at if history else None
    for run in runs:
        if run.promoted and run not in history and (newest is None or run.published_at <= newest):
            history.append(run)
    return history


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# -- the HTML ----------------------------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1a202c;background:#fff}
h1{font-size:1.5rem}h2{font-size:1.25rem;margin-top:2rem}h3{font-size:1rem;margin:.5rem 0}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #cbd5e0;padding:.25rem .5rem;text-align:left}
th{background:#edf2f7}.num{text-align:right;font-variant-numeric:tabular-nums}
.yes{color:#276749;font-weight:600}.no{color:#9b2c2c}.muted{color:#718096}
.run{border:1px solid #cbd5e0;border-radius:6px;padding:.75rem;margin:1rem 0}
.champion{border-color:#d69e2e;box-shadow:0 0 0 2px #faf089}
.plots{display:flex;flex-wrap:wrap;gap:.75rem}.plots figure{margin:0}
.plots img{max-width:420px;max-height:340px;border:1px solid #e2e8f0}
figcaption{font-size:.85rem;color:#4a5568}.problem{color:#9b2c2c}
"""


def _fmt(value: float | None, digits: int = 4) -> str:
    return "&ndash;" if value is None else f"{value:.{digits}f}"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def render_index(models: Sequence[str], *, bucket: str, base: str = "") -> str:
    """The list of models, each linking to its page."""
    items = "".join(f"<li><a href='{_e(model_page_path(m, base=base))}'>{_e(m)}</a></li>" for m in models)
    body = f"<h1>Models</h1><p class='muted'>Published under s3://{_e(bucket)}/models/</p>"
    body += f"<ul id='models'>{items}</ul>" if items else "<p id='no-models'>No model has been published yet.</p>"
    return _page("Models", body)


def render_model_page(view: ModelView, *, bucket: str, base: str = "") -> str:
    """The page of one model: champion, champion history, and every published run with metrics and plots."""

    def file_link(uri: str, text: str) -> str:
        href = viewer_path(uri, bucket=bucket, base=base)
        return f"<a href='{_e(href)}'>{_e(text)}</a>" if href else _e(text)

    parts = [f"<p><a href='{_e(base.rstrip('/') + URL_PREFIX + '/models')}'>All models</a></p>"]
    parts.append(f"<h1>Model {_e(view.model)}</h1>")
    parts += [f"<p class='problem'>{_e(problem)}</p>" for problem in view.problems]
    champion = view.champion
    parts.append("<h2>Champion</h2>")
    if champion is None:
        parts.append("<p id='champion' class='muted'>No champion yet.</p>")
    else:
        metrics = champion.metrics
        parts.append(
            "<table id='champion'><tr><th>run</th><th>mAP@0.50</th><th>mAP@0.50:0.95</th><th>promoted at</th>"
            "<th>pointer</th></tr>"
            f"<tr><td><a href='/dags/{TRAINING_DAG_ID}/runs/{_e(urllib.parse.quote(champion.run_id, safe=''))}' "
            f"target='_top'>{_e(champion.run_id)}</a></td>"
            f"<td class='num'>{_fmt(_number(metrics.get('map_50')))}</td>"
            f"<td class='num'>{_fmt(_number(metrics.get('map_50_95')))}</td><td>{_e(champion.promoted_at)}</td>"
            f"<td>{file_link(join_uri(view.models_uri, view.model, CHAMPION_FILE), CHAMPION_FILE)}</td></tr></table>"
        )
    parts.append("<h2>Champion history</h2>")
    if view.history:
        rows = "".join(
            f"<tr><td><a href='#{_e(run_anchor(r.run_id))}'>{_e(r.run_id)}</a></td><td>{_e(r.published_at)}</td>"
            f"<td class='num'>{_fmt(r.map_50_95)}</td><td>{'current' if r.is_champion else 'former'}</td></tr>"
            for r in view.history
        )
        parts.append(
            f"<table id='history'><tr><th>run</th><th>published</th><th>mAP@0.50:0.95</th><th></th></tr>{rows}</table>"
        )
    else:
        parts.append("<p class='muted'>None.</p>")

    parts.append(f"<h2>Published runs ({len(view.runs)})</h2>")
    champion_ap = view.champion_run.per_class if view.champion_run else {}
    parts += [_render_run(run, champion_ap, bucket=bucket, base=base) for run in view.runs]
    if not view.runs:
        parts.append("<p class='muted'>No bundle has been published yet.</p>")
    return _page(f"Model {view.model}", "".join(parts))


def _render_run(run: RunView, champion_ap: Mapping[str, float | None], *, bucket: str, base: str) -> str:
    def href(name: str) -> str:
        return viewer_path(join_uri(run.bundle_uri, name), bucket=bucket, base=base) or "#"

    if run.promoted is None:
        verdict = "<span class='muted'>no gate</span>"
    else:
        verdict = "<span class='yes'>promoted</span>" if run.promoted else "<span class='no'>not promoted</span>"
    classes = sorted(set(run.per_class) | set(champion_ap))
    class_rows = "".join(
        f"<tr><td>{_e(name)}</td><td class='num'>{_fmt(run.per_class.get(name))}</td>"
        f"<td class='num'>{_fmt(champion_ap.get(name))}</td><td class='num'>{_delta(run, champion_ap, name)}</td></tr>"
        for name in classes
    )
    plots = "".join(
        f"<figure><a href='{_e(href(name))}'><img src='{_e(href(name))}' alt='{_e(plot_title(name))}' "
        f"loading='lazy'></a><figcaption>{_e(plot_title(name))}</figcaption></figure>"
        for name in run.plots
    )
    reasons = "".join(f"<li>{_e(reason)}</li>" for reason in run.reasons)
    return (
        f"<section class='run{' champion' if run.is_champion else ''}' id='{_e(run_anchor(run.run_id))}'>"
        f"<h3><a href='{_e(run.dag_run_path)}' target='_top'>{_e(run.run_id)}</a>"
        f"{' (champion)' if run.is_champion else ''}</h3>"
        f"<table class='metrics'><tr><th>published</th><th>mAP@0.50</th><th>mAP@0.50:0.95</th><th>gate</th></tr>"
        f"<tr><td>{_e(run.published_at)}</td><td class='num'>{_fmt(run.map_50)}</td>"
        f"<td class='num'>{_fmt(run.map_50_95)}</td><td>{verdict}</td></tr></table>"
        + (f"<ul class='reasons'>{reasons}</ul>" if reasons else "")
        + (
            "<table class='per-class'><tr><th>class</th><th>AP@0.50:0.95</th><th>champion</th><th>Δ</th></tr>"
            f"{class_rows}</table>"
            if class_rows
            else ""
        )
        + f"<div class='plots'>{plots}</div>"
        + f"<p><a href='{_e(href(BUNDLE_MANIFEST_FILE))}'>manifest.json</a> · "
        + f"<a href='{_e(href('metrics.json'))}'>metrics.json</a> · {len(run.files)} files</p></section>"
    )


def _delta(run: RunView, champion_ap: Mapping[str, float | None], name: str) -> str:
    mine, theirs = run.per_class.get(name), champion_ap.get(name)
    if run.is_champion or mine is None or theirs is None:
        return "&ndash;"
    return f"{mine - theirs:+.4f}"
