"""``place_in_scene`` backend ``instruct``: an instruction-following edit pipeline (FLUX.1 Kontext) makes the scene.

Where the ``diffusers`` backend inpaints only the new area around a masked subject, an edit model is shown
the subject where it will sit (on a plain white sweep, at the model's native size) and told what to do
with it ("put the bottle on a marble table in soft morning light"). It regenerates the whole frame, so it
can light the scene around the product and cast its shadows, but it also redraws the product, a little
off. The product's own pixels are therefore pasted back exactly from the full-resolution cut-out; just
outside the subject, where the model's version of its outline would show as a ghost edge next to the real
one, a band of ``feather`` model pixels is blended into the scene beyond it (``feathered_seam``). How far the
model strayed from the product it was shown is recorded, and a large change asks for a review
(``subject_difference``, ``REDRAWN_LEVELS``): a moved product's shadow would not fit the pasted one.

The pipeline loads like the other diffusers models (a local ``save_pretrained`` folder or a Hugging Face
id already in the cache, never downloaded in a job); ``InstructModel`` refuses pipelines that are not an
instruction edit. Only FLUX.1 Kontext (``FluxKontextPipeline``) is accepted: it is the one diffusers
instruction-edit pipeline that takes the image and the prompt alone and whose output geometry can be held
to the input's (``max_area``, no resizing to its preferred sizes), which the exact paste-back needs.
"""
from __future__ import annotations

import inspect
import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..errors import ConfigError, PermanentError
from ..models import ModelRef, gpu_errors, manager_for, pull_hint, require
from ..pixels import max_value, resize, to_dtype
from ..schema import opt
from .base import Asset, Stage, StageContext, register
from .diffusion import DiffusersModel, dtype_keyword, diffusers_folder, generation_size, native_geometry
from .framing import Box, place_subject
from . import place_in_scene  # noqa: F401  (importing it declares the step this module adds a backend to)
from .subject import anchor_option, composite, cutout_subject, margin_option, paste_matte, scale_option

if TYPE_CHECKING:
    from ..models import ModelManager

_WHITE = 1.0  # what the subject stands on in the image the model edits: a studio's white sweep
_SUBJECT = 0.02  # model-size coverage above this is (part of) the subject: the seam band starts outside it
REDRAWN_LEVELS = 40.0  # the model's product differing from the real one by more than this (mean, 8-bit levels) asks for
# a review: it has likely moved or reshaped it, so the shadow it cast may not fit the pasted product. A first guess,
# not measured on real Kontext output.


class InstructModel(DiffusersModel):
    """An instruction-following edit pipeline (FLUX.1 Kontext): a Hugging Face id or a local folder.

    Fetched and placed on the device like any diffusers pipeline (``DiffusersModel.pull`` / ``placed``);
    loading differs only in what it accepts.
    """

    kind = "instruct"
    setting = "instruct"

    @classmethod
    def unplaced(cls, manager: "ModelManager", name: str) -> Any:
        """The edit pipeline (class read from model_index.json), loaded offline on the CPU."""
        config = manager.config
        diffusers = require("diffusers", "place_in_scene backend instruct")
        folder = diffusers_folder(config, name)
        kwargs: dict[str, Any] = {dtype_keyword(): manager.dtype, "local_files_only": True}
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            if isinstance(exc, OSError) and "local" in str(exc).lower():
                raise ConfigError(f"instruct model {name!r} is missing files; {pull_hint(config)}") from exc
            raise ConfigError(f"instruct model {name!r} ({folder}) cannot be loaded: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        params = inspect.signature(pipe.__call__).parameters
        if "Kontext" not in type(pipe).__name__ or "image" not in params or "mask_image" in params:
            raise ConfigError(f"instruct model {name!r} is a {type(pipe).__name__}, not an instruction-edit "
                              f"pipeline (use FLUX.1 Kontext, e.g. black-forest-labs/FLUX.1-Kontext-dev)")
        pipe.set_progress_bar_config(disable=True)
        return pipe


def instruct_ref(config: Any, model: str | None) -> ModelRef:
    """The edit pipeline a step names (``model``), else models.instruct."""
    return ModelRef(InstructModel, InstructModel.name_for(config, model))


def instruct_pipeline(ctx: StageContext, model: str | None) -> Any:
    """The worker's resident edit pipeline for ``model`` (default: models.instruct)."""
    return manager_for(ctx).load(instruct_ref(ctx.config, model))


# ------------------------------------------------------------------------------ model-size images


def edit_input(pixels: np.ndarray, size: tuple[int, int], offset: tuple[int, int],
               gsize: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The image the model edits (uint8 RGB at ``gsize``: the cut-out placed at ``offset`` on an output of
    ``size``, over white) and the subject's coverage there (float32 0..1).

    The cut-out is shrunk premultiplied, so its transparent pixels (often black after a cut-out) do not
    darken its edge.
    """
    w, h = size
    ox, oy = offset
    gw, gh = gsize
    sx, sy = gw / w, gh / h
    rgb = np.full((gh, gw, 3), _WHITE, np.float32)
    coverage = np.zeros((gh, gw), np.float32)
    ph, pw = pixels.shape[:2]
    inside = Box(0, 0, pw, ph).shift(ox, oy).intersect(Box(0, 0, w, h))
    if inside is not None:
        src = inside.shift(-ox, -oy)
        gx0, gy0 = int(round(inside.x0 * sx)), int(round(inside.y0 * sy))
        gx1 = min(gw, max(gx0 + 1, int(round(inside.x1 * sx))))
        gy1 = min(gh, max(gy0 + 1, int(round(inside.y1 * sy))))
        top = float(max_value(pixels))
        part = pixels[src.y0:src.y1, src.x0:src.x1]
        alpha = np.ascontiguousarray(part[..., 3])
        # premultiplied in the image's own dtype: a 24 MP cut-out would need 380 MB as float32
        premultiplied = cv2.multiply(np.ascontiguousarray(part[..., :3]), cv2.merge([alpha] * 3), scale=1.0 / top)
        gsize_part = (gx1 - gx0, gy1 - gy0)
        small_rgb = cv2.resize(premultiplied, gsize_part, interpolation=cv2.INTER_AREA).astype(np.float32) / top
        small_a = cv2.resize(alpha, gsize_part, interpolation=cv2.INTER_AREA).astype(np.float32) / top
        rgb[gy0:gy1, gx0:gx1] = small_rgb + _WHITE * (1.0 - small_a)[..., None]
        coverage[gy0:gy1, gx0:gx1] = small_a
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), coverage


def feathered_seam(gen: np.ndarray, coverage: np.ndarray, width: int) -> np.ndarray:
    """The edited image with the subject and a band ``width`` pixels wide around it blended into the scene beyond.

    ``gen`` is the model's image (float RGB 0..1), ``coverage`` the real subject's (same size). The model
    redraws the product a little off, so its outline can stand a pixel or two outside the real one: pasted
    back, the product would show a ghost edge. Over the subject and the band, the scene is replaced by what
    surrounds the band (a normalised blur of the pixels beyond it): fully over the band's inner half (where a
    ghost edge lies), fading to the model's own pixels at ``width``. Pixels further out are returned exactly as
    the model made them; those under the subject are covered by the exact cut-out afterwards (its soft edge
    shows this scene).
    """
    if width <= 0:
        return gen
    subject = coverage > _SUBJECT
    if not subject.any():
        return gen
    dist = cv2.distanceTransform((~subject).astype(np.uint8), cv2.DIST_L2, 5)
    beyond = (dist > width).astype(np.float32)
    num = cv2.GaussianBlur(gen * beyond[..., None], (0, 0), sigmaX=width)
    den = cv2.GaussianBlur(beyond, (0, 0), sigmaX=width)[..., None]
    around = np.where(den > 1e-3, num / np.maximum(den, 1e-3), gen)
    t = np.clip(2.0 * dist / width - 1.0, 0.0, 1.0)
    fade = (1.0 - t * t * (3.0 - 2.0 * t))[..., None]  # 1 over the band's inner half, a smoothstep to 0 at ``width``
    out = gen.copy()
    band = dist <= width
    out[band] = (around * fade + gen * (1.0 - fade))[band]
    return out


def subject_difference(gen: np.ndarray, image: np.ndarray, coverage: np.ndarray) -> float | None:
    """How far the model redrew the product: the mean absolute difference (8-bit levels) between its image
    (``gen``, float 0..1) and the one it was shown (uint8) over the solid subject; None: no solid subject."""
    solid = coverage >= 0.98
    if not solid.any():
        return None
    return float(np.abs(gen[solid] * 255.0 - image[solid].astype(np.float32)).mean())


def edit(pipe: Any, image: np.ndarray, *, prompt: str, seed: int, steps: int, guidance: float | None) -> np.ndarray:
    """One edit call at the size of ``image`` (uint8 RGB). Returns float32 RGB 0..1 of the same size.

    FLUX Kontext would resize the image to one of its preferred sizes and pick its own output size from
    ``max_area``: both are held to the image's, so the output lines up with the placed subject. The noise
    comes from a CPU generator, so a seed gives the same image on every device.
    """
    import torch
    from PIL import Image

    params = set(inspect.signature(pipe.__call__).parameters)
    h, w = image.shape[:2]
    kwargs: dict[str, Any] = {
        "image": Image.fromarray(np.ascontiguousarray(image), "RGB"),
        "prompt": prompt,
        "height": h,
        "width": w,
        "max_area": w * h,
        "_auto_resize": False,
        "num_inference_steps": steps,
        "generator": torch.Generator(device="cpu").manual_seed(int(seed)),
        "output_type": "np",
    }
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    with torch.inference_mode():
        out = pipe(**kwargs).images
    arr = np.asarray(out[0], dtype=np.float32)
    if arr.shape[:2] != (h, w):
        raise PermanentError(f"the edit model returned {arr.shape[1]}×{arr.shape[0]}, asked {w}×{h}")
    return np.clip(arr, 0.0, 1.0)


# -------------------------------------------------------------------------- place_in_scene


@dataclass
class InstructSceneOptions:
    prompt: str = opt(None, required=True, doc="the edit, said to the model ('put the bottle on a marble table in "
                                               "soft morning light')")
    model: str | None = opt(None, doc="instruction-edit pipeline (FLUX.1 Kontext): Hugging Face id or local folder; "
                                      "default: models.instruct")
    seed: int | None = opt(None, min=0, doc="noise seed: the same seed gives the same scene; null: random "
                                            "(recorded in the manifest)")
    steps: int = opt(28, min=1, max=200, doc="denoising steps")
    guidance: float | None = opt(None, min=0.0, max=100.0,
                                 doc="prompt guidance scale; null: the pipeline's default (3.5 for FLUX Kontext)")
    feather: int = opt(4, min=0, max=64,
                       doc="width, in the model's pixels (about 1024² for FLUX Kontext), of the band just outside the "
                           "subject blended into the scene beyond it, so the model's own outline of the product does "
                           "not show next to the real one; 0: none")
    anchor: str = anchor_option()
    scale: float = scale_option()
    margin: float = margin_option()


@register
class InstructScene(Stage):
    """An edit model redraws the whole frame from an instruction; the subject is pasted back 1:1."""

    step = "place_in_scene"
    backend = "instruct"
    Options = InstructSceneOptions
    needs_models = True
    model_kind = InstructModel

    def prepare(self) -> None:
        instruct_pipeline(self.ctx, self.options.model)

    def run(self, asset: Asset) -> list[Asset]:
        o = self.options
        subject = cutout_subject(asset, "place_in_scene backend instruct")
        pixels = asset.pixels
        place = place_subject(subject.width, subject.height, asset.width / asset.height, o.scale, o.margin, o.anchor)
        w, h = place.out_w, place.out_h
        ox, oy = place.x - subject.x0, place.y - subject.y0

        pipe = instruct_pipeline(self.ctx, o.model)
        native, multiple = native_geometry(pipe)
        gw, gh = generation_size(w, h, native, multiple)
        image, coverage = edit_input(pixels, (w, h), (ox, oy), (gw, gh))
        model_name = instruct_ref(self.ctx.config, o.model).name
        seed = secrets.randbelow(2**31) if o.seed is None else o.seed
        with gpu_errors(f"place_in_scene {model_name}"):
            gen = edit(pipe, image, prompt=o.prompt, seed=seed, steps=o.steps, guidance=o.guidance)
        redrawn = subject_difference(gen, image, coverage)
        gen = feathered_seam(gen, coverage, o.feather)
        scene = resize(to_dtype(gen, pixels.dtype), (w, h))
        composite(scene, pixels, ox, oy)
        result = asset.derive(scene, paste_matte(pixels[..., 3], (w, h), (ox, oy)))
        result.notes["place_in_scene"] = {
            "backend": "instruct", "model": model_name, "pipeline": type(pipe).__name__, "seed": seed,
            "steps": o.steps, "guidance": o.guidance, "prompt": o.prompt, "feather": o.feather,
            "generated_at": [gw, gh], "size": [w, h], "scale": round(place.scale, 4),
            "subject_box": [place.x, place.y, place.x + subject.width, place.y + subject.height],
            "subject_redrawn": None if redrawn is None else round(redrawn, 1),
        }
        if redrawn is not None and redrawn > REDRAWN_LEVELS:
            result.review.append(f"place_in_scene: {model_name} redrew the product {redrawn:.0f} levels off on "
                                 f"average (over {REDRAWN_LEVELS:g}); its exact pixels are pasted back, check that "
                                 "the scene's shadow and reflections fit them")
        return [result]
