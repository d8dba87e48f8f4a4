"""The GPU benchmark table: SD 1.5 at 512 and 1024 px and SDXL at 1024 px in fp16, eager, compiled and with CUDA
graphs (``reduce-overhead``), on torch SDPA and on xformers, in one process (each architecture is built once),
within a time budget.

    python benchmarks/gpu_table.py --out outputs/gpu --budget-minutes 5

Every run is `turbo-diffusion bench` (its JSON records the equivalent command) with batches 1 and 2 (2 is one image
with classifier-free guidance; 8 too at 512 px), random weights. Runs go in order of priority and are skipped once
the budget is spent, so a short lease still gives the eager table; each finished run is written at once
(``OUT/<name>.json``) and appended to ``OUT/gpu_table.md``. Compiled runs use regional compilation
(``compile_repeated_blocks``: the transformer blocks; compile times are minutes shorter than the whole UNet's),
with inductor's default mode and then with ``reduce-overhead``, and time the baseline, Turbo, tomesd and the bound
at ratio 0.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from turbo_diffusion.bench.report import format_report, write_json
from turbo_diffusion.bench.run import environment, load_model, run_bench
from turbo_diffusion.bench.spec import BenchSpec, command_for, flag_methods
from turbo_diffusion.kernels import xformers_available

RUNS = [("sd15-arch", (512, 512), (1, 2, 8)), ("sd15-arch", (1024, 1024), (1, 2)), ("sdxl-arch", (1024, 1024), (1, 2))]
MODES = {"eager": None, "compiled": "default", "reduce-overhead": "reduce-overhead"}


def runs(attention: tuple[str, ...]) -> list[tuple[str, BenchSpec]]:
    """(name, spec) in order of priority: every eager run, then the compiled ones, then CUDA graphs."""
    out = []
    for mode, compile_mode in MODES.items():
        for kernel in attention:
            for model, size, batches in RUNS:
                spec = BenchSpec(model=model, sizes=(size,), batches=batches, dtype="float16", device="cuda",
                                 repeats=10, warmup=2, attention=kernel)
                if compile_mode is not None:
                    spec = dataclasses.replace(spec, methods=("turbo@0.5", "tomesd@0.5", "bound@0.5"), profile=False,
                                               compile="inductor", compile_scope="blocks", warmup=3,
                                               compile_mode=None if compile_mode == "default" else compile_mode)
                else:
                    spec = dataclasses.replace(spec, methods=tuple(flag_methods((0.5, 0.7))[0]))
                out.append((f"{model}-{size[0]}-{kernel}-{mode}", spec.validate()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/gpu", help="folder of the JSON files and gpu_table.md")
    parser.add_argument("--budget-minutes", type=float, default=6.0,
                        help="start no run after this many minutes (a started run finishes)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these names (see --list)")
    parser.add_argument("--list", action="store_true", help="print the runs' names and commands, run nothing")
    args = parser.parse_args()
    kernels = ("sdpa", "xformers") if xformers_available() else ("sdpa",)
    planned = [(n, s) for n, s in runs(kernels) if args.only is None or n in args.only]
    if args.list:
        for name, spec in planned:
            print(f"{name}: {command_for(spec)}")
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this table is for a GPU machine")
    # Every variant and block width is its own graph under regional compilation: lift dynamo's recompile limit so
    # that no variant silently falls back to eager.
    for limit in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 1024)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "gpu_table.md"
    started = time.monotonic()
    models: dict[str, tuple] = {}
    if not xformers_available():
        print("xformers is not installed: SDPA only")
    for name, spec in planned:
        spent = (time.monotonic() - started) / 60
        if spent > args.budget_minutes:
            print(f"skipped {name}: {spent:.1f} of {args.budget_minutes} minutes spent")
            continue
        if spec.model not in models:  # both architectures stay on the GPU (about 7 GB in fp16)
            models[spec.model] = load_model(spec)
        torch._dynamo.reset()
        clock = time.monotonic()
        print(f"== {name} ({command_for(spec)})", flush=True)
        try:
            result = run_bench(spec, environment=environment, loaded=models[spec.model])
        except Exception as err:  # one failing run (a compile error, say) must not cost the rest of the table
            print(f"{name} failed: {type(err).__name__}: {err}", flush=True)
            with open(table, "a", encoding="utf-8") as f:
                f.write(f"\n## {name}\n\nfailed: {type(err).__name__}: {err}\n")
            continue
        finally:
            _uncompile(models[spec.model][1])
        report = format_report(result)
        print(report, flush=True)
        write_json(result, out / f"{name}.json")
        with open(table, "a", encoding="utf-8") as f:
            f.write(f"\n## {name} ({time.monotonic() - clock:.0f} s)\n\n`{command_for(spec)}`\n\n{report}\n")
    return 0


def _uncompile(module: torch.nn.Module) -> None:
    """Undo `nn.Module.compile` on ``module`` and its children, so the next run starts eager."""
    for sub in module.modules():
        if getattr(sub, "_compiled_call_impl", None) is not None:
            sub._compiled_call_impl = None


if __name__ == "__main__":
    raise SystemExit(main())
