"""Config models of the ImageNet pipeline: ingest and the whole pipeline (the Prefect forms)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.config import Frozen

class ImagenetIngestConfig(Frozen):
    source: str = Field(description="ILSVRC-2012 root holding train/ and val/ (flat val needs "
                        "LOC_val_solution.csv or the devkit beside them), or any ImageFolder-shaped root")
    out: str | None = Field(None, description="Dataset root: a local directory or s3://bucket/prefix "
                            "(default: $VISIONFLOW_HOME/datasets)")
    dataset: str = Field("imagenet", pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$",
                         description="Dataset name under the root")
    version: str = Field("v1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$",
                         description="Version of the resized + center-cropped dataset; immutable once committed")
    size: int = Field(256, ge=8, description="Shorter side after resizing, and the center crop's side")
    variants: tuple[int, ...] = Field((), description="Extra shorter-side-only sizes (e.g. 160 352), "
                                      "each written as version {version}-short{N}")
    quality: int = Field(95, ge=1, le=100, description="JPEG quality of the re-encoded images (95: every "
                         "image within 37 dB PSNR of torchvision's pixels on the bench corpus; 90: 42 dB on "
                         "average, 35 dB at worst, for 30% smaller shards)")
    resample: Literal["bilinear", "bicubic", "lanczos"] = Field(
        "bilinear", description="Antialiased resize filter (bilinear is torchvision's Resize default)")
    draft: bool = Field(True, description="Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT "
                        "domain, never below 1.5× the target size")
    max_pixels: int = Field(89_478_485, ge=1, description="Images with more pixels are rejected as "
                            "decompression bombs (default: Pillow's limit)")
    shard_size: int = Field(1000, ge=1, description="Images per shard, and per Prefect task")
    task_runner: Literal["processes", "threads", "dask", "ray"] = Field(
        "threads", description="Where shard tasks run: local threads (Pillow decodes outside the GIL; "
        "no worker start-up) or processes, or a Dask / Ray cluster (needs prefect-dask / prefect-ray): "
        "the one at cluster_address, else one started on this machine for the run")
    workers: int | None = Field(None, ge=1, description="Local processes or threads, or the worker "
                                "processes of the Dask LocalCluster / CPUs of the local Ray started "
                                "without a cluster_address (default: CPU count)")
    cluster_address: str | None = Field(None, description="Address of a running cluster for "
                                        "task_runner dask (the scheduler's, tcp://host:8786) or ray (the "
                                        "head's host:6379 from one of its nodes, ray://host:10001 from "
                                        "elsewhere). Its workers need visionflow installed, the source and "
                                        "out paths, their own S3 credentials and this flow's Prefect API "
                                        "(PREFECT_API_URL; the CLI's temporary server is on 127.0.0.1)")
    experiment: str = Field("imagenet-ingest", description="MLflow experiment of the ingest summary")


ImagenetRecipe = Literal["vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19", "resnet50", "resnet50_dawnbench"]


class ImagenetPipelineConfig(Frozen):
    source: str = Field(description=ImagenetIngestConfig.model_fields["source"].description)
    out: str | None = Field(None, description=ImagenetIngestConfig.model_fields["out"].description)
    dataset: str = Field("imagenet", pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$", description="Dataset name under the root")
    variants: tuple[int, ...] = Field((), description="Shorter-side variants to ingest too (e.g. 160 352 for "
                                      "resnet50_dawnbench's phases; phases whose variant is missing read the 256² shards)")
    recipe: ImagenetRecipe = Field("vgg11", description="Recipe to train")
    epochs: int | None = Field(None, ge=1, description="Epochs (default: the recipe's; a shorter run "
                               "compresses the recipe's phases and LR schedule alike)")
    batch_size: int | None = Field(None, ge=1, description="Global batch size (default: the recipe's; "
                                   "phase batch sizes scale with it)")
    lr: float | None = Field(None, gt=0, description="Peak LR at the recipe's reference batch (default: the recipe's)")
    width: float = Field(1.0, gt=0, le=4, description="Channel width multiplier (e.g. 0.25 on a CPU)")
    image_scale: float = Field(1.0, gt=0, le=2, description="Multiplies every phase's image size (e.g. 0.5 on a CPU)")
    nproc: int | None = Field(None, ge=1, description="Training processes per node (default: one per GPU, "
                              "or one using every core on a CPU node)")
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers per process (default: chosen for the machine)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap steps per epoch (smoke runs)")
    run_name: str | None = Field(None, description="Run name (default: {dataset}-{recipe})")
