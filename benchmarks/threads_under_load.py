"""How many torch threads a generation should use when the machine is shared: the `shapes` model's 20-step
generation at 128 px with Turbo, timed with 1 and with 2 threads (taking turns), on an idle machine and beside one
other job of three kinds (a torch job with 2 threads, one with 1 thread, a pure-Python loop).

    python benchmarks/threads_under_load.py --repeats 6 --json benchmarks/results/DATE-threads-under-load.json

Medians, minima and maxima per thread count and load; the command-line tools choose their thread count from
what this shows (`harness.measure.choose_threads`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

from turbo_diffusion.harness.output import write_json

LOADS = {
    "idle": None,
    "torch job, 2 threads": "import torch,time\ntorch.set_num_threads(2)\na=torch.randn(1024,1024)\n"
                            "while True: a=(a@a).tanh()",
    "torch job, 1 thread": "import torch,time\ntorch.set_num_threads(1)\na=torch.randn(1024,1024)\n"
                           "while True: a=(a@a).tanh()",
    "python loop": "while True: pass",
}
PROMPT = "a large red circle at the top left and a small blue square at the bottom right, on a striped gray background"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from turbo_diffusion import apply_turbo
    from turbo_diffusion.models import load_pipeline

    pipe = load_pipeline("shapes")
    pipe.set_progress_bar_config(disable=True)
    apply_turbo(pipe)

    def generate():
        return pipe(PROMPT, num_inference_steps=20, guidance_scale=5.0, generator=torch.manual_seed(0),
                    output_type="np")

    generate()
    results = {}
    for name, code in LOADS.items():
        job = subprocess.Popen([sys.executable, "-c", code]) if code else None
        time.sleep(3 if job else 0)  # let the other job start
        times: dict[int, list[float]] = {1: [], 2: []}
        try:
            for r in range(args.repeats):
                for threads in (2, 1) if r % 2 == 0 else (1, 2):
                    torch.set_num_threads(threads)
                    start = time.perf_counter()
                    generate()
                    times[threads].append(time.perf_counter() - start)
        finally:
            if job:
                job.kill()
                job.wait()
        results[name] = times
        summary = {t: f"median {statistics.median(v):.2f} s (min {min(v):.2f}, max {max(v):.2f})"
                   for t, v in times.items()}
        print(f"{name}: 1 thread {summary[1]}; 2 threads {summary[2]}", flush=True)
    if args.json:
        write_json(args.json, {"torch": torch.__version__, "seconds_per_generation": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
