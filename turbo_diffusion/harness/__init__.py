"""The parts `generate`, `bench` and `compare` share; each tool is a thin front end over them.

* `methods`: one method type and one grammar (``baseline|turbo@R[:field=value,...]|tome@R|todo@R|bound@R``),
  install and uninstall on a model. Light: parsing imports neither torch nor diffusers.
* `processors`: where methods act (the attention level and its token grid) and the two processors that exist to
  be measured (ToDo-style key/value downsampling, the zero-overhead bound).
* `measure`: synchronised timing, methods interleaved call by call, ``torch.compile``; `memory`: peak memory on
  CPU and CUDA.
* `loading`: the model, the ``auto`` device and dtype, and one `errors.ModelLoadError`.
* `output`: output paths checked before any work, one JSON policy for infinities, a safe fallback;
  `environment`: date, machine, commit and versions of a run.
* `errors`: the one-line errors the command line turns into exit code 2.
"""
