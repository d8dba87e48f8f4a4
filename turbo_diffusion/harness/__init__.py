"""The parts `generate`, `bench` and `compare` share; each tool is a thin front end over them.

* `methods`: one method type and one grammar (``baseline|turbo@R[:field=value,...]|tome@R|todo@R|bound@R``),
  install and uninstall on a model. Light: parsing imports neither torch nor diffusers.
* `processors`: the two processors that exist to be measured (ToDo-style key/value downsampling, the
  zero-overhead bound). Where methods act (the attention level, its token grid) is the engine's
  (`turbo_diffusion.anatomy`, `turbo_diffusion.levels`), as is kernel choice (`turbo_diffusion.kernels`).
* `measure`: synchronised timing, methods interleaved call by call, ``torch.compile``; `memory`: peak memory on
  CPU and CUDA.
* `loading`: the model, the ``auto`` device and dtype, and one `turbo_diffusion.errors.ModelLoadError`.
* `output`: output paths checked before any work, one JSON policy for infinities, a safe fallback;
  `environment`: date, machine, commit and versions of a run.

Bad input raises the one error family of `turbo_diffusion.errors`.
"""
