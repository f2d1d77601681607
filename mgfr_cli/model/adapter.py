"""The MGFR dual-control adapter: LCA, RLF, RCA, the exchange convs and the identity projector.

docs/design.md §3. Both branches are ControlNet-style copies of the base UNet's encoder, built from
diffusers blocks. Only LCA feeds the UNet (through ``down_block_additional_residuals``); RCA reaches
it only through LCA, via the exchange convs. Every new path starts at zero (``zero_module``), so an
untrained adapter leaves the base model's prediction unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block
from torch import nn

# The UNet config keys that shape an encoder copy; `MgfrAdapter.from_unet` takes exactly these.
UNET_ENCODER_KEYS = (
    "in_channels", "block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim",
    "attention_head_dim", "num_attention_heads", "use_linear_projection", "norm_num_groups", "norm_eps",
    "act_fn", "flip_sin_to_cos", "freq_shift", "downsample_padding", "transformer_layers_per_block",
    "upcast_attention", "only_cross_attention", "resnet_time_scale_shift", "mid_block_scale_factor",
)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter: the one way a new path into the base model starts (docs/design.md §3)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _per_level(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


@dataclass
class ReferenceState:
    """Step-independent reference features, computed once per restore (``prepare_reference``).

    ``z_ref``: ``(B*R, 4, h, w)`` fused reference latents; ``context``: ``(B*R, L+N, D)`` text + identity
    tokens for RCA; ``weights``: ``(B, R)``, each face's average over its real references (zeros where a
    face has fewer than R, or none: padded slots and reference-less faces then add nothing).
    """

    z_ref: torch.Tensor
    context: torch.Tensor
    weights: torch.Tensor

    @property
    def num_refs(self) -> int:
        return self.weights.shape[1]

    def repeat(self, times: int) -> "ReferenceState":
        """The same references for ``times`` guidance conditions stacked along the batch."""
        return ReferenceState(self.z_ref.repeat(times, 1, 1, 1), self.context.repeat(times, 1, 1),
                              self.weights.repeat(times, 1))


@dataclass
class AdapterOutput:
    """Residuals for the base UNet: ``down`` matches its skip connections, ``mid`` its middle block."""

    down: tuple[torch.Tensor, ...]
    mid: torch.Tensor


class ControlBranch(nn.Module):
    """A copy of the UNet encoder (plus middle block when ``with_mid``) whose input is ``[z_t, cond]``.

    Submodule names match ``UNet2DConditionModel`` so the base weights load straight into it.
    """

    def __init__(self, cfg: dict, with_mid: bool):
        super().__init__()
        ch = cfg["block_out_channels"]
        n = len(ch)
        heads = _per_level(cfg["num_attention_heads"] or cfg["attention_head_dim"], n)
        head_dims = _per_level(cfg["attention_head_dim"], n)
        layers = _per_level(cfg["transformer_layers_per_block"], n)
        only_cross = _per_level(cfg["only_cross_attention"], n)
        time_dim = ch[0] * 4
        latent = cfg["in_channels"]
        self.conv_in = nn.Conv2d(2 * latent, ch[0], kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_in.weight[:, latent:])  # the condition half starts at zero
        self.time_proj = Timesteps(ch[0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
        self.time_embedding = TimestepEmbedding(ch[0], time_dim, act_fn=cfg["act_fn"])
        self.down_blocks = nn.ModuleList()
        out = ch[0]
        for i, block_type in enumerate(cfg["down_block_types"]):
            inp, out = out, ch[i]
            self.down_blocks.append(get_down_block(
                block_type, num_layers=cfg["layers_per_block"], transformer_layers_per_block=layers[i],
                in_channels=inp, out_channels=out, temb_channels=time_dim, add_downsample=i < n - 1,
                resnet_eps=cfg["norm_eps"], resnet_act_fn=cfg["act_fn"], resnet_groups=cfg["norm_num_groups"],
                cross_attention_dim=cfg["cross_attention_dim"], num_attention_heads=heads[i],
                attention_head_dim=head_dims[i] or out, downsample_padding=cfg["downsample_padding"],
                use_linear_projection=cfg["use_linear_projection"], only_cross_attention=only_cross[i],
                upcast_attention=cfg["upcast_attention"], resnet_time_scale_shift=cfg["resnet_time_scale_shift"],
            ))
        self.mid_block = None
        if with_mid:
            self.mid_block = UNetMidBlock2DCrossAttn(
                transformer_layers_per_block=layers[-1], in_channels=ch[-1], temb_channels=time_dim,
                resnet_eps=cfg["norm_eps"], resnet_act_fn=cfg["act_fn"],
                output_scale_factor=cfg["mid_block_scale_factor"], resnet_time_scale_shift=cfg["resnet_time_scale_shift"],
                cross_attention_dim=cfg["cross_attention_dim"], num_attention_heads=heads[-1],
                resnet_groups=cfg["norm_num_groups"], use_linear_projection=cfg["use_linear_projection"],
                upcast_attention=cfg["upcast_attention"],
            )

    def embed_time(self, timestep: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        t = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep.reshape(-1)
        return self.time_embedding(self.time_proj(t).to(dtype))

    def run_block(self, i: int, h, emb, context):
        block = self.down_blocks[i]
        if getattr(block, "has_cross_attention", False):
            return block(h, temb=emb, encoder_hidden_states=context)
        return block(h, temb=emb)


class MgfrAdapter(ModelMixin, ConfigMixin):
    """LCA + RLF + RCA + exchange + identity projector, configured by the base UNet's encoder shape."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        block_out_channels: tuple = (320, 640, 1280, 1280),
        down_block_types: tuple = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        layers_per_block: int = 2,
        cross_attention_dim: int = 1024,
        attention_head_dim=(5, 10, 20, 20),
        num_attention_heads=None,
        use_linear_projection: bool = True,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        act_fn: str = "silu",
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        downsample_padding: int = 1,
        transformer_layers_per_block=1,
        upcast_attention: bool = False,
        only_cross_attention=False,
        resnet_time_scale_shift: str = "default",
        mid_block_scale_factor: float = 1.0,
        # MGFR's own knobs (docs/design.md §3; the defaults are ours)
        use_reference: bool = True,
        id_embed_dim: int = 512,
        id_tokens: int = 4,
        rlf_channels: int = 64,
        resolution: int = 512,  # the face size the adapter was trained at (the VAE input)
        # What the weights are (docs/design.md §7), checked at restore: where they came from, which training
        # stages they went through (None: not recorded), whether RCA saw identity tokens, and the base
        # they expect (its prediction type, beta schedule and a fingerprint of its UNet weights).
        source: str = "mgfr",
        stages_trained: list | None = None,
        use_identity: bool | None = None,
        prediction_type: str | None = None,
        beta_schedule: str | None = None,
        base_fingerprint: str | None = None,
    ):
        super().__init__()
        cfg = dict(self.config)
        ch = list(block_out_channels)
        n = len(ch)
        # LCA: the low-quality branch, whose residuals enter the UNet through zero convs.
        self.lca = ControlBranch(cfg, with_mid=True)
        skips = [ch[0]]
        for i, c in enumerate(ch):
            skips += [c] * layers_per_block + ([c] if i < n - 1 else [])
        self.lca_down_zero = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in skips)
        self.lca_mid_zero = zero_module(nn.Conv2d(ch[-1], ch[-1], 1))
        if not use_reference:
            return
        # RLF: z_ref = ResBlock(E(ref)) + Conv3x3(z_lq)
        self.rlf_in = nn.Conv2d(in_channels, rlf_channels, 3, padding=1)
        self.rlf_res = ResnetBlock2D(in_channels=rlf_channels, out_channels=rlf_channels, temb_channels=None,
                                     groups=min(32, rlf_channels))
        self.rlf_out = nn.Conv2d(rlf_channels, in_channels, 3, padding=1)
        self.rlf_lq = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        # RCA: the reference branch (no middle block: it only speaks to LCA through the exchange).
        self.rca = ControlBranch(cfg, with_mid=False)
        # Exchange after each encoder level: both ways, except the last level (RCA -> LCA only).
        self.rca_to_lca = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in ch)
        self.lca_to_rca = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in ch[:-1])
        # Identity: ArcFace embedding -> N context tokens (MLP + LayerNorm, as in IP-Adapter FaceID).
        self.id_proj = nn.Sequential(
            nn.Linear(id_embed_dim, id_embed_dim * 2), nn.GELU(), nn.Linear(id_embed_dim * 2, cross_attention_dim * id_tokens)
        )
        self.id_norm = nn.LayerNorm(cross_attention_dim)

    @classmethod
    def from_unet(cls, unet, load_weights: bool = True, **mgfr_kwargs) -> "MgfrAdapter":
        """An adapter shaped like ``unet``'s encoder; with ``load_weights`` both branches start as copies of it."""
        cfg = {k: unet.config[k] for k in UNET_ENCODER_KEYS}
        adapter = cls(**cfg, **mgfr_kwargs)
        if load_weights:
            adapter.load_encoder_weights(unet)
        return adapter

    def load_encoder_weights(self, unet) -> None:
        """Copy the UNet's encoder into each branch; the condition half of ``conv_in`` stays zero."""
        state = unet.state_dict()
        latent = self.config.in_channels
        for branch in (self.lca, getattr(self, "rca", None)):
            if branch is None:
                continue
            own = branch.state_dict()
            picked = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            weight = torch.zeros_like(own["conv_in.weight"])
            weight[:, :latent] = state["conv_in.weight"]
            picked["conv_in.weight"] = weight
            missing = set(own) - set(picked)
            if missing:
                raise ValueError(f"UNet has no weights for encoder keys {sorted(missing)[:3]}...")
            branch.load_state_dict(picked)

    # -- reference path (step-independent, computed once) ------------------------------------
    def prepare_reference(self, z_lq: torch.Tensor, z_refs: torch.Tensor, id_embeds: torch.Tensor | None,
                          text: torch.Tensor, mask: torch.Tensor | None = None) -> ReferenceState:
        """Fuse references once per restore (nothing here depends on the step).

        ``z_lq``: ``(B, 4, h, w)``; ``z_refs``: ``(B, R, 4, h, w)`` VAE latents of aligned references;
        ``id_embeds``: ``(B, R, 512)`` ArcFace embeddings or None; ``text``: ``(B, L, D)`` positive prompt
        states; ``mask``: ``(B, R)``, 1 for a real reference and 0 for padding (default: all real).
        """
        b, r = z_refs.shape[:2]
        mask = torch.ones(b, r, device=z_lq.device) if mask is None else mask.to(z_lq.device)
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp(min=1.0)
        z_lq_r = z_lq.repeat_interleave(r, dim=0)
        z_ref = self.rlf_out(self.rlf_res(self.rlf_in(z_refs.flatten(0, 1)), None)) + self.rlf_lq(z_lq_r)
        context = text.repeat_interleave(r, dim=0)
        if id_embeds is not None:
            # Several references: one identity, their embeddings averaged (docs/design.md §3), L2-normalised
            # before and after.
            e = nn.functional.normalize(id_embeds.float(), dim=-1)
            e = nn.functional.normalize((e * weights[..., None]).sum(dim=1), dim=-1).to(text.dtype)
            tokens = self.id_norm(self.id_proj(e).reshape(b, self.config.id_tokens, -1))
            context = torch.cat([context, tokens.repeat_interleave(r, dim=0)], dim=1)
        return ReferenceState(z_ref=z_ref, context=context, weights=weights.to(z_lq.dtype))

    # -- one denoising step ----------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, z_lq: torch.Tensor,
                reference: ReferenceState | None = None) -> AdapterOutput:
        """Residuals for the base UNet.

        ``sample``: ``(B, 4, h, w)`` noisy latents; ``text``: ``(B, L, D)``; ``z_lq``: ``(B, 4, h, w)``;
        ``reference``: from :meth:`prepare_reference`, its batch ``B * R``.
        """
        b = sample.shape[0]
        lca = self.lca
        emb = lca.embed_time(timestep, b, sample.dtype)
        h = lca.conv_in(torch.cat([sample, z_lq], dim=1))
        skips = [h]
        use_ref = reference is not None and self.config.use_reference
        if use_ref:
            r = reference.num_refs
            rca = self.rca
            emb_r = rca.embed_time(timestep.repeat_interleave(r) if timestep.numel() > 1 else timestep, b * r, sample.dtype)
            g = rca.conv_in(torch.cat([sample.repeat_interleave(r, dim=0), reference.z_ref], dim=1))
        for i in range(len(lca.down_blocks)):
            h, res = lca.run_block(i, h, emb, text)
            res = list(res)
            if use_ref:
                g, _ = rca.run_block(i, g, emb_r, reference.context)
                w = reference.weights[:, :, None, None, None]
                from_ref = (self.rca_to_lca[i](g).unflatten(0, (b, r)) * w).sum(dim=1)
                if i < len(self.lca_to_rca):
                    g = g + self.lca_to_rca[i](h).repeat_interleave(r, dim=0)
                h = h + from_ref
                res[-1] = h  # the level's last skip is its output: let it carry the exchange too
            skips += res
        h = lca.mid_block(h, emb, encoder_hidden_states=text)
        down = tuple(zero(s) for zero, s in zip(self.lca_down_zero, skips))
        return AdapterOutput(down=down, mid=self.lca_mid_zero(h))

    LCA_MODULES = ("lca.", "lca_down_zero.", "lca_mid_zero.")

    def load_lca(self, other: "MgfrAdapter") -> None:
        """Start LCA (and its zero convs) from ``other``'s, e.g. a converted DiffBIR LCA (``train --init``)."""
        own = {k: v for k, v in self.state_dict().items() if k.startswith(self.LCA_MODULES)}
        theirs = {k: v for k, v in other.state_dict().items() if k.startswith(self.LCA_MODULES)}
        bad = sorted(k for k in own if k not in theirs or theirs[k].shape != own[k].shape)
        if bad:
            raise ValueError(f"the LCA to start from does not fit this adapter (e.g. {bad[0]})")
        self.load_state_dict(theirs, strict=False)

    def trainable_parameters(self, stage: int):
        """Stage 1 trains LCA and its zero convs; stage 2 trains everything else: RLF, RCA, the exchange
        convs (``lca_to_rca`` included) and the identity projector (docs/design.md §4)."""
        return [p for n, p in self.named_parameters() if n.startswith(self.LCA_MODULES) == (stage == 1)]
