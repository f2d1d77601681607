"""The frozen Stable Diffusion base: UNet, VAE, text encoder, tokenizer and noise schedule.

Loaded from a diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) or a single
``.safetensors`` checkpoint; built with random weights from a :class:`ModelConfig` for tests and
benchmarks. Nothing here downloads: a missing file is a :class:`WeightsError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .configs import ModelConfig
from .errors import WeightsError

BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class BaseModel:
    unet: object  # diffusers UNet2DConditionModel
    vae: object  # diffusers AutoencoderKL
    text_encoder: object  # transformers CLIPTextModel
    tokenizer: object  # transformers CLIPTokenizer
    scheduler_config: dict  # the training noise schedule (diffusers scheduler config)

    def to(self, device, dtype):
        for m in (self.unet, self.vae, self.text_encoder):
            # cast only when needed: diffusers warns on every dtype cast
            m.to(device=device, dtype=dtype) if m.dtype != dtype else m.to(device)
        return self

    def freeze(self):
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False)
            m.eval()
        return self

    def encode_text(self, texts: list[str], device):
        """``(N, L, D)`` text-encoder states of ``texts``, padded to the encoder's length (77 for CLIP)."""
        length = min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)
        tok = self.tokenizer(list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(device))[0]

    def save(self, path: Path) -> None:
        """Write the standard diffusers folder layout (safetensors)."""
        import json

        path = Path(path)
        self.unet.save_pretrained(path / "unet")
        self.vae.save_pretrained(path / "vae")
        self.text_encoder.save_pretrained(path / "text_encoder")
        self.tokenizer.save_pretrained(path / "tokenizer")
        (path / "scheduler").mkdir(parents=True, exist_ok=True)
        (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(self.scheduler_config, indent=2))


def build_random_base(cfg: ModelConfig, tokenizer, seed: int = 0) -> BaseModel:
    """A base of ``cfg``'s shape with random weights (tests, benchmarks)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg.base["unet"])
    vae = AutoencoderKL(**cfg.base["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg.base["text_encoder"]))
    return BaseModel(unet, vae, text_encoder, tokenizer, dict(cfg.base["scheduler"])).freeze()


def load_base(path: Path, dtype=None) -> BaseModel:
    """Load a base from a diffusers folder or a single ``.safetensors``/``.ckpt`` file (on the CPU)."""
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if path.is_file():
        return _load_single_file(path, dtype)
    if not path.is_dir():
        raise WeightsError(f"base model not found at {path} (get it with: mgfr weights fetch sd21-base)")
    for part in BASE_PARTS:
        if not (path / part).is_dir():
            raise WeightsError(f"{path}: base model folder lacks {part}/ (expected the diffusers layout "
                               f"{', '.join(p + '/' for p in BASE_PARTS)}; get it with: mgfr weights fetch sd21-base)")
    kw = {"torch_dtype": dtype} if dtype is not None else {}
    try:
        unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw)
        vae = AutoencoderKL.from_pretrained(path / "vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True,
                                                     **({"dtype": dtype} if dtype is not None else {}))
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise WeightsError(f"{path}: cannot load the base model ({str(exc).splitlines()[0]})") from None
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}
    return BaseModel(unet, vae, text_encoder, tokenizer, scheduler_config).freeze()


def _load_single_file(path: Path, dtype) -> BaseModel:
    """An original-layout SD checkpoint in one file; diffusers converts it (its configs ship with diffusers)."""
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), local_files_only=True,
                                                        **({"torch_dtype": dtype} if dtype is not None else {}))
    except Exception as exc:  # diffusers raises many types here; all mean "this file is not a usable base"
        raise WeightsError(f"{path}: cannot load as a single-file SD checkpoint ({str(exc).splitlines()[0]})") from None
    return BaseModel(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, dict(pipe.scheduler.config)).freeze()
