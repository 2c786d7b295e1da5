"""The plugin as Airflow loads it from plugins/: the viewer app at /yolonas, the Models view in the navigation, and
no route that answers without an authenticated user (no stack needed; the real one is in test_models_ui)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def plugin() -> object:
    from airflow import plugins_manager

    assert plugins_manager.get_import_errors() == {}
    return next(p for p in plugins_manager._get_plugins()[0] if p.name == "yolonas")


def test_the_plugin_mounts_the_viewer_and_adds_the_models_view(plugin: object) -> None:
    from airflow import plugins_manager

    apps, _ = plugins_manager.get_fastapi_plugins()
    assert [entry["url_prefix"] for entry in apps if entry["name"] == "YOLO-NAS models"] == ["/yolonas"]
    external_views, _ = plugins_manager._get_ui_plugins()
    view = next(v for v in external_views if v["url_route"] == "yolonas-models")
    assert (view["name"], view["href"], view["destination"]) == ("Models", "/yolonas/models", "nav")


@pytest.mark.parametrize("path", ["/models", "/models/yolo_nas_s", "/files/models/yolo_nas_s/champion.json"])
def test_every_route_refuses_a_request_without_a_user(plugin: object, path: str) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(plugin.fastapi_apps[0]["app"])  # type: ignore[attr-defined]
    response = client.get(path)
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}
    assert client.get(path, cookies={"other": "x"}).status_code == 401
