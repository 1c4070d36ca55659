"""Generative backends on a diffusers inpainting pipeline: ``place_in_scene`` backend ``diffusers``
and the ``crops`` fill ``generate``.

Any SD 1.5/2/XL inpainting checkpoint or FLUX.1 Fill works: ``DiffusionPipeline.from_pretrained``
reads the pipeline class from ``model_index.json``. The model runs at its native resolution (about
512² for SD 1.5, 1024² for SDXL and FLUX, keeping the aspect ratio); only the *new* area comes from
it, upscaled back to full size. Known pixels are then put back exactly: the subject by an alpha
composite of the full-resolution cut-out, the original canvas of a crop untouched. A generated
contact shadow is allowed; a changed product is not.
"""
from __future__ import annotations

import inspect
import math
import secrets
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import PermanentError
from ..models import gpu_errors, load_diffusers, manager_for
from ..pixels import max_value, resize, to_dtype
from ..schema import opt
from .base import Asset, Stage, StageContext, register

ANCHORS = ("keep", "center", "top", "bottom", "left", "right", "top-left", "top-right", "bottom-left",
           "bottom-right")
FILL_PROMPT = "the same background, continued seamlessly, same lighting and texture, photograph"
FILL_NEGATIVE = "text, watermark, logo, frame, border, people, new objects, blurry"
_NEUTRAL = 128  # grey under areas the model must invent (with strength 1 it only seeds the noise)


# ------------------------------------------------------------------------------ pure geometry


def generation_size(width: int, height: int, native: int, multiple: int) -> tuple[int, int]:
    """The model's canvas: the same aspect as (width, height), about native² pixels, sides a multiple."""
    s = math.sqrt(native * native / float(width * height))
    gw = max(multiple, int(round(width * s / multiple)) * multiple)
    gh = max(multiple, int(round(height * s / multiple)) * multiple)
    return gw, gh


def scene_layout(canvas: tuple[int, int], box: tuple[int, int, int, int], scale: float | None, anchor: str,
                 margin: float) -> tuple[int, int, int, int]:
    """Where the subject goes: (scene width, scene height, x, y of the subject box's top-left).

    The subject is never resampled: with ``scale`` the scene is sized around it (the box spans
    ``scale`` of the scene's width or height, whichever binds, at the input canvas's aspect);
    without, the scene is the input canvas. ``anchor`` keep leaves the subject where it was
    (centred when the scene was resized); others push it to that side, ``margin`` (a fraction of
    the scene) away from the edge.
    """
    cw, ch = canvas
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    if scale is None:
        w, h = cw, ch
    else:
        aspect = cw / ch
        w = max(bw / scale, bh / scale * aspect)
        w, h = int(math.ceil(w)), int(math.ceil(w / aspect))
        w, h = max(w, bw), max(h, bh)
    if anchor == "keep":
        x, y = (x0, y0) if scale is None else ((w - bw) // 2, (h - bh) // 2)
    else:
        x, y = (w - bw) // 2, (h - bh) // 2
        mx, my = int(round(margin * w)), int(round(margin * h))
        if "top" in anchor:
            y = my
        if "bottom" in anchor:
            y = h - bh - my
        if "left" in anchor:
            x = mx
        if "right" in anchor:
            x = w - bw - mx
    x = min(max(x, 0), w - bw)
    y = min(max(y, 0), h - bh)
    return w, h, x, y


# ------------------------------------------------------------------------------- the pipeline


def diffusion_pipeline(ctx: StageContext, model: str | None) -> Any:
    """The worker's resident inpainting pipeline for ``model`` (default: models.diffusers)."""
    manager = manager_for(ctx)
    name = model or ctx.config.models.diffusers
    return manager.get(("diffusers", name), lambda: load_diffusers(manager, name))


def native_geometry(pipe: Any) -> tuple[int, int]:
    """(native side in pixels, size multiple) of an SD/SDXL UNet or FLUX transformer pipeline."""
    vsf = int(getattr(pipe, "vae_scale_factor", 8))
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        sample = unet.config.sample_size
        sample = sample[0] if isinstance(sample, (list, tuple)) else sample
        return int(sample) * vsf, max(8, vsf * 2 ** (len(unet.config.block_out_channels) - 1))
    return int(getattr(pipe, "default_sample_size", 128)) * vsf, max(8, vsf * 2)  # FLUX packs 2×2 latents


def inpaint(pipe: Any, image: np.ndarray, mask: np.ndarray, *, prompt: str, negative_prompt: str | None,
            seed: int, steps: int, guidance: float | None, strength: float = 1.0) -> np.ndarray:
    """One inpainting call at the size of ``image`` (uint8 RGB); mask 255 = generate. Returns float32 RGB 0..1.

    Parameters a pipeline does not take (FLUX Fill has no negative prompt) are left out. The noise
    comes from a CPU generator, so a seed gives the same image on every device.
    """
    import torch
    from PIL import Image

    params = set(inspect.signature(pipe.__call__).parameters)
    h, w = image.shape[:2]
    kwargs: dict[str, Any] = {
        "prompt": prompt,
        "image": Image.fromarray(np.ascontiguousarray(image), "RGB"),
        "mask_image": Image.fromarray(np.ascontiguousarray(mask), "L"),
        "height": h,
        "width": w,
        "num_inference_steps": steps,
        "generator": torch.Generator(device="cpu").manual_seed(int(seed)),
        "output_type": "np",
    }
    if negative_prompt and "negative_prompt" in params:
        kwargs["negative_prompt"] = negative_prompt
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    if "strength" in params:
        kwargs["strength"] = strength
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    with torch.inference_mode():
        out = pipe(**kwargs).images
    arr = np.asarray(out[0], dtype=np.float32)
    if arr.shape[:2] != (h, w):
        raise PermanentError(f"the diffusion model returned {arr.shape[1]}×{arr.shape[0]}, asked {w}×{h}")
    return np.clip(arr, 0.0, 1.0)


def _seeds(seed: int | None, n: int) -> list[int]:
    base = secrets.randbelow(2**31) if seed is None else seed
    return [base + i for i in range(n)]


# -------------------------------------------------------------------------- place_in_scene


@dataclass
class DiffusersSceneOptions:
    prompt: str = opt(None, required=True, doc="what the scene looks like ('on a marble table, soft daylight')")
    model: str | None = opt(None, doc="diffusers inpainting pipeline: Hugging Face id or local folder "
                                      "(SD/SDXL inpainting or FLUX.1 Fill); default: models.diffusers")
    negative_prompt: str | None = opt(None, doc="what the scene must not contain (ignored by FLUX Fill)")
    seed: int | None = opt(None, min=0, doc="noise seed: the same seed gives the same scene; null: random "
                                            "(recorded in the manifest)")
    steps: int = opt(30, min=1, max=200, doc="denoising steps")
    guidance: float | None = opt(None, min=0.0, doc="prompt guidance scale; null: the pipeline's default")
    variations: int = opt(1, min=1, max=4, doc="scenes generated per input (seeds seed, seed+1, ...)")
    strength: float = opt(1.0, min=0.01, max=1.0,
                          doc="1: a new background; lower keeps more of the input's original backdrop")
    scale: float | None = opt(None, min=0.05, max=1.0,
                              doc="the subject spans this fraction of the scene (width or height, whichever "
                                  "binds); the scene is sized around it; null: the input canvas")
    anchor: str = opt("keep", choices=ANCHORS, doc="where the subject sits: keep (where it was) | center | top | "
                                                   "bottom | left | right | top-left | ... | bottom-right")
    margin: float = opt(0.05, min=0.0, max=0.45, doc="gap between the subject and the anchored edge(s), as a "
                                                     "fraction of the scene")


@register
class DiffusersScene(Stage):
    step = "place_in_scene"
    backend = "diffusers"
    Options = DiffusersSceneOptions
    needs_models = True

    def prepare(self) -> None:
        diffusion_pipeline(self.ctx, self.options.model)

    def run(self, asset: Asset) -> list[Asset]:
        o = self.options
        if not asset.has_alpha:
            raise PermanentError("place_in_scene backend diffusers needs a cut-out (RGBA) image: run "
                                 "remove_background first")
        alpha = asset.pixels[..., 3]
        ys, xs = np.nonzero(alpha)
        if ys.size == 0:
            raise PermanentError("place_in_scene: the cut-out is fully transparent (no subject)")
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        w, h, x, y = scene_layout((asset.width, asset.height), box, o.scale, o.anchor, o.margin)
        x0, y0, x1, y1 = box
        subject = asset.pixels[y0:y1, x0:x1]
        bw, bh = x1 - x0, y1 - y0

        pipe = diffusion_pipeline(self.ctx, o.model)
        native, multiple = native_geometry(pipe)
        gw, gh = generation_size(w, h, native, multiple)
        init, mask = self._model_inputs(asset, subject, (w, h), (x, y), box, (gw, gh))
        model_name = o.model or self.ctx.config.models.diffusers

        results = []
        for i, seed in enumerate(_seeds(o.seed, o.variations)):
            with gpu_errors(f"place_in_scene {model_name}"):
                gen = inpaint(pipe, init, mask, prompt=o.prompt, negative_prompt=o.negative_prompt, seed=seed,
                              steps=o.steps, guidance=o.guidance, strength=o.strength)
            scene = resize(to_dtype(gen, asset.pixels.dtype), (w, h))
            composite_subject(scene, subject, x, y)
            matte = np.zeros((h, w), np.uint8)
            matte[y:y + bh, x:x + bw] = to_dtype(subject[..., 3], np.uint8)
            result = asset.derive(scene, matte)
            result.notes["place_in_scene"] = {
                "backend": "diffusers", "model": model_name, "pipeline": type(pipe).__name__, "seed": seed,
                "variation": i + 1, "variations": o.variations, "steps": o.steps, "guidance": o.guidance,
                "strength": o.strength, "prompt": o.prompt, "generated_at": [gw, gh],
                "subject_at": [x, y, x + bw, y + bh],
            }
            results.append(result)
        return results

    @staticmethod
    def _model_inputs(asset: Asset, subject: np.ndarray, size: tuple[int, int], at: tuple[int, int],
                      box: tuple[int, int, int, int], gsize: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The model-resolution init image and mask (255 = generate, 0 = the subject's opaque core)."""
        w, h = size
        x, y = at
        gw, gh = gsize
        sx, sy = gw / w, gh / h
        # init: the input's own pixels (its original backdrop survives under alpha 0) when the
        # canvas is unchanged, neutral grey elsewhere; built at model resolution only.
        init = np.full((gh, gw, 3), _NEUTRAL, np.uint8)
        x0, y0, x1, y1 = box
        dx, dy = x - x0, y - y0
        # the input canvas placed in the scene, clipped to it
        cx0, cy0 = max(0, dx), max(0, dy)
        cx1, cy1 = min(w, dx + asset.width), min(h, dy + asset.height)
        gx0, gy0 = int(round(cx0 * sx)), int(round(cy0 * sy))
        gx1, gy1 = max(gx0 + 1, int(round(cx1 * sx))), max(gy0 + 1, int(round(cy1 * sy)))
        part = asset.pixels[cy0 - dy:cy1 - dy, cx0 - dx:cx1 - dx, :3]
        init[gy0:gy1, gx0:gx1] = to_dtype(resize(part, (gx1 - gx0, gy1 - gy0)), np.uint8)
        coverage = np.zeros((gh, gw), np.float32)
        sub_a = subject[..., 3].astype(np.float32) / max_value(subject)
        bx0, by0 = int(round(x * sx)), int(round(y * sy))
        bx1 = max(bx0 + 1, int(round((x + subject.shape[1]) * sx)))
        by1 = max(by0 + 1, int(round((y + subject.shape[0]) * sy)))
        coverage[by0:by1, bx0:bx1] = cv2.resize(sub_a, (bx1 - bx0, by1 - by0), interpolation=cv2.INTER_AREA)
        # the model keeps only pixels that are solidly subject; soft edges are regenerated and
        # then covered again by the full-resolution composite
        mask = np.where(coverage >= 0.98, 0, 255).astype(np.uint8)
        subj_small = to_dtype(resize(subject, (bx1 - bx0, by1 - by0)), np.uint8)
        a = coverage[by0:by1, bx0:bx1, None]
        region = init[by0:by1, bx0:bx1].astype(np.float32)
        init[by0:by1, bx0:bx1] = np.rint(region * (1 - a) + subj_small[..., :3].astype(np.float32) * a).astype(
            np.uint8)
        return init, mask


def composite_subject(scene: np.ndarray, subject: np.ndarray, x: int, y: int, band: int = 512) -> None:
    """Alpha-composite a straight-alpha RGBA ``subject`` onto opaque RGB ``scene`` in place.

    Works in row bands (bounded float32 memory). Pixels with full alpha are copied exactly.
    """
    top = float(max_value(subject))
    h, w = subject.shape[:2]
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        sub = subject[r0:r1]
        dst = scene[y + r0:y + r1, x:x + w]
        a = sub[..., 3:4].astype(np.float32) / top
        mixed = dst.astype(np.float32) * (1.0 - a) + sub[..., :3].astype(np.float32) * a
        out = np.clip(np.rint(mixed), 0, top).astype(scene.dtype)
        opaque = sub[..., 3] == max_value(subject)
        out[opaque] = sub[..., :3][opaque]
        dst[...] = out


# ------------------------------------------------------------------------------- crops fill


def generate_fill(canvas: np.ndarray, known: np.ndarray, options: Any, ctx: StageContext) -> np.ndarray:
    """``crops`` fill ``generate``: invent the canvas outside ``known`` with the inpainting model.

    The canvas is shrunk to the model's native size (unknown parts seeded by a cheap inpaint),
    the unknown area (grown a little, feathered) is generated, the colour step against the known
    pixels at the seam is measured and faded out into the new area, and the result is enlarged
    back. Known pixels are returned untouched; new pixels of an RGBA canvas are opaque.
    """
    h, w = known.shape
    if known.all():
        return canvas
    if not known.any():
        raise PermanentError("fill generate: the crop has no original pixels to continue")
    pipe = diffusion_pipeline(ctx, getattr(options, "model", None))
    native, multiple = native_geometry(pipe)
    gw, gh = generation_size(w, h, native, multiple)

    rgb8 = to_dtype(canvas[..., :3], np.uint8)
    small = resize(rgb8, (gw, gh))
    known_small = cv2.resize(known.astype(np.uint8) * 255, (gw, gh), interpolation=cv2.INTER_AREA) >= 250
    unknown_small = (~known_small).astype(np.uint8) * 255
    init = cv2.inpaint(small, unknown_small, 3, cv2.INPAINT_TELEA)
    grow = max(2, max(gw, gh) // 128)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    mask = cv2.GaussianBlur(cv2.dilate(unknown_small, kernel), (0, 0), sigmaX=grow / 2)
    mask = np.maximum(mask, unknown_small)

    model_name = getattr(options, "model", None) or ctx.config.models.diffusers
    seed = _seeds(getattr(options, "seed", None), 1)[0]
    with gpu_errors(f"crops fill generate {model_name}"):
        gen = inpaint(pipe, init, mask, prompt=getattr(options, "prompt", None) or FILL_PROMPT,
                      negative_prompt=getattr(options, "negative_prompt", None) or FILL_NEGATIVE, seed=seed,
                      steps=getattr(options, "steps", None) or 30, guidance=getattr(options, "guidance", None))
    gen = seam_corrected(gen, small.astype(np.float32) / 255.0, known_small, feather=max(4.0, 0.06 * max(gw, gh)))
    big = resize(to_dtype(gen, canvas.dtype), (w, h))
    out = canvas.copy()
    unknown = ~known
    out[..., :3][unknown] = big[unknown]
    if canvas.shape[2] == 4:
        out[..., 3][unknown] = max_value(canvas)
    return out


def seam_corrected(gen: np.ndarray, original: np.ndarray, known: np.ndarray, feather: float) -> np.ndarray:
    """Shift the generated colours to meet the original at the seam, fading out over ``feather`` px.

    ``gen`` and ``original`` are float RGB 0..1 at the same size; the correction is the original
    minus the generated image over the known pixels, spread into the unknown area by normalised
    blurring, weighted by exp(-distance / feather).
    """
    weight = known.astype(np.float32)
    diff = (original - gen) * weight[..., None]
    sigma = feather / 2
    num = cv2.GaussianBlur(diff, (0, 0), sigmaX=sigma)
    den = cv2.GaussianBlur(weight, (0, 0), sigmaX=sigma)[..., None]
    corr = num / np.maximum(den, 1e-3)
    dist = cv2.distanceTransform((~known).astype(np.uint8), cv2.DIST_L2, 3)
    fade = np.exp(-dist / feather)[..., None]
    return np.clip(gen + corr * fade, 0.0, 1.0)


def _register_fill() -> None:
    from . import crops

    register_fill = getattr(crops, "register_fill", None)
    if register_fill is not None:
        register_fill("generate")(generate_fill)


_register_fill()
