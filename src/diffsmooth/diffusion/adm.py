"""ADM UNet (Dhariwal & Nichol; Nichol & Dhariwal 2021) in our own code.

One class covers the improved-diffusion and guided-diffusion networks: scale-shift group
norm, self-attention at chosen downsampling factors (heads by count or by channels per
head, legacy or new q/k/v channel order), resblock or conv/pool resampling, learned-sigma
output. Module and parameter names follow the official code, so the official state dicts
(``cifar10_uncond_50M_500K.pt``, ``256x256_diffusion_uncond.pt``) load with strict keys.

``adm_unet(variant, **flags)`` takes the official command-line flag names (paste them from
the official READMEs or a ``*_config.json``); ``adm_config`` maps them, one to one, onto the
frozen ``ADMConfig`` that ``ADMUNet`` is built from. Input: ``x`` (B, C, H, W) in model space
[-1,1], H and W divisible by 2**(levels-1) (any such size, e.g. 224 on a 256 model), and
``t`` (B,) timesteps exactly as the network takes them (improved-diffusion checkpoints
expect ``t * 1000 / T``; that rescaling belongs to the caller). Output (B, C or 2C, H, W):
epsilon in the first C channels, the variance interpolation in the rest when learn_sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffsmooth import validate
from diffsmooth.validate import InputError

NUM_CLASSES = 1000  # class_cond models in both codebases are ImageNet-conditional


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (32 groups in the official models) computed in float32, as the reference does under fp16 too."""

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def _norm(channels: int, groups: int = 32) -> GroupNorm32:
    if channels % groups:
        raise InputError(f"ADM group norm with {groups} groups needs channel counts divisible by {groups}, got "
                         f"{channels}; use num_channels (times channel_mult) that are multiples of {groups}")
    return GroupNorm32(groups, channels)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) float32: [cos(t f_i), sin(t f_i)], f_i = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class Upsample(nn.Module):
    """Nearest x2, then an optional 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv, or 2x2 average pooling (key ``op``)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding; optionally resamples (guided ``resblock_updown``)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int,
                 use_scale_shift_norm: bool, up: bool = False, down: bool = False, norm_groups: int = 32) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels, norm_groups), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        # Resampling sits between the in-norm and the in-conv, applied to skip and main path alike.
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels, norm_groups), nn.SiLU(), nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.h_upd is not None:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection.

    ``legacy_order`` (improved-diffusion, and guided with ``use_new_attention_order=False``)
    lays the qkv conv's output channels out per head as [q_h, k_h, v_h]; the new order is
    [q_all, k_all, v_all]. The weights are the same shape either way, the function differs.
    """

    def __init__(self, channels: int, num_heads: int, legacy_order: bool, norm_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise InputError(f"attention: {channels} channels do not split into {num_heads} heads; "
                             "choose num_heads / num_head_channels that divide the channel count")
        self.num_heads = num_heads
        self.legacy_order = legacy_order
        self.norm = _norm(channels, norm_groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length, heads, ch = qkv.shape[-1], self.num_heads, c // self.num_heads
        if self.legacy_order:
            q, k, v = qkv.reshape(b, heads, 3 * ch, length).split(ch, dim=2)
        else:
            q, k, v = (part.reshape(b, heads, ch, length) for part in qkv.chunk(3, dim=1))
        # SDPA wants (..., tokens, features); its default scale 1/sqrt(ch) equals the reference's
        # (1/ch^(1/4))^2 applied to q and k separately.
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the time embedding to the ResBlocks inside it."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


@dataclass(frozen=True)
class ADMConfig:
    """What builds an ``ADMUNet``, in the network's own terms (``adm_config`` maps the official flags
    onto it).

    Attributes:
        in_channels: image channels C (3 for RGB, 1 for grayscale).
        model_channels: base width (flag ``num_channels``).
        out_channels: C, or 2C with a learned variance.
        num_res_blocks: ResBlocks per level on the way down (one more per level on the way up).
        attention_ds: downsampling factors (1, 2, 4, ...) at which attention is used.
        channel_mult: width multiplier per level; ``len - 1`` downsamplings.
        dropout: dropout probability inside the ResBlocks.
        num_heads / num_head_channels: heads by count, or by channels per head when > 0.
        num_heads_upsample: heads in the decoder, -1 = num_heads.
        use_scale_shift_norm: the time embedding scales and shifts the out-norm (else it is added).
        resblock_updown: resample with ResBlocks (guided) instead of conv/pool (improved).
        conv_resample: conv (not nearest/avg-pool only) resampling when not ``resblock_updown``.
        legacy_attention_order: see ``AttentionBlock``.
        num_classes: class-conditional label embedding when not None.
        norm_groups: groups of every GroupNorm (32 in the official models; ours allows fewer so
            that narrow UNets, e.g. 16 channels at 28x28, are possible).
    """

    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    channel_mult: tuple[float, ...]
    dropout: float = 0.0
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    legacy_attention_order: bool = True
    num_classes: int | None = None
    norm_groups: int = 32


class ADMUNet(nn.Module):
    """The ADM UNet built from an ``ADMConfig`` (kept as ``.config``). Prefer
    ``adm_unet(variant, **flags)``, which maps official flags onto the config."""

    def __init__(self, config: ADMConfig) -> None:
        super().__init__()
        c = self.config = config
        self.in_channels = c.in_channels
        self.out_channels = c.out_channels
        self.model_channels = c.model_channels
        self.num_levels = len(c.channel_mult)
        self.num_classes = c.num_classes
        heads_up = c.num_heads if c.num_heads_upsample == -1 else c.num_heads_upsample
        emb_dim = 4 * c.model_channels

        def attention(ch: int, heads: int) -> AttentionBlock:
            if c.num_head_channels > 0:
                if ch % c.num_head_channels:
                    raise InputError(f"{ch} channels are not a multiple of num_head_channels={c.num_head_channels}; "
                                     "pick num_head_channels dividing every level's width")
                heads = ch // c.num_head_channels
            return AttentionBlock(ch, heads, c.legacy_attention_order, c.norm_groups)

        def res(ch: int, out: int, **updown: bool) -> ResBlock:
            return ResBlock(ch, emb_dim, c.dropout, out, c.use_scale_shift_norm, **updown, norm_groups=c.norm_groups)

        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes, emb_dim)

        ch = int(c.channel_mult[0] * c.model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * c.model_channels))]
                ch = int(mult * c.model_channels)
                if ds in c.attention_ds:
                    layers.append(attention(ch, c.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(c.channel_mult) - 1:
                down = res(ch, ch, down=True) if c.resblock_updown else Downsample(ch, c.conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attention(ch, c.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(c.channel_mult))[::-1]:
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(c.model_channels * mult))]
                ch = int(c.model_channels * mult)
                if ds in c.attention_ds:
                    layers.append(attention(ch, heads_up))
                if level and i == c.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if c.resblock_updown else Upsample(ch, c.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(_norm(ch, c.norm_groups), nn.SiLU(), nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x (B, C, H, W) in [-1,1], t (B,) network timesteps (or one shared scalar), y (B,) labels
        for class-conditional models -> (B, out_channels, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"the UNet expects (B, {self.in_channels}, H, W) inputs, got shape {tuple(x.shape)}; "
                             "pass images with the model's channel count")
        factor = 2 ** (self.num_levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise InputError(f"image size {tuple(x.shape[-2:])} is not divisible by {factor} (this UNet downsamples "
                             f"{self.num_levels - 1} times); crop or resize to a multiple of {factor}")
        if (y is not None) != (self.num_classes is not None):
            raise InputError("pass class labels y exactly when the model is class-conditional (class_cond)")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0 or t.numel() == 1:
            t = t.reshape(1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


# ---- official flags -> ADMUNet ---------------------------------------------------------------

# Per-variant channel_mult when the flag is "" (or absent), keyed by image_size, as in each
# codebase's script_util.
_DEFAULT_MULT = {
    "improved": {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)},
    "guided": {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)},
}

_MODEL_DEFAULTS: dict[str, Any] = {
    "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
    "num_head_channels": -1, "attention_resolutions": "16,8", "channel_mult": "", "dropout": 0.0,
    "learn_sigma": False, "class_cond": False, "use_checkpoint": False, "use_scale_shift_norm": True,
    "resblock_updown": False, "use_fp16": False, "use_new_attention_order": False,
    "in_channels": 3,  # ours: the official scripts fix 3; 1 allows grayscale (Fashion-MNIST) models
    "norm_groups": 32,  # ours: the official code fixes 32; fewer allow narrow UNets for small images
}
# Diffusion-process flags that appear beside the model flags in official configs; they
# describe the schedule, not the network, and are accepted and ignored here.
DIFFUSION_FLAGS = frozenset({
    "diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl", "predict_xstart",
    "rescale_timesteps", "rescale_learned_sigmas", "sigma_small",
})
VARIANTS = ("improved", "guided")


def known_flags() -> list[str]:
    """Every flag name ``adm_unet`` accepts."""
    return sorted(set(_MODEL_DEFAULTS) | DIFFUSION_FLAGS)


def _ints(text: Any, flag: str) -> tuple[float, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(text)
    try:
        return tuple(float(p) if "." in p else int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise InputError(f"flag {flag}={text!r} must be comma-separated numbers like \"16,8\"") from None


def adm_unet(variant: str, **flags: Any) -> ADMUNet:
    """The UNet built from official improved-/guided-diffusion flags: ``ADMUNet(adm_config(variant, **flags))``."""
    return ADMUNet(adm_config(variant, **flags))


def adm_config(variant: str, **flags: Any) -> ADMConfig:
    """The ``ADMConfig`` that official improved-/guided-diffusion flags describe (one flag, one field).

    ``variant``: ``"improved"`` (improved-diffusion: legacy attention order, its channel_mult
    table incl. 32px) or ``"guided"`` (guided-diffusion: ``use_new_attention_order`` honoured,
    its channel_mult table). Flags: ``image_size, num_channels, num_res_blocks, num_heads,
    num_heads_upsample, num_head_channels, attention_resolutions ("16,8": resolutions in
    pixels), channel_mult ("" = default for image_size, or "1,2,2"), dropout, learn_sigma,
    class_cond, use_scale_shift_norm, resblock_updown, use_new_attention_order``, plus
    ``in_channels`` and ``norm_groups`` (ours, default 3 and 32). ``use_checkpoint``/``use_fp16``
    are accepted and ignored (the dtype follows the weights and inputs); diffusion flags
    (``diffusion_steps`` ...) too.
    Unknown flags raise ``InputError`` listing the known ones.
    """
    validate.choice(variant, "ADM variant", VARIANTS)
    unknown = sorted(set(flags) - set(known_flags()))
    if unknown:
        raise InputError(f"unknown ADM flag(s) {', '.join(unknown)}; known: {', '.join(known_flags())}")
    f = {**_MODEL_DEFAULTS, **{k: v for k, v in flags.items() if k not in DIFFUSION_FLAGS}}
    size = int(f["image_size"])
    mult = _ints(f["channel_mult"], "channel_mult")
    if not mult:
        if size not in _DEFAULT_MULT[variant]:
            sizes = ", ".join(map(str, sorted(_DEFAULT_MULT[variant])))
            raise InputError(f"no default channel_mult for {variant} image_size {size} (defaults exist for {sizes}); "
                             "set channel_mult, e.g. \"1,2,2\" for 28x28")
        mult = _DEFAULT_MULT[variant][size]
    resolutions = _ints(f["attention_resolutions"], "attention_resolutions")
    bad = [r for r in resolutions if r <= 0 or size % int(r)]
    if bad:
        raise InputError(f"attention_resolutions {bad} do not divide image_size {size}; use resolutions the "
                         "feature maps reach, e.g. \"16,8\"")
    in_channels = int(f["in_channels"])
    return ADMConfig(
        in_channels=in_channels,
        model_channels=int(f["num_channels"]),
        out_channels=in_channels * (2 if f["learn_sigma"] else 1),
        num_res_blocks=int(f["num_res_blocks"]),
        attention_ds=tuple(size // int(r) for r in resolutions),
        channel_mult=mult,
        dropout=float(f["dropout"]),
        num_heads=int(f["num_heads"]),
        num_head_channels=int(f["num_head_channels"]),
        num_heads_upsample=int(f["num_heads_upsample"]),
        use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
        resblock_updown=bool(f["resblock_updown"]),
        # improved-diffusion only has the legacy order
        legacy_attention_order=variant == "improved" or not f["use_new_attention_order"],
        num_classes=NUM_CLASSES if f["class_cond"] else None,
        norm_groups=int(f["norm_groups"]),
    )
