"""infra/k8s: the cluster manifests load, ask for what a 16 × 8 GPU run needs, keep secrets out, and
call a training command that the CLI turns into a real TrainConfig and the engine.

No cluster is reached. Where kubectl is installed it reads every file (offline, `patch --local`) and
must see what PyYAML sees; the Prefect pool's submitter script runs against a stand-in kubectl.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tasks.catalog import RECIPES
from tasks.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml"))
IMAGE = "registry.example/visionflow:cuda"
NODES, GPUS = 16, 8
SECRET_NAME = re.compile(r"AWS_SECRET|PASSWORD|TOKEN|KEY")


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]


def one(name: str, kind: str) -> dict:
    found = [d for d in documents(name) if d["kind"] == kind]
    assert len(found) == 1, f"{name}: {len(found)} {kind}s"
    return found[0]


def rayjob() -> dict:
    return one("rayjob-imagenet.yaml", "RayJob")


def torchrun() -> tuple[dict, dict]:
    return one("torchrun-imagenet.yaml", "Service"), one("torchrun-imagenet.yaml", "Job")


def template() -> dict:
    return json.loads((K8S / "prefect-rayjob-job-template.json").read_text())


def pod_specs() -> dict[str, dict]:
    """Every pod that trains or drives training, by a readable name."""
    spec = rayjob()["spec"]["rayClusterSpec"]
    (workers,) = spec["workerGroupSpecs"]
    return {"ray head": spec["headGroupSpec"]["template"]["spec"],
            "ray worker": workers["template"]["spec"],
            "torchrun": torchrun()[1]["spec"]["template"]["spec"]}


def train_config(argv: list[str]) -> TrainConfig:
    """What `visionflow train …` becomes: every flag a TrainConfig field, bound by the CLI itself."""
    from flows import cli

    assert argv[:2] == ["visionflow", "train"], argv
    flags = [a.removeprefix("--").replace("-", "_") for a in argv[2:] if a.startswith("--")]
    assert [f for f in flags if f not in TrainConfig.model_fields] == []
    command, bound, unused = cli.app.parse_args(argv[1:])
    assert command is cli.train and not unused
    return bound.arguments["cfg"]


def gpus(container: dict) -> tuple[str, str]:
    resources = container["resources"]
    return str(resources["limits"]["nvidia.com/gpu"]), str(resources["requests"]["nvidia.com/gpu"])


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# -- every file --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MANIFESTS)
def test_every_manifest_loads_into_the_visionflow_namespace(name):
    docs = documents(name)
    assert docs
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], name
        assert doc["metadata"]["namespace"] == "visionflow", (name, doc["kind"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("name", MANIFESTS)
def test_kubectl_reads_each_manifest_as_pyyaml_does(name):
    """YAML 1.1 against 1.2, anchors, quoting: what kubectl would send is what these tests check.
    One document at a time: `kubectl patch --local` mixes up the objects of a multi-document file."""
    text = (K8S / name).read_text().replace("${VISIONFLOW_IMAGE}", IMAGE)
    for chunk in re.split(r"^---\s*$", text, flags=re.M):
        done = subprocess.run(["kubectl", "patch", "--local", "-f", "-", "--type", "merge", "-p", "{}", "-o", "yaml"],
                              input=chunk, capture_output=True, text=True, env={**os.environ, "KUBECONFIG": os.devnull})
        assert done.returncode == 0, done.stderr
        assert yaml.safe_load(done.stdout) == yaml.safe_load(chunk)


def test_the_image_is_the_one_placeholder_envsubst_fills():
    """`envsubst '$VISIONFLOW_IMAGE'` (README) and submit-rayjob.sh's sed replace exactly this; no other
    `$` may be left for Kubernetes' own `$(VAR)` expansion to surprise anyone."""
    for name in MANIFESTS:
        assert "$" not in json.dumps(documents(name)).replace("${VISIONFLOW_IMAGE}", ""), name
    for where, pod in pod_specs().items():
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["image"] == "${VISIONFLOW_IMAGE}", where


# -- the RayJob --------------------------------------------------------------------------------------

def test_the_rayjob_has_16_worker_pods_of_8_gpus_and_an_elastic_range():
    spec = rayjob()["spec"]
    cluster = spec["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == NODES
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] == NODES
    assert cluster["enableInTreeAutoscaling"] is True  # what min/maxReplicas mean anything to
    (worker,) = group["template"]["spec"]["containers"]
    assert gpus(worker) == (str(GPUS), str(GPUS))
    head = cluster["headGroupSpec"]
    assert "nvidia.com/gpu" not in str(head["template"]["spec"]["containers"][0]["resources"])
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training worker is placed on the head
    assert spec["shutdownAfterJobFinishes"] is True


def test_the_rayjob_entrypoint_is_a_ray_train_run_of_a_catalog_recipe():
    spec = rayjob()["spec"]
    cfg = train_config(shlex.split(spec["entrypoint"]))
    assert cfg.recipe in RECIPES and cfg.recipe == "resnet50_dawnbench"
    assert (cfg.launcher, cfg.ray_address, cfg.device) == ("ray", "auto", "cuda")
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    # one Ray Train worker per GPU of the worker pods: nproc × nnodes = replicas × GPUs per pod
    assert cfg.nproc * cfg.nnodes == group["replicas"] * int(gpus(worker)[0]) == 128
    assert (cfg.max_restarts, cfg.checkpoint_every_steps) == (3, 500)
    assert cfg.data.startswith("s3://") and cfg.checkpoint_dir.startswith("s3://")


def test_visionflow_is_the_clis_entry_point():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["visionflow"] == "flows.cli:main"


# -- the torchrun Job --------------------------------------------------------------------------------

def test_the_torchrun_job_is_16_indexed_pods_of_8_gpus_behind_a_headless_service():
    service, job = torchrun()
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == NODES
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert gpus(container) == (str(GPUS), str(GPUS))
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]  # pod i: <job>-i.<service>
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_the_torchrun_rendezvous_is_pod_0_behind_the_service_and_resolves_to_the_engine():
    from tasks.train.job import Job
    from tasks.train.launch import torchrun_command

    service, job = torchrun()
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    cfg = train_config(container["command"] + container["args"])
    assert cfg.recipe in RECIPES
    assert (cfg.launcher, cfg.nproc, cfg.nnodes, cfg.max_restarts) == ("torchrun", GPUS, NODES, 3)
    host, port = cfg.rdzv_endpoint.rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    (wait,) = pod["initContainers"]
    assert f"getent hosts {host};" in wait["command"][-1]

    cmd = torchrun_command(Job(cfg, cfg.checkpoint_dir, RECIPES[cfg.recipe]), Path("job.json"))
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nproc-per-node=8", "--nnodes=16", "--max-restarts=3", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={cfg.rdzv_endpoint}"} <= set(cmd)
    assert cmd[-4:] == ["-m", "tasks.train.engine", "--job", "job.json"]


def test_both_launchers_train_the_same_run():
    """A run started under one launcher resumes under the other (launch.RESUMABLE_CHANGES)."""
    ray = train_config(shlex.split(rayjob()["spec"]["entrypoint"]))
    (container,) = torchrun()[1]["spec"]["template"]["spec"]["containers"]
    torch = train_config(container["command"] + container["args"])
    differ = {k for k, v in ray.model_dump().items() if v != getattr(torch, k)}
    assert differ == {"launcher", "ray_address", "rdzv_endpoint"}


# -- what every training pod gets ------------------------------------------------------------------

@pytest.mark.parametrize("where", ["ray head", "ray worker", "torchrun"])
def test_dev_shm_is_memory_backed(where):
    pod = pod_specs()[where]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("where", ["ray head", "ray worker", "torchrun"])
def test_nccl_mlflow_and_s3_come_from_the_environment(where):
    for container in pod_specs()[where]["containers"]:
        env = env_of(container)
        assert env["NCCL_DEBUG"] == "WARN"
        assert env["NCCL_SOCKET_IFNAME"] and env["NCCL_IB_DISABLE"] in ("0", "1")
        assert env["MLFLOW_TRACKING_URI"].startswith("http")
        assert {"secretRef": {"name": "visionflow-s3"}} in container["envFrom"]


@pytest.mark.parametrize("where", ["ray worker", "torchrun"])
def test_gpu_pods_land_on_gpu_nodes(where):
    pod = pod_specs()[where]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


# -- no secret inline ------------------------------------------------------------------------------

AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|A3T[A-Z0-9])[A-Z0-9]{16}\b")
AWS_SECRET = re.compile(r"(?i)aws_secret_access_key\W{1,4}[A-Za-z0-9/+=]{30,}|\b[A-Za-z0-9/+=]{40}\b")


def inline_secrets(doc) -> list[str]:
    """Env entries whose name says secret but whose value is written out, and Secret objects."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("kind") == "Secret":
                found.append(f"{path}: a Secret object")
            for key, value in node.items():
                if key == "env" and isinstance(value, list):
                    for entry in value:
                        if SECRET_NAME.search(entry["name"]) and "secretKeyRef" not in entry.get("valueFrom", {}):
                            found.append(f"{path}.env.{entry['name']}")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(doc, "")
    return found


def test_inline_secret_detection_can_fail():
    bad = {"spec": {"containers": [{"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"},
                                            {"name": "PREFECT_API_KEY", "valueFrom": {"configMapKeyRef": {}}},
                                            {"name": "NCCL_DEBUG", "value": "WARN"}]}]}}
    assert inline_secrets(bad) == [".spec.containers[0].env.AWS_SECRET_ACCESS_KEY",
                                   ".spec.containers[0].env.PREFECT_API_KEY"]
    assert inline_secrets([{"kind": "Secret", "stringData": {}}]) == ["[0]: a Secret object"]
    assert AWS_KEY_ID.search("id AKIAIOSFODNN7EXAMPLE") and AWS_SECRET.search(
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


def test_no_secret_is_written_into_any_file():
    for path in sorted(K8S.iterdir()):
        text = path.read_text()
        docs = [json.loads(text)] if path.suffix == ".json" else (
            [d for d in yaml.safe_load_all(text) if d] if path.suffix == ".yaml" else [])
        assert inline_secrets(docs) == [], path.name
        assert not AWS_KEY_ID.search(text) and not AWS_SECRET.search(text), path.name
    # the one secret env entry the manifests name explicitly is a reference, optional for a server without keys
    (key,) = [e for e in pod_specs()["ray head"]["containers"][0]["env"] if e["name"] == "PREFECT_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "visionflow-prefect", "key": "PREFECT_API_KEY",
                                                "optional": True}


# -- the Prefect work pool that submits the RayJob --------------------------------------------------

# What prefect-kubernetes' worker requires of a job manifest (prefect_kubernetes.worker.
# _get_base_job_manifest): it creates a batch/v1 Job and nothing else, which is why the pool's job is
# a pod that submits the RayJob rather than the RayJob itself.
WORKER_REQUIRES = {("apiVersion",): "batch/v1", ("kind",): "Job",
                   ("spec", "template", "spec", "parallelism"): 1, ("spec", "template", "spec", "completions"): 1,
                   ("spec", "template", "spec", "restartPolicy"): "Never",
                   ("spec", "template", "spec", "containers", 0, "name"): "prefect-job"}


def test_the_pool_template_is_a_job_the_kubernetes_worker_accepts():
    manifest = template()["job_configuration"]["job_manifest"]
    for path, value in WORKER_REQUIRES.items():
        node = manifest
        for part in path:
            node = node[part]
        assert node == value, path


def test_the_pool_template_renders_a_pod_that_runs_the_submitter():
    from prefect.utilities.templating import apply_values, find_placeholders

    tpl = template()
    variables = tpl["variables"]["properties"]
    config = tpl["job_configuration"]
    used = {p.name for p in find_placeholders(config)}
    assert used <= set(variables), used - set(variables)
    values = {k: v["default"] for k, v in variables.items() if "default" in v} | {"image": IMAGE}
    pod = apply_values(config, values)["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] + container["args"] == ["/bin/sh", "/etc/visionflow/submit-rayjob.sh"]
    assert env_of(container)["VISIONFLOW_IMAGE"] == IMAGE
    assert env_of(container)["RAYJOB_FILE"] == "/etc/visionflow/rayjob.yaml"
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount["mountPath"] == "/etc/visionflow" and volume["configMap"]["name"] == "visionflow-rayjob"
    assert pod["serviceAccountName"] == one("rayjob-submitter-rbac.yaml", "ServiceAccount")["metadata"]["name"]
    fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert fields == {"NAMESPACE": "metadata.namespace",
                      "JOB_NAME": "metadata.labels['batch.kubernetes.io/job-name']",
                      "JOB_UID": "metadata.labels['batch.kubernetes.io/controller-uid']"}
    assert "nvidia.com/gpu" not in json.dumps(pod)  # the submitter waits; the RayJob's pods hold the GPUs


def test_the_submitter_may_create_and_read_rayjobs_only():
    role = one("rayjob-submitter-rbac.yaml", "Role")
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                              "verbs": ["get", "list", "watch", "create", "patch"]}]
    binding = one("rayjob-submitter-rbac.yaml", "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one("rayjob-submitter-rbac.yaml", "ServiceAccount")["metadata"]["name"]


# submit-rayjob.sh against a stand-in kubectl: `patch --local` applies the JSON merge patch (RFC 7386)
# itself or, with REAL_KUBECTL set, runs the real one; `apply` keeps what it was sent; `get` answers
# the RayJob states listed in states.txt, one per call.
FAKE_KUBECTL = """#!{python}
import json, os, subprocess, sys
import yaml
args, out = sys.argv[1:], os.environ["FAKE_DIR"]
if args[:2] == ["patch", "--local"]:
    if os.environ.get("REAL_KUBECTL"):
        env = {{**os.environ, "KUBECONFIG": os.devnull}}
        sys.exit(subprocess.run([os.environ["REAL_KUBECTL"], *args], env=env).returncode)
    def merge(target, patch):
        if not isinstance(patch, dict):
            return patch
        target = dict(target) if isinstance(target, dict) else {{}}
        for key, value in patch.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = merge(target.get(key), value)
        return target
    doc = merge(yaml.safe_load(sys.stdin), json.loads(args[args.index("-p") + 1]))
    print(yaml.safe_dump(doc))
elif "apply" in args:
    open(os.path.join(out, "applied.yaml"), "w").write(sys.stdin.read())
    open(os.path.join(out, "apply-args.txt"), "w").write(" ".join(args))
elif "get" in args:
    states = open(os.path.join(out, "states.txt")).read().split()
    open(os.path.join(out, "states.txt"), "w").write(" ".join(states[1:]))
    if states[0] == "unreadable":
        sys.exit(1)
    print(states[0], end="")
else:
    sys.exit(f"unexpected kubectl {{args}}")
"""
FLOW_RUN_ID = "0b9f5c1e-8d3a-4c1b-9a7e-2f6d4e8b1c3a"


def submit(tmp_path: Path, states: list[str], real_kubectl: str | None = None, **env) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable))
    kubectl.chmod(0o755)
    (tmp_path / "states.txt").write_text(" ".join(states))
    environ = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path), "POLL_SECONDS": "0",
               "PREFECT__FLOW_RUN_ID": FLOW_RUN_ID, "PREFECT_API_URL": "http://prefect.visionflow.svc:4200/api",
               "VISIONFLOW_IMAGE": IMAGE, "NAMESPACE": "team-a", "JOB_NAME": "shiny-otter-x7k2p",
               "JOB_UID": "6c1d2e3f-0000-4000-8000-00000000abcd", "RAYJOB_FILE": str(K8S / "rayjob-imagenet.yaml"),
               **({"REAL_KUBECTL": real_kubectl} if real_kubectl else {}), **env}
    environ = {k: v for k, v in environ.items() if v is not None}
    return subprocess.run(["sh", str(K8S / "submit-rayjob.sh")], env=environ, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("patcher", ["merge patch", "kubectl"])
def test_the_submitter_applies_this_flow_runs_rayjob_with_the_flow_run_as_its_driver(tmp_path, patcher):
    real = None
    if patcher == "kubectl":
        real = shutil.which("kubectl")
        if real is None:
            pytest.skip("kubectl is not installed")
    done = submit(tmp_path, ["Initializing/", "unreadable", "Running/RUNNING", "Complete/SUCCEEDED"], real)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == f"RayJob vf-{FLOW_RUN_ID}: Complete/SUCCEEDED"
    assert (tmp_path / "apply-args.txt").read_text() == "-n team-a apply -f -"
    applied = yaml.safe_load((tmp_path / "applied.yaml").read_text())

    meta = applied["metadata"]
    assert meta["name"] == f"vf-{FLOW_RUN_ID}" and meta["namespace"] == "team-a"
    assert len(meta["name"]) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", meta["name"])  # KubeRay's limits
    assert meta["labels"]["prefect.io/flow-run-id"] == FLOW_RUN_ID
    assert meta["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "Job", "name": "shiny-otter-x7k2p",
                                        "uid": "6c1d2e3f-0000-4000-8000-00000000abcd"}]
    assert shlex.split(applied["spec"]["entrypoint"]) == [
        "PREFECT_API_URL=http://prefect.visionflow.svc:4200/api", "prefect", "flow-run", "execute", FLOW_RUN_ID]
    # the cluster is the manifest's, with the pool's image
    original = rayjob()
    assert applied["spec"]["rayClusterSpec"] == json.loads(
        json.dumps(original["spec"]["rayClusterSpec"]).replace("${VISIONFLOW_IMAGE}", IMAGE))
    assert {k: v for k, v in applied["spec"].items() if k != "entrypoint"} == {
        k: v for k, v in original["spec"].items() if k not in ("entrypoint", "rayClusterSpec")} | {
        "rayClusterSpec": applied["spec"]["rayClusterSpec"]}


@pytest.mark.parametrize("states", [["Running/RUNNING", "Complete/FAILED"], ["Failed/"],
                                    ["unreadable"] * 10])
def test_the_submitter_fails_when_the_ray_job_does(tmp_path, states):
    done = submit(tmp_path, states)
    assert done.returncode == 1, done.stdout + done.stderr


def test_the_submitter_needs_the_pools_image(tmp_path):
    done = submit(tmp_path, ["Complete/SUCCEEDED"], VISIONFLOW_IMAGE=None)
    assert done.returncode != 0 and "set the work pool's image job variable" in done.stderr
    assert not (tmp_path / "applied.yaml").exists()
