"""Slide attention's kernels, kept apart from the module (:mod:`visattn.layers.slide`).

The module computes q, k, v and the merged shift kernel and hands them to one of two
evaluations of the same arithmetic, each an implementation of its own (``impl=``):

* :func:`attend_functional` (``"functional"``): out of place, one product and one shifted
  slice per offset; what autograd, a trace, an export, ``torch.compile`` and ``torch.func``
  transforms can record.
* :func:`attend_inplace` / :func:`attend_inplace_qkv` (``"inplace"``): the loop runs in place
  over row chunks of the image (memory bounded independently of k*k); under autograd as
  :class:`SlideAttend`, a custom autograd Function on the packed q, K, V (B, 3C, H, W) that
  saves only them and the attention weights and walks the offsets again in its backward
  (padding nothing, writing the three gradients into one buffer). Pure shifts (no learned kernel) take
  :func:`_shifts_inplace`, which pads nothing: a missing neighbour has key and value 0, so
  each offset only touches the pixels whose neighbour exists.

Shapes: q (B, h, d, H, W) scaled queries; k, v (B, h, d, H, W) keys and values (unpadded;
:func:`attend_functional` takes them zero-padded, (B, h, d, H+2r, W+2r)); w3 (d, k*k, k*k)
merged shift kernels [c, i, j] or None (pure shifts); b2 (d, k*k); kb (h, k*k) offset bias
or None; valid (k*k, H, W) bool or None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attend_functional", "attend_inplace", "attend_inplace_qkv", "SlideAttend"]

#: Elements per row chunk of the in-place path (4 MiB of float32 per buffer): smaller chunks
#: pay Python overhead per offset, larger ones leave the cache (measured on a 2-core CPU).
_CHUNK_ELEMS = 1 << 20
#: The same for the backward of the training path (elements of its largest per-chunk buffer, 4 MiB
#: of float32): it pads nothing and adds the key and value gradients straight into the one
#: (B, 3C, H, W) gradient buffer, so a chunk holds only a product buffer and the chunk's
#: attention-weight gradients; one chunk up to a 56 x 56 map at C=64, batch 4 (fewer Python
#: round trips and longer rows per op: 0.9x -> 0.5x of im2col's training step at 28, measured).
_BWD_CHUNK_ELEMS = 1 << 20


# ---------------------------------------------------------------------------
# "functional": out of place. kp, vp: (B, h, d, H+2r, W+2r) zero-padded keys/values.
# ---------------------------------------------------------------------------


def attend_functional(q, kp, vp, ks, w3, b2, kb, valid):
    bsz, nh, d, h, w = q.shape
    kk = ks * ks
    shifts = [(j // ks, j % ks) for j in range(kk)]
    if w3 is None:
        logits = torch.stack([(q * kp[..., dy : dy + h, dx : dx + w]).sum(2) for dy, dx in shifts], 2)
    else:
        qm = q.reshape(bsz, nh, d, h * w)
        logits = torch.matmul(b2.t(), qm)  # (B, h, k*k, n): sum_c b[c, i] q[c]
        for j, (dy, dx) in enumerate(shifts):
            prod = (q * kp[..., dy : dy + h, dx : dx + w]).reshape(bsz, nh, d, h * w)
            logits = logits + torch.matmul(w3[:, :, j].t(), prod)
        logits = logits.view(bsz, nh, kk, h, w)
    if kb is not None:
        logits = logits + kb.view(1, nh, kk, 1, 1) * q.sum(2, keepdim=True)
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    attn = torch.softmax(logits, 2)  # (B, h, k*k, H, W)
    if w3 is None:
        out = attn[:, :, 0:1] * vp[..., 0:h, 0:w]
        for j in range(1, kk):
            dy, dx = shifts[j]
            out = out + attn[:, :, j : j + 1] * vp[..., dy : dy + h, dx : dx + w]
        return out
    am = attn.reshape(bsz, nh, kk, h * w)
    out = torch.matmul(b2, am).view(bsz, nh, d, h, w)  # sum_i b[c, i] a_i
    for j, (dy, dx) in enumerate(shifts):
        g = torch.matmul(w3[:, :, j], am).view(bsz, nh, d, h, w)  # sum_i W[c, i, j] a_i
        out = out + g * vp[..., dy : dy + h, dx : dx + w]
    return out


# ---------------------------------------------------------------------------
# "inplace": the loop in place over row chunks; under autograd the Function below.
# ---------------------------------------------------------------------------


def attend_inplace(q, k, v, ks, w3, b2, kb, valid):
    """The in-place evaluation; through :class:`SlideAttend` when a gradient is needed (the
    same forward kernels, which then also keep the attention weights for the backward).
    It cannot be recorded by a trace, export, ``torch.compile`` or ``torch.func`` transform.
    Under autograd q, k, v are packed into one (B, 3C, H, W) tensor (a copy); the module calls
    :func:`attend_inplace_qkv` with the projection's output, which is packed already."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, w3, b2, kb)):
        bsz, nh, d, h, w = q.shape
        qkv = torch.cat([t.reshape(bsz, nh * d, h, w) for t in (q, k, v)], 1)
        return SlideAttend.apply(qkv, w3, b2, kb, valid, ks, nh)
    return _forward_inplace(q, k, v, ks, w3, b2, kb, valid)


def attend_inplace_qkv(qkv, num_heads, ks, w3, b2, kb, valid):
    """:func:`attend_inplace` on the packed projection output qkv (B, 3C, H, W) (q, k, v the
    three channel thirds, heads (B, h, d, H, W) within each): under autograd the backward writes
    the three gradients into one (B, 3C, H, W) buffer, so no concatenation copies them again."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (qkv, w3, b2, kb)):
        return SlideAttend.apply(qkv, w3, b2, kb, valid, ks, num_heads)
    return _forward_inplace(*_unpack(qkv, num_heads), ks, w3, b2, kb, valid)


def _unpack(qkv, num_heads):
    """(B, 3C, H, W) -> q, k, v views (B, h, d, H, W)."""
    bsz, c3, h, w = qkv.shape
    return qkv.view(bsz, 3, num_heads, c3 // (3 * num_heads), h, w).unbind(1)


def _forward_inplace(q, k, v, ks, w3, b2, kb, valid, attn_out=None):
    """Pure shifts (w3 None) without padding copies, else the merged kernel over padded rows."""
    if w3 is None:
        return _shifts_inplace(q, k, v, ks, kb, valid, attn_out)
    return _deformed_inplace(q, k, v, ks, w3, b2, kb, valid, attn_out)


def _finish_logits(logits, qc, kb, valid, y0, y1, attn_out):
    """A chunk's logits (B, h, k*k, m, W) for rows y0..y1, in place: + offset bias * sum(q),
    masked neighbours -inf, softmax over the k*k neighbours; copied into ``attn_out`` if given."""
    if kb is not None:
        logits.addcmul_(kb.view(1, kb.shape[0], kb.shape[1], 1, 1), qc.sum(2, keepdim=True))
    if valid is not None:
        logits.masked_fill_(~valid[:, y0:y1], float("-inf"))
    logits.sub_(logits.amax(2, keepdim=True)).exp_()
    logits.div_(logits.sum(2, keepdim=True))
    if attn_out is not None:
        attn_out[..., y0:y1, :].copy_(logits)


def _batched_kernels(w3, b2, bh):
    """Per-offset views of the merged kernel for bmm over B*h: W[:, :, j]^T (k*k, d) and
    W[:, :, j] (d, k*k) for each j, and b^T (k*k, d), b (d, k*k), expanded over the batch."""
    d, kk = b2.shape
    wl = [w3[:, :, j].t().contiguous().expand(bh, kk, d) for j in range(kk)]
    wo = [w3[:, :, j].contiguous().expand(bh, d, kk) for j in range(kk)]
    return wl, wo, b2.t().contiguous().expand(bh, kk, d), b2.contiguous().expand(bh, d, kk)


def _padded_rows(t, y0, y1, r):
    """Rows y0 - r .. y1 + r of t (B, h, d, H, W), zero-padded by r columns each side and by
    zero rows where they fall outside the map: (B, h, d, y1 - y0 + 2r, W + 2r)."""
    a0, a1 = max(y0 - r, 0), min(y1 + r, t.shape[3])
    return F.pad(t[..., a0:a1, :], (r, r, a0 - (y0 - r), y1 + r - a1))


@torch.no_grad()
def _deformed_inplace(q, k, v, ks, w3, b2, kb, valid, attn_out=None):
    """The forward with a merged kernel, in place over row chunks; q, k, v unpadded
    (B, h, d, H, W): each chunk pads only its own rows (and halo) of K and V. ``attn_out`` (B, h, k*k, H, W), when given,
    receives the attention weights (for the backward of :class:`SlideAttend`)."""
    bsz, nh, d, h, w = q.shape
    kk, r, dt, dev = ks * ks, ks // 2, q.dtype, q.device
    bh = bsz * nh
    out = torch.empty(bsz, nh, d, h, w, dtype=dt, device=dev)
    rows = max(1, min(h, _CHUNK_ELEMS // (bsz * nh * max(d, kk) * w)))
    shifts = [(j // ks, j % ks) for j in range(kk)]
    wl, wo, b2t, b2e = _batched_kernels(w3, b2, bh)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        m = y1 - y0
        qc, oc = q[..., y0:y1, :], out[..., y0:y1, :]
        kp, vp = _padded_rows(k, y0, y1, r), _padded_rows(v, y0, y1, r)
        tmp = torch.empty(bsz, nh, d, m, w, dtype=dt, device=dev)
        qm = qc.reshape(bh, d, m * w)
        logits = torch.bmm(b2t, qm)  # (B*h, k*k, m*w)
        for j, (dy, dx) in enumerate(shifts):
            torch.mul(qc, kp[..., dy : dy + m, dx : dx + w], out=tmp)
            torch.baddbmm(logits, wl[j], tmp.view(bh, d, m * w), out=logits)  # (counted, unlike baddbmm_)
        logits = logits.view(bsz, nh, kk, m, w)
        _finish_logits(logits, qc, kb, valid, y0, y1, attn_out)
        am = logits.view(bh, kk, m * w)
        g = tmp.view(bh, d, m * w)
        torch.bmm(b2e, am, out=g)
        oc.copy_(tmp)
        for j, (dy, dx) in enumerate(shifts):
            torch.bmm(wo[j], am, out=g)
            oc.addcmul_(tmp, vp[..., dy : dy + m, dx : dx + w])
    return out


@torch.no_grad()
def _shifts_inplace(q, k, v, ks, kb, valid, attn_out=None):
    """Pure shifts without padding copies. q, k, v: (B, h, d, H, W) (views allowed).

    A neighbour outside the image has key 0 and value 0: its logit is the key-bias term alone
    and it adds nothing to the output, so each offset only touches the rectangle of pixels
    whose neighbour exists.
    """
    bsz, nh, d, h, w = q.shape
    kk, r, dt, dev = ks * ks, ks // 2, q.dtype, q.device
    out = torch.empty(bsz, nh, d, h, w, dtype=dt, device=dev)
    rows = max(1, min(h, _CHUNK_ELEMS // (bsz * nh * max(d, kk) * w)))
    offsets = [(j // ks - r, j % ks - r) for j in range(kk)]
    centre = kk // 2
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        m = y1 - y0
        tmp = torch.empty(bsz, nh, d, m, w, dtype=dt, device=dev)
        logits = torch.zeros(bsz, nh, kk, m, w, dtype=dt, device=dev)
        rects = []
        for j, (oy, ox) in enumerate(offsets):
            ya, yb = max(y0, -oy), min(y1, h - oy)  # output rows whose neighbour row exists
            xa, xb = max(0, -ox), min(w, w - ox)
            rects.append((ya, yb, xa, xb))
            if ya >= yb or xa >= xb:
                continue
            t = tmp[..., : yb - ya, : xb - xa]
            torch.mul(q[..., ya:yb, xa:xb], k[..., ya + oy : yb + oy, xa + ox : xb + ox], out=t)
            torch.sum(t, 2, out=logits[:, :, j, ya - y0 : yb - y0, xa:xb])
        _finish_logits(logits, q[..., y0:y1, :], kb, valid, y0, y1, attn_out)
        oc = out[..., y0:y1, :]
        torch.mul(logits[:, :, centre : centre + 1], v[..., y0:y1, :], out=oc)  # the centre always exists
        for j, (oy, ox) in enumerate(offsets):
            ya, yb, xa, xb = rects[j]
            if j == centre or ya >= yb or xa >= xb:
                continue
            oc[..., ya - y0 : yb - y0, xa:xb].addcmul_(
                logits[:, :, j : j + 1, ya - y0 : yb - y0, xa:xb], v[..., ya + oy : yb + oy, xa + ox : xb + ox]
            )
    return out


# ---------------------------------------------------------------------------
# The in-place path under autograd: the same arithmetic as a custom autograd Function. Autograd through the
# offset loop stores one (B, h, d, H, W) product and one shifted slice per offset (k*k
# copies of the keys and values); this Function saves only q, K, V (unpadded) and the
# attention weights (B, h, k*k, H, W), and its backward walks the offsets again with slices.
# ---------------------------------------------------------------------------


class SlideAttend(torch.autograd.Function):
    """(qkv, w3, b2, kb, valid, ks, num_heads) -> out (B, h, d, H, W); qkv (B, 3C, H, W) the packed
    q, k, v (see :func:`attend_inplace_qkv`), the rest as above. Saves qkv and the weights; the
    backward returns the gradient of qkv as one buffer."""

    @staticmethod
    def forward(ctx, qkv, w3, b2, kb, valid, ks, num_heads):
        q, k, v = _unpack(qkv, num_heads)
        attn = torch.empty(q.shape[0], q.shape[1], ks * ks, q.shape[3], q.shape[4], dtype=q.dtype, device=q.device)
        out = _forward_inplace(q, k, v, ks, w3, b2, kb, valid, attn_out=attn)
        ctx.save_for_backward(qkv, w3, b2, kb, attn)
        ctx.ks, ctx.valid, ctx.num_heads = ks, valid, num_heads
        return out

    @staticmethod
    def backward(ctx, gout):
        qkv, w3, b2, kb, attn = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            # create_graph=True (double backward: gradient penalties, meta-learning): differentiate
            # the out-of-place form with autograd, so the gradients are differentiable themselves
            grads = _attend_backward_differentiable(gout, qkv, w3, b2, kb, ctx.valid, ctx.ks, ctx.num_heads, needs)
        else:
            grads = _attend_backward(gout.contiguous(), qkv, w3, b2, kb, attn, ctx.ks, ctx.num_heads, needs)
        return (*grads, None, None, None)


def _attend_backward_differentiable(gout, qkv, w3, b2, kb, valid, ks, num_heads, needs):
    """The gradients of :class:`SlideAttend` as a differentiable graph (autograd through
    :func:`attend_functional`); used only when the backward itself is recorded."""
    r = ks // 2
    inputs = (qkv, w3, b2, kb)
    wanted = [i for i, t in enumerate(inputs) if needs[i] and t is not None]
    q, k, v = _unpack(qkv, num_heads)
    kp, vp = F.pad(k, (r, r, r, r)), F.pad(v, (r, r, r, r))
    out = attend_functional(q, kp, vp, ks, w3, b2, kb, valid)
    got = torch.autograd.grad(out, [inputs[i] for i in wanted], gout, create_graph=True, allow_unused=True)
    grads: list = [None] * 4
    for i, g in zip(wanted, got):
        grads[i] = g
    return tuple(grads)


def _scatter_rects(ks, h, w, y0, y1):
    """For each offset j (dy, dx): where the chunk's pixels (rows y0..y1) send gradient to their
    neighbour p + o_j inside the map: (source rows in the chunk, source columns, target rows,
    target columns) as slices, or None when no neighbour exists."""
    r, rects = ks // 2, []
    for j in range(ks * ks):
        oy, ox = j // ks - r, j % ks - r
        ya, yb, xa, xb = max(y0, -oy), min(y1, h - oy), max(0, -ox), min(w, w - ox)
        if ya >= yb or xa >= xb:
            rects.append(None)
        else:
            rects.append((slice(ya - y0, yb - y0), slice(xa, xb), slice(ya + oy, yb + oy), slice(xa + ox, xb + ox)))
    return rects


def _neighbour_product(x, t, rect, out):
    """out (B, h, d, m, W) = x * t shifted to neighbour j (rect from :func:`_scatter_rects`), 0 at
    the chunk's pixels whose neighbour j is outside the map (zero padding, without a padded copy)."""
    sy, sx, ty, tx = rect
    m, w = out.shape[3], out.shape[4]
    torch.mul(x[..., sy, sx], t[..., ty, tx], out=out[..., sy, sx])
    if sy.start > 0:
        out[..., : sy.start, :].zero_()
    if sy.stop < m:
        out[..., sy.stop :, :].zero_()
    if sx.start > 0:
        out[..., sy, : sx.start].zero_()
    if sx.stop < w:
        out[..., sy, sx.stop :].zero_()


def _attend_backward(gout, qkv, w3, b2, kb, attn, ks, num_heads, needs):
    """Gradients of :func:`_forward_inplace` for (qkv, w3, b2, kb), chunked over rows; qkv the
    packed (B, 3C, H, W) input. Nothing is padded: each offset touches only the chunk's pixels
    whose neighbour exists (a missing neighbour has key and value 0), and the key and value
    gradients of a neighbour are added straight into the one (B, 3C, H, W) gradient buffer.

    With a_i the attention weights, G_j = sum_i W[:, i, j] a_i (the merged kernel seen from
    the output) and dL the softmax-backward of the logits:
        dV_j += G_j * gout,   dA_i = sum_c b[c, i] gout[c] + sum_j sum_c W[c, i, j] gout[c] V_j[c]
        dq = sum_i b[:, i] dL_i + sum_j H_j * K_j + sum_i kb_i dL_i,   dK_j += H_j * q,
        H_j = sum_i W[:, i, j] dL_i;   dW[c, i, j] = sum (a_i gout[c] V_j[c] + dL_i q[c] K_j[c]).
    Pure shifts (w3 None) are the case W = identity, b = 0.
    """
    q, k, v = _unpack(qkv, num_heads)
    bsz, nh, d, h, w = q.shape
    kk, dt, dev = ks * ks, q.dtype, q.device
    bh = bsz * nh
    dqkv = torch.empty_like(qkv)
    dq, dk, dv = _unpack(dqkv, num_heads)
    dqkv[:, qkv.shape[1] // 3 :].zero_()  # dk, dv accumulate; dq is written row chunk by row chunk
    # weight gradients accumulated per (B*h) batch entry by baddbmm, summed over it at the end:
    # dwb[j] (B*h, d, k*k) holds dW[:, :, j], dbb (B*h, d, k*k) holds db
    dwb = torch.zeros(kk, bsz * nh, d, kk, dtype=dt, device=dev) if w3 is not None else None
    dbb = torch.zeros(bsz * nh, d, kk, dtype=dt, device=dev) if w3 is not None else None
    dkb = torch.zeros(nh, kk, dtype=dt, device=dev) if kb is not None else None
    rows = max(1, min(h, _BWD_CHUNK_ELEMS // (bsz * nh * max(d, kk) * w)))
    if w3 is not None:
        wl, wo, b2t, b2e = _batched_kernels(w3, b2, bh)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        m = y1 - y0
        mw = m * w
        rects = _scatter_rects(ks, h, w, y0, y1)
        a = attn[..., y0:y1, :]  # (B, h, k*k, m, W), a view: bmm reads it with its strides
        go = gout[..., y0:y1, :]  # (B, h, d, m, W)
        qc = q[..., y0:y1, :]
        tmp = torch.empty(bsz, nh, d, m, w, dtype=dt, device=dev)
        tm = tmp.view(bh, d, mw)
        am, gom = a.view(bh, kk, mw), go.view(bh, d, mw)
        # dA: gradient of the attention weights
        if w3 is None:
            da = torch.zeros(bsz, nh, kk, m, w, dtype=dt, device=dev)  # 0 where the neighbour is missing
            for j, rect in enumerate(rects):
                if rect is None:
                    continue
                sy, sx, ty, tx = rect
                t = tmp[..., : sy.stop - sy.start, : sx.stop - sx.start]
                torch.mul(go[..., sy, sx], v[..., ty, tx], out=t)
                torch.sum(t, 2, out=da[:, :, j, sy, sx])
                dv[..., ty, tx].addcmul_(a[:, :, j : j + 1, sy, sx], go[..., sy, sx])
        else:
            da = torch.bmm(b2t, gom)  # (B*h, k*k, m*W)
            amt = am.transpose(1, 2)
            dbb.baddbmm_(gom, amt)
            for j, rect in enumerate(rects):
                if rect is None:
                    continue
                sy, sx, ty, tx = rect
                _neighbour_product(go, v, rect, tmp)  # gout * V_j, 0 where the neighbour is missing
                torch.baddbmm(da, wl[j], tm, out=da)
                dwb[j].baddbmm_(tm, amt)
                torch.bmm(wo[j], am, out=tm)  # G_j
                dv[..., ty, tx].addcmul_(tmp[..., sy, sx], go[..., sy, sx])
            da = da.view(bsz, nh, kk, m, w)
        # softmax backward: dL = a * (dA - sum_i a_i dA_i); masked neighbours have a = 0
        dl = da.sub_((a * da).sum(2, keepdim=True)).mul_(a)  # (B, h, k*k, m, W)
        dlm = dl.view(bh, kk, mw)
        dqc = dq[..., y0:y1, :]
        centre = kk // 2  # the centre neighbour always exists
        if w3 is None:
            torch.mul(dl[:, :, centre : centre + 1], k[..., y0:y1, :], out=dqc)
            for j, rect in enumerate(rects):
                if rect is None:
                    continue
                sy, sx, ty, tx = rect
                if j != centre:
                    dqc[..., sy, sx].addcmul_(dl[:, :, j : j + 1, sy, sx], k[..., ty, tx])
                dk[..., ty, tx].addcmul_(dl[:, :, j : j + 1, sy, sx], qc[..., sy, sx])
        else:
            qm = qc.reshape(bh, d, mw)
            dlt = dlm.transpose(1, 2)
            dbb.baddbmm_(qm, dlt)
            torch.bmm(b2e, dlm, out=tm)  # (B*h, d, m*W)
            dqc.copy_(tmp)
            for j, rect in enumerate(rects):
                if rect is None:
                    continue
                sy, sx, ty, tx = rect
                _neighbour_product(qc, k, rect, tmp)  # q * K_j
                dwb[j].baddbmm_(tm, dlt)
                torch.bmm(wo[j], dlm, out=tm)  # H_j
                t = tmp[..., sy, sx]
                dqc[..., sy, sx].addcmul_(t, k[..., ty, tx])
                dk[..., ty, tx].addcmul_(t, qc[..., sy, sx])
        if kb is not None:
            # logit_i += kb_i * sum_c q[c]
            dqc.add_((dl * kb.view(1, nh, kk, 1, 1)).sum(2, keepdim=True))
            dkb += (dl * qc.sum(2, keepdim=True)).sum((0, 3, 4))
    dw3 = dwb.sum(1).permute(1, 2, 0) if w3 is not None else None  # (d, k*k [i], k*k [j])
    db2 = dbb.sum(0) if w3 is not None else None
    return (
        dqkv if needs[0] else None,
        dw3 if needs[1] else None,
        db2 if needs[2] else None,
        dkb if needs[3] else None,
    )
