"""mgfr against DiffBIR's own face pipeline, on the same card with the same weights (issue 23, section 1).

DiffBIR is imported from its source folder (``--diffbir``; never copied into mgfr). Its models are built with
random weights of the real shapes (SD 2.1 base UNet, VAE and OpenCLIP text encoder; the v2 ControlNet; the face
SwinIR), every zero-initialised tensor filled with small noise so each path changes the output. mgfr then loads
the *same* tensors the way a user's files reach it: the base converted from the original layout by diffusers'
single-file converters and saved as a diffusers folder, the ControlNet through ``convert_diffbir`` (what
``mgfr weights convert`` runs), the cleaner by its manifest file name. Both restore the same aligned 512 face
with DiffBIR's v2 face recipe (spaced sampler, 50 steps, CFG scale 4, start from noise); then aligned faces under
512 (``--aligned-sizes``), which both resize in and out.

    python benchmarks/bench_diffbir.py --diffbir ../shared/peers/diffbir-3f8b530 --tiny --device cpu --steps 2

``--tiny`` builds small models of the same architectures (a dry run of every path on a CPU). Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import typing
from pathlib import Path

import numpy as np
import torch
import yaml

NEGATIVE = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"  # DiffBIR's default
TINY = {  # the same architectures, small: channels stay multiples of 32 (DiffBIR's GroupNorm32)
    "unet": dict(model_channels=32, channel_mult=[1, 1, 2, 2], num_head_channels=8, context_dim=64),
    "vae": dict(ch=32, ch_mult=[1, 1, 1, 1]),
    "clip": dict(embed_dim=64, vision_cfg=dict(image_size=28, layers=1, width=64, head_width=32, patch_size=14),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=4, layers=3)),
    "swinir": dict(embed_dim=24, depths=[2, 2], num_heads=[2, 2]),
}


def _params(folder: Path, name: str) -> dict:
    return yaml.safe_load((folder / "configs" / "inference" / name).read_text())["params"]


class DiffBIR:
    """DiffBIR's ControlLDM, face SwinIR and diffusion schedule, built from its source with random weights."""

    def __init__(self, folder: Path, device: str, tiny: bool = False, seed: int = 0):
        folder = Path(folder).resolve()
        sys.path.insert(0, str(folder))
        if not hasattr(torch, "Tuple"):  # DiffBIR's EDM sampler annotates with torch.Tuple (gone from newer torch)
            torch.Tuple = typing.Tuple
        from diffbir.model import ControlLDM, Diffusion, SwinIR

        self.folder, self.device = folder, device
        cfg, swin = _params(folder, "cldm.yaml"), _params(folder, "swinir.yaml")
        if tiny:
            for part in ("unet_cfg", "controlnet_cfg"):
                cfg[part].update(TINY["unet"])
            cfg["vae_cfg"]["ddconfig"].update(TINY["vae"])
            cfg["clip_cfg"].update(TINY["clip"])
            swin.update(TINY["swinir"])
        self.cfg = cfg
        torch.manual_seed(seed)
        with torch.device(device):  # random init on the GPU: minutes faster for the full size
            self.cldm = ControlLDM(**cfg).eval()
            self.cleaner = SwinIR(**swin).eval()
        self.diffusion = Diffusion(**_params(folder, "diffusion.yaml")).to(device)
        gen = torch.Generator(device).manual_seed(seed + 1)
        with torch.no_grad():  # zero-initialised outputs (ControlNet zero convs, UNet out layers): small noise
            for module in (self.cldm, self.cleaner):
                for p in module.parameters():
                    if p.dim() > 0 and not p.any():
                        p.copy_(torch.randn(p.shape, generator=gen, device=device) * 0.02)

    def original_state(self) -> dict:
        """The base as SD 2.1's original single file has it (the layout DiffBIR's loader reads)."""
        out = {}
        for prefix, module in (("model.diffusion_model.", self.cldm.unet), ("first_stage_model.", self.cldm.vae),
                               ("cond_stage_model.", self.cldm.clip)):
            out.update({prefix + k: v.detach().float().cpu() for k, v in module.state_dict().items()})
        return out

    def pipeline(self):
        from diffbir import pipeline as dp

        if not self.device.startswith("cuda"):  # its VRAM monitor synchronises CUDA; a dry run has none
            dp.VRAMPeakMonitor = lambda tag: contextlib.nullcontext()
        return dp.SwinIRPipeline(self.cleaner, self.cldm, self.diffusion, None, self.device)

    def half(self) -> None:
        """As DiffBIR's ``--precision fp16``: the UNet and ControlNet blocks in fp16 (its ``cast_dtype``)."""
        self.cldm.cast_dtype(torch.float16)

    def restore(self, pipe, face: np.ndarray, steps: int, dtype, noise_seed: int | None = None) -> np.ndarray:
        """One face, as DiffBIR's inference loop runs it (autocast at the precision). ``noise_seed``: its noise
        drawn from a CPU generator in its own order (x_T, then one per step), as mgfr's ``--seed`` draws it."""
        with _injected_noise(noise_seed), torch.autocast(self.device.split(":")[0], dtype,
                                                          enabled=dtype != torch.float32):
            out = pipe.run(face[None], steps, 1.0, False, 512, 256, False, 256, False, 256, False, 512, 256,
                           "", NEGATIVE, 4.0, "noise", "spaced", 0, False, 0.0, 0.0, 300.0, 1.0, 0.0, 1)
        return out[0]


class _CpuNoise:
    """Stands in for ``torch`` inside DiffBIR's pipeline and sampler modules: ``randn``/``randn_like`` hand out
    the draws of one seeded CPU generator; everything else is torch's."""

    def __init__(self, seed: int):
        self._g = torch.Generator().manual_seed(seed)

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn(self, shape, dtype=None, device=None, **_):
        return torch.randn(tuple(shape), generator=self._g).to(device=device, dtype=dtype)

    def randn_like(self, x):
        return torch.randn(x.shape, generator=self._g).to(x.device, x.dtype)


@contextlib.contextmanager
def _injected_noise(seed: int | None):
    from diffbir import pipeline as dp
    from diffbir.sampler import spaced_sampler as ss

    if seed is None:
        yield
        return
    noise = _CpuNoise(seed)
    dp.torch, ss.torch = noise, noise
    try:
        yield
    finally:
        dp.torch, ss.torch = torch, torch


def mgfr_from(diffbir: DiffBIR, root: Path, device: str, dtype):
    """mgfr's pipeline on DiffBIR's tensors, loaded through mgfr's own loaders from files in ``root``."""
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from mgfr_cli.model.base import BaseModel
    from mgfr_cli.model.loading import build_pipeline
    from mgfr_cli.weights.convert import convert_diffbir
    from mgfr_cli.weights.provision import base_unet_config
    from mgfr_cli.configs import MODELS_DIR

    cfg, state = diffbir.cfg, diffbir.original_state()
    original = {"model": {"params": {"unet_config": {"params": cfg["unet_cfg"]},
                                     "first_stage_config": {"params": cfg["vae_cfg"]},
                                     "scale_factor": cfg["latent_scale_factor"]}}}
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, state)
    unet = UNet2DConditionModel(**unet_cfg)
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(state, unet_cfg))
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, state, scaling_factor=cfg["latent_scale_factor"])
    vae = AutoencoderKL(**vae_cfg)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(state, vae_cfg))
    text = cfg["clip_cfg"]["text_cfg"]
    encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=text["vocab_size"], hidden_size=text["width"], intermediate_size=4 * text["width"],
        num_hidden_layers=text["layers"] - 1, num_attention_heads=text["heads"], max_position_embeddings=77,
        hidden_act="gelu", projection_dim=cfg["clip_cfg"]["embed_dim"]))  # penultimate layer: one layer fewer
    converted = {k.removeprefix("text_model."): v for k, v in sfu.convert_open_clip_checkpoint(encoder, state).items()}
    missing, _ = encoder.load_state_dict(converted, strict=False)  # transformers 5 keys have no text_model.
    assert not [k for k in missing if "position_ids" not in k], missing
    scheduler = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    tokenizer = CLIPTokenizer.from_pretrained(MODELS_DIR / "sd21-base-tokenizer")  # SD 2.x's: pads with id 0
    BaseModel(unet, vae, encoder, tokenizer, scheduler).save(root / "sd21-base")
    torch.save({k: v.detach().float().cpu() for k, v in diffbir.cldm.controlnet.state_dict().items()}, root / "v2.pth")
    torch.save({k: v.detach().cpu() for k, v in diffbir.cleaner.state_dict().items()}, root / "face_swinir_v1.ckpt")
    convert_diffbir(root / "v2.pth", root / "diffbir-v2-lca", source="diffbir-v2",
                    unet_config=base_unet_config(root, root / "sd21-base"), model_root=root)
    return build_pipeline(root / "sd21-base", root / "diffbir-v2-lca", identity_path=None, device=device, dtype=dtype,
                          cleaner_path=root / "face_swinir_v1.ckpt")


def mgfr_restore(pipe, faces: list[np.ndarray], steps: int, seed: int = 231) -> list[np.ndarray]:
    """DiffBIR's recipe through mgfr (the DiffBIR profile's defaults: ddpm, scale 4), all faces in one batch."""
    from mgfr_cli.faces.conditions import FaceConditions
    from mgfr_cli.model.pipeline import RestoreSettings

    prof = pipe.profile
    settings = RestoreSettings(steps=steps, scheduler=prof.default_scheduler, guidance_quality=prof.default_guidance,
                               seed=seed)
    return pipe.restore(faces, [FaceConditions() for _ in faces], settings).images


def levels(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(int) - b.astype(int))
    return f"max {d.max()}, mean {d.mean():.2f}, {(d > 1).mean():.2%} of values over 1 level"


def main():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from bench_common import face_crop

    ap = argparse.ArgumentParser()
    ap.add_argument("--diffbir", required=True, help="DiffBIR's source folder (its README explains it)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--root", default="/tmp/mgfr-bench-diffbir")
    ap.add_argument("--aligned-sizes", type=int, nargs="*", default=[256, 384], help="aligned inputs under 512")
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    db = DiffBIR(Path(args.diffbir), args.device, tiny=args.tiny)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    pipe = mgfr_from(db, root, args.device, dtype)
    face = face_crop(0)
    start = time.perf_counter()
    theirs = db.restore(db.pipeline(), face, args.steps, dtype, noise_seed=231)
    mid = time.perf_counter()
    ours = mgfr_restore(pipe, [face], args.steps)[0]
    print(f"DiffBIR {mid - start:.1f} s, mgfr {time.perf_counter() - mid:.1f} s; output difference: {levels(ours, theirs)}")
    from mgfr_cli.faces.helper import aligned_output, resize_face  # noqa: F401

    for n in args.aligned_sizes:  # `--has-aligned` inputs that are not 512: resized in and out as DiffBIR does
        small = resize_face(face, (n, n))
        theirs = db.restore(db.pipeline(), small, args.steps, dtype, noise_seed=231)
        ours = aligned_output(mgfr_restore(pipe, [small], args.steps)[0], n, n)  # as given: `--has-aligned` does
        print(f"aligned {n}x{n} input: output difference {levels(ours, theirs)}")


if __name__ == "__main__":
    main()
