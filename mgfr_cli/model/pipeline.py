"""The MGFR restorer: aligned faces + conditions in, restored faces out (docs/design.md §3, §5).

``MgfrPipeline.restore`` follows diffusers' numbered steps: check inputs, encode prompts once per
batch, encode LQ faces and references once, prepare latents, denoise, decode, colour-correct. All
guidance conditions go through one batched UNet call per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mgfr_cli.model.adapter import AdapterOutput, MgfrAdapter, ReferenceState
from mgfr_cli.model.base import BaseModel
from mgfr_cli.model.colorfix import METHODS as COLOR_METHODS, color_fix, to_uint8
from mgfr_cli.faces.conditions import FaceConditions
from mgfr_cli.errors import ConfigError, InputError
from mgfr_cli.model.profiles import profile_of
from mgfr_cli.model.sampling import SCHEDULERS, combine_guidance, denoise, make_scheduler, set_steps

VAE_CHUNK = 8  # images per VAE encode/decode call
MAX_SEED = 2**63 - 1  # what a torch.Generator takes


class RestoreError(InputError):
    """A restore that produced no usable face: the photos of that batch fail, the run goes on."""


@dataclass(frozen=True)
class RestoreSettings:
    steps: int = 30
    scheduler: str = "dpmpp"
    guidance_quality: float = 4.0  # l_nq, toward high quality and away from the negative-quality prompt
    guidance_attribute: float = 2.0  # l_na, away from the negative-attribute prompt
    color_fix: str = "wavelet"
    seed: int = 0
    start_from: str = "noise"  # "cond": the condition latent noised to the first timestep (DiffBIR's option)
    identity_guidance: float = 0.0  # strength of identity guidance toward the references (0: off)
    control_strength: float = 1.0  # the adapter's residuals into the UNet times this (DiffBIR's --strength)

    def check(self) -> None:
        import math

        if self.start_from not in ("noise", "cond"):
            raise ConfigError(f"--start-from {self.start_from!r}: choose noise or cond")
        if not math.isfinite(self.identity_guidance) or not 0 <= self.identity_guidance <= 10:
            raise ConfigError(f"--identity-guidance must be a number from 0 to 10, got {self.identity_guidance}")
        if not math.isfinite(self.control_strength) or not 0 <= self.control_strength <= 2:
            raise ConfigError(f"--control-strength must be a number from 0 to 2, got {self.control_strength}")
        for name in ("guidance_quality", "guidance_attribute"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise ConfigError(f"--steps must be a whole number from 1 to 1000, got {self.steps}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must be a whole number from 0 to 2**63-1, got {self.seed}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        if self.color_fix not in COLOR_METHODS:
            raise ConfigError(f"--color-fix {self.color_fix!r}: choose one of {', '.join(COLOR_METHODS)}")


@dataclass
class RestoreOutput:
    images: list  # (S, S, 3) uint8 RGB, one per input face
    ignored: tuple = ()  # inputs this adapter cannot use (e.g. "references"), reported once per run
    guided: int = 0  # faces steered toward their references by identity guidance
    cut: tuple = ()  # ("prompt" or "negative prompt", its words past the text encoder's length: not used)


class MgfrPipeline:
    """Holds the models and settings; per-face data only flow through :meth:`restore`."""

    def __init__(self, base: BaseModel, adapter: MgfrAdapter, identity=None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, cast: bool = True,
                 cleaner=None):
        """``cast``: move and cast the models to ``device``/``dtype``; the trainer passes False to sample
        with its own models as they are (fp32 adapter, half-precision base, under autocast)."""
        self.base = base.to(device, dtype) if cast else base
        if cast:
            adapter = adapter.to(device=device, dtype=dtype) if adapter.dtype != dtype else adapter.to(device)
        self.adapter = adapter
        self.adapter.eval()  # restore runs under no_grad; requires_grad is left to the owner (the trainer)
        self.profile = profile_of(adapter.config)
        # Identity tokens only for an RCA that was trained with them (tokens it never saw are noise to it).
        self.identity = identity if self.profile.uses_identity else None
        self.cleaner = cleaner  # DiffBIR: a 1x SwinIR before the VAE encode (cleaner.Cleaner)
        self.recogniser = None  # recogniser.Recogniser for identity guidance, when its weights are there
        self.resolution = int(adapter.config.resolution)
        self.device = torch.device(device)
        self.dtype = dtype
        self.scaling = float(getattr(base.vae.config, "scaling_factor", 0.18215))
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._cut: dict[str, str] = {}  # prompt sentence -> its words the text encoder does not read
        self._ref_cache: dict = {}  # reference file -> (latent, identity embedding)
        self._predict_fn = self._predict
        self.notes: list[str] = []  # what the user should hear about this pipeline (e.g. another base)

    def models(self) -> str:
        """Which models make the faces, in words: the adapter's kind and the cleaner's file."""
        return f"{self.profile.source}, cleaner {getattr(self.cleaner, 'file', None)}"

    def optimize(self, compile: bool = False, channels_last: bool = False) -> "MgfrPipeline":
        """GPU speed-ups (docs/design.md §5). ``compile``: torch.compile with CUDA graphs ("reduce-overhead") of
        the guided denoiser call; shapes must then stay fixed, so callers pad batches (DiffusionRestorer does)."""
        if channels_last:
            self.base.unet.to(memory_format=torch.channels_last)
            self.adapter.to(memory_format=torch.channels_last)
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            compiled = torch.compile(self._predict, mode=mode, dynamic=False)

            def predict(x, t, text_all, z_lq_all, ref_all, w_nq, w_na, strength=1.0):
                # One memory layout whatever produced the inputs (an NHWC photo, the cleaner, channels_last
                # convolutions): the compiled graph is guarded on strides, and another layout recompiles it.
                if ref_all is not None:
                    ref_all = ReferenceState(*(v.contiguous() for v in (ref_all.z_ref, ref_all.context, ref_all.weights)))
                return compiled(x.contiguous(), t, text_all.contiguous(), z_lq_all.contiguous(), ref_all, w_nq,
                                w_na.contiguous(), strength)

            self._predict_fn = predict
        return self

    def _predict(self, x: torch.Tensor, t: torch.Tensor, text_all: torch.Tensor, z_lq_all: torch.Tensor,
                 ref_all: ReferenceState | None, w_nq: float, w_na: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """One guided prediction: every condition in one batched adapter + UNet call, then the guidance sum.
        ``strength``: the adapter's residuals are scaled by it (1: as trained; less: the prior's own face)."""
        k = text_all.shape[0] // x.shape[0]
        x_all = x.repeat(k, 1, 1, 1)
        res = self.adapter(x_all, t, text_all, z_lq_all, ref_all)
        if strength != 1.0:
            res = AdapterOutput(down=tuple(d * strength for d in res.down), mid=res.mid * strength)
        out = self.base.unet(x_all, t, encoder_hidden_states=text_all, down_block_additional_residuals=res.down,
                             mid_block_additional_residual=res.mid).sample
        parts = out.chunk(k)
        return combine_guidance(parts[0], parts[1], parts[2] if k == 3 else None, w_nq, w_na)

    # -- encoders ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, texts: list[str]) -> torch.Tensor:
        """``(N, 77, D)`` text states; each distinct prompt is encoded once and kept (docs/design.md §5)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._prompt_cache]
        if todo:
            states = self.base.encode_text(todo, self.device)
            for t, s in zip(todo, states):
                self._prompt_cache[t], self._cut[t] = s, self.base.cut_words(t)
        return torch.stack([self._prompt_cache[t] for t in texts])

    def to_tensor(self, crops: list[np.ndarray]) -> torch.Tensor:
        """``(B, 3, R, R)`` in [-1, 1] at the model's resolution from square uint8 RGB crops of any sizes, resized
        in float, bicubic with antialiasing (as DiffBIR brings an aligned face under 512 up to 512)."""
        def one(crop: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).permute(2, 0, 1)[None].div(127.5).sub(1.0)
            if x.shape[-1] == self.resolution:
                return x
            return F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False,
                                 antialias=True).clamp(-1, 1)

        return torch.cat([one(c) for c in crops]).to(self.device, self.dtype)

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latents, VAE_CHUNK images at a time: at 512 px the VAE, not the UNet, sets the peak memory."""
        return torch.cat([self.base.vae.encode(c).latent_dist.mode() * self.scaling for c in x.split(VAE_CHUNK)])

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Images in [-1, 1] (``clamp=False``: as the VAE gives them), VAE_CHUNK at a time, so a batch that
        denoised never runs out of memory here."""
        return torch.cat([self._decode(c, clamp) for c in z.split(VAE_CHUNK)])

    def _decode(self, z: torch.Tensor, clamp: bool) -> torch.Tensor:
        x = self.base.vae.decode(z / self.scaling).sample
        if self.dtype == torch.float16 and not torch.isfinite(x).all():
            # The SD VAE can overflow in fp16 on some inputs: redo that decode in fp32.
            vae32 = self.base.vae.float()
            x = vae32.decode(z.float() / self.scaling).sample.clamp(-1, 1).to(self.dtype)
            self.base.vae.to(self.dtype)
        return x.clamp(-1, 1) if clamp else x

    # -- restore --------------------------------------------------------------------------
    @torch.no_grad()
    def restore(self, crops: list[np.ndarray], conditions: list[FaceConditions], settings: RestoreSettings,
                seeds: list[int] | None = None, callback=None) -> RestoreOutput:
        """Restore aligned faces. ``crops``: ``(S, S, 3)`` uint8 RGB; ``seeds``: one per face (default all
        ``settings.seed``), so a face restores the same whatever batch it is in."""
        # 1. Check inputs
        settings.check()
        if len(crops) != len(conditions):
            raise ValueError("one FaceConditions per face")
        if not crops:
            return RestoreOutput([])
        b, sizes = len(crops), [c.shape[0] for c in crops]
        seeds = seeds if seeds is not None else [settings.seed] * b

        # 2. Encode prompts (once per distinct prompt): positive, negative-quality, negative-attribute
        prof = self.profile
        sentences = [prof.positive(c.prompt) for c in conditions]
        text_c = self.encode_prompts(sentences)
        said = [("prompt", t) for t in sentences]
        text_nq = self.encode_prompts([prof.negative_quality] * b)
        has_na = [bool(c.negative_prompt) for c in conditions]
        text_na = None
        if any(has_na):
            negatives = [prof.positive(c.negative_prompt) if c.negative_prompt else prof.positive(c.prompt)
                         for c in conditions]
            text_na = self.encode_prompts(negatives)
            said += [("negative prompt", t) for t, c in zip(negatives, conditions) if c.negative_prompt]
        cut = tuple(dict.fromkeys((kind, self._cut[t]) for kind, t in said if self._cut[t]))  # said once each
        w_na = torch.tensor(has_na, device=self.device, dtype=self.dtype).view(b, 1, 1, 1) * settings.guidance_attribute
        texts = [text_c, text_nq] + ([text_na] if text_na is not None else [])

        # 3. Encode the (cleaned) LQ faces and the references once; each guidance branch's RCA reads that
        # branch's own text, the combination it was trained on
        lq = self.to_tensor(crops)
        cond = self.cleaner(lq) if self.cleaner is not None else lq
        z_lq = self.encode_images(cond)
        ref_all = self.prepare_references(z_lq, conditions, texts)
        has_refs = any(c.references for c in conditions)
        guide = target = None
        if has_refs and settings.identity_guidance > 0 and self.recogniser is not None:
            from mgfr_cli.model.identity_guidance import IdentityGuidance

            guide = IdentityGuidance(self.recogniser, self.base.vae, self.scaling, self._alphas_cumprod(),
                                     self.base.scheduler_config.get("prediction_type", "epsilon"),
                                     settings.identity_guidance)
            target = guide.target([[r.crop for r in c.references] for c in conditions], self.device)
        ignored = ("references",) if has_refs and not prof.uses_reference and guide is None else ()

        # 4. Prepare latents: per-face noise from per-face generators (CPU, seeded with the face's seed: a face
        # restores the same in any batch, and --seed 231 on the CPU draws what DiffBIR's torch.manual_seed(231)
        # draws: x_T first, then each step's noise from the same generator); from pure noise, or (DiffBIR's
        # "cond" start) from the condition latent noised to the first timestep
        shape = (1,) + tuple(z_lq.shape[1:])
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = torch.cat([torch.randn(shape, generator=g) for g in generators]).to(self.device, self.dtype)
        scheduler = make_scheduler(settings.scheduler, self.base.scheduler_config)
        set_steps(scheduler, settings.scheduler, settings.steps, self.device)
        if settings.start_from == "cond":
            latents = scheduler.add_noise(z_lq, noise, scheduler.timesteps[:1].repeat(b))
        else:
            latents = noise * scheduler.init_noise_sigma

        # 5. Denoise: all guidance conditions in one batched call
        k = len(texts)
        text_all = torch.cat(texts)
        z_lq_all = z_lq.repeat(k, 1, 1, 1)

        def step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = self._predict_fn(x, t, text_all, z_lq_all, ref_all, settings.guidance_quality, w_na,
                                   settings.control_strength)
            return guide.adjust(x, t, out, target) if guide is not None else out

        latents = denoise(step, latents, scheduler, generator=generators, callback=callback)

        # 6. Decode and 7. colour-correct toward the (cleaned) input, then 8. to uint8
        guided = int(target.active.sum()) if target is not None and guide.steps_guided else 0
        if guide is not None and not guide.steps_guided and not prof.uses_reference:
            ignored = ("references",)  # too few steps: none fell in the guidance window
        return RestoreOutput(self.finish(latents, cond, sizes, settings.color_fix), ignored, guided, cut)

    def _alphas_cumprod(self) -> torch.Tensor:
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.base.scheduler_config).alphas_cumprod

    def finish(self, latents: torch.Tensor, cond: torch.Tensor, sizes: list[int], method: str) -> list[np.ndarray]:
        """Final latents -> ``(size, size, 3)`` uint8 faces, each at its crop's size. A DiffBIR adapter gets
        DiffBIR's post-processing exactly: nothing clamped (the decode, the cleaned face, the colour fix, its resize
        to the input's size) until the one clamp before uint8, which truncates; MGFR adapters clamp the decode and
        round."""
        exact = self.profile.diffbir_output
        x = self.decode_latents(latents, clamp=not exact)
        if not bool(torch.isfinite(x).all()):  # never paste NaN/inf (a black square) and call it restored
            raise RestoreError("the restored face has non-finite values (NaN or inf): check --guidance-* and the "
                               "adapter's weights")
        x = color_fix((x.float() + 1) / 2, (cond.float() + 1) / 2, method)  # on the [0, 1] scale, as DiffBIR
        if all(size == x.shape[-1] for size in sizes):  # the usual batch: one conversion, one copy to the host
            return list(to_uint8(x, truncate=exact).permute(0, 2, 3, 1).cpu().numpy())
        faces = []
        for xi, size in zip(x.split(1), sizes):
            if xi.shape[-1] != size:
                xi = F.interpolate(xi, size=(size, size), mode="bicubic", align_corners=False, antialias=exact)
            faces.append(to_uint8(xi, truncate=exact)[0].permute(1, 2, 0).cpu().numpy())
        return faces

    def encode_references(self, refs: list) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(VAE latent, ArcFace embedding) of each reference face. A reference read from a file is encoded
        once per pipeline: in a batch run the same ``--ref`` serves every face of every photo."""
        key = lambda ref: ref.source if ref.source is not None else id(ref)  # noqa: E731
        done = {k: v for k, v in ((key(r), self._ref_cache.get(r.source)) for r in refs) if v is not None}
        todo = list({key(r): r for r in refs if key(r) not in done}.values())
        if todo:  # in chunks: 200 references in one VAE batch took 8 GB
            z = torch.cat([self.encode_images(self.to_tensor([r.crop for r in todo[i : i + VAE_CHUNK]]))
                           for i in range(0, len(todo), VAE_CHUNK)])
            e = (torch.from_numpy(self.identity.embed([r.crop for r in todo])).to(self.device, self.dtype)
                 if self.identity is not None else [None] * len(todo))
            done.update({key(r): (zi, ei) for r, zi, ei in zip(todo, z, e)})
            if len(self._ref_cache) > 1024:
                self._ref_cache.clear()
            self._ref_cache.update({r.source: done[key(r)] for r in todo if r.source is not None})
        return [done[key(r)] for r in refs]

    def prepare_references(self, z_lq: torch.Tensor, conditions: list[FaceConditions],
                           texts: list[torch.Tensor]) -> ReferenceState | None:
        """VAE latents, identity embeddings and RLF fusion of every face's references, once per restore,
        stacked for the guidance branches (one ``(B, L, D)`` text each) in the order of ``texts``.

        Faces have different numbers of references: they are padded to the batch's largest count and
        the padding is masked out (a face without references gets no reference signal at all).
        """
        counts = [len(c.references) for c in conditions]
        r = max(counts)
        if r == 0 or not self.profile.uses_reference:
            return None
        b = len(conditions)
        encoded = self.encode_references([ref for c in conditions for ref in c.references])
        z_flat = torch.stack([z for z, _ in encoded])
        z_refs = torch.zeros((b, r) + z_flat.shape[1:], device=self.device, dtype=self.dtype)
        mask = torch.zeros(b, r, device=self.device)
        ids = None
        if self.identity is not None:
            e_flat = torch.stack([e for _, e in encoded])
            ids = torch.zeros(b, r, e_flat.shape[1], device=self.device, dtype=self.dtype)
        i = 0
        for f, n in enumerate(counts):
            z_refs[f, :n] = z_flat[i : i + n]
            if ids is not None:
                ids[f, :n] = e_flat[i : i + n]
            mask[f, :n] = 1
            i += n
        states = [self.adapter.prepare_reference(z_lq, z_refs, ids, t, mask) for t in texts]
        return ReferenceState(torch.cat([st.z_ref for st in states]), torch.cat([st.context for st in states]),
                              torch.cat([st.weights for st in states]))


class DiffusionRestorer:
    """The :class:`~mgfr_cli.app.batch.Restorer` that ``mgfr restore`` uses: the pipeline with fixed settings."""

    def __init__(self, pipeline: MgfrPipeline, settings: RestoreSettings, pad_to: int = 0):
        settings.check()
        self.pipeline = pipeline
        self.settings = settings
        self.pad_to = pad_to  # a compiled pipeline keeps static shapes: fill short batches with copies
        self.ignored: set[str] = set()  # inputs the adapter could not use, for the run's summary
        self.guided = 0  # faces steered by identity guidance in this run
        self.faces = self.negatives = 0  # faces restored in this run, and those with a negative-attribute prompt
        self.referenced = 0  # faces restored with references
        self.cut: dict[tuple, None] = {}  # (which prompt, its words the text encoder did not read), in order
        self.callback = None  # callback(step, t, latents) per denoising step (the web page's progress bar)

    def restore(self, crops, conditions, seeds):
        n = len(crops)
        self.faces += n
        self.negatives += sum(bool(c.negative_prompt) for c in conditions)
        self.referenced += sum(bool(c.references) for c in conditions)
        if self.pad_to and n < self.pad_to:
            extra = self.pad_to - n
            crops, conditions, seeds = crops + crops[-1:] * extra, conditions + conditions[-1:] * extra, seeds + seeds[-1:] * extra
        out = self.pipeline.restore(crops, conditions, self.settings, seeds, callback=self.callback)
        self.ignored.update(out.ignored)
        self.cut.update(dict.fromkeys(out.cut))
        self.guided += min(out.guided, n)
        return out.images[:n]

    def tally(self) -> dict:
        """What this run's faces used, as plain data (a process of a multi-GPU launch hands it to process 0)."""
        return {"faces": self.faces, "negatives": self.negatives, "referenced": self.referenced, "guided": self.guided,
                "ignored": sorted(self.ignored), "cut": [list(c) for c in self.cut]}

    def absorb(self, tally: dict) -> None:
        """Count another process's faces in (its :meth:`tally`), so the launch's notes speak for all of them."""
        self.faces += tally.get("faces", 0)
        self.negatives += tally.get("negatives", 0)
        self.referenced += tally.get("referenced", 0)
        self.guided += tally.get("guided", 0)
        self.ignored.update(tally.get("ignored", ()))
        self.cut.update(dict.fromkeys(tuple(c) for c in tally.get("cut", ())))

    def idle(self) -> dict[str, str]:
        """The guidance settings no face of this run could act on, each with why: identity guidance when no face
        had references (or, with references an adapter's reference branch used, no step was guided), attribute
        guidance when no face had a negative prompt; none when no face was restored (a resumed run with every output
        done). Whether the user set them is the caller's to say."""
        from mgfr_cli.model.identity_guidance import WINDOW

        idle = {}
        if self.faces and self.settings.identity_guidance > 0 and not self.guided and "references" not in self.ignored:
            idle["identity_guidance"] = (
                "no face had references to steer toward" if not self.referenced else
                "no recogniser was loaded: mgfr weights fetch arcface-irse50" if self.pipeline.recogniser is None else
                f"no step of {self.settings.steps} fell in its window t/T {WINDOW[0]:g}..{WINDOW[1]:g}: use more steps")
        if self.faces and not self.negatives:
            idle["guidance_attribute"] = "no face had a negative prompt to steer away from"
        return idle
