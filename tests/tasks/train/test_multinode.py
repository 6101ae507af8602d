"""Multi-node torchrun, proven: two agents (--nnodes 2, c10d rendezvous) train one job to the
same weights as one agent of the same world size — on 127.0.0.1, and on two network-namespace
hosts joined by a veth pair (a real network hop) where root can make them."""

import os
import shutil
import subprocess
import uuid

import pytest
import torch

from tasks import catalog
from tasks.config import TrainConfig
from tasks.data import shards, storage
from tasks.mnist import idx as mnist
from tasks.train.engine import CHECKPOINT, Job, load_checkpoint
from tasks.train.launch import launch, torchrun_command
from tasks.ops.processes import free_port


@pytest.fixture(scope="module")
def dataset(idx_dir, tmp_path_factory):
    url = shards.dataset_url(str(tmp_path_factory.mktemp("data")), "mnist", "v1")
    mnist.ingest(idx_dir, url, "mnist", "v1", shard_size=128)
    return url


def _job(dataset, ckpt, **overrides):
    cfg = TrainConfig(data=dataset, recipe="mnist_mlp", epochs=2, batch_size=40, num_workers=1,
                      run_name="multinode", device="cpu", **overrides)
    return Job(cfg, str(ckpt), catalog.reference(cfg.recipe), classes=tuple(str(i) for i in range(10)))


@pytest.fixture(scope="module")
def one_agent(dataset, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("one-agent")
    launch(_job(dataset, ckpt, nproc=2))
    return load_checkpoint(storage.join(str(ckpt), CHECKPOINT))


def _two_agents(job, tmp_path, prefixes=((), ()), envs=({}, {}), flags=((), ())) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(job.to_json())
    command = torchrun_command(job, job_file)
    agents = [subprocess.Popen([*prefix, *command[:3], *extra, *command[3:]], env={**os.environ, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for prefix, env, extra in zip(prefixes, envs, flags)]
    try:
        outputs = [agent.communicate(timeout=180)[0] for agent in agents]
    except subprocess.TimeoutExpired:
        for agent in agents:
            agent.kill()
        outputs = [agent.communicate()[0] for agent in agents]
        raise AssertionError("\n---\n".join(o[-3000:] for o in outputs)) from None
    for agent, output in zip(agents, outputs):
        assert agent.returncode == 0, output[-3000:]


def _assert_same_run(one, two):
    """Same data on the same ranks, same all-reduces: the same run. Not bit for bit: one agent's
    two ranks share the cores (one thread each), each of two agents uses both, and a matmul's
    float sums follow its thread count."""
    assert [h["train/loss"] for h in two["history"]] == pytest.approx([h["train/loss"] for h in one["history"]], rel=1e-5)
    assert all(torch.allclose(one["model"][k], two["model"][k], rtol=1e-4, atol=1e-6) for k in one["model"])


def test_two_agents_on_localhost_train_like_one(dataset, tmp_path, one_agent):
    ckpt = tmp_path / "ckpt"
    job = _job(dataset, ckpt, nproc=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}")
    assert "--rdzv-backend=c10d" in torchrun_command(job, tmp_path / "job.json")
    _two_agents(job, tmp_path)
    _assert_same_run(one_agent, load_checkpoint(storage.join(str(ckpt), CHECKPOINT)))


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair: 10.251.0.1 and 10.251.0.2."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    tag = uuid.uuid4().hex[:6]
    names = [f"vf{tag}a", f"vf{tag}b"]
    links = [f"vf{tag}0", f"vf{tag}1"]
    run = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True)  # noqa: E731
    try:
        for ns in names:
            run("netns", "add", ns)
        run("link", "add", links[0], "type", "veth", "peer", "name", links[1])
        for i, (ns, link) in enumerate(zip(names, links)):
            run("link", "set", link, "netns", ns)
            run("-n", ns, "addr", "add", f"10.251.0.{i + 1}/24", "dev", link)
            run("-n", ns, "link", "set", link, "up")
            run("-n", ns, "link", "set", "lo", "up")
        yield [(ns, link, f"10.251.0.{i + 1}") for i, (ns, link) in enumerate(zip(names, links))]
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_two_agents_across_a_veth_hop_train_like_one(dataset, tmp_path, one_agent, two_hosts):
    (ns_a, link_a, ip_a), (ns_b, link_b, ip_b) = two_hosts
    ckpt = tmp_path / "ckpt"
    job = _job(dataset, ckpt, nproc=1, nnodes=2, rdzv_endpoint=f"{ip_a}:29411")  # a port in a fresh namespace is free
    prefixes = (("ip", "netns", "exec", ns_a), ("ip", "netns", "exec", ns_b))
    envs = ({"GLOO_SOCKET_IFNAME": link_a}, {"GLOO_SOCKET_IFNAME": link_b})  # gloo's traffic over the veth
    # Both namespaces share this machine's host name: each agent is told its address, and the
    # first that it hosts the rendezvous store (torchrun decides that by the endpoint's name).
    flags = ((f"--local-addr={ip_a}", "--rdzv-conf=is_host=true"), (f"--local-addr={ip_b}",))
    _two_agents(job, tmp_path, prefixes, envs, flags)
    _assert_same_run(one_agent, load_checkpoint(storage.join(str(ckpt), CHECKPOINT)))


def test_nodes_starting_together_share_one_mlflow_run(dataset, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from tasks.track import tracking
    from tasks.train.launch import prepare

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrainConfig(data=dataset, run_name="together", nnodes=2, rdzv_endpoint="127.0.0.1:1",
                      checkpoint_dir=str(tmp_path / "ckpt"))
    prepare(cfg.model_copy(update={"run_name": "warm-up", "checkpoint_dir": str(tmp_path / "w")}), tmp_path, uri)
    with ThreadPoolExecutor(4) as pool:
        jobs = list(pool.map(lambda _: prepare(cfg, tmp_path, uri), range(4)))
    assert len({job.mlflow_run_id for job in jobs}) == 1
    client = tracking.client(uri)
    experiment = client.get_experiment_by_name("mnist")
    alive = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == "together"]
    assert [r.info.run_id for r in alive] == [jobs[0].mlflow_run_id]
