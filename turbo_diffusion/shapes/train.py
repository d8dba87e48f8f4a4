"""Train the ``shapes`` model: VAE first, then text encoder + UNet, resumable, on CPU or GPU.

    train_shapes(TrainSpec(out="runs/shapes", minutes=120))      # turbo-diffusion train-shapes --out ...

Stages, each resumable from ``out/checkpoint.pt`` (written atomically every few minutes and at the end):

1. ``vae``: the autoencoder on random 64 px crops of fresh renders (L1 + MSE, a tiny KL; learning rate 1e-3 for
   40% of the steps, then decaying linearly to 1e-4), then its latent scale
   (``scaling_factor = 1 / std`` of the latents of 512 renders).
2. ``pool``: ``pool_size`` training scenes encoded once to latents (``out/latents.pt``); every later batch draws
   from it, which costs far less than encoding each batch.
3. ``unet``: text encoder and UNet together on the pool, epsilon prediction with min-SNR-5 weighting, 10% empty
   prompts (for classifier-free guidance), an exponential moving average of the weights, bf16 autocast where the
   hardware has it.

Batches, noise and timesteps come from generators seeded by (seed, stage, step), so a resumed run sees the data
the uninterrupted one would. The exported pipeline (``out/pipeline``) holds the EMA weights; ``out/loss.jsonl``
holds the loss curve and ``out/samples/`` a few images per checkpoint to watch it learn.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .model import LATENT_SIZE, build_pipeline, new_components
from .scenes import IMAGE_SIZE, render, sample_scene
from .tokenizer import write_tokenizer_files

CHECKPOINT = "checkpoint.pt"
SAMPLE_PROMPTS = (
    "a large red circle at the top left, on a white background",
    "a small blue square in the center, on a striped gray background",
    "a large green triangle at the bottom right and a small yellow circle at the top, on a black background",
    "a large purple square on the left, a small orange triangle at the top right and a large cyan circle at the "
    "bottom, on a checkered white background",
)


@dataclass
class TrainSpec:
    """What to train and for how long.

    Attributes:
        out: run folder (checkpoint, latent pool, loss curve, samples, exported pipeline).
        minutes: wall-clock budget of this invocation; the run checkpoints and stops when it is spent (resume
            with ``resume=True``). ``None``: until the step counts are reached.
        vae_steps, unet_steps: optimisation steps of the two training stages.
        batch, vae_batch: batch sizes of the UNet and VAE stages.
        lr: AdamW learning rate of the UNet stage (after a 250-step warm-up); the VAE's is fixed (``vae_lr_at``).
        pool_size: training scenes encoded to latents.
        seed: seed of initialisation and of every data draw.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        checkpoint_minutes: how often to checkpoint (and draw samples).
        resume: continue ``out``'s checkpoint; without it an existing checkpoint is an error.
        init: a trained pipeline folder (the committed ``shapes`` weights, say) to start from: its VAE is kept
            (the VAE stage is skipped) and its text encoder and UNet are trained further, e.g. on a GPU at a
            larger batch. ``None`` starts from scratch.
    """

    out: str
    minutes: float | None = None
    vae_steps: int = 5000
    unet_steps: int = 8000
    batch: int = 32
    vae_batch: int = 16
    lr: float = 5e-4
    pool_size: int = 48_000
    seed: int = 0
    device: str = "auto"
    checkpoint_minutes: float = 5.0
    resume: bool = False
    init: str | None = None


def train_scene_seed(seed: int, index: int) -> int:
    """Seed of training scene ``index``: a namespace disjoint from evaluation scenes (see ``judge``)."""
    return (seed * 1_000_003 + index) * 2 + 0  # evaluation scenes use odd seeds


def train_shapes(spec: TrainSpec) -> Path:
    """Run (or resume) the training described by ``spec``; returns the exported pipeline folder."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(spec.device)
    state = _load_checkpoint(out, spec)
    trainer = _Trainer(spec, out, device, state)
    return trainer.run()


class _Trainer:
    def __init__(self, spec: TrainSpec, out: Path, device: torch.device, state: dict[str, Any] | None) -> None:
        self.spec, self.out, self.device = spec, out, device
        self.started = time.monotonic()
        self.last_checkpoint = self.started
        self.autocast = _autocast_dtype(device)
        components = new_components(spec.seed)
        self.tokenizer = components["tokenizer"]
        self.noise_scheduler = components["noise_scheduler"]
        self.vae = components["vae"].to(device)
        self.text_encoder = components["text_encoder"].to(device)
        self.unet = components["unet"].to(device)
        self.stage, self.step, self.elapsed_before = "vae", 0, 0.0
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=1e-3, weight_decay=0.0)
        self.opt = torch.optim.AdamW([*self.unet.parameters(), *self.text_encoder.parameters()], lr=spec.lr,
                                     weight_decay=0.01)
        self.ema_unet = self.ema_text = None
        if state is not None:
            self._restore(state)
        elif spec.init is not None:
            self._start_from(Path(spec.init))

    # -- driver ----------------------------------------------------------------------------------------------
    def run(self) -> Path:
        if self.spec.resume:
            print(f"resumed at stage {self.stage!r}, step {self.step} ({self.elapsed_before / 60:.1f} min trained)")
        if self.stage == "done" and self.step < self.spec.unet_steps:
            self.stage = "unet"  # resumed with more steps than the finished run had
        if self.stage == "vae":
            if not self._train_vae():
                return self._stop()
            self.stage, self.step = "pool", 0
            self._checkpoint()
        if self.stage == "pool":
            self._encode_pool()
            self.stage, self.step = "unet", 0
            self._checkpoint()
        if self.stage == "unet":
            if self._train_unet():
                self.stage = "done"
                self._checkpoint()
        return self._stop()

    def _stop(self) -> Path:
        self._checkpoint()
        folder = self.out / "pipeline"
        if self.stage in ("unet", "done"):
            self._export(folder)
            print(f"exported {'the trained' if self.stage == 'done' else 'the current'} pipeline to {folder}")
        if self.stage != "done":
            print(f"stopped at stage {self.stage!r}, step {self.step}; continue with --resume")
        return folder

    def _out_of_time(self) -> bool:
        if self.spec.minutes is None:
            return False
        return time.monotonic() - self.started > self.spec.minutes * 60

    def _maybe_checkpoint(self) -> None:
        if time.monotonic() - self.last_checkpoint > self.spec.checkpoint_minutes * 60:
            self._checkpoint()
            if self.stage == "unet":
                self._samples()

    # -- stage 1: VAE ----------------------------------------------------------------------------------------
    def _train_vae(self) -> bool:
        spec = self.spec
        self.vae.train()
        bar = tqdm(total=spec.vae_steps, initial=self.step, desc="vae", unit="step", dynamic_ncols=True)
        while self.step < spec.vae_steps:
            if self._out_of_time():
                bar.close()
                return False
            gen = _generator(spec.seed, "vae", self.step)
            images = _render_batch(spec.vae_batch, lambda i: train_scene_seed(spec.seed, 10**9 + self.step *
                                                                              spec.vae_batch + i))
            crops = _random_crops(images, 64, gen).to(self.device)
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                posterior = self.vae.encode(crops).latent_dist
                recon = self.vae.decode(posterior.sample(generator=None)).sample.float()
            loss = (recon - crops).abs().mean() + F.mse_loss(recon, crops) + 1e-6 * posterior.kl().mean()
            for group in self.vae_opt.param_groups:
                group["lr"] = vae_lr_at(self.step, spec.vae_steps)
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
            self.vae_opt.step()
            self.step += 1
            self._log("vae", loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update()
            self._maybe_checkpoint()
        bar.close()
        self.vae.eval()
        self._set_latent_scale()
        return True

    @torch.no_grad()
    def _set_latent_scale(self) -> None:
        images = _render_batch(512, lambda i: train_scene_seed(self.spec.seed, 2 * 10**9 + i)).to(self.device)
        latents = torch.cat([self.vae.encode(chunk).latent_dist.mean for chunk in images.split(64)])
        self.vae.register_to_config(scaling_factor=float(1.0 / latents.float().std()))

    # -- stage 2: latent pool --------------------------------------------------------------------------------
    def _pool_path(self) -> Path:
        return self.out / "latents.pt"

    @torch.no_grad()
    def _encode_pool(self) -> None:
        path = self._pool_path()
        if path.exists():
            return
        spec, chunk = self.spec, 64
        self.vae.eval()
        latents = torch.empty(spec.pool_size, 4, LATENT_SIZE, LATENT_SIZE, dtype=torch.float16)
        prompts = []
        # Rendering is the slow part where a GPU encodes: spread it over the cores there are (none on 2 cores,
        # where the one spare core is better left to torch).
        workers = min(8, (os.cpu_count() or 1) - 2)
        renderer = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
        try:
            for start in tqdm(range(0, spec.pool_size, chunk), desc="encoding scenes", unit="batch",
                              dynamic_ncols=True):
                n = min(chunk, spec.pool_size - start)
                scenes = [sample_scene(random.Random(train_scene_seed(spec.seed, start + i))) for i in range(n)]
                drawn = renderer.map(render, scenes) if renderer else [render(s) for s in scenes]
                images = torch.stack([_to_tensor(im) for im in drawn]).to(self.device)
                with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    mean = self.vae.encode(images).latent_dist.mean
                latents[start:start + n] = (mean.float() * self.vae.config.scaling_factor).half().cpu()
                prompts.extend(s.prompt for s in scenes)
        finally:
            if renderer:
                renderer.close()
        tmp = path.with_suffix(".tmp")
        torch.save({"latents": latents, "prompts": prompts}, tmp)
        os.replace(tmp, path)

    # -- stage 3: text encoder + UNet ------------------------------------------------------------------------
    def _train_unet(self) -> bool:
        spec = self.spec
        pool = torch.load(self._pool_path(), weights_only=False)
        latents, prompts = pool["latents"], pool["prompts"]
        if self.ema_unet is None:
            self.ema_unet, self.ema_text = copy.deepcopy(self.unet).eval(), copy.deepcopy(self.text_encoder).eval()
        for p in (*self.ema_unet.parameters(), *self.ema_text.parameters()):
            p.requires_grad_(False)
        self.vae.requires_grad_(False)
        self.unet.train()
        self.text_encoder.train()
        alphas = self.noise_scheduler.alphas_cumprod.to(self.device)
        snr = alphas / (1 - alphas)
        weight_of_t = torch.minimum(snr, torch.full_like(snr, 5.0)) / snr  # min-SNR-5 for epsilon prediction

        bar = tqdm(total=spec.unet_steps, initial=self.step, desc="text encoder + unet", unit="step",
                   dynamic_ncols=True)
        while self.step < spec.unet_steps:
            if self._out_of_time():
                bar.close()
                return False
            gen = _generator(spec.seed, "unet", self.step)
            index = torch.randint(len(prompts), (spec.batch,), generator=gen)
            x0 = latents[index].float().to(self.device)
            texts = [prompts[i] if torch.rand((), generator=gen) >= 0.1 else "" for i in index.tolist()]
            noise = torch.randn(x0.shape, generator=gen).to(self.device)
            t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (spec.batch,), generator=gen)
            t = t.to(self.device)
            noisy = self.noise_scheduler.add_noise(x0, noise, t)
            ids = self._tokenize(texts)
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.step, spec.lr)
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                text = self.text_encoder(ids)[0]
                pred = self.unet(noisy, t, text).sample.float()
            per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
            loss = (per_sample * weight_of_t[t]).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*self.unet.parameters(), *self.text_encoder.parameters()], 1.0)
            self.opt.step()
            self._update_ema()
            self.step += 1
            self._log("unet", loss.item(), mse=per_sample.mean().item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update()
            self._maybe_checkpoint()
        bar.close()
        return True

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids.to(self.device)

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(0.999, (1 + self.step) / (10 + self.step))
        for ema, live in ((self.ema_unet, self.unet), (self.ema_text, self.text_encoder)):
            for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                e.lerp_(p.detach(), 1 - decay)

    # -- outputs ---------------------------------------------------------------------------------------------
    def _log(self, stage: str, loss: float, **extra: float) -> None:
        if self.step % 10 and self.step != 1:
            return
        record = {"stage": stage, "step": self.step, "loss": round(loss, 6),
                  "minutes": round(self._elapsed() / 60, 3), **{k: round(v, 6) for k, v in extra.items()}}
        with open(self.out / "loss.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def _pipeline(self):
        unet = self.ema_unet if self.ema_unet is not None else self.unet
        text = self.ema_text if self.ema_text is not None else self.text_encoder
        return build_pipeline(self.vae, text, self.tokenizer, unet)

    @torch.no_grad()
    def _samples(self) -> None:
        pipe = self._pipeline()
        pipe.set_progress_bar_config(disable=True)
        images = pipe(list(SAMPLE_PROMPTS), num_inference_steps=20, guidance_scale=5.0,
                      generator=torch.Generator().manual_seed(0)).images
        self.unet.train()
        self.text_encoder.train()
        grid = np.concatenate([np.asarray(im) for im in images], axis=1)
        folder = self.out / "samples"
        folder.mkdir(exist_ok=True)
        from PIL import Image

        Image.fromarray(grid).save(folder / f"step{self.step:06d}.png")

    def _export(self, folder: Path) -> None:
        """Save the pipeline with the UNet and VAE in fp16 (half the bytes; diffusers loads them back as fp32
        unless asked otherwise) and the text encoder in fp32 (transformers would load an fp16 one as fp16, and
        its embeddings would then meet an fp32 UNet)."""
        pipe = self._pipeline()
        pipe = build_pipeline(copy.deepcopy(pipe.vae).half(), pipe.text_encoder, pipe.tokenizer,
                              copy.deepcopy(pipe.unet).half())
        pipe.save_pretrained(folder, safe_serialization=True)
        write_tokenizer_files(str(folder / "tokenizer"), config=False)  # for transformers 4 (see there)
        prefix_text_encoder_keys(folder / "text_encoder")
        with open(folder / "training.json", "w", encoding="utf-8") as f:
            json.dump({"spec": asdict(self.spec), "stage": self.stage, "unet_step": self.step if self.stage in
                       ("unet", "done") else 0, "minutes": round(self._elapsed() / 60, 1),
                       "device": str(self.device), "autocast": str(self.autocast)}, f, indent=2)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        state = {
            "spec": asdict(self.spec), "stage": self.stage, "step": self.step, "elapsed": self._elapsed(),
            "vae": self.vae.state_dict(), "vae_config": dict(self.vae.config), "vae_opt": self.vae_opt.state_dict(),
            "unet": self.unet.state_dict(), "text_encoder": self.text_encoder.state_dict(),
            "opt": self.opt.state_dict(),
            "ema_unet": self.ema_unet.state_dict() if self.ema_unet is not None else None,
            "ema_text": self.ema_text.state_dict() if self.ema_text is not None else None,
        }
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.out / CHECKPOINT)
        self.last_checkpoint = time.monotonic()

    def _start_from(self, folder: Path) -> None:
        """Load a trained pipeline's VAE (scale included), text encoder and UNet; training goes on at the pool."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"init: {folder} is not a pipeline folder (no model_index.json)")
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
        self.vae.load_state_dict(vae.state_dict())
        self.vae.register_to_config(scaling_factor=vae.config.scaling_factor)
        text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch.float32)
        self.text_encoder.load_state_dict(text.state_dict())
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
        self.unet.load_state_dict(unet.state_dict())
        self.stage, self.step = "pool", 0

    def _restore(self, state: dict[str, Any]) -> None:
        self.stage, self.step, self.elapsed_before = state["stage"], state["step"], state["elapsed"]
        self.vae.load_state_dict(state["vae"])
        self.vae.register_to_config(scaling_factor=state["vae_config"]["scaling_factor"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.opt.load_state_dict(state["opt"])
        if state["ema_unet"] is not None:
            self.ema_unet, self.ema_text = copy.deepcopy(self.unet).eval(), copy.deepcopy(self.text_encoder).eval()
            self.ema_unet.load_state_dict(state["ema_unet"])
            self.ema_text.load_state_dict(state["ema_text"])


def export_run(out: str | Path, folder: str | Path | None = None) -> Path:
    """Export the EMA weights of a run's latest checkpoint as a pipeline folder (``out/pipeline`` by default),
    without training: to look at a run that is still going."""
    out = Path(out)
    path = out / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no {CHECKPOINT} in {out}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["stage"] not in ("unet", "done"):
        raise ValueError(f"the run in {out} is at stage {state['stage']!r}: no UNet to export yet")
    spec = TrainSpec(**{**state["spec"], "out": str(out), "resume": True, "device": "cpu"})
    trainer = _Trainer(spec, out, torch.device("cpu"), state)
    target = Path(folder) if folder is not None else out / "pipeline"
    trainer._export(target)
    return target


def _load_checkpoint(out: Path, spec: TrainSpec) -> dict[str, Any] | None:
    path = out / CHECKPOINT
    if not path.exists():
        if spec.resume:
            raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {out}")
        return None
    if not spec.resume:
        raise FileExistsError(f"{out} already holds a training run ({CHECKPOINT}); continue it with --resume or "
                              "give another --out")
    state = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("seed", "batch", "vae_batch", "pool_size"):
        if state["spec"][key] != getattr(spec, key):
            raise ValueError(f"--resume with {key}={getattr(spec, key)}, but the run was started with "
                             f"{key}={state['spec'][key]}; the data order would change")
    return state


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available")
    return torch.device(name)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA and on CPUs with native bf16 (1.4x faster here); ``None`` (fp32) elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.bfloat16 if supported is not None and supported() else None


def _generator(seed: int, stage: str, step: int) -> torch.Generator:
    offset = {"vae": 1, "unet": 2}[stage]
    return torch.Generator().manual_seed((seed * 7919 + offset) * 10_000_019 + step)


def _to_tensor(image) -> torch.Tensor:
    """PIL RGB -> ``(3, S, S)`` float in [-1, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def _render_batch(n: int, seed_of) -> torch.Tensor:
    return torch.stack([_to_tensor(render(sample_scene(random.Random(seed_of(i))))) for i in range(n)])


def _random_crops(images: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    if size >= IMAGE_SIZE:
        return images
    # Crops at multiples of 4 keep the latent grid aligned with the full image's.
    top = (torch.randint(0, (IMAGE_SIZE - size) // 4 + 1, (len(images),), generator=gen) * 4).tolist()
    left = (torch.randint(0, (IMAGE_SIZE - size) // 4 + 1, (len(images),), generator=gen) * 4).tolist()
    return torch.stack([im[:, t:t + size, s:s + size] for im, t, s in zip(images, top, left, strict=True)])


def vae_lr_at(step: int, total: int, lr: float = 1e-3) -> float:
    """The VAE's learning rate: constant for the first 40% of the steps, then a linear decay to a tenth."""
    stable = int(0.4 * total)
    if step < stable:
        return lr
    return lr * (1.0 - 0.9 * (step - stable) / max(1, total - stable))


def lr_at(step: int, lr: float) -> float:
    """The UNet stage's learning rate at ``step``: linear warm-up over 250 steps, then constant."""
    return lr * min(1.0, (step + 1) / 250)


def prefix_text_encoder_keys(folder: Path) -> None:
    """Give the exported text encoder's weights the ``text_model.`` prefix that ``CLIPTextModel`` has. transformers
    5 saves them without it and loads either form; transformers 4 finds no weight without it and silently starts
    from random ones (the shapes model then draws the wrong colours)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(path)
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in weights.items()}, path,
              metadata={"format": "pt"})
