"""Named `turbo-diffusion bench` runs: the recorded benchmarks, reproducible by name.

    python benchmarks/presets.py --list
    python benchmarks/presets.py sd15-step                       # JSON + plot in outputs/bench/sd15-step.{json,png}
    python benchmarks/presets.py sd15-step --device cuda --dtype float16 --repeats 10   # later options win

Each preset is a list of `turbo-diffusion bench` options; anything after the name is appended, so it overrides
the preset's value of a single-valued or list option (``--turbo`` settings accumulate). The command actually run
is printed first and recorded in the JSON. See benchmarks/README.md for what each preset checks.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from turbo_diffusion.cli import main as cli_main

PRESETS: dict[str, tuple[str, list[str]]] = {
    "sd15-step": (
        "one UNet step, SD 1.5 architecture, 512/768 px, batch 1/2, ratios 0.5/0.7: Turbo vs tomesd vs the bound, "
        "and Turbo's planning share",
        ["--model", "sd15-arch", "--sizes", "512", "768", "--batches", "1", "2", "--ratios", "0.5", "0.7",
         "--repeats", "5"],
    ),
    "sdxl-step": (
        "one UNet step, SDXL architecture, 1024 px: merging at the 2x level, where tomesd's defaults do nothing",
        ["--model", "sdxl-arch", "--sizes", "1024", "--batches", "1", "--ratios", "0.5", "0.7", "--repeats", "3"],
    ),
    "sdxl-options": (
        "one UNet step, SDXL architecture, 1024 px: Turbo merging more levels and the feed-forward",
        ["--model", "sdxl-arch", "--sizes", "1024", "--batches", "1", "--ratios", "0.5", "--variants", "turbo", "bound",
         "--turbo", "max_downsample=4", "--turbo", "merge_mlp=True", "--turbo", "merge_mlp=True,max_downsample=4",
         "--repeats", "3"],
    ),
    "sd15-generation": (
        "whole 20-step generations with classifier-free guidance, SD 1.5 architecture, 512 px",
        ["--model", "sd15-arch", "--sizes", "512", "--batches", "2", "--ratios", "0.5", "0.7", "--steps", "20",
         "--repeats", "3"],
    ),
    "ratio-sweep": (
        "speed-up against ratio at 768 px, with Turbo's global matching and the ToMe-like ablation",
        ["--model", "sd15-arch", "--sizes", "768", "--batches", "1", "--ratios", "0.3", "0.5", "0.7",
         "--turbo", "match_radius=None", "--turbo", "semantic=none,alpha=0", "--repeats", "3"],
    ),
    "smoke": (
        "seconds-long check that the harness runs end to end (tiny model, numbers meaningless)",
        ["--model", "tiny", "--sizes", "64", "--batches", "2", "--ratios", "0.5", "0.7", "--steps", "2",
         "--repeats", "1"],
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__.split("\n")[0] + "\n")
        for name, (what, options) in PRESETS.items():
            print(f"{name}: {what}\n    turbo-diffusion bench {shlex.join(options)}")
        return 0
    name, extra = argv[0], argv[1:]
    if name not in PRESETS:
        print(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    out = Path("outputs/bench")
    out.mkdir(parents=True, exist_ok=True)
    options = [*PRESETS[name][1], "--json", str(out / f"{name}.json"), "--plot", str(out / f"{name}.png"), *extra]
    print(f"turbo-diffusion bench {shlex.join(options)}", flush=True)
    return cli_main(["bench", *options])


if __name__ == "__main__":
    raise SystemExit(main())
