"""infra/prefect.yaml and the deployment helpers, without a server (test_stack.py registers and
triggers them against a real one)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.ops import deploy
from tasks.ops.deploy import DeployError

REPO = Path(__file__).resolve().parents[3]
PREFECT_FILE = REPO / "infra" / "prefect.yaml"
LOCAL = "visionflow-local"


@pytest.fixture(scope="module")
def specs():
    return {s.name: s for s in deploy.load(PREFECT_FILE)}


def test_one_deployment_per_flow_on_the_local_pool(specs):
    assert {name: s.entrypoint for name, s in specs.items()} == {
        "mnist-pipeline": "flows/pipeline.py:mnist_pipeline",
        "mnist-ingest": "flows/mnist.py:mnist_ingest",
        "train": "flows/train.py:train",
        "evaluate": "flows/evaluate.py:evaluate",
        "imagenet-ingest": "flows/imagenet.py:imagenet_ingest",
        "train-gpu": "flows/train.py:train",
        "train-ray": "flows/train.py:train",
        "imagenet-pipeline": "flows/imagenet.py:imagenet_pipeline",
        "imagenet-pipeline-gpu": "flows/imagenet.py:imagenet_pipeline",
        "inpaint-pipeline": "flows/inpaint.py:inpaint_pipeline",
        "inpaint-pipeline-gpu": "flows/inpaint.py:inpaint_pipeline",
        "rfpose-pipeline": "flows/rfpose.py:rfpose_pipeline",
    }
    gpu = {"train-gpu", "imagenet-pipeline-gpu", "inpaint-pipeline-gpu"}
    assert {s.pool for name, s in specs.items() if name not in gpu | {"train-ray"}} == {LOCAL}
    for name in gpu:
        assert specs[name].pool == "visionflow-k8s-gpu"
        assert specs[name].env_vars == ("VISIONFLOW_IMAGE",)
    assert specs["train-ray"].pool == "visionflow-k8s-ray"
    assert specs["train-ray"].env_vars == ("VISIONFLOW_IMAGE",)


def test_schedules_nightly_pipeline_and_costly_ones_inactive(specs):
    assert [(s["cron"], s["active"]) for s in specs["mnist-pipeline"].schedules] == [("0 2 * * *", True)]
    for name in ("train", "imagenet-ingest", "train-gpu", "train-ray", "imagenet-pipeline", "imagenet-pipeline-gpu"):
        assert [s["active"] for s in specs[name].schedules] == [False], name


def test_entrypoints_name_flows_defined_in_their_files(specs):
    for spec in specs.values():
        path = REPO / spec.flow_file
        if not path.exists():
            continue  # a pipeline still to come; `visionflow deploy` skips it and says so
        function = spec.entrypoint.rsplit(":", 1)[1]
        assert re.search(rf"@flow\b[^\n]*\ndef {function}\(cfg: \w+", path.read_text()), spec.name


def test_the_gpu_pool_template_requests_gpus_and_takes_the_yaml_job_variables():
    import yaml

    template = json.loads((REPO / "infra" / "k8s-gpu-job-template.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert pod["nodeSelector"] == "{{ node_selector }}"
    raw = yaml.safe_load(PREFECT_FILE.read_text())
    job_variables = raw["definitions"]["work_pools"]["k8s_gpu"]["job_variables"]
    assert set(job_variables) <= set(template["variables"]["properties"])
    ray_template = json.loads((REPO / "infra" / "k8s" / "prefect-rayjob-job-template.json").read_text())
    assert set(raw["definitions"]["work_pools"]["k8s_ray"]["job_variables"]) <= set(ray_template["variables"]["properties"])


def test_plan_skips_what_cannot_be_registered_yet(specs, tmp_path):
    plan = deploy.plan(list(specs.values()), root=REPO, pools={LOCAL}, names=None, environ={})
    assert "train-gpu" in plan.skipped and "does not exist on the server" in plan.skipped["train-gpu"]
    assert "mnist-pipeline" not in plan.skipped
    with_pool = deploy.plan(list(specs.values()), root=REPO, pools={LOCAL, "visionflow-k8s-gpu"},
                            names=None, environ={})
    assert with_pool.skipped["train-gpu"] == "set VISIONFLOW_IMAGE first"
    nothing_there = deploy.plan(list(specs.values()), root=tmp_path, pools={LOCAL}, names=None, environ={})
    assert nothing_there.register == []


def test_named_deployments_must_all_be_registrable(specs):
    with pytest.raises(DeployError, match="unknown deployment nope; infra/prefect.yaml has mnist-pipeline"):
        deploy.plan(list(specs.values()), root=REPO, pools={LOCAL}, names=["nope"], environ={})
    with pytest.raises(DeployError, match="train-gpu: work pool visionflow-k8s-gpu"):
        deploy.plan(list(specs.values()), root=REPO, pools={LOCAL}, names=["train-gpu"], environ={})


@pytest.mark.parametrize("text, message", [
    ("deployments:\n  - name: a\n    work_pool: {name: p}\n", r"deployments\[0\] needs entrypoint"),
    ("deployments:\n  - {name: a, entrypoint: f.py:a, work_pool: {}}\n", "needs work_pool"),
    ("deployments:\n  - {name: a, entrypoint: f.py:a, work_pool: {name: p}}\n"
     "  - {name: a, entrypoint: f.py:b, work_pool: {name: p}}\n", "repeated: a"),
    ("deployments: [unclosed\n", "cannot read deployments"),
])
def test_a_bad_prefect_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "prefect.yaml"
    path.write_text(text)
    with pytest.raises(DeployError, match=message):
        deploy.load(path)


def test_params_parse_as_json_where_they_can():
    assert deploy.parse_params(["epochs=1", "lr=1e-3", "source=/data/x", "flag=true", "out=null",
                                "name=a=b"]) == {
        "epochs": 1, "lr": 0.001, "source": "/data/x", "flag": True, "out": None, "name": "a=b"}
    with pytest.raises(DeployError, match="expected key=value"):
        deploy.parse_params(["epochs"])


def test_params_land_inside_the_flows_single_model():
    schema = {"properties": {"cfg": {"$ref": "#/definitions/C"}}}
    defaults = {"cfg": {"source": "/usr/share/x", "recipe": "mnist_convnet"}}
    merged = deploy.merge_params(defaults, {"epochs": 1, "cfg.recipe": "mnist_mlp"}, schema)
    assert merged == {"cfg": {"source": "/usr/share/x", "recipe": "mnist_mlp", "epochs": 1}}
    assert defaults == {"cfg": {"source": "/usr/share/x", "recipe": "mnist_convnet"}}  # untouched
    two = {"properties": {"a": {}, "b": {}}}
    with pytest.raises(DeployError, match="not a parameter of this flow"):
        deploy.merge_params({}, {"epochs": 1}, two)


def test_no_server_is_one_clear_error():
    with pytest.raises(DeployError, match="PREFECT_API_URL is unset.*visionflow stack up"):
        deploy.check_server(None)
    with pytest.raises(DeployError, match="does not answer"):
        deploy.check_server("http://127.0.0.1:9/api")


def test_every_deployments_parameters_validate_against_its_flows_config(specs):
    """What the Prefect form would submit: a typo or a removed field fails here, not at 2 am."""
    import importlib
    import typing

    for spec in specs.values():
        path, function = spec.entrypoint.split(":")
        module = path.removesuffix(".py").replace("/", ".")
        flow = getattr(importlib.import_module(module), function)
        config_type = typing.get_type_hints(flow.fn)["cfg"]
        given = spec.parameters.get("cfg", {})
        # a required field left out is the form's to fill (train's data URL): a placeholder here
        missing = {k: "/placeholder" for k, f in config_type.model_fields.items() if f.is_required() and k not in given}
        config_type.model_validate({**given, **missing})  # raises on a typo, a bad value, a stale field
