"""Flows ``imagenet-ingest``: an ILSVRC-2012 tree → resized JPEG WebDataset shards (local or S3),
and ``imagenet-pipeline``: ingest → train a recipe → evaluate.

    visionflow pipeline imagenet --source /data/ILSVRC2012 --recipe resnet50_dawnbench --variants 160 --variants 352
    visionflow ingest imagenet --source /data/ILSVRC2012 --out s3://bucket/datasets
    visionflow ingest imagenet --source DIR --variants 160 --variants 352 --task-runner processes --workers 8

The shard plan is fanned out to one Prefect task per shard on the configured task runner (local
threads by default: libjpeg-turbo, torch and Pillow decode, resize and encode outside the GIL, so
they use every core without the ~1.6 s per spawned process of importing Prefect); a re-run keeps
every committed shard. Large task inputs (the file list, shard plans, results) are passed in
``quote()``: Prefect would otherwise walk every element of them looking for upstream futures,
2.3 s of one core for a 10,000-image ingest, and there are none in them.

On a cluster (``--task-runner dask|ray --cluster-address ADDR``) the shard tasks run on its
workers, which need visionflow installed, the source and dataset root at the same paths or URLs
(with their own S3 credentials: none are sent) and a route to this flow's Prefect API.
"""

from __future__ import annotations

import importlib
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

from prefect import flow
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from tasks.imagenet import ingest as imagenet
from tasks.data import imaging, storage
from tasks.track import tracking
from tasks.config import EvaluateConfig, TrainConfig, resolve_home
from tasks.imagenet.config import ImagenetIngestConfig, ImagenetPipelineConfig

ARTIFACT_EVERY_S = 2.0
CLUSTER_RUNNERS = {"dask": ("prefect_dask", "DaskTaskRunner"), "ray": ("prefect_ray", "RayTaskRunner")}
_listeners: ContextVar[tuple[Callable[[int, int], None], ...]] = ContextVar("imagenet_progress", default=())


@flow(name="imagenet-pipeline")
def imagenet_pipeline(cfg: ImagenetPipelineConfig) -> dict:
    """Ingest (a re-run keeps committed shards) → train (a re-run resumes) → evaluate."""
    from flows.evaluate import evaluate
    from flows.train import train

    data = imagenet_ingest(ImagenetIngestConfig(source=cfg.source, out=cfg.out, dataset=cfg.dataset,
                                                variants=cfg.variants))
    url = data["urls"][0]
    run_name = cfg.run_name or f"{cfg.dataset}-{cfg.recipe}".replace("_", "-")
    trained = train(TrainConfig(recipe=cfg.recipe, data=url, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                lr=cfg.lr, width=cfg.width, image_scale=cfg.image_scale, nproc=cfg.nproc,
                                num_workers=cfg.num_workers, max_steps_per_epoch=cfg.max_steps_per_epoch,
                                run_name=run_name))
    scores = evaluate(EvaluateConfig(checkpoint_dir=trained["checkpoint_dir"]))
    return {"data": {"url": url, "samples": data["samples"], "rejects": data["rejects"]},
            "train": trained, "evaluate": scores}


@flow(name="imagenet-ingest")
def imagenet_ingest(cfg: ImagenetIngestConfig) -> dict:
    home = resolve_home(os.environ)
    root = cfg.out or str(home / "datasets")
    storage.check_reachable(root)
    source = imagenet.scan_task(cfg.source)
    targets = imagenet.targets(root, cfg)
    imagenet.check_targets(source, targets)
    specs = imagenet.plan_chunks(source, cfg.shard_size)
    start = time.perf_counter()
    results = write_shards(cfg, source, targets, specs)
    seconds = time.perf_counter() - start
    manifests = imagenet.commit_manifests_task(quote(source), targets, quote(specs), quote(results), cfg.dataset)
    summary = imagenet.summarize(manifests, [t.url for t in targets], results, seconds)
    create_table_artifact(summary.table(), key="imagenet-ingest-summary",
                          description=f"Ingest of {cfg.source} into {', '.join(summary.urls)}")
    uri = tracking.tracking_uri(home, os.environ)
    run_id = imagenet.log_summary_task(quote(summary), cfg, quote(manifests[0]), uri, home)
    return {"urls": summary.urls, "images": summary.images, "rejects": summary.rejects,
            "samples": {split: s["samples"] for split, s in manifests[0]["splits"].items()},
            "table": summary.table(), "images_per_s": summary.images_per_s, "mlflow_run_id": run_id}


def write_shards(cfg: ImagenetIngestConfig, source: imagenet.Source, targets: list[imagenet.Target],
                 specs: list) -> list[imagenet.ChunkResult]:
    """One task per shard on the configured runner; progress as each one finishes."""
    total = sum(len(spec.inputs) for spec in specs)
    artifact = create_progress_artifact(0.0, key="imagenet-ingest-progress",
                                        description=f"{total} images in {len(specs)} shards")
    done, last = 0, time.monotonic()
    results: dict[str, imagenet.ChunkResult] = {}
    with _shared_api(cfg), imaging.one_torch_thread(), task_runner(cfg) as runner:
        futures = {runner.submit(imagenet.write_chunk_task, {
            "images": source.images, "wnids": _quote(source.wnids), "chunk_targets": targets,
            "spec": _quote(spec)}): spec for spec in specs}
        for future in as_completed(list(futures)):
            spec = futures[future]
            results[spec.name] = future.result()
            done += len(spec.inputs)
            for listener in _listeners.get():
                listener(done, total)
            if time.monotonic() - last >= ARTIFACT_EVERY_S or done == total:
                update_progress_artifact(artifact, 100.0 * done / max(total, 1))
                last = time.monotonic()
    return [results[spec.name] for spec in specs]


def task_runner(cfg: ImagenetIngestConfig):
    if cfg.cluster_address and cfg.task_runner not in CLUSTER_RUNNERS:
        raise imagenet.ImagenetError(f"cluster_address is for task_runner={' or '.join(CLUSTER_RUNNERS)}, "
                                     f"not {cfg.task_runner}")
    workers = cfg.workers or os.cpu_count() or 1
    if cfg.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    module, name = CLUSTER_RUNNERS[cfg.task_runner]
    try:
        runner = getattr(importlib.import_module(module), name)
    except ImportError:
        package = module.replace("_", "-")
        raise imagenet.ImagenetError(f"task_runner={cfg.task_runner} needs the {package} package "
                                     f"(pip install {package})") from None
    if cfg.cluster_address:
        return runner(address=cfg.cluster_address)
    if cfg.task_runner == "dask":  # a LocalCluster for this flow run: one image at a time per process
        return runner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    return runner(init_kwargs={"num_cpus": workers})  # a local Ray for this flow run


class _quote(quote):
    """``quote()`` that survives pickling to a Dask or Ray worker. Prefect's is a tuple whose
    ``__new__`` wraps its argument, and unpickling calls ``cls.__new__(cls, tuple(self))``: the
    task would get ``(value,)``. (The process pool unwraps quotes before it pickles.)"""

    __slots__ = ()

    def __getnewargs__(self):
        return (self.unwrap(),)


@contextmanager
def _shared_api(cfg: ImagenetIngestConfig):
    """Point worker processes (a pool's, Dask's, Ray's) at this flow's API. In Prefect's ephemeral
    mode no API URL is set, and each worker would start (and wait ~15 s for) a temporary server
    of its own, recording its task runs there. Dask and Ray get it in the settings Prefect sends
    with each task. Threads share this process's client; rebuilding the settings would cost
    them ~0.15 s."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    context = FlowRunContext.get()
    if cfg.task_runner == "threads" or PREFECT_API_URL.value() or context is None:
        yield
        return
    with temporary_settings({PREFECT_API_URL: str(context.client.api_url)}):
        yield


@contextmanager
def progress(listener: Callable[[int, int], None]):
    """Call ``listener(images done, images total)`` as shards finish in flows run inside."""
    token = _listeners.set(_listeners.get() + (listener,))
    try:
        yield
    finally:
        _listeners.reset(token)


@contextmanager
def progress_bar():
    """A terminal progress bar for the CLI, fed by the flow's progress."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        job = bar.add_task("ingest", total=None)
        with progress(lambda done, total: bar.update(job, completed=done, total=total)):
            yield


def summary_lines(result: dict) -> list[str]:
    width = max(len(row["what"]) for row in result["table"])
    lines = [f"  dataset     {url}" for url in result["urls"]]
    lines += [f"  {row['what']:<{width}}  {row['value']:>12}" for row in result["table"]]
    lines.append(f"  MLflow run  {result['mlflow_run_id']}")
    return lines
