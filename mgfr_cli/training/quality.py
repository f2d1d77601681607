"""No-reference image quality for ``mgfr eval``: CLIP-IQA, the score real-world face restoration papers report
beside MUSIQ and MANIQA where no ground truth exists.

CLIP-IQA (Wang, Chan and Loy, AAAI 2023) asks CLIP whether an image is nearer "Good photo." or "Bad photo.":
the softmax of CLIP's scaled cosines to the two prompts, the first one's share (0..1, higher is better). It uses
OpenAI's CLIP ResNet-50 on the image at its own size, so the attention pool runs without its positional embedding
(which fixes the input to 224 px), as the authors' code, pyiqa's ``clipiqa`` and piq's ``CLIPIQA`` do. The model
is built and loaded by open_clip from the model root (``mgfr weights fetch clip-rn50``: timm's safetensors copy
of OpenAI's weights); the score is computed in fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mgfr_cli.errors import WeightsError

CLIP_RN50 = "clip-rn50"  # the folder in the model root: open_clip_config.json + open_clip_model.safetensors
PROMPTS = ("Good photo.", "Bad photo.")


class ClipIqa:
    """``ClipIqa(root / CLIP_RN50)(rgb8) -> float`` in [0, 1], for images of ``min_size`` px or more a side (the
    ResNet halves the image five times)."""

    min_size = 32

    def __init__(self, folder: Path, device: str = "cpu"):
        import open_clip

        folder = Path(folder)
        if not (folder / "open_clip_config.json").is_file() or not list(folder.glob("*.safetensors")):
            raise WeightsError(f"{folder}: needs open_clip_config.json and open_clip_model.safetensors "
                               f"(mgfr weights fetch {CLIP_RN50})")
        try:
            # QuickGELU, as OpenAI's CLIP was trained with (a Hub config may leave it to the pretrained tag)
            model = open_clip.create_model(f"local-dir:{folder}", device=device, force_quick_gelu=True)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise WeightsError(f"{folder}: not a CLIP model open_clip can load ({exc})") from None
        if model.visual.__class__.__name__ != "ModifiedResNet":
            raise WeightsError(f"{folder}: CLIP-IQA uses CLIP's ResNet image tower (RN50); this one is "
                               f"{model.visual.__class__.__name__}")
        self.model, self.device = model.eval().float(), device
        cfg = getattr(model.visual, "preprocess_cfg", {})
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)
        tokens = open_clip.tokenize(list(PROMPTS), context_length=model.context_length).to(device)  # CLIP's BPE
        with torch.no_grad():
            anchors = model.encode_text(tokens).float()
            self.scale = float(model.logit_scale.exp())
        self.anchors = anchors / anchors.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, rgb8: np.ndarray) -> float:
        x = torch.from_numpy(np.array(rgb8, dtype=np.float32)).to(self.device).permute(2, 0, 1)[None] / 255.0
        features = image_features(self.model.visual, (x - self.mean) / self.std)
        features = features / features.norm(dim=-1, keepdim=True)
        return float((self.scale * features @ self.anchors.T).softmax(dim=-1)[0, 0])


def image_features(visual, x: torch.Tensor) -> torch.Tensor:
    """CLIP's ResNet image embedding of ``x`` at any size: the attention pool over the mean token and every
    position of the last feature map, without the positional embedding (learnt for 7x7 positions only)."""
    x = visual.stem(x)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    tokens = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens])
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=tokens.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False)
    return out[0]
