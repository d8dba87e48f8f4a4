"""How far apart the two ways of installing Turbo draw: `apply_turbo` (its UNet hook gives the processor the
timestep, so the random destinations move from step to step) and the bare `set_attn_processor(TurboProcessor(...))`
(no timestep: the same destinations at every step). The `shapes` model, the README's prompt, seed 0, 20 steps,
guidance 5, ratio 0.5; PSNR between the two routes' images and of each to the unmerged image.

    python benchmarks/bare_route.py
"""

from __future__ import annotations

import sys

import torch

from turbo_diffusion import TurboProcessor, apply_turbo, remove_turbo
from turbo_diffusion.harness.fidelity import psnr
from turbo_diffusion.models import load_pipeline

PROMPT = "a large red circle at the top left and a small blue square at the bottom right, on a striped gray background"


def main() -> int:
    pipe = load_pipeline("shapes")
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe(PROMPT, num_inference_steps=20, guidance_scale=5.0, height=128, width=128,
                    generator=torch.Generator().manual_seed(0)).images[0]

    unmerged = generate()
    apply_turbo(pipe, ratio=0.5)
    hooked = generate()
    remove_turbo(pipe)
    pipe.unet.set_attn_processor(TurboProcessor(ratio=0.5))
    bare = generate()
    remove_turbo(pipe)
    print(f"apply_turbo vs bare processor: {psnr(hooked, bare):.1f} dB; to the unmerged image: apply_turbo "
          f"{psnr(hooked, unmerged):.1f} dB, bare {psnr(bare, unmerged):.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
