"""Flow ``mnist-pipeline``: ingest → train → evaluate, end to end.

    visionflow pipeline mnist --source /usr/share/datasets/fashion-mnist --epochs 6
"""

from __future__ import annotations

from prefect import flow

from flows.evaluate import evaluate
from flows.mnist import mnist_ingest
from flows.train import train
from tasks.config import EvaluateConfig, TrainConfig
from tasks.mnist.config import MnistIngestConfig, MnistPipelineConfig


@flow(name="mnist-pipeline")
def mnist_pipeline(cfg: MnistPipelineConfig = MnistPipelineConfig()) -> dict:
    data = mnist_ingest(MnistIngestConfig(source=cfg.source, out=cfg.out))
    run_name = cfg.run_name or f"{data['dataset']}-{cfg.recipe}".replace("_", "-")
    trained = train(TrainConfig(recipe=cfg.recipe, data=data["url"], epochs=cfg.epochs, nproc=cfg.nproc,
                                max_steps_per_epoch=cfg.max_steps_per_epoch, run_name=run_name))
    scores = evaluate(EvaluateConfig(checkpoint_dir=trained["checkpoint_dir"]))
    return {"data": data, "train": trained, "evaluate": scores}
