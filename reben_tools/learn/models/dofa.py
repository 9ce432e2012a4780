"""DOFA: one ViT for any set of bands, with a wavelength-conditioned patch embedding.

Owns: the DOFA encoder ("Dynamic One-For-All", Xiong et al. 2024) written on torch
alone — the dynamic patch embedding (sin-cos embedding of each band's central
wavelength, a residual MLP, a one-layer transformer weight generator with
learnable weight and bias tokens, per-band kernels applied as a strided
convolution), the ViT after it, the configurations ``dofa_base_patch16``,
``dofa_large_patch16`` and ``dofa_micro``, 120x120 support (position-embedding
interpolation or resizing to 224, and which is the default for which weights), and loading
checkpoints in DOFA's published layout.

Does not own: the wavelength table (``reben_tools.format.bands``), data loading,
normalisation statistics, training, the ``load_encoder`` registry (``learn.encoders``)
or CLI commands.

May import: torch; reben_tools.format.bands; reben_tools.learn.models.blocks (the shared
attention and stochastic depth; the block itself is DOFA's own, since the published
MLP names are ``mlp.fc1`` / ``mlp.fc2``); reben_tools.learn.runtime.weights (reading weights files).

Parameter names and shapes follow the published checkpoints
(``DOFA_ViT_base_e100.pth`` / ``DOFA_ViT_large_e100.pth`` of github.com/zhu-xlab/DOFA,
and torchgeo's ``dofa_base_patch16_224`` weights), so those state dicts load
unchanged. Published checkpoints carry no ``fc_norm`` and no ``head``; as in the
reference loader, ``fc_norm`` then stays at its identity initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reben_tools.format.bands import wavelengths_for
from reben_tools.learn.models.blocks import Attention, DropPath, Encoder, drop_path_rates
from reben_tools.learn.runtime.weights import read_state_dict

INPUT_MODES = ("interpolate", "resize")
"""How a side other than the configured ``img_size`` is handled: interpolate the
position embeddings to the patch grid the input gives (``"interpolate"``), or
resize the input bilinearly to ``img_size`` first (``"resize"``)."""

PUBLISHED_SIZES = frozenset({"dofa_base_patch16", "dofa_large_patch16"})
"""Configurations with published weights (pretrained at 224 px by DOFA's authors)."""


def default_input_mode(name: str, published_weights: bool) -> str:
    """The input mode used when none is asked for.

    Published weights (``dofa_base`` / ``dofa_large`` from a published checkpoint) were trained
    at 224 px, and DOFA's own preprocessing resizes to 224: ``"resize"``. At 120 px the 16-pixel
    kernel with padding 1 reads only the first 111 rows and columns (14% of the patch is never
    seen) and the 7x7 grid gets position embeddings the weights never saw. Everything else
    (``dofa_micro``, models trained from scratch here) keeps ``"interpolate"``: a quarter of the
    tokens, 2-3x cheaper; resize scored slightly higher there, within the demo's test-split noise
    (BENCHMARKS.md, DOFA).
    """
    return "resize" if published_weights and name in PUBLISHED_SIZES else "interpolate"


@dataclass(frozen=True)
class DOFAConfig:
    """Sizes of one DOFA encoder.

    Attributes:
        embed_dim: token width ``D``.
        depth: number of ViT blocks.
        num_heads: attention heads per block.
        patch_size: side of the square patch kernel, pixels (stride equals it, padding 1).
        img_size: side the position embeddings were made for, pixels.
        mlp_ratio: hidden width of the block MLP over ``D``.
        wv_planes: width of the wavelength embedding and of the weight generator.
        weight_tokens: number of learnable weight tokens in the generator.
        generator_heads: attention heads of the generator's transformer layer.
        generator_ff: feed-forward width of the generator's transformer layer.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    wv_planes: int = 128
    weight_tokens: int = 128
    generator_heads: int = 4
    generator_ff: int = 2048


DOFA_CONFIGS: dict[str, DOFAConfig] = {
    "dofa_base_patch16": DOFAConfig(embed_dim=768, depth=12, num_heads=12),
    "dofa_large_patch16": DOFAConfig(embed_dim=1024, depth=24, num_heads=16),
    "dofa_micro": DOFAConfig(embed_dim=64, depth=2, num_heads=4),
}
"""The published sizes (ViT-B/16, ViT-L/16) and a CPU-test size with the same layout."""

GENERATOR_LN_EPS = 1e-5
"""LayerNorm epsilon inside the weight generator (torch's transformer-layer default)."""
VIT_LN_EPS = 1e-6
"""LayerNorm epsilon of the ViT blocks and ``fc_norm``."""
KERNEL_SCALE = 0.01
"""Factor the published patch embedding applies to generated kernels and bias."""

IGNORED_CHECKPOINT_KEYS = frozenset(
    {"head.weight", "head.bias", "mask_token", "norm.weight", "norm.bias", "projector.weight", "projector.bias"}
)
"""Keys of published checkpoints that the pooled encoder does not use (classification
head, MAE mask token, pretraining norm and projector)."""
OPTIONAL_CHECKPOINT_KEYS = frozenset({"fc_norm.weight", "fc_norm.bias"})
"""Keys that published checkpoints lack; the module's identity LayerNorm is kept then."""


# --------------------------------------------------------------------------- sin-cos embeddings


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sine-cosine embedding of scalar positions, sines first then cosines.

    Args:
        dim: embedding width, even.
        positions: float tensor of any shape, ``M`` values in all.

    Returns:
        float32 tensor ``(M, dim)``; frequency ``k`` is ``10000 ** (-k / (dim / 2))``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    freq = torch.arange(dim // 2, dtype=torch.float32, device=positions.device) / (dim / 2.0)
    freq = 1.0 / 10000**freq
    angle = positions.reshape(-1).float()[:, None] * freq[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def sincos_2d_grid(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings with a zero class-token row (MAE's scheme).

    Returns:
        float32 tensor ``(1 + grid * grid, dim)``; row ``1 + r * grid + c`` encodes column ``c``
        in its first half and row ``r`` in its second half.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    half = dim // 2
    freq = 1.0 / 10000 ** (torch.arange(half // 2, dtype=torch.float64) / (half / 2.0))

    def embed(pos: torch.Tensor) -> torch.Tensor:
        angle = pos.reshape(-1)[:, None] * freq[None, :]
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)

    table = torch.cat([embed(cols), embed(rows)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0).float()


# --------------------------------------------------------------------------- dynamic patch embedding


class FCResLayer(nn.Module):
    """Residual two-layer ReLU MLP over the wavelength embedding: ``x + relu(w2(relu(w1(x))))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(width, width)
        self.w2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.w2(F.relu(self.w1(x))))


class _PackedSelfAttention(nn.Module):
    """Self-attention with one packed input projection (torch's ``MultiheadAttention`` names)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(S, W)`` one unbatched sequence; returns ``(S, W)``."""
        seq, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(seq, self.heads, width // self.heads).transpose(0, 1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(0, 1).reshape(seq, width))


class _GeneratorLayer(nn.Module):
    """Post-norm transformer layer with GELU and no dropout (the generator's only layer)."""

    def __init__(self, width: int, heads: int, ff: int) -> None:
        super().__init__()
        self.self_attn = _PackedSelfAttention(width, heads)
        self.linear1 = nn.Linear(width, ff)
        self.linear2 = nn.Linear(ff, width)
        self.norm1 = nn.LayerNorm(width, eps=GENERATOR_LN_EPS)
        self.norm2 = nn.LayerNorm(width, eps=GENERATOR_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.linear2(F.gelu(self.linear1(x))))


class _GeneratorEncoder(nn.Module):
    def __init__(self, width: int, heads: int, ff: int, layers: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_GeneratorLayer(width, heads, ff) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerWeightGenerator(nn.Module):
    """Generates per-band kernels and one bias from the bands' wavelength embeddings.

    The sequence ``[weight tokens; band tokens; bias token]`` goes through one transformer
    layer; each band's output (plus its input, a residual) maps through ``fc_weight`` to a
    flat kernel, and the bias token's output maps through ``fc_bias`` to the bias.
    """

    def __init__(self, width: int, kernel_numel: int, embed_dim: int, cfg: DOFAConfig) -> None:
        super().__init__()
        self.transformer_encoder = _GeneratorEncoder(width, cfg.generator_heads, cfg.generator_ff)
        self.fc_weight = nn.Linear(width, kernel_numel)
        self.fc_bias = nn.Linear(width, embed_dim)
        self.weight_tokens = nn.Parameter(torch.empty(cfg.weight_tokens, width))
        self.bias_token = nn.Parameter(torch.empty(1, width))
        nn.init.normal_(self.weight_tokens, std=0.02)
        nn.init.normal_(self.bias_token, std=0.02)

    def forward(self, bands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``bands``: ``(C, W)`` embeddings; returns kernels ``(C, kernel_numel)`` and bias ``(D,)``."""
        n_tokens = self.weight_tokens.shape[0]
        seq = torch.cat([self.weight_tokens, bands, self.bias_token], dim=0)
        out = self.transformer_encoder(seq)
        return self.fc_weight(out[n_tokens:-1] + bands), self.fc_bias(out[-1])


class DynamicPatchEmbed(nn.Module):
    """Wavelength-conditioned patch embedding: any number of bands to ``D``-wide tokens.

    Kernels are generated for the given wavelengths, scaled by :data:`KERNEL_SCALE`, and
    applied as one convolution with stride ``patch_size`` and padding 1 (the published
    layer's padding: a 224 side gives 14 patches, a 120 side 7).
    """

    def __init__(self, cfg: DOFAConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.embed_dim = cfg.embed_dim
        self.wv_planes = cfg.wv_planes
        self.weight_generator = TransformerWeightGenerator(
            cfg.wv_planes, cfg.patch_size * cfg.patch_size * cfg.embed_dim, cfg.embed_dim, cfg
        )
        self.fclayer = FCResLayer(cfg.wv_planes)
        for module in [*self.weight_generator.modules(), *self.fclayer.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.constant_(module.bias, 0.01)

    def grid_side(self, side: int) -> int:
        """Patches along a side of ``side`` pixels (stride = kernel = patch size, padding 1)."""
        return (side + 2 - self.patch_size) // self.patch_size + 1

    def kernels(self, wavelengths_um: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated convolution weight ``(D, C, p, p)`` and bias ``(D,)`` for ``C`` wavelengths (µm)."""
        bands = self.fclayer(sincos_1d(self.wv_planes, wavelengths_um * 1000))
        flat, bias = self.weight_generator(bands)
        # Row c of the generator's (C, p*p*D) output is band c's kernel, laid out (p, p, D): read
        # it as (C, p, p, D) and move D first. This is the layout of DOFA's current
        # wave_dynamic_layer.py and of torchgeo's DOFA since torchgeo PR #2256 ("DOFA: fix bug in
        # patch embedding"); the published weights were retrained with it. (The first release
        # read the buffer as (D, C, p, p), which mixes bands within a kernel.)
        weight = flat.reshape(len(wavelengths_um), self.patch_size, self.patch_size, self.embed_dim)
        return weight.permute(3, 0, 1, 2) * KERNEL_SCALE, bias.reshape(self.embed_dim) * KERNEL_SCALE

    def forward(self, x: torch.Tensor, wavelengths_um: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)`` float32; returns tokens ``(B, h * w, D)`` in row-major patch order."""
        weight, bias = self.kernels(wavelengths_um)
        out = F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), stride=self.patch_size, padding=1)
        return out.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------- ViT


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm ViT block with optional stochastic depth on both residual branches."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DOFAEncoder(nn.Module):
    """DOFA ViT encoder: bands + their wavelengths to one pooled embedding.

    Args:
        name: a key of :data:`DOFA_CONFIGS`.
        input_mode: one of :data:`INPUT_MODES`; how inputs whose side is not ``img_size`` are handled.
        drop_path: stochastic-depth rate of the last block (linearly increasing from 0), for fine-tuning.

    ``forward(x, wavelengths_um)`` takes ``x`` ``(B, C, H, W)`` float32, normalised, and ``C``
    wavelengths in micrometres; it returns ``(B, D)`` float32: the mean of the patch tokens
    (class token excluded) after the last block, through ``fc_norm`` (the published
    ``forward_features`` with ``global_pool=True``).
    """

    def __init__(
        self, name: str = "dofa_base_patch16", input_mode: str = "interpolate", drop_path: float = 0.0
    ) -> None:
        super().__init__()
        if name not in DOFA_CONFIGS:
            raise ValueError(f"unknown DOFA configuration {name!r}; expected one of {sorted(DOFA_CONFIGS)}")
        if input_mode not in INPUT_MODES:
            raise ValueError(f"unknown input mode {input_mode!r}; expected one of {INPUT_MODES}")
        cfg = DOFA_CONFIGS[name]
        self.name, self.config, self.input_mode = name, cfg, input_mode
        self.num_features = cfg.embed_dim
        self.patch_embed = DynamicPatchEmbed(cfg)
        grid = cfg.img_size // cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d_grid(cfg.embed_dim, grid)[None], requires_grad=False)
        rates = drop_path_rates(drop_path, cfg.depth)
        self.blocks = nn.ModuleList([_Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, r) for r in rates])
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=VIT_LN_EPS)
        nn.init.normal_(self.cls_token, std=0.02)
        for block in self.blocks:
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)

    def position_embeddings(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Class-token and patch position embeddings ``(1, 1 + grid_h * grid_w, D)`` for a grid.

        The stored grid is used as-is when it matches; otherwise its patch part is resized
        bicubically (``align_corners=False``), the class-token row is kept.
        """
        stored = self.pos_embed
        side = math.isqrt(stored.shape[1] - 1)
        if (grid_h, grid_w) == (side, side):
            return stored
        patches = stored[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([stored[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], dim=1)

    def _wavelength_tensor(self, x: torch.Tensor, wavelengths_um: Sequence[float] | torch.Tensor) -> torch.Tensor:
        waves = torch.as_tensor(wavelengths_um, dtype=torch.float32, device=x.device).reshape(-1)
        if x.ndim != 4 or x.shape[1] != waves.numel():
            raise ValueError(
                f"{self.name}: input of shape {tuple(x.shape)} needs (B, C, H, W) with C equal to the "
                f"{waves.numel()} wavelengths given"
            )
        return waves

    def forward_tokens(self, x: torch.Tensor, wavelengths_um: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """All tokens after the last block: ``(B, 1 + h * w, D)``, class token first."""
        waves = self._wavelength_tensor(x, wavelengths_um)
        size = self.config.img_size
        if self.input_mode == "resize" and x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        grid_h, grid_w = (self.patch_embed.grid_side(s) for s in x.shape[-2:])
        tokens = self.patch_embed(x, waves)
        pos = self.position_embeddings(grid_h, grid_w).to(tokens.dtype)
        cls = (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens + pos[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor, wavelengths_um: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Pooled embedding ``(B, D)``: mean patch token through ``fc_norm``."""
        return self.fc_norm(self.forward_tokens(x, wavelengths_um)[:, 1:].mean(dim=1))

    def embed_bands(self, x: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        """Pooled embedding ``(B, D)`` of ``x`` whose channels are the archive bands ``bands``."""
        return self(x, wavelengths_for(bands))


class DOFABandEncoder(Encoder):
    """A DOFA encoder bound to one band list, so it fits the ``(B, C, H, W) -> (B, D)`` encoder API.

    The wavelengths (µm) are a non-persistent buffer; parameters live under ``dofa.`` so a
    published checkpoint loads into ``.dofa``.
    """

    def __init__(self, encoder: DOFAEncoder, bands: Sequence[str]) -> None:
        super().__init__()
        self.dofa = encoder
        self.bands = tuple(bands)
        self.num_features = encoder.num_features
        self.in_channels = len(self.bands)
        self.register_buffer("wavelengths_um", torch.tensor(wavelengths_for(self.bands)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dofa(x, self.wavelengths_um)


# --------------------------------------------------------------------------- checkpoints


def _unwrap(state: Mapping[str, object], source: str) -> Mapping[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        inner = state.get(key)
        if isinstance(inner, Mapping) and "cls_token" not in state:
            state = inner
    if "cls_token" not in state:
        # a reben train checkpoint of a DOFA classifier: take its one encoder's ``...dofa.`` sub-dict
        prefixes = sorted({k[: -len("cls_token")] for k in state if k.endswith("dofa.cls_token")})
        if len(prefixes) > 1:
            raise ValueError(f"{source}: holds {len(prefixes)} DOFA encoders ({prefixes}); pass a single-encoder model")
        if prefixes:
            state = {k[len(prefixes[0]) :]: v for k, v in state.items() if k.startswith(prefixes[0])}
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ValueError(f"{source}: key {bad!r} is not a tensor; not a DOFA state dict")
    return state  # type: ignore[return-value]


def load_dofa_state(
    model: DOFAEncoder, state: Mapping[str, object], source: str = "checkpoint"
) -> dict[str, list[str]]:
    """Load a state dict in DOFA's published layout into ``model``, strictly.

    Also accepted: the ``model`` state of a ``reben train`` checkpoint of a DOFA classifier
    (its ``encoders.<group>.dofa.`` keys; the head is left out). Every key of the model must be present except :data:`OPTIONAL_CHECKPOINT_KEYS`; every key of
    the checkpoint must be a model key of the same shape or one of :data:`IGNORED_CHECKPOINT_KEYS`.
    A ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper is unwrapped.

    Returns:
        ``{"ignored": [...], "defaulted": [...]}``: checkpoint keys left unused, model keys kept at init.

    Raises:
        ValueError: one line naming ``source`` and the first missing, unexpected or mis-shaped key.
    """
    state = _unwrap(state, source)
    own = model.state_dict()
    for key, value in state.items():
        if key in IGNORED_CHECKPOINT_KEYS:
            continue
        if key not in own:
            raise ValueError(
                f"{source}: unexpected key {key!r} for {model.name} (not DOFA's published layout, or another depth)"
            )
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"{source}: key {key!r} has shape {tuple(value.shape)} but {model.name} expects "
                f"{tuple(own[key].shape)} (checkpoint of another size)"
            )
    missing = [k for k in own if k not in state and k not in OPTIONAL_CHECKPOINT_KEYS]
    if missing:
        raise ValueError(
            f"{source}: missing key {missing[0]!r} for {model.name} ({len(missing)} missing; not DOFA's published layout)"
        )
    usable = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(usable, strict=False)
    return {
        "ignored": sorted(k for k in state if k in IGNORED_CHECKPOINT_KEYS),
        "defaulted": sorted(k for k in own if k not in state),
    }


def load_dofa(name: str, path: str | Path, input_mode: str | None = None) -> DOFAEncoder:
    """Build ``name`` and load the published-layout checkpoint at ``path`` (CPU tensors).

    ``input_mode`` defaults to :func:`default_input_mode` for published weights (``resize`` for
    ``dofa_base_patch16`` / ``dofa_large_patch16``, ``interpolate`` for ``dofa_micro``).

    Raises:
        CheckpointError: ``path`` is missing, unreadable or not a weights dict (see :func:`read_state_dict`).
        ValueError: the checkpoint does not fit ``name`` (the message names the key).
    """
    model = DOFAEncoder(name, input_mode=input_mode or default_input_mode(name, published_weights=True))
    load_dofa_state(model, read_state_dict(path, "DOFA checkpoint"), source=str(path))
    return model.eval()


SPEC_NAMES: dict[str, str] = {
    "dofa_base": "dofa_base_patch16",
    "dofa_large": "dofa_large_patch16",
    "dofa_micro": "dofa_micro",
    **{name: name for name in DOFA_CONFIGS},
}
"""Spec prefixes (``dofa_base:PATH``) and the configuration each loads into."""


def parse_dofa_spec(spec: str) -> tuple[str, Path] | None:
    """``"dofa_base:PATH"`` -> (``"dofa_base_patch16"``, PATH); ``None`` when ``spec`` is not a DOFA spec."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in SPEC_NAMES or not path:
        return None
    return SPEC_NAMES[kind], Path(path)


def input_mode_for_init(init: str | None) -> str | None:
    """The input mode a run started from ``--init`` weights takes when none is asked for.

    ``"resize"`` for ``dofa_base:PATH`` / ``dofa_large:PATH`` (see :func:`default_input_mode`);
    ``None`` (the model's own default) for anything else.
    """
    parsed = parse_dofa_spec(init) if init else None
    if parsed is None or default_input_mode(parsed[0], published_weights=True) != "resize":
        return None
    return "resize"


def init_encoders(model: nn.Module, spec: str) -> int:
    """Load the weights named by ``spec`` (``dofa_base:PATH`` ...) into every DOFA encoder of ``model``.

    Returns:
        the number of DOFA encoders initialised (one, or one per modality under late fusion).

    Raises:
        ValueError: ``spec`` is not a DOFA spec, the model has no DOFA encoder or one of another size,
            or the checkpoint does not fit (the message names the key).
        CheckpointError: the file is missing, unreadable or not a weights dict (see :func:`read_state_dict`).
    """
    parsed = parse_dofa_spec(spec)
    if parsed is None:
        raise ValueError(
            f"{spec!r} is not a DOFA weight spec; expected dofa_base:PATH, dofa_large:PATH or dofa_micro:PATH"
        )
    name, path = parsed
    targets = [m for m in model.modules() if isinstance(m, DOFAEncoder)]
    if not targets:
        raise ValueError(f"{spec}: the model has no DOFA encoder to start from these weights (use --model {name})")
    other = next((m.name for m in targets if m.name != name), None)
    if other is not None:
        raise ValueError(f"{spec}: weights for {name}, but the model is {other}")
    state = read_state_dict(path, "DOFA checkpoint")
    for target in targets:
        load_dofa_state(target, state, source=str(path))
    return len(targets)
