"""The Prefect and MLflow UIs as a person sees them, in headless Chromium against a real local
stack: the mnist-pipeline deployment with its cron schedule and the form of its parameter model,
and the MLflow experiment listing a run. Each page's screenshot is kept in
``test-artifacts/ui/`` at the repository root (git-ignored), for a person to look at.

    .venv/bin/python -m pytest tests/flows/test_ui.py -q
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from browser import Chromium
from tasks.ops import deploy, processes, stack
from tasks.track import tracking
from tasks.mnist.config import MnistPipelineConfig

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
DEPLOYMENT = "mnist-pipeline"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A stack under a private home, with the mnist-pipeline deployment registered."""
    home = tmp_path_factory.mktemp("ui-home")
    try:
        info = stack.up(home)
        deploy.register(REPO / "infra" / "prefect.yaml", names=[DEPLOYMENT], log=home / "deploy.log",
                        api_url=stack.load_env_file(home)["PREFECT_API_URL"])
        yield info
    finally:
        stack.down(home, grace=2)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One browser for the module; asked for before the stack, so a missing one fails at once."""
    with Chromium(tmp_path_factory.mktemp("chromium")) as chromium:
        yield chromium
    assert processes.family(chromium.proc) == [], "chromium left processes behind"


@pytest.fixture(scope="module")
def deployment_url(live):
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(f"{live.services['prefect'].url}/api") as client:
        found = client.read_deployment_by_name(f"{DEPLOYMENT}/{DEPLOYMENT}")
    return f"{live.services['prefect'].url}/deployments/deployment/{found.id}"


def _kept(browser: Chromium, name: str, *, whole: bool = False) -> Path:
    """Save a screenshot as a test artifact, and check it is a real picture of the window."""
    path = browser.screenshot(ARTIFACTS / name, whole=whole)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    assert width == browser.size[0] and height >= browser.size[1], (path, width, height)
    assert len(data) > 20_000, f"{path} is {len(data)} bytes: a blank page?"
    return path


def test_without_chromium_the_check_fails_and_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"chromium is not installed: `apt-get install chromium`"):
        Chromium(tmp_path).__enter__()


def test_prefect_lists_the_deployment_with_its_nightly_schedule(browser, live):
    browser.open(f"{live.services['prefect'].url}/deployments")
    # The UI writes a cron schedule out in words; "0 2 * * *" in UTC reads like this.
    browser.wait_for_text(DEPLOYMENT, "At 02:00 AM every day")
    _kept(browser, "prefect-deployments.png")


def test_prefect_schedule_editor_shows_the_cron_expression(browser, deployment_url):
    browser.open(deployment_url)
    browser.wait_for_text(DEPLOYMENT, stack.POOL, "flows/pipeline.py:mnist_pipeline", "At 02:00 AM every day")
    toggle = ".deployment-schedule-card [role=switch]"
    assert browser.js(f"document.querySelector('{toggle}').getAttribute('aria-checked')") == "true"
    browser.click(".deployment-schedule__menu button")
    browser.wait_for_text("Edit")
    browser.click(".p-overflow-menu-item", "Edit")
    browser.wait_for_text("Edit schedule", "Timezone")
    values = browser.form_values()
    assert "0 2 * * *" in values and "UTC" in values, values
    _kept(browser, "prefect-schedule.png")


def test_prefect_run_form_renders_the_pipeline_parameter_model(browser, deployment_url):
    browser.open(f"{deployment_url}/run")
    # Prefect labels a field with its title-cased name and renders its description as Markdown,
    # which would drop a <placeholder> as an unknown HTML tag: each must read as written.
    fields = MnistPipelineConfig.model_fields
    browser.wait_for_text("Parameters", "Run Name (Optional)")
    assert browser.texts(".schema-form-property__label") == [
        "cfg (Optional)", *(f"{name.replace('_', ' ').title()} (Optional)" for name in fields)]
    assert browser.texts(".schema-form-property__markdown") == [f.description for f in fields.values()]
    # The deployment's defaults from infra/prefect.yaml and the model's own fill the fields.
    values = browser.form_values()
    assert {"/usr/share/datasets/fashion-mnist", "mnist_convnet"} <= set(values), values
    assert browser.js("[...document.querySelectorAll('select option')].map(o => o.value)"
                      ".filter(v => v.startsWith('mnist_'))") == ["mnist_convnet", "mnist_mlp"]
    _kept(browser, "prefect-run-form.png", whole=True)


def test_mlflow_lists_the_run_with_its_metrics(browser, live, tmp_path):
    from mlflow import MlflowClient

    uri = live.services["mlflow"].url
    cfg = MnistPipelineConfig(source="/usr/share/datasets/fashion-mnist", epochs=1, run_name="ui-check")
    run_id = tracking.start_run(uri, "mnist", tmp_path, "ui-check", tracking.flatten(cfg), tags={})
    client = MlflowClient(uri)
    client.log_metric(run_id, "val/top1", 0.9903)
    client.set_terminated(run_id)

    # MLflow 3 opens an experiment on its GenAI view (traces) under a guided-tour pop-up; its
    # "Model training" switch leads here, to the experiment's runs.
    experiment = client.get_run(run_id).info.experiment_id
    browser.open(f"{uri}/#/experiments/{experiment}/runs?workflowType=machine_learning")
    browser.wait_for_text("Runs", "ui-check", "1 matching run")
    if "MLflow Assistant" in browser.text():  # a side panel over the run table's columns
        browser.click('button[aria-label="Close"]')
    _kept(browser, "mlflow-runs.png")

    browser.click("a", "ui-check")
    browser.wait_for_text("ui-check", "Metrics", "val/top1", "0.9903", "Parameters", "mnist_convnet",
                          "git.commit")
    _kept(browser, "mlflow-run.png")
