"""Functional references of the authors' published models, written from their key layouts and forwards.

Each function takes a state dict in the authors' key layout and images, and computes the forward
their released code computes (read for the facts listed; none of their code is copied). Each
``*_state`` function returns random tensors of the shapes that layout has, so that a test can
convert them, load them into visattn strictly and compare outputs.

* EAMLP (MenghaoGuo/EANet ``EAMLP/models``: T2T-ViT with external attention, ``tokens_type``
  "performer" whose attention is external attention): soft splits 7/4/2, 3/2/1, 3/2/1; T2T block
  ``q = q_linear(LN(x))``, ``x = q + proj(linear_1(N(linear_0(q))))``, ``x + mlp(LN(x))``, where N
  is a softmax over the tokens then an L1 over the units (eps 1e-9); a class token and the fixed
  sinusoid ``pos_embed`` (positions 0..N); blocks ``x + attn(LN(x))``, ``x + mlp(LN(x))`` with
  ``trans_dims`` (C -> 4C), ``4h`` heads of width 64 sharing ``linear_0`` / ``linear_1`` (64 units),
  ``proj``; final LN; the class token's output to the head.
* EANet (``model_torch.py``): deep-stem ResNet (stride 8: layer3 dilation 2, its first block 1;
  layer4 dilation 4, first block 2, then 4 x grids[i] with grids (1, 2, 4)); ``fc0`` conv-BN-ReLU;
  ``linu``: ``conv1`` (bias), Conv1d ``linear_0`` (C -> 64), softmax over positions, L1 over units,
  Conv1d ``linear_1`` (64 -> C), ``conv2`` = conv + BN, + identity, ReLU; ``fc1`` conv-BN-ReLU;
  ``fc2``; bilinear upsampling with align_corners=True.
* PVT v1 (whai362/PVT ``classification/pvt.py``): per stage a strided conv + LN (eps 1e-5), a
  position table added (bilinear resize at other sizes), blocks with SRA (``q``, ``kv``, ``sr``
  conv + LN eps 1e-5, ``proj``) and block LNs of eps 1e-6; the last stage prepends the class token
  (its position entry first); final LN (eps 1e-6), the token to the head.
* Slide-Swin (LeapLabTHU/Slide-Transformer ``models/slide_swin.py``): Swin code base, patch merging
  at the end of a stage; slide attention per head on ``qkv`` rows ``[q_h | k_h | v_h]``, keys and
  values through two depthwise k x k convs (``dep_conv``: fixed one-hot weight, learned bias;
  ``dep_conv1``), the (1, h, 1, k*k, 1, 1) table added to the keys, softmax over the k*k offsets;
  stages 3-4 window attention over the whole map with a relative-position table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Sd = dict[str, torch.Tensor]


def _lin(sd: Sd, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[p + ".weight"], sd.get(p + ".bias"))


def _ln(sd: Sd, p: str, x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def _bn(sd: Sd, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(
        x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5
    )


def _mlp(sd: Sd, p: str, x: torch.Tensor) -> torch.Tensor:
    return _lin(sd, p + ".fc2", F.gelu(_lin(sd, p + ".fc1", x)))


def _rand(shape, gen, std=1.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std


def _ln_params(sd: Sd, p: str, n: int, gen) -> None:
    sd[p + ".weight"] = 1 + 0.2 * _rand((n,), gen)
    sd[p + ".bias"] = 0.2 * _rand((n,), gen)


def _linear_params(sd: Sd, p: str, n_in: int, n_out: int, gen, bias: bool = True, gain: float = 1.0) -> None:
    sd[p + ".weight"] = _rand((n_out, n_in), gen, gain / math.sqrt(n_in))
    if bias:
        sd[p + ".bias"] = 0.2 * _rand((n_out,), gen)


def _bn_params(sd: Sd, p: str, n: int, gen) -> None:
    _ln_params(sd, p, n, gen)
    sd[p + ".running_mean"] = 0.1 * _rand((n,), gen)
    sd[p + ".running_var"] = torch.empty(n).uniform_(0.5, 1.5, generator=gen)
    sd[p + ".num_batches_tracked"] = torch.tensor(100)


def _conv_params(sd: Sd, p: str, c_in: int, c_out: int, k: int, gen, bias: bool = False, groups: int = 1) -> None:
    fan_in = c_in // groups * k * k
    sd[p + ".weight"] = _rand((c_out, c_in // groups, k, k), gen, 1.0 / math.sqrt(fan_in))
    if bias:
        sd[p + ".bias"] = 0.2 * _rand((c_out,), gen)


# ---------------------------------------------------------------------------
# EAMLP
# ---------------------------------------------------------------------------


def sinusoid_table(n: int, d: int) -> torch.Tensor:
    """(1, n, d): sin / cos of position / 10000^(2 (j // 2) / d) for positions 0..n-1 (float64 math)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(d, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * (j // 2) / d)
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()[None]


def eamlp_state(
    embed: int = 256, depth: int = 7, heads: int = 4, mlp_ratio: float = 2.0, img: int = 64, seed: int = 0
) -> Sd:
    gen = torch.Generator().manual_seed(seed)
    sd: Sd = {}
    for k, d_in in ((1, 3 * 49), (2, 64 * 9)):
        p = f"tokens_to_token.attention{k}"
        _ln_params(sd, p + ".norm1", d_in, gen)
        _linear_params(sd, p + ".attn.q_linear", d_in, 64, gen)
        _linear_params(sd, p + ".attn.linear_0", 64, 128, gen, bias=False, gain=4.0)  # memories large enough to matter
        _linear_params(sd, p + ".attn.linear_1", 128, 64, gen, gain=4.0)
        _linear_params(sd, p + ".attn.proj", 64, 64, gen)
        _ln_params(sd, p + ".norm2", 64, gen)
        _linear_params(sd, p + ".mlp.fc1", 64, 64, gen)
        _linear_params(sd, p + ".mlp.fc2", 64, 64, gen)
    _linear_params(sd, "tokens_to_token.project", 64 * 9, embed, gen)
    side = img // 16
    sd["cls_token"] = _rand((1, 1, embed), gen)
    sd["pos_embed"] = sinusoid_table(side * side + 1, embed)
    hd = embed // heads
    for i in range(depth):
        p = f"blocks.{i}"
        _ln_params(sd, p + ".norm1", embed, gen)
        _linear_params(sd, p + ".attn.trans_dims", embed, 4 * embed, gen)
        _linear_params(sd, p + ".attn.linear_0", hd, 64, gen, gain=4.0)
        _linear_params(sd, p + ".attn.linear_1", 64, hd, gen, gain=4.0)
        _linear_params(sd, p + ".attn.proj", 4 * embed, embed, gen)
        _ln_params(sd, p + ".norm2", embed, gen)
        _linear_params(sd, p + ".mlp.fc1", embed, int(embed * mlp_ratio), gen)
        _linear_params(sd, p + ".mlp.fc2", int(embed * mlp_ratio), embed, gen)
    _ln_params(sd, "norm", embed, gen)
    _linear_params(sd, "head", embed, 1000, gen)
    return sd


def _ea_norm(a: torch.Tensor, tokens_dim: int, units_dim: int) -> torch.Tensor:
    a = a.softmax(dim=tokens_dim)
    return a / (1e-9 + a.sum(dim=units_dim, keepdim=True))


def _t2t(sd: Sd, p: str, x: torch.Tensor) -> torch.Tensor:
    q = _lin(sd, p + ".attn.q_linear", _ln(sd, p + ".norm1", x))
    a = _ea_norm(_lin(sd, p + ".attn.linear_0", q), tokens_dim=-2, units_dim=-1)
    x = q + _lin(sd, p + ".attn.proj", _lin(sd, p + ".attn.linear_1", a))
    return x + _mlp(sd, p + ".mlp", _ln(sd, p + ".norm2", x))


def _unfold_tokens(t: torch.Tensor, k: int, s: int, p: int) -> torch.Tensor:
    b, n, c = t.shape
    side = math.isqrt(n)
    img = t.transpose(1, 2).reshape(b, c, side, side)
    return F.unfold(img, k, stride=s, padding=p).transpose(1, 2)


def eamlp_forward(sd: Sd, x: torch.Tensor, depth: int = 7, heads: int = 4, with_cls: bool = True) -> torch.Tensor:
    t = F.unfold(x, 7, stride=4, padding=2).transpose(1, 2)
    t = _t2t(sd, "tokens_to_token.attention1", t)
    t = _t2t(sd, "tokens_to_token.attention2", _unfold_tokens(t, 3, 2, 1))
    t = _lin(sd, "tokens_to_token.project", _unfold_tokens(t, 3, 2, 1))
    b = t.shape[0]
    pos = sd["pos_embed"]
    if with_cls:
        t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], dim=1) + pos
    else:  # the control: the authors' network without its class token, mean-pooled
        t = t + pos[:, 1:]
    for i in range(depth):
        p = f"blocks.{i}"
        y = _lin(sd, p + ".attn.trans_dims", _ln(sd, p + ".norm1", t))
        n = y.shape[1]
        y = y.view(b, n, 4 * heads, -1).permute(0, 2, 1, 3)
        a = _ea_norm(_lin(sd, p + ".attn.linear_0", y), tokens_dim=-2, units_dim=-1)
        y = _lin(sd, p + ".attn.linear_1", a).permute(0, 2, 1, 3).reshape(b, n, -1)
        t = t + _lin(sd, p + ".attn.proj", y)
        t = t + _mlp(sd, p + ".mlp", _ln(sd, p + ".norm2", t))
    t = _ln(sd, "norm", t)
    return _lin(sd, "head", t[:, 0] if with_cls else t.mean(1))


# ---------------------------------------------------------------------------
# EANet
# ---------------------------------------------------------------------------


def _bottleneck_params(sd: Sd, p: str, c_in: int, planes: int, down: bool, gen) -> None:
    _conv_params(sd, p + ".conv1", c_in, planes, 1, gen)
    _bn_params(sd, p + ".bn1", planes, gen)
    _conv_params(sd, p + ".conv2", planes, planes, 3, gen)
    _bn_params(sd, p + ".bn2", planes, gen)
    _conv_params(sd, p + ".conv3", planes, planes * 4, 1, gen)
    _bn_params(sd, p + ".bn3", planes * 4, gen)
    if down:
        _conv_params(sd, p + ".downsample.0", c_in, planes * 4, 1, gen)
        _bn_params(sd, p + ".downsample.1", planes * 4, gen)


def eanet_state(layers=(3, 4, 6, 3), classes: int = 21, seed: int = 0) -> Sd:
    gen = torch.Generator().manual_seed(seed)
    sd: Sd = {}
    _conv_params(sd, "extractor.0.0", 3, 64, 3, gen)
    _bn_params(sd, "extractor.0.1", 64, gen)
    _conv_params(sd, "extractor.0.3", 64, 64, 3, gen)
    _bn_params(sd, "extractor.0.4", 64, gen)
    _conv_params(sd, "extractor.0.6", 64, 128, 3, gen)
    _bn_params(sd, "extractor.1", 128, gen)
    c_in = 128
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
        for j in range(n):
            _bottleneck_params(sd, f"extractor.{4 + li}.{j}", c_in, planes, j == 0, gen)
            c_in = planes * 4
    _conv_params(sd, "fc0.conv", 2048, 512, 3, gen)
    _bn_params(sd, "fc0.bn", 512, gen)
    _conv_params(sd, "linu.conv1", 512, 512, 1, gen, bias=True)
    sd["linu.linear_0.weight"] = _rand((64, 512, 1), gen, 4.0 / math.sqrt(512))
    sd["linu.linear_1.weight"] = _rand((512, 64, 1), gen, 1.0 / math.sqrt(64))  # trained: not tied to linear_0
    _conv_params(sd, "linu.conv2.0", 512, 512, 1, gen)
    _bn_params(sd, "linu.conv2.1", 512, gen)
    _conv_params(sd, "fc1.0.conv", 512, 256, 3, gen)
    _bn_params(sd, "fc1.0.bn", 256, gen)
    _conv_params(sd, "fc2", 256, classes, 1, gen, bias=True)
    return sd


def _bottleneck(sd: Sd, p: str, x: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    y = F.relu(_bn(sd, p + ".bn1", F.conv2d(x, sd[p + ".conv1.weight"])))
    y = F.relu(_bn(sd, p + ".bn2", F.conv2d(y, sd[p + ".conv2.weight"], None, stride, dilation, dilation)))
    y = _bn(sd, p + ".bn3", F.conv2d(y, sd[p + ".conv3.weight"]))
    if p + ".downsample.0.weight" in sd:
        x = _bn(sd, p + ".downsample.1", F.conv2d(x, sd[p + ".downsample.0.weight"], None, stride))
    return F.relu(y + x)


def _conv_bn_relu(sd: Sd, conv: str, bn: str, x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.relu(_bn(sd, bn, F.conv2d(x, sd[conv + ".weight"], sd.get(conv + ".bias"), 1, pad)))


def eanet_forward(sd: Sd, img: torch.Tensor, layers=(3, 4, 6, 3), grids=(1, 2, 4)) -> torch.Tensor:
    x = F.relu(_bn(sd, "extractor.0.1", F.conv2d(img, sd["extractor.0.0.weight"], None, 2, 1)))
    x = F.relu(_bn(sd, "extractor.0.4", F.conv2d(x, sd["extractor.0.3.weight"], None, 1, 1)))
    x = F.relu(_bn(sd, "extractor.1", F.conv2d(x, sd["extractor.0.6.weight"], None, 1, 1)))
    x = F.max_pool2d(x, 3, 2, 1)
    # (stride, dilation, grids) of layer1..4 at output stride 8
    plan = ((1, 1, None), (2, 1, None), (1, 2, None), (1, 4, grids))
    for li, ((stride, dil, g), n) in enumerate(zip(plan, layers)):
        for j in range(n):
            if j == 0:
                d = 1 if dil in (1, 2) else 2
                x = _bottleneck(sd, f"extractor.{4 + li}.0", x, stride, d)
            else:
                x = _bottleneck(sd, f"extractor.{4 + li}.{j}", x, 1, dil * (g[j] if g else 1))
    x = _conv_bn_relu(sd, "fc0.conv", "fc0.bn", x, 1)
    idn = x
    x = F.conv2d(x, sd["linu.conv1.weight"], sd["linu.conv1.bias"])
    b, c, h, w = x.shape
    a = F.conv1d(x.view(b, c, h * w), sd["linu.linear_0.weight"])  # (b, 64, n)
    a = _ea_norm(a, tokens_dim=-1, units_dim=1)
    x = F.conv1d(a, sd["linu.linear_1.weight"]).view(b, c, h, w)
    x = F.relu(_bn(sd, "linu.conv2.1", F.conv2d(x, sd["linu.conv2.0.weight"])) + idn)
    x = _conv_bn_relu(sd, "fc1.0.conv", "fc1.0.bn", x, 1)
    x = F.conv2d(x, sd["fc2.weight"], sd["fc2.bias"])
    return F.interpolate(x, size=img.shape[-2:], mode="bilinear", align_corners=True)


# ---------------------------------------------------------------------------
# PVT v1
# ---------------------------------------------------------------------------

PVT_T = {
    "dims": (64, 128, 320, 512),
    "heads": (1, 2, 5, 8),
    "mlp": (8, 8, 4, 4),
    "sr": (8, 4, 2, 1),
    "depths": (2, 2, 2, 2),
}


def pvt_state(img: int = 224, classes: int = 1000, seed: int = 0, **cfg) -> Sd:
    c = {**PVT_T, **cfg}
    gen = torch.Generator().manual_seed(seed)
    sd: Sd = {}
    c_in, side = 3, img
    for i in range(4):
        dim, patch = c["dims"][i], 4 if i == 0 else 2
        side //= patch
        p = f"patch_embed{i + 1}"
        _conv_params(sd, p + ".proj", c_in, dim, patch, gen, bias=True)
        _ln_params(sd, p + ".norm", dim, gen)
        sd[f"pos_embed{i + 1}"] = _rand((1, side * side + (1 if i == 3 else 0), dim), gen, 0.5)
        for j in range(c["depths"][i]):
            b = f"block{i + 1}.{j}"
            _ln_params(sd, b + ".norm1", dim, gen)
            _linear_params(sd, b + ".attn.q", dim, dim, gen, gain=1.5)
            _linear_params(sd, b + ".attn.kv", dim, 2 * dim, gen, gain=1.5)
            _linear_params(sd, b + ".attn.proj", dim, dim, gen)
            if c["sr"][i] > 1:
                _conv_params(sd, b + ".attn.sr", dim, dim, c["sr"][i], gen, bias=True)
                _ln_params(sd, b + ".attn.norm", dim, gen)
            _ln_params(sd, b + ".norm2", dim, gen)
            _linear_params(sd, b + ".mlp.fc1", dim, dim * c["mlp"][i], gen)
            _linear_params(sd, b + ".mlp.fc2", dim * c["mlp"][i], dim, gen)
        c_in = dim
    _ln_params(sd, "norm", c["dims"][3], gen)
    sd["cls_token"] = _rand((1, 1, c["dims"][3]), gen)
    _linear_params(sd, "head", c["dims"][3], classes, gen)
    return sd


def _pvt_attn(sd: Sd, p: str, x: torch.Tensor, h: int, w: int, heads: int, sr: int) -> torch.Tensor:
    b, n, c = x.shape
    q = _lin(sd, p + ".q", x).reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    if sr > 1:
        x_ = x.permute(0, 2, 1).reshape(b, c, h, w)
        x_ = F.conv2d(x_, sd[p + ".sr.weight"], sd[p + ".sr.bias"], stride=sr).reshape(b, c, -1).permute(0, 2, 1)
        x_ = _ln(sd, p + ".norm", x_)
    else:
        x_ = x
    kv = _lin(sd, p + ".kv", x_).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = (q @ kv[0].transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
    return _lin(sd, p + ".proj", (attn @ kv[1]).transpose(1, 2).reshape(b, n, c))


def _pos(table: torch.Tensor, side: int, h: int, w: int) -> torch.Tensor:
    """The table (1, side*side, C) at (h, w): bilinear resize as the authors' _get_pos_embed."""
    if (h, w) == (side, side):
        return table
    grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    return F.interpolate(grid, size=(h, w), mode="bilinear").reshape(1, -1, h * w).permute(0, 2, 1)


def pvt_forward(sd: Sd, x: torch.Tensor, *, img: int = 224, classify: bool = True, **cfg):
    """Logits (the classifier), or the four stage maps (the authors' dense-prediction backbone:
    no class token, the last table without its first entry)."""
    c = {**PVT_T, **cfg}
    b = x.shape[0]
    maps, side = [], img
    for i in range(4):
        patch = 4 if i == 0 else 2
        side //= patch
        p = f"patch_embed{i + 1}"
        y = F.conv2d(x, sd[p + ".proj.weight"], sd[p + ".proj.bias"], stride=patch)
        h, w = y.shape[-2:]
        t = _ln(sd, p + ".norm", y.flatten(2).transpose(1, 2))
        table = sd[f"pos_embed{i + 1}"]
        if i == 3:
            rest = _pos(table[:, 1:], side, h, w)
            if classify:
                t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], 1) + torch.cat([table[:, :1], rest], 1)
            else:
                t = t + rest
        else:
            t = t + _pos(table, side, h, w)
        for j in range(c["depths"][i]):
            blk = f"block{i + 1}.{j}"
            t = t + _pvt_attn(sd, blk + ".attn", _ln(sd, blk + ".norm1", t, 1e-6), h, w, c["heads"][i], c["sr"][i])
            t = t + _mlp(sd, blk + ".mlp", _ln(sd, blk + ".norm2", t, 1e-6))
        if i < 3 or not classify:
            x = t.reshape(b, h, w, -1).permute(0, 3, 1, 2)
            maps.append(x)
    if not classify:
        return maps
    return _lin(sd, "head", _ln(sd, "norm", t, 1e-6)[:, 0])


# ---------------------------------------------------------------------------
# Slide-Swin
# ---------------------------------------------------------------------------


def slide_swin_state(
    embed: int = 32, depths=(1, 1, 2, 1), heads=(1, 2, 4, 8), img: int = 224, ka: int = 3, seed: int = 0
) -> Sd:
    gen = torch.Generator().manual_seed(seed)
    sd: Sd = {}
    _conv_params(sd, "patch_embed.proj", 3, embed, 4, gen, bias=True)
    _ln_params(sd, "patch_embed.norm", embed, gen)
    side = img // 4
    for i, (d, h) in enumerate(zip(depths, heads)):
        dim, hd = embed * 2**i, embed * 2**i // h
        for j in range(d):
            p = f"layers.{i}.blocks.{j}"
            _ln_params(sd, p + ".norm1", dim, gen)
            _linear_params(sd, p + ".attn.qkv", dim, 3 * dim, gen, gain=2.0)
            _linear_params(sd, p + ".attn.proj", dim, dim, gen)
            if i < 2:  # slide: the fixed one-hot conv (frozen weight, learned bias) and the learned one
                eye = torch.eye(ka * ka).view(ka * ka, 1, ka, ka).repeat(hd, 1, 1, 1)
                sd[p + ".attn.dep_conv.weight"] = eye
                sd[p + ".attn.dep_conv.bias"] = 0.2 * _rand((ka * ka * hd,), gen)
                _conv_params(sd, p + ".attn.dep_conv1", hd, ka * ka * hd, ka, gen, bias=True, groups=hd)
                sd[p + ".attn.dep_conv1.weight"] *= 0.5
                sd[p + ".attn.relative_position_bias_table"] = _rand((1, h, 1, ka * ka, 1, 1), gen)
            else:  # window attention over the whole map (the window clamps to the map)
                m = side
                sd[p + ".attn.relative_position_bias_table"] = _rand(((2 * m - 1) ** 2, h), gen)
                sd[p + ".attn.relative_position_index"] = _rel_index(m)
            _ln_params(sd, p + ".norm2", dim, gen)
            _linear_params(sd, p + ".mlp.fc1", dim, 4 * dim, gen)
            _linear_params(sd, p + ".mlp.fc2", 4 * dim, dim, gen)
        if i < len(depths) - 1:
            _ln_params(sd, f"layers.{i}.downsample.norm", 4 * dim, gen)
            _linear_params(sd, f"layers.{i}.downsample.reduction", 4 * dim, 2 * dim, gen, bias=False)
            side //= 2
    dim = embed * 2 ** (len(depths) - 1)
    _ln_params(sd, "norm", dim, gen)
    _linear_params(sd, "head", dim, 1000, gen)
    return sd


def _rel_index(m: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + m - 1) * (2 * m - 1) + (rel[..., 1] + m - 1)


def _slide_attn(sd: Sd, p: str, x: torch.Tensor, hh: int, ww: int, heads: int, ka: int = 3) -> torch.Tensor:
    b, n, c = x.shape
    hd = c // heads
    f = _lin(sd, p + ".qkv", x.view(b, hh, ww, c)).permute(0, 3, 1, 2).reshape(b * heads, 3 * hd, hh, ww)
    q = (f[:, :hd] * hd**-0.5).reshape(b, heads, hd, 1, hh, ww)

    def shifted(t):
        a = F.conv2d(t, sd[p + ".dep_conv.weight"], sd[p + ".dep_conv.bias"], padding=ka // 2, groups=hd)
        a = a + F.conv2d(t, sd[p + ".dep_conv1.weight"], sd[p + ".dep_conv1.bias"], padding=ka // 2, groups=hd)
        return a.reshape(b, heads, hd, ka * ka, hh, ww)

    k = shifted(f[:, hd : 2 * hd]) + sd[p + ".relative_position_bias_table"]
    v = shifted(f[:, 2 * hd :])
    attn = (q * k).sum(2, keepdim=True).softmax(dim=3)
    out = (attn * v).sum(3).reshape(b, c, hh, ww).permute(0, 2, 3, 1).reshape(b, n, c)
    return _lin(sd, p + ".proj", out)


def _window_attn_whole(sd: Sd, p: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    qkv = _lin(sd, p + ".qkv", x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    bias = sd[p + ".relative_position_bias_table"][sd[p + ".relative_position_index"].view(-1)].view(n, n, -1)
    attn = (q @ k.transpose(-2, -1) + bias.permute(2, 0, 1)[None]).softmax(-1)
    return _lin(sd, p + ".proj", (attn @ v).transpose(1, 2).reshape(b, n, c))


def slide_swin_forward(sd: Sd, x: torch.Tensor, depths=(1, 1, 2, 1), heads=(1, 2, 4, 8)) -> torch.Tensor:
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4)
    hh, ww = t.shape[-2:]
    t = _ln(sd, "patch_embed.norm", t.flatten(2).transpose(1, 2))
    for i, (d, h) in enumerate(zip(depths, heads)):
        for j in range(d):
            p = f"layers.{i}.blocks.{j}"
            y = _ln(sd, p + ".norm1", t)
            y = _slide_attn(sd, p + ".attn", y, hh, ww, h) if i < 2 else _window_attn_whole(sd, p + ".attn", y, h)
            t = t + y
            t = t + _mlp(sd, p + ".mlp", _ln(sd, p + ".norm2", t))
        if i < len(depths) - 1:
            b, _, c = t.shape
            g = t.view(b, hh, ww, c)
            g = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], -1)
            hh, ww = hh // 2, ww // 2
            t = _lin(
                sd, f"layers.{i}.downsample.reduction", _ln(sd, f"layers.{i}.downsample.norm", g.view(b, -1, 4 * c))
            )
    return _lin(sd, "head", _ln(sd, "norm", t).mean(1))
