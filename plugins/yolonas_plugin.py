"""Airflow plugin: template macros, the artifact viewer and the Models page of the YOLO-NAS pipeline.

- ``{{ macros.yolonas.safe_segment(run_id) }}`` gives the S3-safe form of a run id, the one the operators use for
  ``runs/<run>/`` and ``models/<model>/<run>/`` paths.
- A FastAPI app mounted by the API server at ``/yolonas``: ``/yolonas/files/<key>`` streams one object of the
  pipeline's bucket (only under ``models/``, ``runs/``, ``drift/``) through the pipeline's S3 connection, and
  ``/yolonas/models[/<model>]`` is the Models page, shown in the UI's navigation as an external view. Every route
  needs a user the auth manager authenticated (the UI's ``_token`` cookie or ``Authorization: Bearer``) who may
  read DAGs; no S3 URL or credential leaves the server.

The page's data and HTML are in :mod:`yolonas_pipeline.models_page`; this is the thin web layer over it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from botocore.exceptions import ClientError
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from yolonas_pipeline import models_page, settings
from yolonas_pipeline.contracts import safe_segment

CHUNK = 1 << 16


def _storage() -> Any:
    from yolonas_pipeline.operators._aws import storage_for  # the operators' connection, read per request

    return storage_for(settings.load().aws_conn_id)


def _base() -> str:
    from yolonas_pipeline.operators.links import ui_base_path

    return ui_base_path()


app = FastAPI(
    title="YOLO-NAS pipeline",
    description="Artifacts and models of the YOLO-NAS pipeline, read from its S3 bucket.",
    dependencies=[Depends(requires_access_dag("GET"))],
)


@app.get("/files/{key:path}", summary="Stream one artifact of the pipeline's bucket")
async def get_file(key: str) -> StreamingResponse:
    if not models_page.allowed_key(key):
        raise HTTPException(status_code=404, detail="not an artifact of this pipeline")
    storage, bucket = _storage(), settings.load().bucket
    try:
        found = await run_in_threadpool(storage.s3.get_object, Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise HTTPException(status_code=404, detail=f"{key} does not exist") from None
        raise HTTPException(status_code=502, detail=f"S3 refused {key}: {code}") from None

    body = found["Body"]

    def chunks() -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    name = key.rsplit("/", 1)[-1]
    disposition = "inline" if models_page.is_inline(key) else "attachment"
    headers = {
        "Content-Length": str(found["ContentLength"]),
        "Content-Disposition": f'{disposition}; filename="{urllib.parse.quote(name)}"',
        "Cache-Control": "private, max-age=60",
        "X-Content-Type-Options": "nosniff",
    }
    return StreamingResponse(chunks(), media_type=models_page.content_type(key), headers=headers)


@app.get("/models", response_class=HTMLResponse, summary="The Models page: every published model")
async def models_index() -> HTMLResponse:
    config = settings.load()
    names = await run_in_threadpool(models_page.list_models, config.models_uri, storage=_storage())
    if len(names) == 1:  # the common case: straight to the one model's page
        return await model_detail(names[0])
    return HTMLResponse(models_page.render_index(names, bucket=config.bucket, base=_base()))


@app.get("/models/{model}", response_class=HTMLResponse, summary="One model: champion, history, published runs")
async def model_detail(model: str) -> HTMLResponse:
    if safe_segment(model) != model:
        raise HTTPException(status_code=404, detail="no such model")
    config = settings.load()
    view = await run_in_threadpool(models_page.read_model, config.models_uri, model, storage=_storage())
    if not view.runs and view.champion is None and not view.problems:
        raise HTTPException(status_code=404, detail=f"no model {model!r} has been published")
    return HTMLResponse(models_page.render_model_page(view, bucket=config.bucket, base=_base()))


class YolonasPlugin(AirflowPlugin):
    name = "yolonas"
    macros = [safe_segment]
    fastapi_apps = [{"app": app, "url_prefix": models_page.URL_PREFIX, "name": "YOLO-NAS models"}]
    external_views = [
        {
            "name": "Models",
            "href": f"{models_page.URL_PREFIX}/models",
            "destination": "nav",
            "url_route": "yolonas-models",
        }
    ]
