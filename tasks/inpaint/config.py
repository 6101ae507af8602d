"""Config models of the inpainting flows: masks, and the whole pipeline (the Prefect forms)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.config import Frozen

NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]*$"


class MaskIngestConfig(Frozen):
    out: str | None = Field(None, description="Dataset root: a local directory or s3://bucket/prefix "
                            "(default: $VISIONFLOW_HOME/datasets); the set lands in "
                            "{out}/irregular-masks-{size}/seed{seed}-train{train}-test{test_per_bucket}")
    size: int = Field(512, ge=32, le=4096, description="Mask side in pixels (the paper: 512)")
    train: int = Field(2000, ge=0, description="Training masks, an equal share per hole-ratio bucket "
                       "(the paper used 55,116)")
    test_per_bucket: int = Field(100, ge=1, description="Test masks per bucket and border flag: six "
                                 "buckets × {border, no-border} (the paper used 1,000)")
    seed: int = Field(0, description="Seed: the same seed draws the same masks, in any process")
    import_folder: str | None = Field(None, description="Instead of drawing: a folder of mask images "
                                      "(NVIDIA's irregular mask dataset: white = hole) to import")
    import_split: str = Field("test", pattern=NAME, description="The split an imported folder becomes")
    shard_size: int = Field(1000, ge=1, description="Masks per shard")


class InpaintPipelineConfig(Frozen):
    images: str = Field(description="Photographs: an ImageFolder-shaped tree (any .jpg/.png below it) "
                        "or an image shard dataset (e.g. the ImageNet ingest's)")
    masks: str | None = Field(None, description="A mask dataset URL made by `visionflow ingest masks` "
                              "(default: draw one at --size with --train-masks and --test-per-bucket)")
    out: str | None = Field(None, description=MaskIngestConfig.model_fields["out"].description.split(";")[0])
    size: int = Field(128, description="Image and mask side, a multiple of 128 (the default is CPU-sized; "
                      "the paper: 512; 256 is the 7-layer network's own size)")
    dataset: str = Field("inpaint", pattern=NAME, description="Dataset name under the root ({dataset}-{size})")
    train_masks: int = Field(1200, ge=1, description="Training masks to draw when --masks is not given")
    test_per_bucket: int = Field(20, ge=1, description="Test masks per bucket and border flag to draw "
                                 "when --masks is not given")
    perceptual: str = Field("models:/imagenet-vgg16@latest", description="VGG16 of the perceptual and "
                            "style losses: a models:/ URI (a vgg16 the ImageNet pipeline registered), "
                            "a state-dict file (torchvision's vgg16-397923af.pth), or 'random' (smoke runs)")
    epochs: int | None = Field(6, ge=1, description="Epochs, the last ~1/11 of them fine-tuning (CPU-sized "
                               "default; the recipe's own is 10 + 1)")
    batch_size: int | None = Field(None, ge=1, description="Global batch size (default: the paper's 6)")
    # The paper's 2e-4 is the recipe's (`visionflow train --recipe pconv_unet`); the width-0.25 net
    # of a CPU run learns faster at 1e-3 (val PSNR 22.1 dB vs 19.5 after 200 steps, README).
    lr: float | None = Field(1e-3, gt=0, description="Stage-1 LR (default 1e-3 for the CPU-sized net; the "
                             "paper's, and the recipe's, is 2e-4; stage 2 is a quarter)")
    # The paper's size-averaged L1 lets a 50 % hole outweigh a 5 % one tenfold, and a CPU-sized run
    # then barely learns the small buckets: averaged per image, the r01-10 hole L1 after 2,000 steps
    # is 7.0 % instead of 8.2 % (README).
    l1_norm: Literal["size", "mask"] = Field("mask", description="What the valid and hole L1 terms "
                                             "average over: 'mask' (default: each image's own hole or "
                                             "valid pixels, MMagic's) or 'size' (the paper's: all C·H·W)")
    width: float = Field(0.25, gt=0, le=4, description="U-Net channel width (1: the paper's network; "
                         "the default 0.25 is CPU-sized)")
    nproc: int | None = Field(None, ge=1, description="Training processes per node (default: one per GPU, "
                              "or one using every core on a CPU node)")
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers per process (default: chosen for the machine)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap steps per epoch (smoke runs)")
    run_name: str | None = Field(None, pattern=NAME, description="Run name (default: {dataset}-{size}-pconv-unet)")
