import pytest
import torch
import torch.nn.functional as F

from turbo_diffusion import TurboProcessor
from turbo_diffusion.kernels import attention, attention_with_text_mass, resolve_backend, xformers_available


def test_explicit_cross_attention_matches_sdpa_and_gives_content_mass():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 10, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    content = torch.tensor([False, True, True, True, False, False])
    out, mass = attention_with_text_mass(q, k, v, content, scale=4**-0.5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    probs = torch.softmax(q @ k.transpose(-1, -2) / 2, dim=-1)
    expected = probs[..., content].sum(-1).mean(1)
    torch.testing.assert_close(mass, expected / expected.amax(-1, keepdim=True))


def test_sdpa_backend_is_torch_sdpa():
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4)
    torch.testing.assert_close(attention(q, k, v, backend="sdpa"), F.scaled_dot_product_attention(q, k, v))


def test_auto_backend_is_sdpa_on_cpu_and_xformers_refuses_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    with pytest.raises(RuntimeError, match="CUDA only"):
        resolve_backend("xformers", torch.device("cpu"))


@pytest.mark.skipif(xformers_available(), reason="xformers is installed here")
def test_xformers_backend_without_xformers_says_how_to_install():
    with pytest.raises(ImportError, match=r"turbo-diffusion\[xformers\]"):
        TurboProcessor(backend="xformers")
