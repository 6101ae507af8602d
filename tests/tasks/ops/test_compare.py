"""Comparing MLflow runs, on a real MLflow SQLite store."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest

from tasks.ops import compare


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("mnist")
    ids = []
    runs = (("mnist_convnet", "0.001", 0.99, 0.03), ("mnist_mlp", "0.01", 0.98, 0.07))
    for i, (recipe, lr, top1, loss) in enumerate(runs):
        run = client.create_run(experiment, run_name=recipe, start_time=1_700_000_000_000 + i * 1000,
                                tags={"git.commit": "0123456789abcdef"})
        for key, value in (("recipe", recipe), ("lr", lr), ("batch_size", "100")):
            client.log_param(run.info.run_id, key, value)
        for key, value in (("train/loss", loss), ("val/top1", top1), ("val/top5", 1.0), ("zz/extra", 1.0)):
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    client.create_experiment("empty")
    return uri, experiment, ids


def test_table_shows_differing_params_and_key_metrics_newest_first(store):
    uri, experiment, ids = store
    table = compare.runs_table("mnist", tracking_uri=uri)
    assert table.columns == ["run", "id", "status", "commit", "lr", "recipe",
                             "val/top1", "val/top5", "train/loss", "zz/extra"]
    assert table.rows == [
        ["mnist_mlp", ids[1][:8], "FINISHED", "01234567", "0.01", "mnist_mlp", "0.98", "1", "0.07", "1"],
        ["mnist_convnet", ids[0][:8], "FINISHED", "01234567", "0.001", "mnist_convnet", "0.99", "1", "0.03", "1"],
    ]
    url = unquote(table.compare_url)
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?runs=")
    runs_part, experiments_part = url.split("runs=", 1)[1].split("&experiments=")
    assert json.loads(runs_part) == [ids[1], ids[0]] and json.loads(experiments_part) == [experiment]
    assert table.ui_hint == f"start the UI first: mlflow ui --backend-store-uri {uri}"


def test_render_lines_up_columns(store):
    text = compare.render(compare.runs_table("mnist", tracking_uri=store[0]))
    header, first, second, url, hint = text.splitlines()
    assert header.index("val/top1") == first.index("0.98") == second.index("0.99")
    assert url.startswith("compare view: http://127.0.0.1:5000/#/compare-runs?runs=")
    assert compare.render(compare.runs_table("empty", tracking_uri=store[0])) == "experiment empty: no runs yet"


def test_unknown_experiment_names_those_there_are(store):
    with pytest.raises(compare.CompareError, match=r"no MLflow experiment 'nope' .*experiments: Default, empty, mnist"):
        compare.runs_table("nope", tracking_uri=store[0])


def test_metric_columns_are_capped_with_key_metrics_first():
    runs = [{f"a{i}": 1.0 for i in range(10)} | {"perf/images_per_s": 1.0, "val/top1": 1.0}]
    assert compare.key_metrics(runs) == ["val/top1", "perf/images_per_s", "a0", "a1", "a2", "a3"]
    assert compare.differing_params([{"a": "1", "b": "2"}, {"a": "1"}, {"a": "1", "b": "2"}]) == ["b"]


def test_each_experiment_leads_with_its_own_selection_metric():
    runs = [{"val/psnr": 30.0, "test/psnr": 29.0, "val/loss": 1.0, "train/loss": 1.0, "test/acc/cat": 1.0},
            {"val/ap": 0.5, "val/loss": 1.0}]
    assert compare.key_metrics(runs, ["val/psnr", "val/ap"])[:4] == ["test/psnr", "val/psnr", "val/ap", "val/loss"]
    assert "test/acc/cat" not in compare.key_metrics(runs, ["val/psnr"])
