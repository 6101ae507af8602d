"""The ImageNet recipes as tables of their papers' numbers, and their data paths through the
real engine on tiny shards of real photographs (workers decoding, or the device decoding)."""

from __future__ import annotations

import pytest
import torch

from tasks import catalog
from tasks.config import TrainConfig
from tasks.data import shards, storage
from tasks.imagenet import ilsvrc_sample, ingest
from tasks.imagenet.config import ImagenetIngestConfig
from tasks.imagenet.recipes import DAWNBENCH_PHASES, RESNET50, RESNET50_DAWNBENCH, VGG16
from tasks.train import engine
from tasks.train.engine import CHECKPOINT, Job, load_checkpoint
from tasks.train.recipe import resolve


def test_every_catalog_name_resolves_to_its_recipe():
    for name, ref in catalog.RECIPES.items():
        assert resolve(ref).name == name


def test_the_recipes_carry_their_papers_numbers():
    assert (VGG16.batch_size, VGG16.lr, VGG16.epochs, VGG16.optimizer.weight_decay) == (256, 1e-2, 74, 5e-4)
    assert (VGG16.schedule.kind, VGG16.schedule.gamma, VGG16.schedule.max_decays) == ("plateau", 0.1, 3)
    assert RESNET50.base_lr(1024) == pytest.approx(0.4)  # 0.1 × batch / 256
    assert (RESNET50.schedule.step_size, RESNET50.epochs) == (30, 90)
    # fast.ai's absolute LRs at their 16-machine batch sizes
    assert RESNET50_DAWNBENCH.base_lr(8192) == pytest.approx(1.88)
    assert [p.image_size for p in DAWNBENCH_PHASES] == [128, 128, 224, 224, 288]
    assert DAWNBENCH_PHASES[-1].rect_val and RESNET50_DAWNBENCH.optimizer.no_decay_bn_bias


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tree = ilsvrc_sample.make_tree(tmp_path_factory.mktemp("tree"), classes=3, train_per_class=8,
                                   val_per_class=2, odd=False, photos_per_class=1, val_layout="folder")
    root = str(tmp_path_factory.mktemp("shards"))
    ingest.ingest(tree.root, root, ImagenetIngestConfig(source=str(tree.root)))
    return shards.dataset_url(root, "imagenet", "v1")


@pytest.mark.parametrize("gpu_decode", [False, True])
def test_resnet50_trains_with_either_data_path(tiny, tmp_path, gpu_decode):
    cfg = TrainConfig(data=tiny, recipe="resnet50", epochs=1, batch_size=8, width=1 / 16, image_scale=0.25,
                      nproc=1, num_workers=1, gpu_decode=gpu_decode, run_name="r")
    job = Job(cfg, str(tmp_path), catalog.reference("resnet50"), ("a", "b", "c"))
    engine.run(job)
    state = load_checkpoint(storage.join(str(tmp_path), CHECKPOINT))
    assert state["global_step"] == 3  # 24 images, batch 8
    assert torch.isfinite(torch.tensor(state["history"][-1]["train/loss"]))
    assert state["history"][-1]["train/image_size"] == 56  # 224 × 0.25


def test_a_recipe_without_device_decoding_says_so(tiny, tmp_path):
    cfg = TrainConfig(data=tiny, recipe="vgg11", epochs=1, batch_size=8, width=1 / 16, image_scale=0.25,
                      nproc=1, num_workers=0, gpu_decode=True, run_name="v")
    with pytest.raises(ValueError, match="vgg11 has no device-side decoding"):
        engine.run(Job(cfg, str(tmp_path), catalog.reference("vgg11"), ("a", "b", "c")))
