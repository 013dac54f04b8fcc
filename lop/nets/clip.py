"""A CLIP (Radford et al. 2021) image and text encoder, written functionally over a state dict whose keys
are the official OpenAI / open_clip names, with a hook in every residual block for adapters.

Why an own module (docs/protocols/moe_cifar.md, "Backbone"): the adapters must sit inside every block of
both encoders and carry a leading run axis ``S`` (activations ``[S, B, T, d]``), and the full fine-tuning
baseline needs per-run ``[S, ...]`` backbone weights; the maintained packages hold one model per module
(open_clip also does not import on the project's CPU machines, its torchvision needs a newer torch).

Weights: every tensor of the state dict is either shared by the runs (its official shape, e.g. a frozen
backbone) or per run (a leading ``S`` axis); `lin` and `layer_norm` accept both.

Block (pre-LN transformer, OpenAI layout), for the residual stream x ``[S, B, T, d]``::

    x ← x + Attn(LN1 x)
    x ← x + MLP(LN2 x) + adapter(x)          # adapter reads the post-attention stream (0 without one)

with MLP(h) = c_proj(act(c_fc h)), act = QuickGELU (x·σ(1.702x), the OpenAI models) or GELU.
Image: patches (conv1 as a linear map of the flattened 16×16×3 patch), a class token, positional
embeddings, LN_pre, the blocks, LN_post of the class token, projection. Text: token + positional
embeddings, causal blocks, LN_final at the end-of-text token (the largest token id), projection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lop.errors import DataError
from lop.rng import RunStreams

# an adapter hook: (encoder "visual"|"text", layer index, post-attention stream [S, B, T, d]) -> [S, B, T, d]
AdapterFn = Callable[[str, int, torch.Tensor], torch.Tensor]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipArch:
    """Sizes of a CLIP model (ViT image tower + causal text transformer)."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    quick_gelu: bool = True

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def layers(self, encoder: str) -> int:
        return self.vision_layers if encoder == "visual" else self.text_layers

    def width(self, encoder: str) -> int:
        return self.vision_width if encoder == "visual" else self.text_width


ARCHS: dict[str, ClipArch] = {
    # OpenAI ViT-B/16 (open_clip "ViT-B-16-quickgelu"): 12×768 image blocks, 12×512 text blocks
    "vit_b16": ClipArch(512, 224, 16, 768, 12, 12, 77, 49408, 512, 12, 8),
    # the tiny random model of tests and the smoke scale: same architecture, small widths
    "tiny": ClipArch(32, 32, 8, 64, 2, 2, 16, 512, 32, 2, 2),
}


def block_shapes(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    """Official names and shapes of one residual block of width d."""
    return {
        f"{prefix}ln_1.weight": (d,),
        f"{prefix}ln_1.bias": (d,),
        f"{prefix}attn.in_proj_weight": (3 * d, d),
        f"{prefix}attn.in_proj_bias": (3 * d,),
        f"{prefix}attn.out_proj.weight": (d, d),
        f"{prefix}attn.out_proj.bias": (d,),
        f"{prefix}ln_2.weight": (d,),
        f"{prefix}ln_2.bias": (d,),
        f"{prefix}mlp.c_fc.weight": (4 * d, d),
        f"{prefix}mlp.c_fc.bias": (4 * d,),
        f"{prefix}mlp.c_proj.weight": (d, 4 * d),
        f"{prefix}mlp.c_proj.bias": (d,),
    }


def state_shapes(a: ClipArch) -> dict[str, tuple[int, ...]]:
    """Every tensor of a CLIP state dict: official key name -> shape (logit_scale is a scalar)."""
    dv, dt = a.vision_width, a.text_width
    out: dict[str, tuple[int, ...]] = {
        "visual.conv1.weight": (dv, 3, a.patch_size, a.patch_size),
        "visual.class_embedding": (dv,),
        "visual.positional_embedding": (a.grid**2 + 1, dv),
        "visual.ln_pre.weight": (dv,),
        "visual.ln_pre.bias": (dv,),
        "visual.ln_post.weight": (dv,),
        "visual.ln_post.bias": (dv,),
        "visual.proj": (dv, a.embed_dim),
        "token_embedding.weight": (a.vocab_size, dt),
        "positional_embedding": (a.context_length, dt),
        "ln_final.weight": (dt,),
        "ln_final.bias": (dt,),
        "text_projection": (dt, a.embed_dim),
        "logit_scale": (),
    }
    for i in range(a.vision_layers):
        out.update(block_shapes(f"visual.transformer.resblocks.{i}.", dv))
    for i in range(a.text_layers):
        out.update(block_shapes(f"transformer.resblocks.{i}.", dt))
    return out


def random_clip_state(a: ClipArch, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised CLIP, shared by all runs (so drawn from one seed): embeddings N(0, 0.02²),
    weights N(0, 1/fan_in), projections N(0, 1/d), LayerNorms 1/0, biases 0, logit scale ln(1/0.07)."""
    streams = RunStreams([seed])
    out: dict[str, torch.Tensor] = {}
    for k, (name, shape) in enumerate(sorted(state_shapes(a).items())):
        if name == "logit_scale":
            out[name] = torch.tensor(math.log(1 / 0.07))
        elif ".ln_" in name or name.startswith("ln_"):
            out[name] = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        elif name.endswith("bias"):
            out[name] = torch.zeros(shape)
        else:
            if name in ("visual.proj", "text_projection"):
                std = shape[0] ** -0.5
            elif "embedding" in name:
                std = 0.02
            else:
                std = math.prod(shape[1:]) ** -0.5
            out[name] = streams.normal(f"clip_init/{k}", 0, shape, std)[0]
    return out


def load_clip_state(path: str | Path, a: ClipArch) -> dict[str, torch.Tensor]:
    """Load an official CLIP state dict (OpenAI / open_clip key names) with ``weights_only=True`` and check
    every name and shape of `a`; extra keys (``input_resolution``, ``context_length``, ``vocab_size``) are
    ignored. Raises `DataError` naming the file and the first missing or mis-shaped key."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"{p}: no CLIP weights file; save the official ViT-B/16 state dict there "
            "(see docs/protocols/moe_cifar.md, 'Weights') or use backbone: tiny"
        )
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(
            f"{p}: not a plain tensor state dict ({type(e).__name__}); convert a TorchScript archive to a "
            "state dict first (docs/protocols/moe_cifar.md, 'Weights')"
        ) from None
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise DataError(f"{p}: expected a mapping of tensor names to tensors, got {type(raw).__name__}")
    state = {str(k).removeprefix("module."): v for k, v in raw.items()}
    out: dict[str, torch.Tensor] = {}
    for name, shape in state_shapes(a).items():
        t = state.get(name)
        if not isinstance(t, torch.Tensor):
            raise DataError(f"{p}: key {name!r} missing; is this a CLIP ViT state dict of this architecture?")
        if tuple(t.shape) != shape:
            raise DataError(f"{p}: key {name!r} has shape {tuple(t.shape)}, expected {shape}")
        out[name] = t.detach().to(torch.float32).contiguous()
    return out


# ---- functional layers (weights shared [..] or per run [S, ..]) -----------------------------------------
def lin(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x ``[S, ..., in]`` @ wᵀ + b, for w ``[out, in]`` (shared) or ``[S, out, in]`` (per run)."""
    if w.dim() == 2:
        return F.linear(x, w, b)
    s = x.shape[0]
    y = torch.matmul(x.reshape(s, -1, x.shape[-1]), w.transpose(1, 2))
    if b is not None:
        y = y + b.unsqueeze(1)
    return y.reshape(*x.shape[:-1], w.shape[1])


def _per_run(t: torch.Tensor, x: torch.Tensor, base_dims: int) -> torch.Tensor:
    """Reshape a per-run tensor ``[S, *base]`` to broadcast against x ``[S, ..., *base]``."""
    if t.dim() == base_dims:
        return t
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1 - base_dims)), *t.shape[1:])


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis (eps 1e-5) with a shared ``[d]`` or per-run ``[S, d]`` affine map."""
    if w.dim() == 1:
        return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)
    return F.layer_norm(x, (x.shape[-1],), None, None, 1e-5) * _per_run(w, x, 1) + _per_run(b, x, 1)


def attention(x: torch.Tensor, w: Mapping[str, torch.Tensor], p: str, heads: int, causal: bool) -> torch.Tensor:
    """Multi-head self-attention of x ``[S, B, T, d]`` with packed q/k/v projections (``attn.in_proj_*``)."""
    s, bsz, t, d = x.shape
    qkv = lin(x, w[p + "attn.in_proj_weight"], w[p + "attn.in_proj_bias"])
    q, k, v = qkv.view(s * bsz, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    o = o.transpose(1, 2).reshape(s, bsz, t, d)
    return lin(o, w[p + "attn.out_proj.weight"], w[p + "attn.out_proj.bias"])


def transformer(
    x: torch.Tensor,
    w: Mapping[str, torch.Tensor],
    encoder: str,
    a: ClipArch,
    adapter: AdapterFn | None,
) -> torch.Tensor:
    """The residual blocks of one encoder over x ``[S, B, T, d]``, the adapter added in every block."""
    prefix = "visual.transformer.resblocks." if encoder == "visual" else "transformer.resblocks."
    heads = a.vision_heads if encoder == "visual" else a.text_heads
    causal = encoder == "text"
    for i in range(a.layers(encoder)):
        p = f"{prefix}{i}."
        x = x + attention(layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"]), w, p, heads, causal)
        h = lin(layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"]), w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h) if a.quick_gelu else F.gelu(h)
        out = x + lin(h, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"])
        if adapter is not None:
            out = out + adapter(encoder, i, x)
        x = out
    return x


def _proj(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x ``[S, B, d]`` @ w for w ``[d, e]`` or ``[S, d, e]``."""
    return torch.matmul(x, w) if w.dim() == 2 else torch.bmm(x, w)


def encode_image(
    images: torch.Tensor, w: Mapping[str, torch.Tensor], a: ClipArch, adapter: AdapterFn | None = None
) -> torch.Tensor:
    """Image embeddings ``[S, B, e]`` of normalised images ``[S, B, 3, H, W]`` (H = W = a.image_size)."""
    s, bsz = images.shape[:2]
    g, ps = a.grid, a.patch_size
    patches = images.reshape(s, bsz, 3, g, ps, g, ps).permute(0, 1, 3, 5, 2, 4, 6).reshape(s, bsz, g * g, -1)
    conv = w["visual.conv1.weight"]
    x = lin(patches, conv.flatten(-3), None)  # [S, B, g², d]
    cls = w["visual.class_embedding"]
    cls = cls.expand(s, bsz, 1, -1) if cls.dim() == 1 else cls[:, None, None, :].expand(s, bsz, 1, -1)
    x = torch.cat([cls, x], dim=2) + _per_run(w["visual.positional_embedding"], x, 2)
    x = layer_norm(x, w["visual.ln_pre.weight"], w["visual.ln_pre.bias"])
    x = transformer(x, w, "visual", a, adapter)
    c = layer_norm(x[:, :, 0], w["visual.ln_post.weight"], w["visual.ln_post.bias"])
    return _proj(c, w["visual.proj"])


def encode_text(
    tokens: torch.Tensor, w: Mapping[str, torch.Tensor], a: ClipArch, adapter: AdapterFn | None = None
) -> torch.Tensor:
    """Text embeddings ``[S, B, e]`` of token ids ``[S, B, L]`` (L = a.context_length; the end-of-text
    token has the largest id of each row)."""
    emb = w["token_embedding.weight"]
    if emb.dim() == 2:
        x = F.embedding(tokens, emb)
    else:
        x = torch.gather(emb, 1, tokens.reshape(tokens.shape[0], -1, 1).expand(-1, -1, emb.shape[-1]))
        x = x.view(*tokens.shape, -1)
    x = x + _per_run(w["positional_embedding"], x, 2)
    x = transformer(x, w, "text", a, adapter)
    x = layer_norm(x, w["ln_final.weight"], w["ln_final.bias"])
    eot = tokens.argmax(dim=-1)  # [S, B]
    x = torch.gather(x, 2, eot[..., None, None].expand(-1, -1, 1, x.shape[-1])).squeeze(2)
    return _proj(x, w["text_projection"])


def normalise_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images ``[..., 3, h, w]`` -> float, resized (bicubic) to `size` and normalised with CLIP's
    mean/std, as CLIP's preprocessing (no centre crop is needed for square images)."""
    lead = x.shape[:-3]
    y = x.reshape(-1, *x.shape[-3:]).to(torch.float32) / 255.0
    if y.shape[-1] != size:
        y = F.interpolate(y, size=(size, size), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return ((y - mean) / std).reshape(*lead, 3, size, size)
