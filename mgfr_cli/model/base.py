"""The frozen Stable Diffusion base: UNet, VAE, text encoder, tokenizer and noise schedule.

Loaded from a diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) or a single
``.safetensors`` checkpoint; built with random weights from a :class:`ModelConfig` for tests and
benchmarks. Nothing here downloads: a missing file is a :class:`WeightsError` naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mgfr_cli.configs import ModelConfig
from mgfr_cli.errors import WeightsError
from mgfr_cli.files import is_broken_link

BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SEPARATORS = " \t\n,;"  # not said at the start of a prompt's words that were cut


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

    def text_length(self) -> int:
        """Tokens the text encoder reads, its start and end marks included (77 for CLIP)."""
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    def encode_text(self, texts: list[str], device):
        """``(N, L, D)`` text-encoder states of ``texts``, padded to the encoder's length (77 for CLIP); a longer
        text is cut there (:meth:`cut_words` says what is lost)."""
        length = self.text_length()
        tok = self.tokenizer(list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(device))[0]

    def cut_words(self, text: str) -> str:
        """What of ``text`` the encoder does not read, as written: from the first token past its length (so inside a
        word too: "brown,eyes,beard" is one word to a split on spaces, five tokens to CLIP); '' when it all fits."""
        length = self.text_length()
        if not getattr(self.tokenizer, "is_fast", False):  # no offsets: the tokens past it, as the tokenizer spells them
            ids = self.tokenizer(text, verbose=False).input_ids
            return self.tokenizer.decode(ids[length - 1 : -1]).lstrip(SEPARATORS) if len(ids) > length else ""
        tokens = self.tokenizer(text, return_offsets_mapping=True, verbose=False)
        return text[tokens.offset_mapping[length - 1][0]:].lstrip(SEPARATORS) if len(tokens.input_ids) > length else ""

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
    broken = [p for p in sorted(path.rglob("*")) if is_broken_link(p)]
    if broken:  # (links into a Hugging Face cache moved or cleared since: diffusers would say "no file named ...")
        raise WeightsError(f"{path}: {len(broken)} file(s) link to nothing ({broken[0].relative_to(path)} -> "
                           f"{os.readlink(broken[0])}); get them again with: mgfr weights fetch sd21-base")
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
    if not scheduler_file.is_file():  # {} would silently mean diffusers' default betas and epsilon: wrong for SD
        raise WeightsError(f"{path}: missing scheduler/scheduler_config.json (the noise schedule and prediction type "
                           f"of this base; get it with: mgfr weights fetch sd21-base)")
    scheduler_config = json.loads(scheduler_file.read_text())
    return BaseModel(unet, vae, text_encoder, tokenizer, scheduler_config).freeze()


def single_file_config(folder: Path, model: str = "mgfr-sd21") -> Path:
    """A diffusers config folder for an SD 2.1 *base* single-file checkpoint, written from the architecture
    config (``models/mgfr-sd21.yaml``) and the shipped tokenizer, so the file loads offline and as an
    epsilon-prediction model. (diffusers' own guess maps every SD 2.x file to the 768 v-prediction config,
    which it would fetch from the hub; SD 2.1 base and 768 have identical shapes, so the file cannot tell.)"""
    import json
    import shutil

    from mgfr_cli.configs import MODELS_DIR, load_model_config

    cfg = load_model_config(model)
    folder = Path(folder)
    parts = {"unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
             "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
             "scheduler": ("diffusers", "DDIMScheduler")}
    index = {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
             "safety_checker": [None, None], "feature_extractor": [None, None], **{k: list(v) for k, v in parts.items()}}
    for name in ("unet", "vae", "text_encoder", "scheduler"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        body = dict(cfg.base[name])
        if name == "text_encoder":
            body.update(architectures=["CLIPTextModel"], model_type="clip_text_model")
        file = "scheduler_config.json" if name == "scheduler" else "config.json"
        (folder / name / file).write_text(json.dumps(body, indent=1))
    shutil.copytree(MODELS_DIR / "sd21-base-tokenizer", folder / "tokenizer", dirs_exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


def _load_single_file(path: Path, dtype) -> BaseModel:
    """An original-layout SD 2.1 base checkpoint in one file, converted by diffusers with our configs."""
    import tempfile

    from diffusers import StableDiffusionPipeline

    with tempfile.TemporaryDirectory(prefix="mgfr-sd21-config-") as tmp:
        config = single_file_config(Path(tmp))
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=str(config), local_files_only=True, safety_checker=None,
                **({"torch_dtype": dtype} if dtype is not None else {}))
        except Exception as exc:  # diffusers raises many types here; all mean "this file is not a usable base"
            raise WeightsError(f"{path}: cannot load as a single-file SD 2.1 base checkpoint "
                               f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    scheduler_config = dict(pipe.scheduler.config)
    if scheduler_config.get("prediction_type") != "epsilon":
        raise WeightsError(f"{path}: loaded as a {scheduler_config.get('prediction_type')} model; mgfr's single-file "
                           f"path is for SD 2.1 base (epsilon): convert other bases to a diffusers folder")
    return BaseModel(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, scheduler_config).freeze()
