"""The offline ``shapes`` model: scenes drawn by code, a miniature Stable Diffusion trained on them, and a judge.

* :mod:`.scenes`: seeded scene sampler and renderer with prompts and ground truth (numpy, Pillow);
* :mod:`.tokenizer`: a CLIP tokenizer whose tokens are the scene words;
* :mod:`.model`: the components (SD 1.5's UNet layout in miniature, a small VAE and text encoder);
* :mod:`.train`: ``turbo-diffusion train-shapes``, resumable training on CPU or GPU.
"""
