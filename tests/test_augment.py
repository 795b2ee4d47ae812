from dataclasses import replace

import pytest
import torch

from lungseg.core.config import AugmentConfig, load
from lungseg.core.errors import ParamsError
from lungseg.training.augment import Augmenter

CPU = torch.device("cpu")
NOTHING = AugmentConfig(probability=1.0, rotate_degrees=0, scale=0, shift=0, brightness=0, contrast=0, gamma=0, noise=0,
                        blur=0, sharpen=0, border_probability=0, text_probability=0, opacity_probability=0)


def batch(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a bright frame and a dark 'lung' square, and that square as the mask."""
    images = torch.full((n, 1, size, size), 0.8)
    masks = torch.zeros((n, 1, size, size))
    images[..., 8:24, 8:24] = 0.2
    masks[..., 8:24, 8:24] = 1
    return images, masks


def test_same_seed_same_batch_other_seed_other_batch():
    images, masks = batch()
    first = Augmenter(AugmentConfig(), 0, CPU)(images, masks)
    again = Augmenter(AugmentConfig(), 0, CPU)(images, masks)
    other = Augmenter(AugmentConfig(), 1, CPU)(images, masks)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_outputs_stay_images_in_range_and_binary_masks():
    images, masks = batch(8)
    out_images, out_masks = Augmenter(replace(AugmentConfig(), probability=1.0), 3, CPU)(images, masks)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert out_images.min() >= 0 and out_images.max() <= 1
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_images, images)


def test_zero_ranges_and_zero_probability_change_nothing():
    images, masks = batch()
    for config in (NOTHING, replace(AugmentConfig(), probability=0.0)):
        out_images, out_masks = Augmenter(config, 0, CPU)(images, masks)
        torch.testing.assert_close(out_images, images, atol=1e-5, rtol=0)
        assert torch.equal(out_masks, masks)


def test_intensity_changes_leave_the_mask_alone():
    images, masks = batch()
    config = replace(NOTHING, brightness=0.2, contrast=0.3, gamma=0.3, noise=0.05)
    out_images, out_masks = Augmenter(config, 0, CPU)(images, masks)
    assert torch.equal(out_masks, masks) and not torch.equal(out_images, images)


@pytest.mark.parametrize("change", [{"rotate_degrees": 10}, {"scale": 0.1}, {"shift": 0.05}])
def test_geometry_moves_image_and_mask_together(change):
    images, masks = batch(16)
    out_images, out_masks = Augmenter(replace(NOTHING, **change), 0, CPU)(images, masks)
    assert not torch.equal(out_masks, masks)
    # the dark square and the mask still coincide: lung pixels are the dark ones
    inside = out_images[out_masks.bool()]
    assert inside.mean() < 0.35
    # small changes: the lung area stays within 30 % of the original (zoom 1.1 -> area 1.21, plus edge pixels)
    areas = out_masks.sum(dim=(1, 2, 3)) / masks.sum(dim=(1, 2, 3))
    assert ((areas > 0.7) & (areas < 1.3)).all()


def test_rotation_is_never_a_left_right_flip():
    images, masks = batch(32)
    images[..., 8:24, 8:12] = 0.0  # mark the left edge of the square
    out_images, _ = Augmenter(replace(NOTHING, rotate_degrees=10), 0, CPU)(images, masks)
    left, right = out_images[..., :, :16].mean(), out_images[..., :, 16:].mean()
    assert left < right  # the darker left side stays on the left


def test_config_rejects_out_of_range_values():
    params = {"augment": {"probability": 1.5, "scale": 1.0, "rotate_degrees": 90, "noise": -0.1}}
    with pytest.raises(ParamsError) as problem:
        load(params, "augment")
    message = str(problem.value)
    for key in ("augment.probability=1.5", "augment.scale=1.0", "augment.rotate_degrees=90", "augment.noise=-0.1"):
        assert key in message


# ----------------------------------------------------------------------------- site appearance

SITE_OPS = {"blur": {"blur": 1.5, "sharpen": 1.0}, "border": {"border_probability": 1.0, "border_width": 0.3},
            "text": {"text_probability": 1.0, "text_size": 0.2}, "opacity": {"opacity_probability": 1.0}}


def edge_batch(n: int = 16, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Left half 0.2, right half 0.8: one vertical edge; the mask is the left half."""
    images = torch.full((n, 1, size, size), 0.8)
    images[..., : size // 2] = 0.2
    masks = torch.zeros((n, 1, size, size))
    masks[..., : size // 2] = 1
    return images, masks


@pytest.mark.parametrize("op", SITE_OPS)
def test_site_ops_change_the_image_never_the_mask_and_repeat_with_the_seed(op):
    images, masks = edge_batch()
    config = replace(NOTHING, **SITE_OPS[op])
    out_images, out_masks = Augmenter(config, 5, CPU)(images, masks)
    again = Augmenter(config, 5, CPU)(images, masks)[0]
    assert torch.equal(out_masks, masks)
    assert not torch.equal(out_images, images)
    assert torch.equal(out_images, again)
    assert out_images.min() >= 0 and out_images.max() <= 1


@pytest.mark.parametrize("op", SITE_OPS)
def test_site_ops_at_probability_zero_change_nothing(op):
    images, masks = edge_batch()
    out_images, out_masks = Augmenter(replace(NOTHING, probability=0.0, **SITE_OPS[op]), 0, CPU)(images, masks)
    torch.testing.assert_close(out_images, images, atol=1e-5, rtol=0)  # the (identity) warp still resamples
    assert torch.equal(out_masks, masks)


def test_blur_softens_the_edge_and_keeps_flat_parts():
    images, masks = edge_batch()
    out, _ = Augmenter(replace(NOTHING, blur=2.0), 0, CPU)(images, masks)
    step = (out[..., 16] - out[..., 15]).mean(dim=(1, 2))  # the jump across the edge, per image
    assert (step <= 0.6 + 1e-6).all() and step.mean() < 0.5
    torch.testing.assert_close(out[..., :2], images[..., :2])  # far from the edge: unchanged
    assert out.min() >= 0.2 - 1e-6 and out.max() <= 0.8 + 1e-6  # blurring never overshoots


def test_sharpening_overshoots_at_the_edge():
    images, masks = edge_batch()
    out, _ = Augmenter(replace(NOTHING, blur=1.5, sharpen=3.0), 0, CPU)(images, masks)
    assert out.max() > 0.85 and out.min() < 0.15  # halos on both sides of the edge: an unsharp mask
    torch.testing.assert_close(out[..., :2], images[..., :2])


def test_collimation_fills_the_edges_with_one_dark_or_bright_value_and_keeps_the_centre():
    images, masks = batch(16, 40)
    out, _ = Augmenter(replace(NOTHING, border_probability=1.0, border_width=0.3), 0, CPU)(images, masks)
    torch.testing.assert_close(out[..., 12:28, 12:28], images[..., 12:28, 12:28], atol=1e-5, rtol=0)  # within 0.3 of no edge
    corners = out[:, 0, 0, 0]
    assert (((corners <= 0.1) | (corners >= 0.9))).all()
    assert (corners <= 0.1).any() and (corners >= 0.9).any()  # both kinds of band occur


def test_burned_in_marks_are_bright_and_small():
    images = torch.full((16, 1, 64, 64), 0.1)
    masks = torch.zeros_like(images)
    config = replace(NOTHING, text_probability=1.0, text_count=2, text_size=0.2)
    out, out_masks = Augmenter(config, 0, CPU)(images, masks)
    bright = (out > 0.5).float().mean(dim=(1, 2, 3))
    assert (bright > 0).all()  # every image got a mark
    assert (bright < 2 * 0.2 * 0.2 * 2).all()  # at most 2 marks, each at most 0.2 tall and 0.29 wide
    assert out.max() >= 0.85 and torch.equal(out_masks, masks)


def test_an_opacity_lightens_part_of_the_lung_and_only_near_it():
    images, masks = batch(16, 40)  # a 0.2 'lung' square in a 0.8 frame
    images[..., 4:36, 4:36] = 0.2  # dark all around the lung too, so any lightening shows
    config = replace(NOTHING, opacity_probability=1.0, opacity_size=0.2)
    out, out_masks = Augmenter(config, 0, CPU)(images, masks)
    lighter = out > images + 1e-4
    assert torch.equal(out_masks, masks) and lighter.flatten(1).any(1).all()  # every image, mask untouched
    centres = [torch.nonzero(image[0]).float().mean(0) for image in lighter]
    assert all(6 <= float(c) <= 33 for centre in centres for c in centre)  # centred on the lung (8..23) within a radius
    assert (lighter.flatten(1).float().mean(1) <= 3.15 * 0.2 ** 2 + 1e-6).all()  # at most a disc of radius 0.2
    assert out.max() <= 0.9 + 1e-6  # lightened toward a grey, never past it


def test_an_opacity_needs_a_lung():
    images, masks = batch(4)
    masks.zero_()
    out, _ = Augmenter(replace(NOTHING, opacity_probability=1.0), 0, CPU)(images, masks)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_site_config_rejects_out_of_range_values():
    params = {"augment": {"border_width": 0.5, "text_count": 0, "blur": -1, "text_probability": 2}}
    with pytest.raises(ParamsError) as problem:
        load(params, "augment")
    for key in ("augment.border_width=0.5", "augment.text_count=0", "augment.blur=-1", "augment.text_probability=2"):
        assert key in str(problem.value)
