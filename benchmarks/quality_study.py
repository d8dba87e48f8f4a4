"""The quality study on the ``shapes`` model: does information degree beat ToMe at equal ratio?

    python benchmarks/quality_study.py --out outputs/quality                       # the full study (hours on a CPU)
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/quality_study.py --out outputs/quality  # 2 cores
    python benchmarks/quality_study.py --out outputs/quality-core --methods core --ratios 0.5 0.7 --seeds 0
    python benchmarks/quality_study.py --out outputs/quality-quick --methods quick --ratios 0.5 --max-prompts 64

One `turbo_diffusion.compare` run generates every held-out scene of the ``shapes`` prompt preset with every method
at every ratio (same seeds, same scheduler) and scores each image with PSNR/SSIM against the baseline and with the
judge (`turbo_diffusion.shapes.scoring.judge_scores`) against the scene's ground truth. This script then adds:

* paired bootstrap 95% intervals over prompts (seeds averaged within a prompt first) of each method's accuracy
  minus the baseline's and minus ToMe's (Turbo with ``alpha=0``) at the same ratio;
* a plot of accuracy and PSNR against ratio, one line per method;
* where merged tokens fall: over a few scenes, the share of merged finest-level tokens that lie on an object,
  against the share of all tokens that do (``inspect_plans`` and the scenes' object masks);
* KID to the renders of the scenes, in the feature space of a scene classifier trained on renders
  (`turbo_diffusion.shapes.features`; train it with ``benchmarks/train_scene_features.py``).

Images are kept per image in ``OUT``: a rerun with ``--max-prompts N`` reads the first N prompts of a run still
under way (or stopped), and the full command later generates only what is missing.

Everything goes to ``OUT/study.md`` and ``OUT/study.json`` beside compare's own report, grids and images.
The shapes model is a toy trained here on drawn scenes, not Stable Diffusion: the study says what Turbo does to
this model, which is evidence about, not proof of, what it does to SD.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

ACCURACY = ("colour", "shape", "position")
STUDY = (
    "turbo@{r}:alpha=0", "turbo@{r}:alpha=0.5", "turbo@{r}", "turbo@{r}:alpha=2", "turbo@{r}:alpha=4",
    "turbo@{r}:semantic=text,alpha=0.5", "turbo@{r}:semantic=text", "turbo@{r}:semantic=text,alpha=2",
    "turbo@{r}:semantic=text,alpha=4", "tome@{r}", "todo@{r}", "turbo@{r}:plan_every=3", "turbo@{r}:mode=kv",
    "turbo@{r}:merge_mlp=True", "turbo@{r}:max_downsample=2",
    "turbo@{r}:alpha=0,proportional_attn=True", "turbo@{r}:proportional_attn=True",
)
CORE = ("turbo@{r}:alpha=0", "turbo@{r}", "turbo@{r}:alpha=4", "turbo@{r}:semantic=text", "tome@{r}", "todo@{r}")
QUICK = ("turbo@{r}:alpha=0", "turbo@{r}", "turbo@{r}:semantic=text", "tome@{r}")
TEMPLATES = {"study": STUDY, "core": CORE, "quick": QUICK}
TOME = "turbo@{r}:alpha=0"  # ToMe's selection inside Turbo's engine: the fair "alpha = 0" ablation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--prompts", default="shapes", help="a shapes preset (shapes, shapes-quick)")
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--methods", choices=tuple(TEMPLATES), default="study",
                        help="study: every variant of QUALITY.md; core: ToMe, Turbo alpha 1 and 4, text, tomesd, ToDo")
    parser.add_argument("--location-scenes", type=int, default=16, help="scenes for where merged tokens fall")
    args = parser.parse_args()

    from turbo_diffusion.compare import compare
    from turbo_diffusion.harness.methods import parse_method
    from turbo_diffusion.shapes.scoring import judge_scores

    templates = TEMPLATES[args.methods]
    methods = ["baseline"] + [t.format(r=r) for r in args.ratios for t in templates]
    result = compare(args.model, args.prompts, seeds=args.seeds, methods=methods, out_dir=args.out,
                     max_prompts=args.max_prompts, metrics=(), scorers=[judge_scores], device="cpu",
                     log=print)
    if result is None:  # not the main process of a multi-process run: it wrote its share of the images
        return
    labels = {t.format(r=r): parse_method(t.format(r=r)).label for r in args.ratios for t in templates}
    images = [r.to_dict() for r in result.images]
    study = {
        "configuration": result.configuration,
        "images": len(images),
        "table": table(images, labels, args.ratios, templates),
        "location": merged_location(args.model, args.location_scenes, args.ratios[len(args.ratios) // 2]),
        "kid": kid_rows(images, ["baseline", *labels.values()], result.configuration["prompts"], Path(args.out)),
    }
    out = Path(args.out)
    (out / "study.json").write_text(json.dumps(study, indent=1))
    plot(study["table"], templates, out / "accuracy_vs_ratio.png")
    (out / "study.md").write_text(markdown(study, templates))
    print((out / "study.md").read_text())


def per_prompt(images: list[dict], method: str, metric: str) -> dict[int, float]:
    """Mean of ``metric`` per prompt (over its seeds) for one method; PSNR is capped at 60 dB (identical = inf)."""
    values: dict[int, list[float]] = defaultdict(list)
    for image in images:
        if image["method"] == method:
            value = (sum(image[a] for a in ACCURACY) / len(ACCURACY) if metric == "accuracy"
                     else min(float(image[metric]), 60.0))
            values[image["prompt_index"]].append(value)
    return {p: sum(v) / len(v) for p, v in values.items()}


def bootstrap_difference(a: dict[int, float], b: dict[int, float], resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the prompts both have, and its paired bootstrap 95% interval (percentiles)."""
    prompts = sorted(set(a) & set(b))
    diffs = np.array([a[p] - b[p] for p in prompts])
    rng = random.Random(seed)
    means = sorted(float(diffs[[rng.randrange(len(diffs)) for _ in diffs]].mean()) for _ in range(resamples))
    return float(diffs.mean()), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def table(images: list[dict], labels: dict[str, str], ratios: list[float], templates: tuple[str, ...]) -> list[dict]:
    base = per_prompt(images, "baseline", "accuracy")
    rows = [{"method": "baseline", "template": "baseline", "ratio": 0.0, **_means(images, "baseline")}]
    for r in ratios:
        tome = per_prompt(images, labels[TOME.format(r=r)], "accuracy") if TOME in templates else None
        for template in templates:
            label = labels[template.format(r=r)]
            acc = per_prompt(images, label, "accuracy")
            row = {"method": label, "template": template, "ratio": r, **_means(images, label),
                   "vs_baseline": bootstrap_difference(acc, base)}
            if tome is not None and template != TOME:
                row["vs_tome"] = bootstrap_difference(acc, tome)
            rows.append(row)
    return rows


def _means(images: list[dict], method: str) -> dict[str, float]:
    mine = [i for i in images if i["method"] == method]
    means = {m: float(np.mean([i[m] for i in mine])) for m in (*ACCURACY, "size", "count", "prompt_correct")}
    means["accuracy"] = float(np.mean(list(per_prompt(images, method, "accuracy").values())))
    if method != "baseline":
        means["psnr"] = float(np.mean(list(per_prompt(images, method, "psnr").values())))
        means["ssim"] = float(np.mean([i["ssim"] for i in mine]))
    means["seconds"] = float(np.median([i["seconds"] for i in mine if i["seconds"] is not None] or [float("nan")]))
    return means


def merged_location(model: str, scenes: int, ratio: float) -> list[dict]:
    """Share of merged finest-level tokens on objects, per selection rule, against the share of all tokens there."""
    import torch

    from turbo_diffusion import apply_turbo, inspect_plans, remove_turbo
    from turbo_diffusion.models import load_pipeline
    from turbo_diffusion.shapes.evaluate import eval_scenes
    from turbo_diffusion.shapes.scenes import object_masks

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    chosen = eval_scenes(scenes)
    rows = []
    for name, fields in (("ToMe (alpha=0)", {"alpha": 0.0}), ("Turbo alpha=1, attention", {}),
                         ("Turbo alpha=1, text", {"semantic": "text"}), ("Turbo alpha=4, attention", {"alpha": 4.0})):
        apply_turbo(pipe, ratio=ratio, **fields)
        on_object = total = object_tokens = all_tokens = 0
        for i, scene in enumerate(chosen):
            with inspect_plans(pipe) as records:
                pipe(scene.prompt, num_inference_steps=20, guidance_scale=5.0, height=scene.size, width=scene.size,
                     generator=torch.Generator().manual_seed(i))
            finest = max(r.grid[0] * r.grid[1] for r in records)
            for record in records:
                if record.grid[0] * record.grid[1] != finest or record.reused:
                    continue
                h, w = record.grid
                mask = object_masks(scene).any(0).reshape(h, scene.size // h, w, scene.size // w).any((1, 3))
                merged = record.merged[-1].numpy()  # the prompt-conditioned half of the CFG batch
                on_object += int((merged & mask).sum())
                total += int(merged.sum())
                object_tokens += int(mask.sum())
                all_tokens += mask.size
        remove_turbo(pipe)
        rows.append({"selection": name, "ratio": ratio, "merged_on_objects": on_object / max(total, 1),
                     "tokens_on_objects": object_tokens / max(all_tokens, 1), "scenes": scenes})
    return rows


def kid_rows(images: list[dict], methods: list[str], prompts: list[dict], out: Path,
             reference_scenes: int = 1000) -> list[dict]:
    """KID of each method's images against renders of ``reference_scenes`` other held-out scenes, in the feature
    space of the scene classifier trained on renders (`turbo_diffusion.shapes.features`): mean and spread over 50
    subsets of 100. The reference holds none of the prompts' scenes (a method's images would otherwise be paired
    with their own scenes' renders, and KID assumes independent sets). A first row, perfect renders of the prompts'
    own scenes, shows the floor; the feature network was trained with blur, so KID here measures what is drawn
    (colours, shapes, cells), not sharpness."""
    from PIL import Image

    from turbo_diffusion.shapes.evaluate import eval_scene_seed
    from turbo_diffusion.shapes.features import extract, kid, load_features
    from turbo_diffusion.shapes.scenes import render, scene_for_seed

    model = load_features()
    reference = extract(model, [render(scene_for_seed(eval_scene_seed(100_000 + i))) for i in range(reference_scenes)])
    used = sorted({i["prompt_index"] for i in images})
    sets = {"renders of the prompts' scenes": extract(model, [render(scene_for_seed(prompts[p]["scene_seed"]))
                                                             for p in used])}
    for method in methods:
        pictures = []
        for image in images:
            if image["method"] == method:
                with Image.open(out / image["path"]) as picture:
                    pictures.append(picture.convert("RGB"))
        sets[method] = extract(model, pictures)
    rows = []
    for name, features in sets.items():
        mean, spread = kid(features, reference)
        rows.append({"method": name, "images": len(features), "reference": len(reference), "kid": mean,
                     "spread": spread})
    return rows


def plot(rows: list[dict], templates: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(r for r in rows if r["method"] == "baseline")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for template in templates:
        mine = sorted((r for r in rows if r["template"] == template), key=lambda r: r["ratio"])
        name = template.replace("@{r}", "")
        left.plot([r["ratio"] for r in mine], [r["accuracy"] for r in mine], marker="o", label=name)
        right.plot([r["ratio"] for r in mine], [r["psnr"] for r in mine], marker="o", label=name)
    left.axhline(base["accuracy"], color="black", linestyle="--", label="baseline")
    left.set(xlabel="ratio", ylabel="attribute accuracy (colour, shape, position)", title="judge vs ground truth")
    right.set(xlabel="ratio", ylabel="PSNR to baseline (dB)", title="fidelity to the baseline image")
    left.legend(fontsize=7)
    fig.suptitle("shapes model (a toy trained here, not SD)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(study: dict, templates: tuple[str, ...]) -> str:
    def ci(value: tuple[float, float, float] | None) -> str:
        return "" if value is None else f"{value[0]:+.3f} [{value[1]:+.3f}, {value[2]:+.3f}]"

    lines = [f"{study['images']} images; configuration: `{json.dumps(study['configuration'])}`", "",
             "| method | colour | shape | position | accuracy | prompt | PSNR | SSIM | vs baseline [95% CI] | "
             "vs ToMe [95% CI] | s/img |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in study["table"]:
        lines.append(f"| `{r['method']}` | {r['colour']:.3f} | {r['shape']:.3f} | {r['position']:.3f} | "
                     f"{r['accuracy']:.3f} | {r['prompt_correct']:.3f} | {r.get('psnr', float('inf')):.1f} | "
                     f"{r.get('ssim', 1.0):.3f} | {ci(r.get('vs_baseline'))} | {ci(r.get('vs_tome'))} | "
                     f"{r['seconds']:.2f} |")
    lines += ["", "| selection | ratio | merged tokens on objects | all tokens on objects | scenes |",
              "|---|---|---|---|---|"]
    for r in study["location"]:
        lines.append(f"| {r['selection']} | {r['ratio']} | {r['merged_on_objects']:.3f} | "
                     f"{r['tokens_on_objects']:.3f} | {r['scenes']} |")
    if study.get("kid"):
        lines += ["", "| images | KID to renders of other scenes (spread over subsets) | images | reference |",
                  "|---|---|---|---|"]
        for r in study["kid"]:
            lines.append(f"| `{r['method']}` | {r['kid']:.3f} ({r['spread']:.3f}) | {r['images']} | "
                         f"{r['reference']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
