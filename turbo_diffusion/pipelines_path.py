"""Print where the shipped custom pipeline files are, for ``DiffusionPipeline.from_pretrained(...,
custom_pipeline=PATH, trust_remote_code=True)``.

    python -m turbo_diffusion.pipelines_path                          # one line per file: PATH  (class)
    python -m turbo_diffusion.pipelines_path turbo_stable_diffusion   # that file's path alone
"""

from __future__ import annotations

import sys

from .community import PIPELINE_FILES, pipeline_file


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    try:
        if names:
            print("\n".join(pipeline_file(name) for name in names))
        else:
            print("\n".join(f"{pipeline_file(name)}  ({cls})" for name, cls in PIPELINE_FILES.items()))
    except ValueError as err:
        print(f"turbo_diffusion.pipelines_path: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
