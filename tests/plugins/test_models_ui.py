"""The UI plugin for real: an embedded stack (PostgreSQL, SeaweedFS, Airflow's four components) with a trained and
published run, driven by headless Chromium (Playwright, Debian's /usr/bin/chromium).

- The Models page, in the UI's navigation, shows the champion and the published runs' plots, every image loaded.
- An extra link on the publish task opens a plot through the viewer.
- The viewer refuses requests without a user the auth manager authenticated (plain HTTP).

Screenshots go to ``.artifacts/screenshots/`` in the repository (git-ignored); the test prints the folder.
``YOLONAS_UI_TEST_STACK=DIR`` points the tests at a stack already running under DIR (``make demo``'s layout, e.g.
``STACK_ROOT``), reusing its latest successful training run, instead of starting one (for working on the UI).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, publish_sample_bundle

from yolonas_pipeline.contracts import safe_segment
from yolonas_pipeline.embedded import DAG_ID, Embedded, stack_from

pytestmark = pytest.mark.slow

SCREENSHOTS = REPO / ".artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SAMPLE_RUN = "manual__2026-01-01T00:00:00+00:00"
ALL_IMAGES_LOADED = "() => [...document.images].length > 0 && [...document.images].every(i => i.complete)"
IMAGE_WIDTHS = "() => [...document.images].map(i => i.naturalWidth)"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Embedded:
    if os.environ.get("YOLONAS_UI_TEST_STACK"):
        return stack_from(Path(os.environ["YOLONAS_UI_TEST_STACK"]), {})
    return request.getfixturevalue("embedded_stack")  # the session's stack (conftest), shared with test_embedded


@pytest.fixture(scope="module")
def published_run(stack: Embedded, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real run (train, evaluate, publish: the champion), plus an older bundle published with the real publish
    code that has training curves and did not pass the gate (another dataset)."""
    from yolonas_pipeline.storage import Storage

    api = stack.api()
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    if os.environ.get("YOLONAS_UI_TEST_STACK"):
        run_id = reusable_run(stack)
        assert run_id is not None, f"no successful run crowned its model on the stack under {stack.run_dir.parent}"
    else:
        run_id = request.getfixturevalue("embedded_trained_run")
    publish_sample_bundle(
        Storage(stack.s3_client()),
        f"s3://{stack.bucket}/models",
        tmp_path_factory.mktemp("bundle"),
        run_id=SAMPLE_RUN,
        map_50_95=0.01,
        class_names=tuple(api.xcom(DAG_ID, run_id, "train")["class_names"]),
    )
    return run_id


def reusable_run(stack: Embedded) -> str | None:
    """The latest successful training run of a running stack whose publish task crowned its model (the tests
    look for the champion's run)."""
    runs = get(f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns?state=success&order_by=-run_after", token(stack))[2]
    for run in json.loads(runs)["dag_runs"]:
        states = {ti["task_id"]: ti["state"] for ti in stack.api().task_instances(DAG_ID, run["dag_run_id"])}
        if states.get("publish") == "success" and publish_result(stack, run["dag_run_id"]).get("promoted"):
            return str(run["dag_run_id"])
    return None


@pytest.fixture(scope="module")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SCREENSHOTS}")
    return SCREENSHOTS


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (.ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, stack: Embedded) -> Iterator[Any]:
    """A browser page signed in through the UI's own login form."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(stack.api_url + "/", wait_until="domcontentloaded")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", stack.password())
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(stack.api_url + "/")
    yield page
    context.close()


def get(url: str, token: str | None = None) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def token(stack: Embedded) -> str:
    request = urllib.request.Request(
        stack.api_url + "/auth/token",
        data=json.dumps({"username": "admin", "password": stack.password()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(json.loads(response.read())["access_token"])


def publish_result(stack: Embedded, run_id: str) -> dict[str, Any]:
    return dict(stack.api().xcom(DAG_ID, run_id, "publish"))


def viewer_url(stack: Embedded, uri: str) -> str:
    return f"{stack.api_url}/yolonas/files/{uri.split(f's3://{stack.bucket}/', 1)[1]}"


def test_the_viewer_serves_only_authenticated_users(stack: Embedded, published_run: str) -> None:
    published = publish_result(stack, published_run)
    manifest = viewer_url(stack, published["manifest_uri"])
    plot = viewer_url(stack, f"{published['bundle_uri']}/plots/pr_curves.png")
    for url in (manifest, plot, f"{stack.api_url}/yolonas/models"):
        status, _, body = get(url)
        assert status == 401, (url, status, body)
        assert get(url, token="not-a-jwt")[0] == 403
    valid = token(stack)
    status, kind, body = get(manifest, valid)
    assert (status, kind) == (200, "application/json") and json.loads(body)["run_id"] == published_run
    status, kind, body = get(plot, valid)
    assert (status, kind) == (200, "image/png") and body.startswith(b"\x89PNG")
    # Only the pipeline's folders of its bucket, and nothing that names an S3 endpoint or a signature.
    dataset_manifest = f"{stack.api_url}/yolonas/files/datasets/x/manifest.json"
    assert get(dataset_manifest, valid)[0] == 404
    assert get(f"{stack.api_url}/yolonas/files/models/../datasets/x", valid)[0] == 404
    page = get(f"{stack.api_url}/yolonas/models/yolo_nas_s", valid)[2].decode()
    assert stack.s3_url not in page and "X-Amz-Signature" not in page


def test_the_models_page_shows_the_champion_and_the_runs_plots(
    page: Any, stack: Embedded, published_run: str, screenshots: Path
) -> None:
    page.goto(stack.api_url + "/plugin/yolonas-models", wait_until="domcontentloaded")
    page.get_by_role("link", name="Models").wait_for()  # the nav entry of the external view
    frame = page.frame_locator("iframe")
    champion = frame.locator("#champion")
    champion.wait_for()
    assert published_run in champion.inner_text()
    section = frame.locator(f"[id='run-{safe_segment(published_run)}']")
    assert "(champion)" in section.inner_text() and "promoted" in section.inner_text()
    assert section.locator("img").count() == 4  # training curves, PR curves, confusion matrix, sample predictions
    sample = frame.locator(f"[id='run-{safe_segment(SAMPLE_RUN)}']")
    assert "not promoted" in sample.inner_text() and sample.locator("img[alt='Training curves']").count() == 1
    content = page.frame_locator("iframe").locator("html")
    content.evaluate("() => [...document.images].forEach(i => { i.loading = 'eager'; })")
    deadline = time.monotonic() + 60
    while not content.evaluate(ALL_IMAGES_LOADED) and time.monotonic() < deadline:
        time.sleep(0.5)
    widths = content.evaluate(IMAGE_WIDTHS)
    runs = frame.locator("[id^='run-']").count()  # 2 on the test's stack; a demo stack has more
    assert runs >= 2 and len(widths) == 4 * runs and all(width > 0 for width in widths), widths
    page.screenshot(path=str(screenshots / "models_page_in_airflow.png"))

    # The page on its own, whole, with the same session cookie.
    page.goto(stack.api_url + "/yolonas/models/yolo_nas_s", wait_until="load")
    assert all(width > 0 for width in page.evaluate(IMAGE_WIDTHS))
    page.screenshot(path=str(screenshots / "models_page.png"), full_page=True)


def test_an_extra_link_on_the_publish_task_opens_a_plot(
    page: Any, stack: Embedded, published_run: str, screenshots: Path
) -> None:
    quoted = urllib.parse.quote(published_run, safe="")
    page.goto(f"{stack.api_url}/dags/{DAG_ID}/runs/{quoted}/tasks/publish/details", wait_until="domcontentloaded")
    link = page.get_by_role("link", name="PR curves")
    link.wait_for()
    for name in ("Bundle", "Manifest", "champion.json", "Training curves", "Confusion matrix", "Sample predictions"):
        assert page.get_by_role("link", name=name).count() == 1, name
    page.screenshot(path=str(screenshots / "publish_task_extra_links.png"))
    assert link.get_attribute("href").startswith("/yolonas/files/models/yolo_nas_s/")
    link.click()
    page.wait_for_url("**/plots/pr_curves.png")
    assert page.evaluate("() => document.images[0].naturalWidth") > 0
    page.screenshot(path=str(screenshots / "extra_link_pr_curves.png"))

    # The worker stored every link of the trainer tasks too, each a viewer path.
    entries = f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances/evaluate/xcomEntries"
    status, _, body = get(f"{entries}/_link_ConfusionMatrixLink", token(stack))
    assert status == 200 and "/evaluate/plots/confusion_matrix.png" in json.loads(body)["value"], body


def test_the_model_asset_holds_the_published_runs(
    page: Any, stack: Embedded, published_run: str, screenshots: Path
) -> None:
    """publish's event on ``yolonas_model``: the Assets view is the model history."""
    valid = token(stack)
    assets = json.loads(get(f"{stack.api_url}/api/v2/assets?name_pattern=yolonas_model", valid)[2])["assets"]
    asset_id = next(asset["id"] for asset in assets if asset["name"] == "yolonas_model")
    events = json.loads(get(f"{stack.api_url}/api/v2/assets/events?asset_id={asset_id}", valid)[2])["asset_events"]
    extra = next(event["extra"] for event in events if event["extra"].get("run_id") == published_run)
    assert extra["promoted"] is True and extra["bundle_uri"] == publish_result(stack, published_run)["bundle_uri"]
    page.goto(f"{stack.api_url}/assets/{asset_id}", wait_until="domcontentloaded")
    page.get_by_text("yolonas_model").first.wait_for()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(screenshots / "model_asset_events.png"), full_page=True)
