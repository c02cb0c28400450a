"""Augmentation on the accelerator (docs/design.md, "Data"): one batched affine warp per batch.

Every image gets its own random rotation, scale, translation and flip; the warp maps
each output pixel back to the input (about the image centre) and samples bilinearly,
filling with black outside the image. CIFAR-10's "pad 4, random 32px crop" is the same
warp with an integer shift in [-4, 4] px, which samples pixels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class AugSpec:
    rotate_deg: float = 0.0
    translate_frac: float = 0.0  # max shift as a fraction of the image size
    scale: tuple[float, float] = (1.0, 1.0)
    flip_p: float = 0.0
    crop_pad: int = 0  # max integer shift in px (padded random crop)


AUGMENTATIONS = {
    "mnist": AugSpec(rotate_deg=10, translate_frac=0.1, scale=(0.9, 1.1)),
    "fashion_mnist": AugSpec(rotate_deg=15, translate_frac=0.1, scale=(0.9, 1.1), flip_p=0.5),
    "cifar10": AugSpec(flip_p=0.5, crop_pad=4),
    "digits": AugSpec(rotate_deg=10, translate_frac=0.1, scale=(0.9, 1.1)),
}


def augment(x_BxHxWxCh: jax.Array, key: jax.Array, spec: AugSpec) -> jax.Array:
    """Randomly warp a batch of float images; the identity when `spec` has zero strength."""
    b, h, w, _ = x_BxHxWxCh.shape
    k_rot, k_scale, k_shift, k_crop, k_flip = jax.random.split(key, 5)
    angle_B = jnp.deg2rad(
        jax.random.uniform(k_rot, (b,), minval=-spec.rotate_deg, maxval=spec.rotate_deg)
    )
    scale_B = jax.random.uniform(k_scale, (b,), minval=spec.scale[0], maxval=spec.scale[1])
    max_shift = jnp.array([spec.translate_frac * w, spec.translate_frac * h])
    shift_Bx2 = jax.random.uniform(k_shift, (b, 2), minval=-1.0, maxval=1.0) * max_shift
    if spec.crop_pad:
        shift_Bx2 = shift_Bx2 + jax.random.randint(
            k_crop, (b, 2), -spec.crop_pad, spec.crop_pad + 1
        ).astype(shift_Bx2.dtype)
    flip_B = jax.random.bernoulli(k_flip, spec.flip_p, (b,))

    # Output pixel p -> source q = (R S)^-1 (p - c - t) + c, with c the image centre.
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    px_BxHxW = xs[None] - cx - shift_Bx2[:, 0, None, None]
    py_BxHxW = ys[None] - cy - shift_Bx2[:, 1, None, None]
    cos, sin = jnp.cos(angle_B)[:, None, None], jnp.sin(angle_B)[:, None, None]
    inv_s = (1.0 / scale_B)[:, None, None]
    qx = (cos * px_BxHxW + sin * py_BxHxW) * inv_s + cx
    qy = (-sin * px_BxHxW + cos * py_BxHxW) * inv_s + cy
    qx = jnp.where(flip_B[:, None, None], (w - 1) - qx, qx)
    return _bilinear(x_BxHxWxCh, qx, qy)


def _bilinear(x_BxHxWxCh, qx_BxHxW, qy_BxHxW):
    b, h, w, c = x_BxHxWxCh.shape
    flat_BxPxCh = x_BxHxWxCh.reshape(b, h * w, c)
    x0, y0 = jnp.floor(qx_BxHxW), jnp.floor(qy_BxHxW)
    fx, fy = qx_BxHxW - x0, qy_BxHxW - y0
    out = jnp.zeros_like(x_BxHxWxCh)
    for dx, dy, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
        vals = jnp.take_along_axis(flat_BxPxCh, idx.reshape(b, h * w, 1), axis=1).reshape(
            b, h, w, c
        )
        out = out + jnp.where(inside, wgt, 0.0)[..., None] * vals
    return out
