"""The quality study on the ``shapes`` model: does information degree beat ToMe at equal ratio?

    python benchmarks/quality_study.py --out outputs/quality                       # the full study (hours on a CPU)
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/quality_study.py --out outputs/quality  # 2 cores
    python benchmarks/quality_study.py --out outputs/quality-core --methods core --ratios 0.5 0.7 --seeds 0
    python benchmarks/quality_study.py --out outputs/quality-quick --methods quick --ratios 0.5 --max-prompts 64

One `turbo_diffusion.compare` run generates every held-out scene of the ``shapes`` prompt preset with every method
at every ratio (same seeds, same scheduler) and scores each image with PSNR/SSIM against the baseline and with the
judge (`turbo_diffusion.shapes.scoring.judge_scores`) against the scene's ground truth. This script then adds:

* paired bootstrap 95% intervals over prompts (seeds averaged within a prompt first) of each method's accuracy
  minus the baseline's and minus ToMe's (Turbo with ``alpha=0``) at the same ratio, and of its PSNR to the
  baseline minus ToMe's;
* per method, its difference to ToMe pooled over the ratios (one comparison per method, with a Bonferroni
  interval besides the 95% one, for the question the study asks);
* a plot of accuracy and PSNR against ratio, one line per method, and a grid of a few prompts' images;
* where merged tokens fall: on the renders of a few scenes (noised, so the ground truth is exact), the share of
  merged finest-level tokens that lie on an object, against the share of all tokens that do (``inspect_plans``
  and the scenes' object masks), and a picture of them (``OUT/merged_tokens.png``);
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
GRID = ("turbo@{r}:alpha=0", "turbo@{r}", "turbo@{r}:semantic=text", "tome@{r}", "todo@{r}",
        "turbo@{r}:proportional_attn=True", "turbo@{r}:mode=kv")  # the columns of study_grid.png after baseline


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
    parser.add_argument("--location-scenes", type=int, default=200, help="scenes for where merged tokens fall")
    parser.add_argument("--grid-prompts", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5],
                        help="prompt indices shown in OUT/study_grid.png (seed 0, the middle ratio)")
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
        "pooled": pooled_rows(images, labels, args.ratios, templates),
        "location": merged_location(args.model, args.location_scenes, args.ratios[len(args.ratios) // 2],
                                    picture=Path(args.out) / "merged_tokens.png"),
        "kid": kid_rows(images, ["baseline", *labels.values()], result.configuration["prompts"], Path(args.out)),
    }
    out = Path(args.out)
    (out / "study.json").write_text(json.dumps(study, indent=1))
    plot(study["table"], templates, out / "accuracy_vs_ratio.png")
    middle = args.ratios[len(args.ratios) // 2]
    shown = ["baseline", *(labels[t.format(r=middle)] for t in GRID if t in templates)]
    method_grid(images, shown, args.grid_prompts, out, out / "study_grid.png")
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


def pooled_rows(images: list[dict], labels: dict[str, str], ratios: list[float], templates: tuple[str, ...],
                resamples: int = 20000) -> list[dict]:
    """One comparison per method instead of one per ratio: each prompt's accuracy minus ToMe's at the same ratio,
    averaged over the ratios, with its paired bootstrap 95% interval over prompts and the interval at the
    Bonferroni level 1 - 0.05/k for the k methods compared (so that a difference called out among k is not
    one that chance alone produces about once in 20 tables)."""
    if TOME not in templates:
        return []
    others = [t for t in templates if t != TOME]
    level = 0.05 / len(others)
    tome = {r: per_prompt(images, labels[TOME.format(r=r)], "accuracy") for r in ratios}
    rows = []
    for template in others:
        per_ratio = []
        for r in ratios:
            acc = per_prompt(images, labels[template.format(r=r)], "accuracy")
            per_ratio.append({p: acc[p] - tome[r][p] for p in set(acc) & set(tome[r])})
        prompts = sorted(set.intersection(*(set(d) for d in per_ratio)))
        diffs = np.array([np.mean([d[p] for d in per_ratio]) for p in prompts])
        draws = np.random.default_rng(0).integers(0, len(diffs), (resamples, len(diffs)))
        means = diffs[draws].mean(axis=1)
        rows.append({"template": template, "ratios": list(ratios), "prompts": len(prompts),
                     "vs_tome": float(diffs.mean()),
                     "ci95": [float(q) for q in np.quantile(means, [0.025, 0.975])],
                     "bonferroni": [float(q) for q in np.quantile(means, [level / 2, 1 - level / 2])],
                     "bonferroni_level": 1 - level})
    return rows


def table(images: list[dict], labels: dict[str, str], ratios: list[float], templates: tuple[str, ...]) -> list[dict]:
    base = per_prompt(images, "baseline", "accuracy")
    rows = [{"method": "baseline", "template": "baseline", "ratio": 0.0, **_means(images, "baseline")}]
    for r in ratios:
        tome = per_prompt(images, labels[TOME.format(r=r)], "accuracy") if TOME in templates else None
        tome_psnr = per_prompt(images, labels[TOME.format(r=r)], "psnr") if TOME in templates else None
        for template in templates:
            label = labels[template.format(r=r)]
            acc = per_prompt(images, label, "accuracy")
            row = {"method": label, "template": template, "ratio": r, **_means(images, label),
                   "vs_baseline": bootstrap_difference(acc, base)}
            if tome is not None and template != TOME:
                row["vs_tome"] = bootstrap_difference(acc, tome)
                row["psnr_vs_tome"] = bootstrap_difference(per_prompt(images, label, "psnr"), tome_psnr)
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


SELECTIONS = (("ToMe (alpha=0)", {"alpha": 0.0}), ("Turbo alpha=1, attention", {}),
              ("Turbo alpha=1, text", {"semantic": "text"}), ("Turbo alpha=4, attention", {"alpha": 4.0}))
LOCATION_TIMESTEPS = (700, 500, 300)  # one short denoising run per scene: steps after the first have text mass


def merged_location(model: str, scenes: int, ratio: float, picture: Path | None = None) -> list[dict]:
    """Share of merged finest-level tokens that lie on an object, per selection rule, against the share of all
    tokens that do.

    Measured on the scenes' own renders, noised at LOCATION_TIMESTEPS in turn (as one generation: the second and
    third calls have the previous step's text mass for ``semantic="text"``), so the ground truth says exactly which
    tokens are objects. (On generated images it would not: this model mostly draws objects in other cells than
    asked.) Steps after the first count, the prompt-conditioned input only. Each selection other than ToMe's also
    gets ``vs_tome``: its share minus ToMe's and a paired bootstrap 95% interval over the scenes. ``picture``: the
    first scenes with each selection's merged tokens at the last timestep shaded."""
    import torch

    from turbo_diffusion import apply_turbo, inspect_plans, remove_turbo
    from turbo_diffusion.models import load_pipeline
    from turbo_diffusion.shapes.evaluate import encoded_renders, eval_scenes, noised
    from turbo_diffusion.shapes.scenes import object_tokens, render

    pipe = load_pipeline(model)
    chosen = eval_scenes(scenes)
    latents, noise = encoded_renders(pipe, chosen)
    counts, shown = {}, {}  # counts[name]: per scene (merged on objects, merged, object tokens, tokens)
    for name, fields in SELECTIONS:
        apply_turbo(pipe, ratio=ratio, **fields)
        per_scene = []
        for i, scene in enumerate(chosen):
            with torch.no_grad():
                text = pipe.encode_prompt(scene.prompt, "cpu", 1, False)[0]  # the text hook records it
                with inspect_plans(pipe) as records:
                    for t in LOCATION_TIMESTEPS:
                        pipe.unet(noised(pipe, latents[i:i + 1], noise[i:i + 1], t), torch.tensor([t]),
                                  encoder_hidden_states=text)
            grid = max((r.grid for r in records), key=lambda g: g[0] * g[1])  # the finest level's
            mask = object_tokens(scene, grid)
            tally = np.zeros(4, dtype=np.int64)
            for record in records:
                if record.grid != grid or record.reused or record.step == 0:
                    continue
                merged = record.merged[0].numpy()
                tally += [int((merged & mask).sum()), int(merged.sum()), int(mask.sum()), mask.size]
                if i < 3 and record.step == len(LOCATION_TIMESTEPS) - 1:
                    shown.setdefault((name, i), merged)  # the first block of the finest level
            per_scene.append(tally)
        remove_turbo(pipe)
        counts[name] = np.array(per_scene)
    tome = counts[SELECTIONS[0][0]]
    draws = np.random.default_rng(0).integers(0, scenes, (2000, scenes))
    rows = []
    for name, _ in SELECTIONS:
        mine = counts[name]
        row = {"selection": name, "ratio": ratio, "merged_on_objects": mine[:, 0].sum() / max(mine[:, 1].sum(), 1),
               "tokens_on_objects": mine[:, 2].sum() / max(mine[:, 3].sum(), 1), "scenes": scenes,
               "timesteps": list(LOCATION_TIMESTEPS[1:])}
        if name != SELECTIONS[0][0]:  # share minus ToMe's share, bootstrap over scenes (paired: same scenes)
            share = mine[draws, 0].sum(1) / mine[draws, 1].sum(1) - tome[draws, 0].sum(1) / tome[draws, 1].sum(1)
            row["vs_tome"] = [float(row["merged_on_objects"] - tome[:, 0].sum() / tome[:, 1].sum()),
                              *(float(q) for q in np.quantile(share, [0.025, 0.975]))]
        rows.append({k: float(v) if isinstance(v, np.floating) else v for k, v in row.items()})
    if picture is not None:
        _location_picture([render(s) for s in chosen[:3]], shown, ratio, picture)
    return rows


def _location_picture(renders: list, shown: dict, ratio: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _ in SELECTIONS]
    fig, axes = plt.subplots(len(renders), len(names), figsize=(3 * len(names), 3 * len(renders)), squeeze=False)
    for i, image in enumerate(renders):
        for j, name in enumerate(names):
            ax = axes[i][j]
            ax.imshow(image, extent=(0, image.width, image.height, 0))
            merged = shown.get((name, i))
            if merged is not None:  # a dot on each merged token: visible on any background and object colour
                rows_, cols = merged.nonzero()
                cell_h, cell_w = image.height / merged.shape[0], image.width / merged.shape[1]
                ax.scatter((cols + 0.5) * cell_w, (rows_ + 0.5) * cell_h, s=7, c="white", edgecolors="black",
                           linewidths=0.4)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(f"merged tokens (dots) at ratio {ratio}, finest level, t = {LOCATION_TIMESTEPS[-1]}, on the scenes' "
                 "renders (shapes model, not SD)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def method_grid(images: list[dict], methods: list[str], prompts: list[int], out: Path, path: Path) -> None:
    """The seed-0 images of ``prompts`` (rows) under ``methods`` (columns), each row titled with its prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt
    from PIL import Image

    found = {(i["method"], i["prompt_index"]): i for i in images if i["seed"] == 0}
    prompts = [p for p in prompts if ("baseline", p) in found]
    fig, axes = plt.subplots(len(prompts), len(methods), figsize=(1.9 * len(methods), 2.1 * len(prompts)),
                             squeeze=False)
    for row, p in enumerate(prompts):
        for col, method in enumerate(methods):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            image = found.get((method, p))
            if image is not None:
                with Image.open(out / image["path"]) as picture:
                    ax.imshow(picture.convert("RGB"))
            if row == 0:
                ax.set_title(method.replace(":", "\n", 1), fontsize=8)
            if col == 0:
                ax.set_ylabel(textwrap.fill(found[("baseline", p)]["prompt"], 36), fontsize=6)
    fig.suptitle("seed 0 of the study's first prompts (shapes model, a toy trained here, not SD)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5))
    colours = plt.cm.tab20.colors  # 20 distinct colours, and a line style per group of them: no two lines alike
    for k, template in enumerate(templates):
        mine = sorted((r for r in rows if r["template"] == template), key=lambda r: r["ratio"])
        name = template.replace("@{r}", "")
        style = {"marker": "osD^v"[k % 5], "color": colours[k % 20], "linestyle": ("-", "--", ":")[k // 20 % 3]}
        left.plot([r["ratio"] for r in mine], [r["accuracy"] for r in mine], label=name, **style)
        right.plot([r["ratio"] for r in mine], [r["psnr"] for r in mine], label=name, **style)
    left.axhline(base["accuracy"], color="black", linestyle="--", label="baseline")
    left.set(xlabel="ratio", ylabel="attribute accuracy (colour, shape, position)", title="judge vs ground truth")
    right.set(xlabel="ratio", ylabel="PSNR to baseline (dB)", title="fidelity to the baseline image")
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("shapes model (a toy trained here, not SD)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(study: dict, templates: tuple[str, ...]) -> str:
    def ci(value: tuple[float, float, float] | None, digits: int = 3) -> str:
        return "" if value is None else f"{value[0]:+.{digits}f} [{value[1]:+.{digits}f}, {value[2]:+.{digits}f}]"

    c = study["configuration"]
    lines = [f"{study['images']} images: {len(c['prompts'])} prompts of `{c['preset']}` x seeds {c['seeds']} x "
             f"{len(c['methods'])} methods, {c['steps']} steps of {c['scheduler']}, guidance {c['guidance']}, "
             f"{c['size'][0]}x{c['size'][1]} px, {c['dtype']} on {c['device_type']} (all settings: study.json)", "",
             "| method | colour | shape | position | accuracy | prompt | PSNR | SSIM | vs baseline [95% CI] | "
             "vs ToMe [95% CI] | PSNR vs ToMe (dB) [95% CI] | s/img |", "|---" * 12 + "|"]
    for r in study["table"]:
        lines.append(f"| `{r['method']}` | {r['colour']:.3f} | {r['shape']:.3f} | {r['position']:.3f} | "
                     f"{r['accuracy']:.3f} | {r['prompt_correct']:.3f} | {r.get('psnr', float('inf')):.1f} | "
                     f"{r.get('ssim', 1.0):.3f} | {ci(r.get('vs_baseline'))} | {ci(r.get('vs_tome'))} | "
                     f"{ci(r.get('psnr_vs_tome'), 1)} | {r['seconds']:.2f} |")
    if study.get("pooled"):
        level = study["pooled"][0]["bonferroni_level"]
        lines += ["", f"| method, ratios {study['pooled'][0]['ratios']} pooled | vs ToMe | 95% CI | "
                  f"{level:.4f} CI (Bonferroni, {len(study['pooled'])} methods) | prompts |", "|---|---|---|---|---|"]
        for r in study["pooled"]:
            lines.append(f"| `{r['template'].replace('@{r}', '')}` | {r['vs_tome']:+.4f} | "
                         f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] | "
                         f"[{r['bonferroni'][0]:+.4f}, {r['bonferroni'][1]:+.4f}] | {r['prompts']} |")
    lines += ["", "| selection | ratio | merged tokens on objects | minus ToMe's [95% CI] | all tokens on objects | "
              "scenes |", "|---|---|---|---|---|---|"]
    for r in study["location"]:
        lines.append(f"| {r['selection']} | {r['ratio']} | {r['merged_on_objects']:.3f} | {ci(r.get('vs_tome'))} | "
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
