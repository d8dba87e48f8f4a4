"""Image metrics for `compare`.

Always available (plain torch, `turbo_diffusion.harness.fidelity`, shared with the demo):

* `psnr`: peak signal-to-noise ratio of an image against the baseline image of the same prompt and seed.
* `ssim`: structural similarity (Wang et al. 2004) against that baseline image.

Optional, only when their weights can be loaded (from a local path, the local cache, or a download when the host
can be reached). When they cannot, the loader raises `MetricUnavailable` with a one-line reason and the metric is
reported as skipped: no number is ever made up.

* `load_lpips`: LPIPS (AlexNet, torchmetrics) against the baseline image.
* `load_clip_score`: CLIP score of an image against its prompt (transformers' CLIPModel; see its docstring).
* `load_fid`: Frechet Inception Distance (torchmetrics) of a method's image set against a reference set.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..harness.fidelity import to_tensor
from .spec import DEFAULT_CLIP_MODEL

_METRICS_EXTRA = "pip install 'turbo-diffusion[metrics]'"


class MetricUnavailable(Exception):
    """A metric cannot run here; the message says why in one line."""


def to_uint8(image: Image.Image) -> torch.Tensor:
    """An RGB image as a uint8 ``(3, H, W)`` tensor (the input CLIP score and FID expect)."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


# ---- optional metrics with learned weights -------------------------------------------------------------------


def load_lpips(device: torch.device | str = "cpu") -> Callable[[Image.Image, Image.Image], float]:
    """LPIPS (Zhang et al. 2018, AlexNet features with learned linear weights) through torchmetrics.

    Measures perceptual distance to the reference image. Range ``[0, ~1]``: lower is closer, 0 is identical.
    Needs torchvision and its ImageNet AlexNet weights (cached by torch or downloadable). Returns a function
    ``(image, reference) -> distance``; raises `MetricUnavailable` when it cannot run.
    """
    _require("torchmetrics", f"torchmetrics is not installed ({_METRICS_EXTRA})")
    _require("torchvision", "torchvision is not installed (LPIPS builds its AlexNet from it; this package does not "
                            "depend on torchvision, which can pull in a CUDA build of torch)")
    import torchvision

    weights = torchvision.models.AlexNet_Weights.DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if not os.path.exists(cached) and not _reachable(weights.url):
        raise MetricUnavailable(f"the AlexNet weights are not in {os.path.dirname(cached)} and "
                                f"{_host(weights.url)} cannot be reached")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    try:
        metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device).eval()
    except Exception as err:  # a failed download or a broken cache: skip, with the reason
        raise MetricUnavailable(f"LPIPS could not be loaded: {_one_line(err)}") from err

    @torch.no_grad()
    def distance(image: Image.Image, reference: Image.Image) -> float:
        x = to_tensor(image).float()[None].to(device)
        y = to_tensor(reference).float()[None].to(device)
        return float(metric(x, y))

    return distance


def load_clip_score(model: str = DEFAULT_CLIP_MODEL,
                    device: torch.device | str = "cpu") -> Callable[[Image.Image, str], float]:
    """CLIP score (Hessel et al. 2021): ``100 * max(cos(image embedding, text embedding), 0)``.

    Measures how well an image matches its prompt. Range ``[0, 100]``: higher is better. ``model`` is a local
    folder or a Hub id; a Hub id is taken from the local Hugging Face cache, else downloaded when huggingface.co
    can be reached. Returns ``(image, prompt) -> score``; raises `MetricUnavailable` when the model cannot be
    loaded. Prompts longer than the text encoder's context (77 tokens) are truncated.

    The formula is torchmetrics' ``CLIPScore``; it is computed here with transformers' ``CLIPModel`` because
    torchmetrics 1.9's ``CLIPScore`` fails with transformers 5 (``get_image_features`` now returns a model output,
    not a tensor).
    """
    from transformers import CLIPModel, CLIPProcessor

    def load(local_only: bool):
        return (CLIPModel.from_pretrained(model, local_files_only=local_only).eval(),
                CLIPProcessor.from_pretrained(model, local_files_only=local_only))

    try:
        clip, processor = load(local_only=True)
    except Exception as err:
        if os.path.isdir(model):
            raise MetricUnavailable(f"CLIP model folder {model!r} could not be loaded: {_one_line(err)}") from err
        if not _reachable("https://huggingface.co"):
            raise MetricUnavailable(f"CLIP model {model!r} is not in the local Hugging Face cache and huggingface.co "
                                    "cannot be reached; pass --clip-model with a local folder") from err
        try:
            clip, processor = load(local_only=False)
        except Exception as err2:
            raise MetricUnavailable(f"CLIP model {model!r} could not be loaded: {_one_line(err2)}") from err2
    clip = clip.to(device)
    max_length = clip.config.text_config.max_position_embeddings

    @torch.no_grad()
    def score(image: Image.Image, prompt: str) -> float:
        inputs = processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt", padding=True,
                           truncation=True, max_length=max_length)
        out = clip(**{k: v.to(device) for k, v in inputs.items()})
        cosine = F.cosine_similarity(out.image_embeds.double(), out.text_embeds.double()).item()
        return 100.0 * max(cosine, 0.0)

    return score


def load_fid(weights: str | None = None, feature_extractor: torch.nn.Module | None = None,
             device: torch.device | str = "cpu") -> Callable[..., dict[str, float]]:
    """Frechet Inception Distance (Heusel et al. 2017) through torchmetrics.

    Measures how far the distribution of a set of images is from a reference set, as the Frechet distance between
    Gaussians fitted to their InceptionV3 pool features. Range ``[0, inf)``: lower is closer. It is biased upwards
    for small sets, so compare FIDs only at equal image counts (the report states them); thousands of images are
    needed for stable values.

    Args:
        weights: path to torch-fidelity's InceptionV3 weights (``pt_inception-2015-12-05-6726825d.pth``);
            ``None``: torch-fidelity's cache or download.
        feature_extractor: a module mapping uint8 images ``(N, 3, H, W)`` to features ``(N, D)``, used instead of
            InceptionV3 (the result is then not the standard FID; the report names the extractor).
        device: where features are computed.

    Returns ``(reference_images, {name: images}) -> {name: distance}``, which reads the reference once; raises
    `MetricUnavailable` when it cannot run (also from the returned function, for fewer than 2 images a side).
    """
    _require("torchmetrics", f"torchmetrics is not installed ({_METRICS_EXTRA})")
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature_extractor is None:
        _require("torch_fidelity", "torch-fidelity is not installed (FID's InceptionV3 comes from it; it requires "
                                   "torchvision, which can pull in a CUDA build of torch)")
        if weights is not None and not os.path.isfile(weights):
            raise MetricUnavailable(f"--fid-weights {weights!r} is not a file")
        feature: Any = 2048
    else:
        feature = feature_extractor

    def new_metric():
        extra = {"feature_extractor_weights_path": weights} if weights else {}
        try:
            return FrechetInceptionDistance(feature=feature, normalize=False, reset_real_features=False,
                                            **extra).to(device)
        except Exception as err:  # a failed download or bad weights: skip, with the reason
            raise MetricUnavailable(f"FID's feature extractor could not be loaded: {_one_line(err)}; "
                                    "pass --fid-weights PATH") from err

    new_metric()  # fail now, before any image is read

    @torch.no_grad()
    def distances(reference: Iterable[Image.Image], image_sets: dict[str, Iterable[Image.Image]]) -> dict[str, float]:
        metric = new_metric()
        n_reference = 0
        for image in reference:  # one at a time: reference images may differ in size
            metric.update(to_uint8(image)[None].to(device), real=True)
            n_reference += 1
        results = {}
        for name, images in image_sets.items():
            metric.reset()  # forgets the generated side only (reset_real_features=False)
            n = 0
            for image in images:
                metric.update(to_uint8(image)[None].to(device), real=False)
                n += 1
            if min(n, n_reference) < 2:
                raise MetricUnavailable(f"FID needs at least 2 images on each side, got {n} for {name} "
                                        f"and {n_reference} reference")
            results[name] = float(metric.compute())
        return results

    return distances


def _require(module: str, reason: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MetricUnavailable(reason)


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _reachable(url: str) -> bool:
    """Whether ``url``'s host accepts a connection. ``False`` at once in offline mode (``HF_HUB_OFFLINE``): a
    failed download retries for most of a minute, so offline runs ask first."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    return _connectable(_host(url))


@cache
def _connectable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."
