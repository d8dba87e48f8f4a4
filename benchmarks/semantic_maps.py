"""Does semantic value S single out the objects? On the ``shapes`` model, where the ground truth says which tokens
are objects.

    python benchmarks/semantic_maps.py            # about a minute on a CPU

On 16 held-out scenes' renders, noised as one short denoising run (t = 700, 500, 300: the later calls have the
text mass ``semantic="text"`` needs), at the finest level and ratio 0.5 with alpha 1:

1. Turbo's own maps (``inspect_plans``): the mean of S, and of the mutual redundancy R, on object tokens and on
   background tokens, for ``semantic="attention"`` and ``"text"`` (S is normalised to [0, 1] per image).
2. The attention each token receives in the first finest-level self-attention at t = 300, relative to the average
   token, by three definitions: Turbo's ``"attention"`` proxy (the attention map of the mean query), the exact
   column mean over all queries, and the column mean over 64 random queries.
"""

from __future__ import annotations

import json


def main() -> None:
    import numpy as np
    import torch

    from turbo_diffusion import apply_turbo, inspect_plans, remove_turbo
    from turbo_diffusion.models import load_pipeline
    from turbo_diffusion.shapes.evaluate import encoded_renders, eval_scenes, noised
    from turbo_diffusion.shapes.scenes import object_tokens

    pipe = load_pipeline("shapes")
    scenes = eval_scenes(16)
    latents, noise = encoded_renders(pipe, scenes)

    def noisy(i: int, t: int) -> torch.Tensor:
        return noised(pipe, latents[i:i + 1], noise[i:i + 1], t)

    result = {}
    for semantic in ("attention", "text"):
        apply_turbo(pipe, ratio=0.5, alpha=1.0, semantic=semantic)
        sums = {"S objects": [], "S background": [], "R objects": [], "R background": []}
        for i, scene in enumerate(scenes):
            with torch.no_grad():
                text = pipe.encode_prompt(scene.prompt, "cpu", 1, False)[0]
                with inspect_plans(pipe) as records:
                    for t in (700, 500, 300):
                        pipe.unet(noisy(i, t), torch.tensor([t]), encoder_hidden_states=text)
            finest = max(r.grid[0] * r.grid[1] for r in records)
            for r in records:
                if r.grid[0] * r.grid[1] != finest or r.step == 0:
                    continue
                mask = object_tokens(scene, r.grid)
                s, red = r.semantic[0].numpy(), r.redundancy[0].numpy()
                sums["S objects"].append(np.nanmean(s[mask]))
                sums["S background"].append(np.nanmean(s[~mask]))
                sums["R objects"].append(np.nanmean(red[mask]))
                sums["R background"].append(np.nanmean(red[~mask]))
        remove_turbo(pipe)
        result[f"semantic={semantic}"] = {k: float(np.mean(v)) for k, v in sums.items()}

    attn = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1  # the finest level's first layer
    inputs = {}
    handle = attn.register_forward_pre_hook(lambda m, args, kwargs: inputs.update(x=args[0] if args else
                                                                                 kwargs["hidden_states"]),
                                            with_kwargs=True)
    received = {"mean-query proxy": ([], []), "column mean, all queries": ([], []), "column mean, 64 queries": ([], [])}
    for i, scene in enumerate(scenes):
        with torch.no_grad():
            pipe.unet(noisy(i, 300), torch.tensor([300]),
                      encoder_hidden_states=pipe.encode_prompt(scene.prompt, "cpu", 1, False)[0])
            x = inputs["x"][0]
            n, heads = x.shape[0], attn.heads
            q = attn.to_q(x).view(n, heads, -1).transpose(0, 1)
            k = attn.to_k(x).view(n, heads, -1).transpose(0, 1)
            maps = torch.softmax(q @ k.transpose(1, 2) * attn.scale, -1)  # (heads, N, N)
            picked = torch.randperm(n, generator=torch.Generator().manual_seed(i))[:64]
            mean_query = attn.to_q(x.mean(0, keepdim=True)).view(1, heads, -1).transpose(0, 1)
            values = {"mean-query proxy": torch.softmax(mean_query @ k.transpose(1, 2) * attn.scale, -1).mean(0)[0],
                      "column mean, all queries": maps.mean((0, 1)),
                      "column mean, 64 queries": maps[:, picked].mean((0, 1))}
        mask = object_tokens(scene, (int(n ** 0.5),) * 2).reshape(-1)
        for name, v in values.items():
            v = v.numpy() / v.numpy().mean()
            received[name][0].append(v[mask].mean())
            received[name][1].append(v[~mask].mean())
    handle.remove()
    result["attention received (relative to the average token)"] = {
        name: {"objects": float(np.mean(o)), "background": float(np.mean(b))} for name, (o, b) in received.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
