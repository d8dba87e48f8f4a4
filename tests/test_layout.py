"""The house's layout, read from the source (nothing is run): one home per concept, and the layer rules of
docs/DESIGN.md. Each check names what moved where, so a second copy or an arrow the wrong way fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import turbo_diffusion

PACKAGE = Path(__file__).parents[1] / "turbo_diffusion"
TOOLS = ("bench", "compare", "cli", "harness", "demo")
FRONT_ENDS = ("bench", "compare", "demo")

# concept -> its one home (a module path relative to the package)
HOMES = {
    "find_unet": "anatomy.py", "unet_or_none": "anatomy.py", "transformer_block_levels": "anatomy.py",
    "attention_level": "anatomy.py", "merge_depth": "anatomy.py",
    "grid_at": "levels.py", "pixel_grid": "levels.py",
    "default_processor": "kernels.py", "kernel_of": "kernels.py", "check_kernel": "kernels.py",
    "apply_turbo": "installation.py", "turbo_config_of": "installation.py", "settle": "coexistence.py",
    "make_image": "harness/images.py", "save_image": "harness/images.py", "take_turns": "harness/measure.py",
    "psnr": "harness/fidelity.py", "ssim": "harness/fidelity.py", "load_plugin": "harness/loading.py",
    "flag_methods": "bench/spec.py", "row_name": "bench/run.py", "UsageError": "errors.py",
}


def modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(PACKAGE)): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def imported(path: str, tree: ast.Module) -> set[str]:
    """The package-relative modules ``path`` imports (``from ..x import`` / ``from .y import``), anywhere in it."""
    here = Path(path).parent.parts
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1]
            names.add("/".join((*base, *(node.module or "").split("."))).strip("/"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("turbo_diffusion."):
            names.add(node.module.removeprefix("turbo_diffusion.").replace(".", "/"))
    return names


@pytest.mark.parametrize("name", sorted(HOMES))
def test_each_concept_is_defined_in_its_one_home(name):
    homes = [path for path, tree in modules().items() for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name]
    assert homes == [HOMES[name]]


def test_the_layer_rules_hold():
    wrong = []
    for path, tree in modules().items():
        top = path.split("/")[0]
        for target in imported(path, tree):
            goes_to = target.split("/")[0]
            if top in FRONT_ENDS and goes_to in FRONT_ENDS and goes_to != top:
                wrong.append(f"{path} -> {target}: a front end imports another")
            if top == "harness" and goes_to in (*FRONT_ENDS, "cli", "shapes"):
                wrong.append(f"{path} -> {target}: the harness imports a tool or the toy model")
            if top not in (*TOOLS, "shapes") and goes_to in (*TOOLS, "shapes"):
                wrong.append(f"{path} -> {target}: the engine imports a tool or the toy model")
        for node in ast.walk(tree):  # the lazy face hides an import of the engine: name the module instead
            if top in TOOLS and isinstance(node, ast.ImportFrom) and node.level == len(Path(path).parts) - 1 \
                    and node.module is None and {a.name for a in node.names} & set(turbo_diffusion._EXPORTS):
                wrong.append(f"{path}: imports {[a.name for a in node.names]} through the package's lazy face")
    assert wrong == []


def test_tools_call_a_pipeline_and_write_an_image_in_one_place():
    """The CPU-seeded pipeline call and the image write are `harness.images`'; no tool has its own."""
    places = []
    for path in (p for p in modules() if p.split("/")[0] in TOOLS):
        text = (PACKAGE / path).read_text()
        if 'torch.Generator("cpu")' in text or "Generator(device=\"cpu\")" in text or ".pnginfo" in text.lower() \
                or "PngInfo(" in text:
            places.append(path)
    assert places == ["harness/images.py"]
