"""The 8-fold geometric self-ensemble: each transform undone exactly, the average of the aligned
outputs, and the refusals (non-square inputs, recipes without image outputs, two variants)."""

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from tasks.config import EvaluateConfig
from tasks.train.ensemble import TRANSFORMS, SelfEnsemble, dihedral, undo


def test_the_eight_transforms_are_distinct_and_each_is_undone():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    seen = [dihedral(x, k) for k in range(TRANSFORMS)]
    assert len({tuple(t.flatten().tolist()) for t in seen}) == TRANSFORMS
    for k, t in enumerate(seen):
        assert torch.equal(undo(t, k), x)


class TopLeftShift(nn.Module):
    """Not equivariant: copies each pixel from its upper-left neighbour (zeros on the edge)."""

    def forward(self, image, mask):
        return torch.nn.functional.pad(image * mask, (1, 0, 1, 0))[..., :-1, :-1]


def test_the_output_is_the_mean_of_the_eight_aligned_outputs():
    torch.manual_seed(0)
    image, mask = torch.rand(2, 3, 8, 8), (torch.rand(2, 1, 8, 8) > 0.3).float()
    model = TopLeftShift()
    expected = torch.stack([undo(model(dihedral(image, k), dihedral(mask, k)), k) for k in range(8)]).mean(0)
    torch.testing.assert_close(SelfEnsemble(model)(image, mask), expected)
    # a shift one way and its mirror images average to a blur: the result is not the plain output
    assert not torch.allclose(SelfEnsemble(model)(image, mask), model(image, mask))


def test_an_equivariant_model_is_left_as_it_is():
    image = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(SelfEnsemble(nn.Identity())(image), image)


def test_non_square_inputs_are_refused():
    with pytest.raises(ValueError, match=r"square \(B, C, H, W\) inputs, got \(1, 3, 8, 16\)"):
        SelfEnsemble(nn.Identity())(torch.rand(1, 3, 8, 16))


def test_untrained_and_self_ensemble_are_one_at_a_time():
    assert EvaluateConfig(checkpoint_dir="x", self_ensemble=True).variant == "self_ensemble"
    assert EvaluateConfig(checkpoint_dir="x").variant is None
    with pytest.raises(ValidationError, match="ask for one at a time"):
        EvaluateConfig(checkpoint_dir="x", untrained=True, self_ensemble=True)
