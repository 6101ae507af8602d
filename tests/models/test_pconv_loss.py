"""The PConv loss: VGG16 weights handling, zero at the ground truth, each term and its weight."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.pconv_loss import PConvLoss, PConvLossWeights, VGG16PoolFeatures, gram


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    """A VGG16 ``features`` state dict (torchvision key layout) with fixed random weights."""
    torch.manual_seed(0)
    features = VGG16PoolFeatures(allow_random_weights=True).features
    return {f"features.{k}": v for k, v in features.state_dict().items()}


def inputs(size: int = 32):
    torch.manual_seed(1)
    target = torch.rand(2, 3, size, size)
    mask = torch.ones(2, 1, size, size)
    mask[:, :, 8:20, 10:24] = 0
    return target, mask


def test_refuses_to_run_on_random_vgg_weights_unless_asked():
    with pytest.raises(ValueError, match="need trained VGG16 weights.*allow_random_weights"):
        PConvLoss()
    PConvLoss(allow_random_weights=True)


def test_torchvision_vgg16_weights_load_from_a_file_and_give_its_pool_features(
        torchvision_vgg, tmp_path):
    theirs = torchvision_vgg("vgg16")
    path = tmp_path / "vgg16.pth"
    # what a torchvision weights file holds, less most of the 500 MB classifier
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith("classifier.0")}
    torch.save(state, path)
    ours = VGG16PoolFeatures(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        pools = ours(x)
        for pool, end in zip(pools, (5, 10, 17)):
            torch.testing.assert_close(pool, theirs.features[:end](x))
    assert [p.shape[1:] for p in pools] == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]


def test_weights_of_another_architecture_are_refused_with_the_reason(vgg_state):
    broken = {k: v for k, v in vgg_state.items() if k != "features.14.weight"}
    with pytest.raises(ValueError, match=r"(?s)state dict.*Missing key\(s\).*14\.weight"):
        VGG16PoolFeatures(broken)


def test_feature_network_is_frozen_and_stays_in_eval_mode(vgg_state):
    loss = PConvLoss(vgg_state).train()
    assert not loss.vgg.training
    assert not any(p.requires_grad for p in loss.parameters())


def test_zero_at_the_ground_truth_except_tv_which_needs_a_flat_image(vgg_state):
    loss = PConvLoss(vgg_state)
    target, mask = inputs()
    terms = loss(target.clone(), target, mask)
    assert terms["tv"] > 0
    assert all(terms[k] == 0 for k in ("valid", "hole", "perceptual", "style_out", "style_comp"))
    flat = torch.full_like(target, 0.3)
    assert all(v == 0 for v in loss(flat.clone(), flat, mask).values())


def test_an_error_in_the_hole_shows_in_hole_terms_only(vgg_state):
    loss = PConvLoss(vgg_state)
    target, mask = inputs()
    terms = loss(target + 0.5 * (1 - mask), target, mask)
    hole_fraction = 1 - mask.mean()
    torch.testing.assert_close(terms["hole"], 0.5 * hole_fraction)
    assert terms["valid"] == 0 and terms["style_out"] > 0 and terms["perceptual"] > 0
    # I_comp takes the ground truth outside the hole and this output inside it: so not == target
    assert terms["style_comp"] > 0


def test_an_error_outside_the_hole_leaves_the_composite_untouched(vgg_state):
    loss = PConvLoss(vgg_state)
    target, mask = inputs()
    terms = loss(target + 0.5 * mask, target, mask)
    torch.testing.assert_close(terms["valid"], 0.5 * mask.mean())
    assert terms["hole"] == 0 and terms["style_comp"] == 0 and terms["style_out"] > 0
    truth = loss(target.clone(), target, mask)
    torch.testing.assert_close(terms["tv"], truth["tv"])  # TV reads the composite only


def test_tv_counts_pairs_inside_the_one_pixel_dilation_of_the_hole(vgg_state):
    loss = PConvLoss(vgg_state)
    ramp = torch.arange(8.0).repeat(2, 3, 8, 1) / 10  # (2, 3, 8, 8), +0.1 per column
    mask = torch.ones(2, 1, 8, 8)
    mask[:, :, 1, 1] = 0  # dilated: rows 0-2, cols 0-2 -> 2 horizontal pairs in each of 3 rows
    terms = loss(ramp.clone(), ramp, mask)
    torch.testing.assert_close(terms["tv"], torch.tensor(2 * 3 * 6 * 0.1 / ramp.numel()))


def test_gram_matrix_is_normalised_by_c_h_w():
    f = torch.ones(1, 2, 2, 2)
    torch.testing.assert_close(gram(f), torch.full((1, 2, 2), 4 / 8))


def test_default_weights_are_the_papers():
    assert dataclasses.astuple(PConvLossWeights()) == (1.0, 6.0, 0.05, 120.0, 0.1)


@pytest.mark.parametrize("field, terms_of", [
    ("valid", ["valid"]), ("hole", ["hole"]), ("perceptual", ["perceptual"]),
    ("style", ["style_out", "style_comp"]), ("tv", ["tv"]),
])
def test_each_weight_scales_its_own_term(vgg_state, field, terms_of):
    target, mask = inputs()
    output = target + 0.3 * torch.randn_like(target)
    base = PConvLoss(vgg_state)(output, target, mask)
    bumped_weights = dataclasses.replace(PConvLossWeights(), **{field: getattr(
        PConvLossWeights(), field) + 1.0})
    bumped = PConvLoss(vgg_state, weights=bumped_weights)(output, target, mask)
    term = sum(base[name] for name in terms_of)
    assert term > 0
    torch.testing.assert_close(bumped["total"] - base["total"], term, rtol=1e-4, atol=1e-6)


def test_the_total_is_the_papers_weighted_sum_and_it_trains_the_output(vgg_state):
    target, mask = inputs()
    output = (target + 0.3 * torch.randn_like(target)).requires_grad_()
    t = PConvLoss(vgg_state)(output, target, mask)
    expected = (t["valid"] + 6 * t["hole"] + 0.05 * t["perceptual"]
                + 120 * (t["style_out"] + t["style_comp"]) + 0.1 * t["tv"])
    torch.testing.assert_close(t["total"], expected)
    t["total"].backward()
    assert output.grad.abs().sum() > 0


def test_a_width_scaled_vgg16_serves_with_the_widths_of_its_weights():
    import models

    narrow = models.build("vgg16", num_classes=10, width=0.25).state_dict()
    features = VGG16PoolFeatures(narrow)
    pools = features(torch.zeros(1, 3, 32, 32))
    assert [p.shape[1] for p in pools] == [16, 32, 64]
    assert torch.equal(features.features[0].weight, narrow["features.0.weight"])


def test_mask_normalised_l1_weighs_each_images_holes_alike_whatever_their_area(vgg_state):
    target = torch.rand(2, 3, 32, 32)
    mask = torch.ones(2, 1, 32, 32)
    mask[0, :, :4, :4] = 0  # 16 hole pixels
    mask[1, :, :16, :16] = 0  # 256
    output = target + 0.2 * (1 - mask) + 0.1 * mask  # off by 0.2 in every hole, 0.1 elsewhere
    size = PConvLoss(vgg_state)(output, target, mask)
    per_image = PConvLoss(vgg_state, l1_norm="mask")(output, target, mask)
    torch.testing.assert_close(per_image["hole"], torch.tensor(0.2))
    torch.testing.assert_close(per_image["valid"], torch.tensor(0.1))
    torch.testing.assert_close(size["hole"], 0.2 * (1 - mask).mean())  # the paper's: 0.2 × hole share
    for name in ("perceptual", "style_out", "style_comp", "tv"):
        torch.testing.assert_close(per_image[name], size[name])
    # a hole-free image adds 0 to the hole term instead of dividing by zero
    whole = PConvLoss(vgg_state, l1_norm="mask")(output[:1], target[:1], torch.ones(1, 1, 32, 32))
    assert whole["hole"] == 0 and torch.isfinite(whole["total"])


def test_an_unknown_l1_norm_is_refused():
    with pytest.raises(ValueError, match="l1_norm must be one of size, mask, got 'pixels'"):
        PConvLoss(allow_random_weights=True, l1_norm="pixels")
