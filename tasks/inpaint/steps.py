"""The inpainting pipeline's Prefect tasks: thin wrappers over the tested core functions of
``mask_sets``, ``images``, ``perceptual`` and ``latency`` (kept apart from them so that the
training processes, which import the recipe, never import Prefect)."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.errors import retry_unless_bad_input
from tasks.inpaint import images, latency, mask_sets, perceptual

RETRY = dict(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)


def _shard_logger():
    logger = get_run_logger()
    return lambda record, written: logger.info("%s %s (%d samples)", "wrote" if written else "kept committed",
                                               record.name, record.samples)


@task(name="generate-masks", **RETRY)
def generate_masks(out_url: str, size: int, train: int, test_per_bucket: int, seed: int, shard_size: int) -> dict:
    return mask_sets.generate(out_url, size=size, train=train, test_per_bucket=test_per_bucket, seed=seed,
                              shard_size=shard_size)


@task(name="import-masks", **RETRY)
def import_masks(folder: str, out_url: str, size: int, split: str, shard_size: int) -> dict:
    return mask_sets.import_folder(folder, out_url, size=size, split=split, shard_size=shard_size)


@task(name="prepare-inpaint-images", **RETRY)
def prepare_images(source: str, masks_url: str, out_url: str, size: int) -> dict:
    return images.prepare(source, masks_url, out_url, size=size, on_shard=_shard_logger())


@task(name="resolve-perceptual", **RETRY)
def resolve_perceptual(ref: str, tracking_uri: str, cache_dir: str) -> str:
    return perceptual.resolve(ref, tracking_uri, cache_dir)


@task(name="inpaint-latency", **RETRY)
def measure_latency(checkpoint_dir: str, size: int = 512, runs: int = 5) -> dict:
    import torch

    from tasks.train.evaluation import load_trained, log_to_run

    job, state = load_trained(checkpoint_dir)
    model = job.build_model()
    model.load_state_dict(state["model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seconds = latency.seconds_per_image(model, size, runs, device)
    metrics = {f"test/latency_s_{size}": seconds}
    if job.mlflow_run_id:
        log_to_run(job.tracking_uri, job.mlflow_run_id, metrics, {})
    get_run_logger().info("inference %.3f s per %d² image on %s (batch 1, fp32, eager)", seconds, size, device.type)
    return {**metrics, "device": device.type}
