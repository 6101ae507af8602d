"""Config models of the MNIST pipeline: ingest and the whole pipeline (the Prefect forms)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.config import Frozen

class MnistIngestConfig(Frozen):
    source: str = Field("download", description='Directory of MNIST-format IDX files (gzipped or '
                        'raw), or "download" to fetch MNIST with torchvision where the network allows')
    out: str | None = Field(None, description="Dataset root: a local directory or s3://bucket/prefix "
                            "(default: $VISIONFLOW_HOME/datasets)")
    dataset: Literal["auto", "mnist", "fashion-mnist"] = Field(
        "auto", description='Which classes the files hold; "auto" reads "fashion" in the source path')
    version: str = Field("v1", description="Dataset version directory; a committed version is immutable")
    shard_size: int = Field(10_000, ge=1, description="Samples per shard")


class MnistPipelineConfig(Frozen):
    source: str = Field("download", description=MnistIngestConfig.model_fields["source"].description)
    out: str | None = Field(None, description=MnistIngestConfig.model_fields["out"].description)
    recipe: Literal["mnist_convnet", "mnist_mlp"] = Field("mnist_convnet", description="Recipe to train")
    epochs: int | None = Field(None, ge=1, description="Epochs (default: the recipe's)")
    nproc: int | None = Field(None, ge=1, description="Training processes per node (default: one per GPU, "
                              "or one using every core on a CPU node)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap steps per epoch (smoke runs)")
    run_name: str | None = Field(None, description="Run name (default: {dataset}-{recipe})")
