import numpy as np
import pytest
import torch

from lungseg.core.errors import ParamsError
from lungseg.core.runtime import (
    autocast_dtype,
    cpu_has_fast_bf16,
    forward_in_batches,
    images_to_tensor,
    masks_to_tensor,
    memory_format,
    prepare_model,
    resolve_device,
    should_compile,
)
from lungseg.model.unet import UNet


def test_auto_and_cpu_resolve_to_an_available_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected


def test_asking_for_missing_cuda_names_the_setting_and_what_to_use_instead(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ParamsError) as caught:  # a user error: stages and the CLI exit 2 with it, no traceback
        resolve_device("cuda")
    assert str(caught.value) == ("train.device, infer.device or --device: device 'cuda' was asked for but PyTorch sees "
                                 "no CUDA GPU; use one of ['auto', 'cpu'] (auto picks the best one here)")
    with pytest.raises(ParamsError, match=r"^train\.device: device 'cuda:1' was asked for but PyTorch sees no CUDA GPU"):
        resolve_device("cuda:1", setting="train.device")


def test_asking_for_missing_mps_lists_the_devices_usable_here(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ParamsError, match=r"^infer\.device: device 'mps' .*Apple MPS is not available; "
                                          r"use one of \['auto', 'cpu', 'cuda'\]"):
        resolve_device("mps", setting="infer.device")


def test_an_unknown_device_lists_the_choices():
    with pytest.raises(ParamsError, match=r"--device: unknown device 'tpu'; use one of \['auto', 'cpu', 'cuda', 'mps'\]"):
        resolve_device("tpu", setting="--device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resolves_where_there_is_a_gpu():
    assert resolve_device("cuda").type == "cuda"


def test_precision_choice():
    cpu = torch.device("cpu")
    # auto: bf16 only where the CPU has native bf16 units (AMX / AVX512-BF16), else fp32
    assert autocast_dtype(cpu, "auto") is (torch.bfloat16 if cpu_has_fast_bf16() else None)
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16


def test_uint8_arrays_become_scaled_float_tensors_with_a_channel():
    images = np.array([[[0, 255], [51, 102]]], np.uint8)
    tensor = images_to_tensor(images, torch.device("cpu"))
    assert tensor.shape == (1, 1, 2, 2) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor[0, 0].numpy(), [[0.0, 1.0], [0.2, 0.4]], rtol=1e-6)
    assert masks_to_tensor(np.ones((1, 2, 2), np.uint8), torch.device("cpu")).sum() == 4


def test_batched_forward_matches_one_big_batch():
    torch.manual_seed(0)
    model = UNet(depth=2, base_width=4).eval()
    images = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        whole = model(images)
    np.testing.assert_allclose(forward_in_batches(model, images, batch_size=2).numpy(), whole.numpy(), atol=1e-5)


def test_bf16_autocast_runs_on_cpu_and_stays_close_to_fp32():
    torch.manual_seed(0)
    model = UNet(depth=2, base_width=4).eval()
    images = torch.rand(2, 1, 16, 16)
    fp32 = forward_in_batches(model, images, 2)
    bf16 = forward_in_batches(model, images, 2, torch.bfloat16)
    assert bf16.dtype == torch.float32  # results come back in fp32 whatever ran inside
    assert (torch.sigmoid(fp32) - torch.sigmoid(bf16)).abs().max() < 0.05


def test_auto_precision_on_cuda_is_bf16_when_the_card_supports_it():
    cuda = torch.device("cuda")  # a device object needs no GPU; only the decision is checked
    expected = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    assert autocast_dtype(cuda, "auto") is expected
    assert autocast_dtype(cuda, "fp32") is None


def test_compile_is_automatic_on_cuda_only():
    assert should_compile(torch.device("cuda"), "auto")
    assert not should_compile(torch.device("cpu"), "auto")
    assert should_compile(torch.device("cpu"), "always")
    assert not should_compile(torch.device("cuda"), "never")


def test_channels_last_on_cuda_and_bf16_only():
    assert memory_format(torch.device("cuda"), None) == torch.channels_last
    assert memory_format(torch.device("cpu"), torch.bfloat16) == torch.channels_last
    assert memory_format(torch.device("cpu"), None) == torch.contiguous_format  # measured slower in fp32 on CPU


def test_prepared_model_and_tensors_take_the_layout_asked_for():
    model = prepare_model(UNet(depth=2, base_width=4), torch.device("cpu"), torch.channels_last)
    weight = model.stem.block[3].weight  # 4 in, 4 out: the two layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    images = images_to_tensor(np.zeros((2, 16, 16), np.uint8), torch.device("cpu"), torch.channels_last)
    assert model(images).shape == (2, 1, 16, 16)
