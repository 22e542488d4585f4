"""Uploaded picture (PNG/JPEG/..., any size, colour, polarity) -> one MNIST-style 28x28 uint8 image.
Imports ``protocol`` (its errors and pixel rule), never the other way round.

The MNIST recipe: grayscale, white digit on black, crop to the ink, scale the longer side to 20 px
keeping the aspect ratio (anti-aliased), paste into 28x28 so the centre of mass sits at the centre.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnistops.serving.protocol import InputError, to_batch

MAX_PIXELS = 16_000_000  # decompression-bomb guard: a 4000x4000 photo is the most we look at
WORK_SIDE = 1024  # bigger pictures are shrunk first: the digit ends up 20 px tall anyway
BOX = 20
SIDE = 28
INK = 0.2  # after contrast stretch to 0..1: a pixel darker than this is background


def decode(data: bytes) -> Image.Image:
    if not data:
        raise InputError("the uploaded file is empty", "file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise InputError(f"image too large: {img.width}x{img.height} pixels (at most {MAX_PIXELS})", "file",
                                 413)
            if img.format == "JPEG":
                img.draft(img.mode, (WORK_SIDE, WORK_SIDE))  # decode JPEGs at a reduced scale
            img.load()
            if max(img.size) > WORK_SIDE:
                img.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BILINEAR)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("'file' is not a readable image: unknown format (PNG or JPEG expected)", "file", 415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"'file' is too large an image: {exc}", "file", 413) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt image data
        raise InputError(f"'file' is a corrupt or truncated image: {exc}", "file", 422) from None
    return img


def grayscale(img: Image.Image) -> np.ndarray:
    """-> float32 (H, W) luminance 0..255; transparency composited on a background that contrasts the ink."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        lum = np.asarray(rgba.convert("L"), dtype=np.float32)
        if alpha.min() < 0.99:  # drawn on a transparent sheet: the opaque strokes are the ink
            ink_dark = (lum * alpha).sum() / max(alpha.sum(), 1e-6) < 128
            bg = 255.0 if ink_dark else 0.0
            return lum * alpha + bg * (1 - alpha)
        return lum
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return np.asarray(img.convert("L"), dtype=np.float32)


def decode_upload(data: bytes) -> np.ndarray:
    """The upload format's decoder: picture bytes -> images (1, 1, 28, 28) by the pixel rule (``protocol.to_batch``)."""
    return to_batch(normalise(data)[None], "file")


def normalise(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 (28, 28), white digit on black, MNIST-style framing."""
    try:
        g = grayscale(decode(data))
    except InputError:
        raise
    except Exception as exc:  # PIL raises many types on corrupt data: all are the file's fault
        raise InputError(f"'file' is a corrupt image: {type(exc).__name__}: {exc}"[:300], "file") from None
    if g.ndim != 2 or min(g.shape) < 1:
        raise InputError("the image has no pixels", "file")
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    if np.median(border) > 127:  # light background: dark ink -> invert to white-on-black
        g = 255.0 - g
        border = 255.0 - border
    bg = float(np.median(border))
    top = float(np.percentile(g, 99.9)) if g.size > 1000 else float(g.max())
    if top - bg < 16:
        raise InputError("no digit found in the image (it is blank or has no contrast)", "file")
    x = np.clip((g - bg) / (top - bg), 0.0, 1.0)
    ys, xs = np.nonzero(x > INK)
    if ys.size == 0:
        raise InputError("no digit found in the image", "file")
    x = x[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = x.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    patch = Image.fromarray((x * 255).astype(np.uint8)).resize((nw, nh), Image.Resampling.LANCZOS)
    p = np.asarray(patch, dtype=np.float32)
    mass = p.sum()
    if mass <= 0:
        raise InputError("no digit found in the image", "file")
    cy = (p.sum(axis=1) * np.arange(nh)).sum() / mass
    cx = (p.sum(axis=0) * np.arange(nw)).sum() / mass
    top_y = int(np.clip(round(SIDE / 2 - 0.5 - cy), 0, SIDE - nh))
    left_x = int(np.clip(round(SIDE / 2 - 0.5 - cx), 0, SIDE - nw))
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top_y:top_y + nh, left_x:left_x + nw] = p
    return np.clip(out, 0, 255).astype(np.uint8)
