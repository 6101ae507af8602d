"""A training job: the validated config resolved for one launch (recipe, classes, where the
checkpoints and the MLflow run live), and what the run derives from its recipe at its own
length, batch and image scale: phases, LR schedule, per-phase batch, sizes and data."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

import models
from tasks.config import TrainConfig
from tasks.train.recipe import Recipe, resolve
from tasks.train.schedules import Phase, Schedule, phase_at, scale_phases


@dataclass(frozen=True)
class Job:
    """A training config resolved for one launch: concrete defaults and side-effect targets."""

    config: TrainConfig
    checkpoint_dir: str
    recipe_ref: str  # "tasks.<experiment>.recipes:NAME", imported where the job runs
    classes: tuple[str, ...] = ()
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    variants: tuple[str, ...] = field(default=())  # dataset variants that exist beside config.data

    @cached_property
    def recipe(self) -> Recipe:
        return resolve(self.recipe_ref)

    @property
    def epochs(self) -> int:
        return self.config.epochs or self.recipe.epochs

    @property
    def batch_size(self) -> int:
        return self.config.batch_size or self.recipe.batch_size

    @property
    def stretch(self) -> float:
        """A run shorter (or longer) than the recipe's compresses its phases and schedule alike."""
        return self.epochs / self.recipe.epochs

    @cached_property
    def phases(self) -> tuple[Phase, ...]:
        """The recipe's phases at this run's length: start epochs scaled and rounded, and a phase
        the recipe runs (DAWNBench's one 288 px epoch) kept inside the run, if only for its last
        epoch."""
        kept: dict[float, Phase] = {}
        for phase in scale_phases(self.recipe.phases, self.stretch):
            start = min(phase.start_epoch, self.epochs - 1)
            kept[start] = replace(phase, start_epoch=start)  # the later phase wins an epoch
        return tuple(kept.values())

    @property
    def schedule(self) -> Schedule:
        """The recipe's LR schedule at this run's length; a piecewise one's knots rounded to
        whole epochs as the phases are, so an LR jump lands where the batch size changes."""
        schedule = self.recipe.schedule.scaled(self.stretch)
        if schedule.kind != "piecewise":
            return schedule
        by_epoch: dict[float, list[float]] = {}
        end = schedule.knots[-1][0]
        for epoch, factor in schedule.knots:
            rounded = float(math.floor(epoch + 0.5))
            if epoch < end and rounded > self.epochs - 1:  # kept inside the run, as its phase is
                rounded = float(self.epochs - 1)
            by_epoch.setdefault(rounded, []).append(factor)
        # where several knots land on one epoch: the value arriving there and the value leaving it
        knots = [(e, f) for e, fs in by_epoch.items() for f in ([fs[0], fs[-1]] if len(fs) > 1 else fs)]
        return replace(schedule, knots=tuple(knots))

    def phase(self, epoch: int) -> Phase:
        return phase_at(self.phases, epoch)

    def global_batch(self, phase: Phase) -> int:
        """A phase's batch, scaled by the run's batch over the recipe's (keeps the phase ratios)."""
        if phase.batch_size is None:
            return self.batch_size
        return max(1, round(phase.batch_size * self.batch_size / self.recipe.batch_size))

    def image_size(self, size: int | None) -> int | None:
        return None if size is None else max(8, round(size * self.config.image_scale / 8) * 8)

    def sized(self, phase: Phase) -> Phase:
        """The phase as this run trains it: sizes scaled, a variant kept only if it was ingested."""
        return replace(phase, image_size=self.image_size(phase.image_size),
                       val_size=self.image_size(phase.val_size),
                       variant=phase.variant if phase.variant in self.variants else None,
                       batch_size=self.global_batch(phase))

    def data_url(self, phase: Phase) -> str:
        return f"{self.config.data.rstrip('/')}-{phase.variant}" if phase.variant else self.config.data

    def model_kwargs(self) -> dict:
        return self.recipe.model_kwargs({"classes": list(self.classes)}, self.config.width)

    def build_model(self) -> torch.nn.Module:
        return models.build(self.recipe.model, **self.model_kwargs())

    def build_loss(self, device: torch.device):
        """The recipe's loss on ``device``, given the run's recipe options."""
        self.recipe.check_options(self.config.options)
        return self.recipe.loss(device, **self.config.options)

    def to_json(self) -> str:
        raw = {**self.__dict__, "config": self.config.model_dump()}
        raw.pop("recipe", None), raw.pop("phases", None)  # cached properties
        return json.dumps(raw)

    @classmethod
    def from_json(cls, text: str) -> "Job":
        raw = json.loads(text)
        return cls(**{**raw, "config": TrainConfig(**raw["config"]), "classes": tuple(raw["classes"]),
                      "variants": tuple(raw.get("variants", ()))})
