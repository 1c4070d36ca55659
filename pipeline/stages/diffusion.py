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
import json
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..errors import ConfigError, PermanentError
from ..models import MissingModelError, ModelKind, ModelRef, gpu_errors, manager_for, pull_hint, require
from ..pixels import max_value, resize, to_dtype
from ..schema import opt, options_of
from .place_in_scene import load_scene, variant_of  # (importing it declares the step this module adds a backend to)
from .base import Asset, Stage, StageContext, register
from .crops import CropsOptions, Fill, seed_of
from .framing import Box, place_subject
from .subject import anchor_option, composite, cutout_subject, margin_option, paste_matte, scale_option

if TYPE_CHECKING:
    from ..config import Config
    from ..models import ModelManager

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


# ------------------------------------------------------------------------------------ the model

# Files a diffusers pull skips: other frameworks' weights and single-file checkpoints.
_PULL_IGNORE = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.onnx_data", "*.ckpt", "flax_model*", "tf_model*",
                "rust_model*", "*.gguf"]


def hf_cache_dir(config: "Config") -> str | None:
    return str(Path(config.models.cache_dir) / "huggingface") if config.models.cache_dir is not None else None


def diffusers_folder(config: "Config", model: str) -> Path:
    """The local folder of a diffusers pipeline: a folder path, or a hub id in the HF cache.

    Raises ConfigError naming the model and the pull command when it is not there. Never downloads.
    """
    local = config.resolve(model)
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ConfigError(f"diffusers model {model!r}: folder {local} has no model_index.json "
                              f"(expected a pipeline saved with save_pretrained)")
        return local
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ConfigError(f"diffusers model {model!r}: no such folder ({local}), and not a Hugging Face id "
                          f"like 'owner/name'")
    hub = require("huggingface_hub", "the diffusers backend")
    try:
        folder = hub.snapshot_download(model, cache_dir=hf_cache_dir(config), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"diffusers model {model!r} is not in the local model cache; {pull_hint(config)}") from exc
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ConfigError(f"diffusers model {model!r} is incomplete in the local model cache "
                          f"(no model_index.json); {pull_hint(config)}")
    return folder


def dtype_keyword() -> str:
    """diffusers ≥ 0.42 takes ``dtype`` (``torch_dtype`` is deprecated); older versions only ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


# what diffusers / huggingface_hub say of a pipeline folder that lacks files (offline), as opposed to a file there
# that does not load; a path of the model's own (/usr/local/...) must not match
_MISSING_FILES = ("no file named", "local_files_only", "cannot find the requested files",
                  "does not appear to have a file named")


class DiffusersModel(ModelKind):
    """An inpainting pipeline (SD/SDXL inpainting, FLUX.1 Fill): a Hugging Face id or a local folder."""

    kind = "diffusers"
    setting = "diffusers"

    @classmethod
    def load(cls, manager: "ModelManager", name: str) -> Any:
        """Load an inpainting pipeline (class read from model_index.json) on the manager's device."""
        return cls.placed(manager, name, cls.unplaced(manager, name))

    @classmethod
    def unplaced(cls, manager: "ModelManager", name: str) -> Any:
        """The inpainting pipeline, loaded offline on the CPU (an adapter goes in before it is placed)."""
        config = manager.config
        diffusers = require("diffusers", "the diffusers backend")  # the extra first: without it, pulling is no help
        folder = diffusers_folder(config, name)
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        kwargs: dict[str, Any] = {dtype_keyword(): manager.dtype, "local_files_only": True}
        if "safety_checker" in index:
            kwargs.update(safety_checker=None, requires_safety_checker=False)  # studio product shots, no NSFW filter
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            if isinstance(exc, OSError) and any(said in str(exc).lower() for said in _MISSING_FILES):
                raise ConfigError(f"diffusers model {name!r} is missing files; {pull_hint(config)}") from exc
            raise ConfigError(f"diffusers model {name!r} ({folder}) cannot be loaded: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        if not any(hasattr(pipe, a) for a in ("unet", "transformer")) or \
                "mask_image" not in inspect.signature(pipe.__call__).parameters:
            raise ConfigError(f"diffusers model {name!r} is a {type(pipe).__name__}, not an inpainting pipeline "
                              f"(use an SD/SDXL inpainting checkpoint or FLUX.1 Fill)")
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @classmethod
    def placed(cls, manager: "ModelManager", name: str, pipe: Any) -> Any:
        """``pipe`` on the manager's device (or offloaded to it, ``models.cpu_offload``)."""
        with gpu_errors(f"loading {name}"):
            if manager.is_gpu and manager.config.models.cpu_offload:
                pipe.enable_model_cpu_offload(device=manager.device)
            else:
                pipe.to(manager.device)
        return pipe

    @classmethod
    def pull(cls, config: "Config", name: str) -> str:
        """Download a hub pipeline into the cache (a local folder is only checked)."""
        local = config.resolve(name)
        if local.is_dir():
            diffusers_folder(config, name)
            return f"{name}: local folder, nothing to fetch"
        hub = require("huggingface_hub", "assetd models pull")
        folder = hub.snapshot_download(name, cache_dir=hf_cache_dir(config), ignore_patterns=_PULL_IGNORE)
        return f"{name}: {folder}"


def diffusion_pipeline(ctx: StageContext, model: str | None) -> Any:
    """The worker's resident inpainting pipeline for ``model`` (default: models.diffusers)."""
    return manager_for(ctx).load(pipeline_ref(ctx.config, model))


def pipeline_ref(config: "Config", model: str | None) -> ModelRef:
    """The inpainting pipeline a step names (``model``), else models.diffusers."""
    return ModelRef(DiffusersModel, DiffusersModel.name_for(config, model))


# ------------------------------------------------------------------- reference image (IP-Adapter)

DEFAULT_IP_ADAPTER = "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors"  # matches models.diffusers' SDXL
_WITH = " + "  # between the pipeline and the adapter in a ReferencePipelineModel's name


def ip_adapter_files(config: "Config", spec: str) -> tuple[Path, str]:
    """(folder, weight file name) of an IP-Adapter: a local weight file, or ``owner/name/sub/file`` in a Hugging
    Face repository (in the HF cache). Its image encoder is the ``image_encoder`` folder beside the weights.

    Raises MissingModelError naming the adapter and the pull command when it is not there. Never downloads.
    """
    local = config.resolve(spec)
    if local.is_file():
        folder, weights = local.parent, local.name
    elif local.parent.is_dir():  # a local folder: the file is missing, not a hub id
        raise ConfigError(f"IP-Adapter {spec!r}: no such file ({local})")
    else:
        parts = spec.split("/")
        if spec.startswith((".", "/", "~")) or len(parts) < 3:
            raise ConfigError(f"IP-Adapter {spec!r}: no such file ({local}), and not a Hugging Face file like "
                              f"'owner/name/folder/weights.safetensors'")
        hub = require("huggingface_hub", "the diffusers backend's reference image")
        try:
            snapshot = hub.snapshot_download("/".join(parts[:2]), cache_dir=hf_cache_dir(config), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise MissingModelError(f"IP-Adapter {spec!r} is not in the local model cache", pull_hint(config)) from exc
        folder, weights = Path(snapshot, *parts[2:-1]), parts[-1]
    if not (folder / weights).is_file() or not (folder / "image_encoder" / "config.json").is_file():
        raise MissingModelError(f"IP-Adapter {spec!r} is incomplete ({folder / weights} with its image_encoder/ "
                                f"folder beside it)", pull_hint(config))
    return folder, weights


class ReferencePipelineModel(ModelKind):
    """An inpainting pipeline with an IP-Adapter in it (``reference``), named ``PIPELINE + ADAPTER``.

    Its own copy of the pipeline: the adapter changes the UNet's attention, which a rule without a
    reference (or ``fill: generate``) must not get.
    """

    kind = "diffusers+ip_adapter"

    @staticmethod
    def name_of(pipeline: str, adapter: str) -> str:
        return f"{pipeline}{_WITH}{adapter}"

    @classmethod
    def load(cls, manager: "ModelManager", name: str) -> Any:
        """The pipeline (offline), the adapter and its image encoder loaded into it, then placed on the device."""
        pipeline, _, adapter = name.partition(_WITH)
        pipe = DiffusersModel.unplaced(manager, pipeline)
        folder, weights = ip_adapter_files(manager.config, adapter)
        if not hasattr(pipe, "load_ip_adapter") or not hasattr(pipe, "unet"):
            raise ConfigError(f"diffusers model {pipeline!r} is a {type(pipe).__name__}, which takes no IP-Adapter: "
                              f"reference needs an SD/SDXL inpainting pipeline")
        try:
            pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weights, image_encoder_folder="image_encoder",
                                 local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
            raise ConfigError(f"IP-Adapter {adapter!r} ({folder / weights}) cannot be loaded into {pipeline!r}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                              f"(an SD 1.5 adapter needs an SD 1.5 pipeline, an SDXL one an SDXL pipeline)") from exc
        return DiffusersModel.placed(manager, name, pipe)

    @classmethod
    def pull(cls, config: "Config", name: str) -> str:
        """Fetch the pipeline and the adapter's weights with its image encoder (local files are only checked)."""
        pipeline, _, adapter = name.partition(_WITH)
        lines = [DiffusersModel.pull(config, pipeline)]
        if config.resolve(adapter).is_file():
            ip_adapter_files(config, adapter)
            return "; ".join(lines + [f"{adapter}: local file, nothing to fetch"])
        parts = adapter.split("/")
        if len(parts) < 3:
            ip_adapter_files(config, adapter)  # raises the ConfigError that says why
        hub = require("huggingface_hub", "assetd models pull")
        sub = "/".join(parts[2:-1])
        prefix = f"{sub}/" if sub else ""
        folder = hub.snapshot_download("/".join(parts[:2]), cache_dir=hf_cache_dir(config),
                                       allow_patterns=[f"{prefix}{parts[-1]}", f"{prefix}image_encoder/*"],
                                       ignore_patterns=_PULL_IGNORE)
        return "; ".join(lines + [f"{adapter}: {folder}"])


def reference_ref(config: "Config", model: str | None, adapter: str) -> ModelRef:
    """The pipeline a step names (else models.diffusers) with the IP-Adapter ``adapter`` loaded into it."""
    return ModelRef(ReferencePipelineModel, ReferencePipelineModel.name_of(pipeline_ref(config, model).name, adapter))


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
            seed: int, steps: int, guidance: float | None, strength: float = 1.0,
            reference: np.ndarray | None = None) -> np.ndarray:
    """One inpainting call at the size of ``image`` (uint8 RGB); mask 255 = generate. Returns float32 RGB 0..1.

    ``reference`` (uint8 RGB) goes to the pipeline's IP-Adapter (``ReferencePipelineModel``).

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
    if reference is not None:
        kwargs["ip_adapter_image"] = Image.fromarray(np.ascontiguousarray(reference), "RGB")
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
    guidance: float | None = opt(None, min=0.0, max=100.0,
                                 doc="prompt guidance scale; null: the pipeline's default (7.5 SD, 30 FLUX Fill)")
    variations: int = opt(1, min=1, max=4, doc="scenes generated per input (seeds seed, seed+1, ...); more than "
                                               "one: each a variant, v1 to v4, its seed in the manifest")
    strength: float = opt(1.0, min=0.01, max=1.0,
                          doc="1: a new background; lower keeps more of the input's original backdrop")
    reference: Path | None = opt(None, doc="an image the scene should look like (path relative to the config "
                                           "file), through an IP-Adapter (ip_adapter); SD/SDXL pipelines only")
    reference_strength: float = opt(0.5, min=0.0, max=1.0,
                                    doc="how much the reference steers the scene (the IP-Adapter scale): 0 the "
                                        "prompt alone, 1 mostly the reference")
    ip_adapter: str = opt(DEFAULT_IP_ADAPTER,
                          doc="the IP-Adapter weights a reference uses: a local .safetensors/.bin file or a Hugging "
                              "Face file 'owner/name/folder/file', its image_encoder/ folder beside it (SD 1.5: "
                              "h94/IP-Adapter/models/ip-adapter_sd15.safetensors); fetched by assetd models pull")
    anchor: str = anchor_option()
    scale: float = scale_option()
    margin: float = margin_option()


@register
class DiffusersScene(Stage):
    """Generate the scene around the subject; the subject itself is composited back 1:1."""

    step = "place_in_scene"
    backend = "diffusers"
    Options = DiffusersSceneOptions
    needs_models = True
    model_kind = DiffusersModel

    def prepare(self) -> None:
        self.pipeline()

    @classmethod
    def model_ref(cls, options: DiffusersSceneOptions, config: "Config") -> ModelRef:
        """The inpainting pipeline, with the IP-Adapter in it when the step has a ``reference``."""
        if options.reference is not None:
            return reference_ref(config, options.model, options.ip_adapter)
        return pipeline_ref(config, options.model)

    @classmethod
    def validate(cls, options: DiffusersSceneOptions, where: str, ctx_config: "Config") -> list[str]:
        if options.reference is not None and not options.reference.is_file():
            return [f"{where}.reference: file {options.reference} does not exist"]
        return []

    def pipeline(self) -> Any:
        """The worker's resident pipeline for this step (its own copy with the adapter when it has a reference)."""
        return manager_for(self.ctx).load(self.model_ref(self.options, self.ctx.config))

    def reference_pixels(self) -> np.ndarray | None:
        """The decoded reference image (RGB uint8), read once per stage instance; None without one."""
        if self.options.reference is None:
            return None
        if getattr(self, "_reference", None) is None:
            try:
                self._reference = load_scene(self.options.reference, self.ctx.config)
            except PermanentError as exc:
                raise PermanentError(f"place_in_scene: cannot read reference {self.options.reference}: "
                                     f"{exc.__cause__ or exc}") from exc
        return self._reference

    @classmethod
    def variants(cls, options: DiffusersSceneOptions) -> list[str]:
        """One variant per generated scene when there are several (``variations``): v1, v2... in seed order."""
        return [variation_name(i) for i in range(options.variations)] if options.variations > 1 else []

    def run(self, asset: Asset) -> list[Asset]:
        o = self.options
        subject = cutout_subject(asset, "place_in_scene backend diffusers")
        pixels = asset.pixels
        alpha = pixels[..., 3]
        place = place_subject(subject.width, subject.height, asset.width / asset.height, o.scale, o.margin, o.anchor)
        w, h = place.out_w, place.out_h
        ox, oy = place.x - subject.x0, place.y - subject.y0

        pipe = self.pipeline()
        native, multiple = native_geometry(pipe)
        gw, gh = generation_size(w, h, native, multiple)
        init, mask = model_inputs(pixels, (w, h), (ox, oy), (gw, gh))
        model_name = pipeline_ref(self.ctx.config, o.model).name
        reference = self.reference_pixels()
        if reference is not None:
            pipe.set_ip_adapter_scale(o.reference_strength)  # the worker's steps with this adapter share it
        matte = paste_matte(alpha, (w, h), (ox, oy))

        results = []
        for i, seed in enumerate(_seeds(o.seed, o.variations)):
            with gpu_errors(f"place_in_scene {model_name}"):
                gen = inpaint(pipe, init, mask, prompt=o.prompt, negative_prompt=o.negative_prompt, seed=seed,
                              steps=o.steps, guidance=o.guidance, strength=o.strength, reference=reference)
            scene = resize(to_dtype(gen, pixels.dtype), (w, h))
            composite(scene, pixels, ox, oy)
            variant = variant_of(asset.variant, variation_name(i)) if o.variations > 1 else asset.variant
            result = asset.derive(scene, matte.copy(), variant=variant)
            result.notes["place_in_scene"] = {
                "backend": "diffusers", "model": model_name, "pipeline": type(pipe).__name__, "seed": seed,
                "variation": i + 1, "variations": o.variations, "steps": o.steps, "guidance": o.guidance,
                "strength": o.strength, "prompt": o.prompt, "generated_at": [gw, gh], "size": [w, h],
                "scale": round(place.scale, 4),
                "subject_box": [place.x, place.y, place.x + subject.width, place.y + subject.height],
            }
            if variant != asset.variant:
                result.notes["place_in_scene"]["variant"] = variant
            if reference is not None:
                result.notes["place_in_scene"].update(
                    reference=str(o.reference), reference_strength=o.reference_strength, ip_adapter=o.ip_adapter)
            results.append(result)
        return results


def variation_name(index: int) -> str:
    """The variant the ``index``-th (from 0) of several generated scenes is: v1, v2..."""
    return f"v{index + 1}"


def model_inputs(pixels: np.ndarray, size: tuple[int, int], offset: tuple[int, int],
                 gsize: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The model-resolution init image and mask (255 = generate) for a cut-out placed at ``offset``.

    The init is the cut-out's own RGB where its canvas lands (its original backdrop often survives
    under alpha 0, which ``strength`` < 1 keeps), neutral grey elsewhere. The mask keeps only
    pixels that are solidly subject: soft edges are regenerated, then covered again by the
    full-resolution composite. Everything is resized straight from the integer arrays.
    """
    w, h = size
    ox, oy = offset
    gw, gh = gsize
    sx, sy = gw / w, gh / h
    init = np.full((gh, gw, 3), _NEUTRAL, np.uint8)
    coverage = np.zeros((gh, gw), np.float32)
    ph, pw = pixels.shape[:2]
    inside = Box(0, 0, pw, ph).shift(ox, oy).intersect(Box(0, 0, w, h))
    if inside is not None:
        src = inside.shift(-ox, -oy)
        gx0, gy0 = int(round(inside.x0 * sx)), int(round(inside.y0 * sy))
        gx1 = min(gw, max(gx0 + 1, int(round(inside.x1 * sx))))
        gy1 = min(gh, max(gy0 + 1, int(round(inside.y1 * sy))))
        part = pixels[src.y0:src.y1, src.x0:src.x1]
        small = cv2.resize(np.ascontiguousarray(part), (gx1 - gx0, gy1 - gy0), interpolation=cv2.INTER_AREA)
        init[gy0:gy1, gx0:gx1] = to_dtype(small[..., :3], np.uint8)
        coverage[gy0:gy1, gx0:gx1] = small[..., 3].astype(np.float32) / max_value(pixels)
    mask = np.where(coverage >= 0.98, 0, 255).astype(np.uint8)
    return init, mask


# ------------------------------------------------------------------------------- crops fill


@register
class GenerateFill(Fill):
    """``crops`` fill ``generate``: the new canvas from the inpainting pipeline (``model``, default models.diffusers)."""

    backend = "generate"
    Options = options_of(CropsOptions, "model", "prompt", "negative_prompt", "seed", "steps", "guidance")
    needs_models = True
    model_kind = DiffusersModel

    def prepare(self) -> None:
        diffusion_pipeline(self.ctx, self.options.model)

    def fill(self, canvas: np.ndarray, known: Box, matte: np.ndarray | None) -> np.ndarray:
        mask = np.zeros(canvas.shape[:2], dtype=bool)
        mask[known.y0:known.y1, known.x0:known.x1] = True
        return generate_fill(canvas, mask, self.options, self.ctx)


def generate_fill(canvas: np.ndarray, known: np.ndarray, options: Any, ctx: StageContext) -> np.ndarray:
    """Invent the canvas outside ``known`` (H×W bool) with the inpainting model; ``options`` are
    ``GenerateFill.Options`` (model, prompt, negative_prompt, seed, steps, guidance).

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
    pipe = diffusion_pipeline(ctx, options.model)
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

    model_name = pipeline_ref(ctx.config, options.model).name
    seed = seed_of(options)
    with gpu_errors(f"crops fill generate {model_name}"):
        gen = inpaint(pipe, init, mask, prompt=options.prompt or FILL_PROMPT,
                      negative_prompt=options.negative_prompt or FILL_NEGATIVE, seed=seed,
                      steps=options.steps, guidance=options.guidance)
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
