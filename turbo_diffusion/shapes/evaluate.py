"""Generate held-out scenes with a pipeline and judge them: the ``shapes`` model's accuracy in one call.

    scores = evaluate(pipe, eval_scenes(64))    # {"colour": 0.97, "shape": 0.81, ..., "prompt": 0.55}

Evaluation scenes come from odd seeds and training scenes from even ones (``train.train_scene_seed``), so a
prompt is never scored on the very scene it was trained on (the scene *space* is shared, as it should be: the
question is whether the model draws what a prompt says).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .judge import SceneVerdict, judge
from .scenes import Scene, render, scene_for_seed

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0


def eval_scene_seed(index: int, seed: int = 0) -> int:
    """Seed of evaluation scene ``index`` (odd; training scenes use even seeds)."""
    return (seed * 1_000_003 + index) * 2 + 1


def eval_scenes(count: int, seed: int = 0) -> list[Scene]:
    """The first ``count`` evaluation scenes."""
    return [scene_for_seed(eval_scene_seed(i, seed)) for i in range(count)]


def generate(pipe: Any, scenes: Sequence[Scene], seed: int = 0, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, batch: int = 16) -> list:
    """One image per scene, from its prompt. Scene ``i`` always gets the noise of generator seed ``seed + i``,
    whatever the batch size, so runs with different methods see the same starting latents."""
    import torch

    images = []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start:start + batch]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe([s.prompt for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=generators, height=chunk[0].size, width=chunk[0].size)
        images.extend(out.images)
    return images


def judge_all(images: Sequence, scenes: Sequence[Scene]) -> tuple[dict[str, float], list[SceneVerdict]]:
    """Mean per-object attribute accuracy (objects pooled over scenes), count and whole-prompt accuracy (per
    scene), and every verdict."""
    verdicts = [judge(im, s) for im, s in zip(images, scenes, strict=True)]
    objects = [o for v in verdicts for o in v.objects]
    scores = {a: sum(getattr(o, a) for o in objects) / len(objects) for a in ("colour", "shape", "position", "size")}
    scores["count"] = sum(v.count for v in verdicts) / len(verdicts)
    scores["prompt"] = sum(v.prompt_correct for v in verdicts) / len(verdicts)
    return scores, verdicts


def evaluate(pipe: Any, scenes: Sequence[Scene], seed: int = 0, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, batch: int = 16) -> dict[str, float]:
    """Generate every scene and return the judge's mean scores."""
    return judge_all(generate(pipe, scenes, seed, steps, guidance, batch), scenes)[0]


def encoded_renders(pipe: Any, scenes: Sequence[Scene], seed: int = 0) -> tuple[Any, Any]:
    """``(latents, noise)``: the scenes' renders encoded by the pipeline's VAE (latent mean, scaled as the UNet
    expects), ``(len(scenes), C, h, w)``, and Gaussian noise of that shape drawn from ``seed``."""
    import torch

    from .train import _to_tensor  # the pixels -> [-1, 1] transform the model was trained on

    pixels = torch.stack([_to_tensor(render(s)) for s in scenes])
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    return latents, torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))


def noised(pipe: Any, latents: Any, noise: Any, t: int) -> Any:
    """``sqrt(a_t) latents + sqrt(1 - a_t) noise`` with ``a_t`` from the scheduler's ``alphas_cumprod``.

    Not the scheduler's own ``add_noise``: a multistep scheduler's looks ``t`` up in the schedule of its last
    ``set_timesteps`` and, for a ``t`` not in it, silently noises at the last step instead, so after a generation
    it would feed the UNet other inputs than before one."""
    a = pipe.scheduler.alphas_cumprod[t].to(latents.dtype)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def noise_predictions(pipe: Any, scenes: Sequence[Scene], timesteps: Sequence[int] = (200, 500, 800),
                      seed: int = 0) -> list:
    """The UNet's one-step noise prediction on each scene's render, encoded and noised at each of ``timesteps``
    (`noised`): one ``(len(scenes), C, h, w)`` tensor per timestep. It isolates the UNet (no sampler, no drift
    over steps)."""
    import torch

    latents, noise = encoded_renders(pipe, scenes, seed)
    out = []
    with torch.no_grad():
        text = pipe.encode_prompt([s.prompt for s in scenes], "cpu", 1, False)[0]
        for t in timesteps:
            out.append(pipe.unet(noised(pipe, latents, noise, t), torch.full((len(scenes),), t),
                                 encoder_hidden_states=text).sample)
    return out


def prediction_deviation(baseline: Sequence, predictions: Sequence) -> float:
    """``|eps - eps_baseline| / |eps_baseline|`` over the batch, the worst over the timesteps."""
    return max(float((p - b).norm() / b.norm()) for p, b in zip(predictions, baseline, strict=True))
