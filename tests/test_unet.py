"""Tests for lungseg.model.unet: U-Net shapes, structure and input checks."""

from __future__ import annotations

import pytest
import torch

from lungseg.model.unet import Down, UNet, Up


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("base_width", [4, 8])
def test_output_is_one_logit_map_of_the_input_size(depth, base_width):
    torch.manual_seed(0)
    model = UNet(depth=depth, base_width=base_width).eval()
    x = torch.rand(2, 1, 16, 32)  # not square, divisible by 2**4
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1, 16, 32)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_output_channels_and_input_channels_are_configurable():
    model = UNet(in_channels=3, out_channels=2, depth=2, base_width=4).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 2, 8, 8)


def test_logits_are_not_squashed():
    """The network returns raw logits: some negative, and not confined to [0, 1]."""
    torch.manual_seed(0)
    model = UNet(depth=2, base_width=4).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 1, 16, 16))
    assert y.min() < 0


@pytest.mark.parametrize("depth, shape, factor", [(4, (24, 32), 16), (2, (16, 18), 4), (1, (7, 8), 2)])
def test_non_divisible_input_raises_naming_the_factor(depth, shape, factor):
    model = UNet(depth=depth, base_width=4).eval()
    with pytest.raises(ValueError, match=rf"divisible by {factor}\b"):
        model(torch.rand(1, 1, *shape))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_one_up_per_down_and_widths_double(depth):
    model = UNet(depth=depth, base_width=4)
    downs = [m for m in model.modules() if isinstance(m, Down)]
    ups = [m for m in model.modules() if isinstance(m, Up)]
    assert len(downs) == len(ups) == depth
    # encoder level i has 4 * 2**i channels; the deepest Up starts from the widest level
    assert [d.conv.block[0].out_channels for d in downs] == [4 * 2 ** (i + 1) for i in range(depth)]
    assert ups[0].up.in_channels == 4 * 2**depth
    assert ups[-1].conv.block[0].out_channels == 4
    # each decoder conv takes the upsampled features plus the skip: twice its output width
    for up in ups:
        assert up.conv.block[0].in_channels == 2 * up.conv.block[0].out_channels


def test_every_up_receives_the_skip_of_its_encoder_level():
    model = UNet(depth=3, base_width=4).eval()
    seen = []
    hooks = [up.register_forward_hook(lambda module, args, out: seen.append((args[0].shape, args[1].shape, out.shape)))
             for up in model.ups]
    with torch.no_grad():
        model(torch.rand(1, 1, 32, 32))
    for hook in hooks:
        hook.remove()
    # decoder from the bottom (4x4, 32 ch) up to full resolution (32x32, 4 ch)
    assert [tuple(s[2:]) for s, _, _ in seen] == [(4, 4), (8, 8), (16, 16)]
    assert [(skip[1], *skip[2:]) for _, skip, _ in seen] == [(16, 8, 8), (8, 16, 16), (4, 32, 32)]
    assert [tuple(out[1:]) for _, _, out in seen] == [(16, 8, 8), (8, 16, 16), (4, 32, 32)]


def test_up_concatenates_the_skip():
    up = Up(8, 4)
    x = torch.rand(1, 8, 4, 4)
    skip = torch.rand(1, 4, 8, 8)
    assert up(x, skip).shape == (1, 4, 8, 8)
    with pytest.raises(RuntimeError):
        up(x, torch.rand(1, 4, 6, 6))  # a skip of the wrong size cannot be concatenated


@pytest.mark.parametrize("kwargs", [{"depth": 0}, {"depth": -1}, {"base_width": 0}])
def test_invalid_depth_or_width_raises(kwargs):
    with pytest.raises(ValueError, match="depth >= 1"):
        UNet(**kwargs)


def test_trains_one_step():
    torch.manual_seed(0)
    model = UNet(depth=2, base_width=4)
    x = torch.rand(2, 1, 16, 16)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(x).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
