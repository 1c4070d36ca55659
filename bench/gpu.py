"""GPU benchmark of the model-backed stages: the shipped stage code, random weights at the real sizes.

Stages run on a 24 MP shot, with random-weight models of the real architectures' sizes.

Real weights cannot be fetched here, and compute does not depend on the weights' values, so the models
are built from their published configurations with random weights and *saved* the way their libraries
expect (as ``tests/tinymodels.py`` does for the tests, at full size): a ``save_pretrained`` SDXL
inpainting pipeline (UNet with 9 input channels, VAE, both CLIP text encoders), a Real-ESRGAN x4
``.safetensors`` (RRDBNet, 64 filters, 23 blocks) that spandrel detects, and an ONNX segmentation
network put where rembg looks for ``birefnet-general``. BiRefNet is a Swin-L network that cannot be
built without its code, so its file holds a U-Net of known FLOPs at the same 1024² input. The studio
backend uses the U²-Netp subject prior from the model cache when it is there (real weights).

Each stage is then built the way a rule builds it (``stage_class(step, backend)`` with options from
``pipeline.schema.build``, validated and resolved; one ``StageContext`` shared like a worker's), loaded
through the real loaders (``DiffusionPipeline.from_pretrained``, ``spandrel.ModelLoader``, a rembg
session) with the config's dtype choice (``models.dtype: auto``: bf16 on the GPU, fp32 on the CPU), and
``stage.run(asset)`` is timed on a 6000×4000 (24 MP) JPEG-quality studio shot from ``pipeline.synth``
(``--photo`` puts a real photo with its ``NAME.mask.png`` on a white sweep instead):

* remove_background, backends ``studio`` and ``rembg`` (the segmentation net at 1024², then the edge
  refined at full resolution);
* place_in_scene backend ``diffusers`` on the studio cut-out (SDXL at its native 1024², 30 steps, CFG,
  VAE encode + decode, then the full-size resize and composite);
* crops with ``fill: generate`` on that scene, ratios ``CROP_RATIOS``: 1:1 and 4:5 fit in the scene,
  banners wider than it get generated canvas (3:1 on a 3:2 scene; 2:1 too on a 4:3 one), one
  generation each;
* upscale backend ``spandrel``: Real-ESRGAN x4 over a 1024² crop of the scene through its 512 px tiles.

Under each model-backed stage a "network only" row times the bare network calls the stage makes (the
same loaded modules and dtype, random tensors of the sizes the stage used), so the difference is the
stage's own cost: tiling, pre/post-processing, dtype casts, the full-size work around the model. The
FLUX.1 Fill transformer (12 B parameters; no stage default uses it) is timed as a network only, when the
card has the memory (≥ 40 GB). Last, the whole chain (studio cut-out → diffusers scene → crops with
generated fills → spandrel to a 4096 px long edge; outputs encoded and written) runs through the
daemon's worker loop (``Worker.run_forever``: the next input is read and decoded while the current one
runs) over ``--chain`` 4000×3000 JPEGs after one warm-up input; GPU busy % is sampled (pynvml, else
``nvidia-smi``) while it runs, and the seconds of each step come from the job store.

FLOPs are counted by running the networks once under ``torch.utils.flop_counter`` (not guessed);
dividing by the card's peak dense bf16 rate gives the arithmetic limit. On CUDA every timing is
bracketed by ``torch.cuda.synchronize()`` and the peak of ``torch.cuda.max_memory_allocated`` per stage
is reported (onnxruntime's memory is not in it). Without a GPU everything runs on the CPU at a reduced
size and says so: width-reduced SDXL (native 256², 2 steps), a 16-wide segmentation U-Net, an 8-filter
1-block ESRGAN on a 192² crop in 128 px tiles, a chain of 2 inputs of 480×360 without warm-up; the stage
inputs stay 24 MP, so the stages' own CPU work is measured at full size. On the 2-core machine it takes
about four minutes.

    python bench/gpu.py [--markdown PATH] [--compile] [--steps 30] [--flux-steps 28] [--size 6000x4000]
                        [--photo PATH] [--chain 3] [--chain-size 4000x3000] [--no-chain] [--no-flux] [--keep DIR]

``--compile`` times torch.compile'd UNet calls in the network-only row only (stages do not compile).
``--seg-batch`` of the earlier version is gone: the rembg stage runs one image at a time.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Peak dense (no sparsity) bf16/fp16 tensor TFLOP/s by device-name fragment, most specific first.
PEAK_TFLOPS = [
    ("H200", 989.0), ("H100 SXM", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 6000 Ada", 365.0), ("RTX 4090", 165.0),
    ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
]
ANCHORS = {
    "sdxl": "diffusers, SDXL 1024², 30 steps, bf16 + SDPA + torch.compile, A100: 2.54 s",
    "segment": "BiRefNet 1024² fp16, A100: 69 ms / image",
}
PROMPT = "the product on a marble table, soft daylight, photograph"
# two crops framed inside the scene, two banners that need generated canvas at their sides when the scene is
# narrower than them (3:1 on a 3:2 scene, both on a 4:3 one)
CROP_RATIOS = ["1:1", "4:5", "2:1", "3:1"]
UPSCALE_LONG_EDGE = 4096  # the chain enlarges every crop to this long edge (larger ones are left as they are)


@dataclass
class Result:
    name: str
    what: str
    seconds: float  # per unit (image or call)
    flops: float  # per unit
    unit: str = "image"
    notes: list[str] = field(default_factory=list)


@dataclass
class Sizes:
    """What runs where: the full sizes on a GPU, the reduced ones on the CPU."""

    full: bool
    device: str
    dtype: Any
    steps: int
    size: tuple[int, int]  # the stage input (width, height)
    chain_size: tuple[int, int]
    chain: int
    upscale_input: int = 1024
    upscale_tile: int = 512
    esrgan: tuple[int, int] = (64, 23)  # filters, blocks
    seg_base: int = 64


def peak_tflops(name: str) -> float | None:
    for fragment, tflops in PEAK_TFLOPS:
        if fragment.lower() in name.lower():
            return tflops
    return None


def fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f} B params" if n >= 1e9 else f"{n / 1e6:.1f} M params"


def fmt_rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


def fmt_time(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def overhead(stage_s: float, network_s: float) -> str:
    """The stage's time beyond its network calls; a negative difference is noise (single runs on a busy CPU)."""
    d = stage_s - network_s
    return f"{d:.3f} s" if d >= 0 else f"none measurable ({d:.3f} s: run-to-run noise)"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_flops(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


# ------------------------------------------------------------------------- random-weight models


def sdxl_configs(full: bool) -> tuple[dict, dict]:
    """The SDXL inpainting UNet and VAE configurations (full), or width-reduced ones of the same topology."""
    if full:
        unet = dict(sample_size=128, in_channels=9, out_channels=4, layers_per_block=2,
                    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2816)
        vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
                   down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                   scaling_factor=0.13025, force_upcast=True)  # SDXL's VAE decodes in fp32: a dtype cost
    else:  # width-reduced, same topology (native 256²)
        unet = dict(sample_size=32, in_channels=9, out_channels=4, layers_per_block=1,
                    block_out_channels=(32, 64, 128), transformer_layers_per_block=(1, 1, 1),
                    attention_head_dim=(2, 4, 8), cross_attention_dim=64, use_linear_projection=True,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    addition_embed_type="text_time", addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=6 * 8 + 32)
        vae = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, sample_size=256,
                   down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                   scaling_factor=0.13025, force_upcast=False)
    return unet, vae


def clip_configs(full: bool) -> tuple[Any, Any]:
    """SDXL's two text encoders: CLIP ViT-L (768) and OpenCLIP bigG (1280, projected), or 32-wide ones."""
    from transformers import CLIPTextConfig

    common = dict(bos_token_id=0, eos_token_id=2, pad_token_id=2, layer_norm_eps=1e-5, max_position_embeddings=77)
    if full:
        return (CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                               vocab_size=49408, hidden_act="quick_gelu", projection_dim=768, **common),
                CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                               vocab_size=49408, hidden_act="gelu", projection_dim=1280, **common))
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
                 hidden_act="gelu", projection_dim=32, **common)
    return CLIPTextConfig(**small), CLIPTextConfig(**small)


def _built_in(device: str, dtype: Any, make: Callable[[], Any]) -> Any:
    """Build a model directly on ``device`` in ``dtype`` (billions of random parameters: not on the CPU first)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return make().eval()
    finally:
        torch.set_default_dtype(previous)


def build_sdxl_inpaint(out: Path, s: Sizes) -> Path:
    """A StableDiffusionXLInpaintPipeline of random weights (full or reduced), saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    from tinymodels import write_clip_tokenizer  # a local byte-level CLIP vocabulary (ids < 1000)

    ucfg, vcfg = sdxl_configs(s.full)
    c1, c2 = clip_configs(s.full)
    torch.manual_seed(0)
    # built and saved in the dtype the stage loads them in (bf16 on the GPU: half the bytes to write)
    build_dtype = s.dtype if s.full else torch.float32
    unet = _built_in(s.device, build_dtype, lambda: UNet2DConditionModel(**ucfg))
    vae = _built_in(s.device, build_dtype, lambda: AutoencoderKL(**vcfg))
    te1 = _built_in(s.device, build_dtype, lambda: CLIPTextModel(c1))
    te2 = _built_in(s.device, build_dtype, lambda: CLIPTextModelWithProjection(c2))
    tok = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(out.parent / "clip-tokenizer")), model_max_length=77)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLInpaintPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                            tokenizer_2=tok, unet=unet, scheduler=scheduler,
                                            requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(str(out))
    del pipe, unet, vae, te1, te2
    free()
    return out


def build_esrgan(out: Path, s: Sizes) -> Path:
    """Real-ESRGAN x4 (RRDBNet) of random weights, saved as .safetensors for spandrel to detect."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    filters, blocks = s.esrgan
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=filters, num_blocks=blocks, scale=4)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    return out


class SegmentationUNet:
    """A classic U-Net (Ronneberger et al.) as a stand-in segmentation network; width set by ``base``."""

    @staticmethod
    def build(base: int) -> Any:
        import torch
        from torch import nn

        def block(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        class UNet(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                ch = [base * 2 ** i for i in range(5)]
                self.down = nn.ModuleList([block(3, ch[0])] + [block(ch[i - 1], ch[i]) for i in range(1, 5)])
                self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i], ch[i - 1], 2, stride=2) for i in range(4, 0, -1)])
                self.dec = nn.ModuleList([block(ch[i], ch[i - 1]) for i in range(4, 0, -1)])
                self.head = nn.Conv2d(ch[0], 1, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                skips = []
                for i, d in enumerate(self.down):
                    x = d(x if i == 0 else nn.functional.max_pool2d(x, 2))
                    skips.append(x)
                for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
                    x = dec(torch.cat([up(x), skip], 1))
                return self.head(x)  # logits: rembg's BiRefNet session applies the sigmoid

        return UNet()


def build_segmentation_onnx(out: Path, s: Sizes) -> tuple[Path, float, int]:
    """The stand-in U-Net exported to ONNX at 1024² as rembg's ``birefnet-general``; (file, FLOPs, params)."""
    import warnings

    import torch

    torch.manual_seed(0)
    model = SegmentationUNet.build(s.seg_base).eval()
    x = torch.rand(1, 3, 1024, 1024)
    with torch.inference_mode():
        flops = count_flops(lambda: model(x))
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter: fast, no onnxscript
        torch.onnx.export(model, (x,), str(out), input_names=["input_image"], output_names=["out"],
                          opset_version=17, dynamo=False)
    return out, flops, sum(p.numel() for p in model.parameters())


@dataclass
class Models:
    folder: Path
    cache: Path
    diffusers: Path
    esrgan: Path
    seg_flops: float
    seg_params: int
    prior: Path | None
    built_s: float


def build_models(folder: Path, s: Sizes) -> Models:
    """Every model file in ``folder``, where the config points the stages (``models.cache_dir`` = folder/cache)."""
    from pipeline.config import config_from_dict
    from pipeline.prior import prior_file

    t0 = time.perf_counter()
    cache = folder / "cache"
    prior = prior_file(config_from_dict({}, folder / "default.yaml"))  # the user's cache: real U²-Netp weights
    target = cache / "assetd" / "u2netp.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    if prior.is_file():
        target.symlink_to(prior.absolute())
    seg, seg_flops, seg_params = build_segmentation_onnx(cache / "rembg" / "birefnet-general.onnx", s)
    esrgan = build_esrgan(folder / "RealESRGAN_x4plus.safetensors", s)
    sd = build_sdxl_inpaint(folder / "sdxl-inpaint", s)
    return Models(folder, cache, sd, esrgan, seg_flops, seg_params, target if prior.is_file() else None,
                  time.perf_counter() - t0)


def bench_config(folder: Path, m: Models, s: Sizes) -> Any:
    from pipeline.config import config_from_dict

    data = {
        "device": s.device, "database": "state/assetd.sqlite3", "rules_dir": "rules",
        "inboxes": [{"path": "inbox", "settle_seconds": 0}],
        "channels": {"cutouts": {"path": "out/cutouts", "format": "png"},
                     "webshop": {"path": "out/webshop", "format": "jpeg", "quality": 90}},
        "models": {"cache_dir": str(m.cache), "diffusers": str(m.diffusers), "spandrel": str(m.esrgan),
                   "rembg": "birefnet-general", "dtype": "auto", "unload_after_seconds": 0},
    }
    return config_from_dict(data, folder / "config.yaml")


# ------------------------------------------------------------------------------------- the input


def product_photo(size: tuple[int, int], photo: Path | None) -> tuple[Any, str]:
    """The stage input: a synthetic studio shot, or ``photo`` (with NAME.mask.png beside it) on a white sweep."""
    import cv2
    import numpy as np

    from pipeline.synth import composite_shot, jpeg_round_trip, studio_shot

    if photo is not None:
        mask_path = photo.with_name(photo.name.split(".")[0] + ".mask.png")
        rgb = cv2.cvtColor(cv2.imread(str(photo), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        shot = composite_shot(rgb, mask, "white", size=size, seed=1, name=photo.stem, jpeg=92)
        what = f"{photo.name} on a white sweep"
    else:
        shot = studio_shot("white", size, seed=1)
        what = f"a synthetic {shot.subject} on white paper (pipeline.synth)"
    rgb = shot.rgb if photo is not None else jpeg_round_trip(shot.rgb, 92)
    return np.ascontiguousarray(rgb), f"{size[0]}×{size[1]} ({size[0] * size[1] / 1e6:.0f} MP) JPEG-q92 shot: {what}"


# ---------------------------------------------------------------------------------- GPU busy %


class BusySampler:
    """Samples GPU utilisation (pynvml, else nvidia-smi) in a thread until stopped."""

    def __init__(self, index: int, period: float = 0.1):
        self.index, self.period = index, period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._query = self._make_query()

    def _make_query(self) -> Callable[[], float] | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            pass
        cmd = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        try:
            subprocess.run(cmd, capture_output=True, timeout=5, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return lambda: float(subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip() or 0)

    @property
    def available(self) -> bool:
        return self._query is not None

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._query())  # type: ignore[misc]
            except Exception:
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> "BusySampler":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


class Watch:
    """Around one measured part: GPU busy % (sampled) and peak torch CUDA memory; nothing on the CPU."""

    def __init__(self, device: str):
        self.device = device
        self.busy: float | None = None
        self.peak: int | None = None
        self._sampler: BusySampler | None = None

    def __enter__(self) -> "Watch":
        if self.device.startswith("cuda"):
            import torch

            sync(self.device)
            torch.cuda.reset_peak_memory_stats()
            self._sampler = BusySampler(torch.device(self.device).index or 0).__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._sampler is not None:
            import torch

            sync(self.device)
            self._sampler.__exit__(*exc)
            self.busy = self._sampler.mean
            self.peak = torch.cuda.max_memory_allocated()

    def notes(self) -> list[str]:
        out = []
        if self.busy is not None:
            out.append(f"GPU busy {self.busy:.0f} %")
        if self.peak is not None:
            out.append(f"peak CUDA memory {self.peak / 2**30:.1f} GiB")
        return out


# ------------------------------------------------------------------------------------- stages


def make_stage(ctx: Any, step: str, data: dict[str, Any]) -> Any:
    """A stage built as a rule builds it: backend by name, options through the schema, validated, resolved."""
    from pipeline.schema import build
    from pipeline.stages.base import stage_class

    data = dict(data)
    cls = stage_class(step, data.pop("backend", None))
    where = f"bench.{step}"
    errors: list[str] = []
    options = build(cls.Options, data, where, errors, base=ctx.config.base_dir)
    if not errors:
        errors += cls.validate(options, where, ctx.config)
    if errors:
        raise SystemExit("bench/gpu.py: bad stage options: " + "; ".join(errors))
    options = cls.resolve(options, where, [], ctx.config)
    stage = cls(options, ctx)
    stage.prepare()  # loads its model once, as a worker does before its first job
    return stage


def time_stage(stage: Any, asset: Any, s: Sizes, repeat: int) -> tuple[float, list[Any], Watch]:
    """Median seconds of ``stage.run(asset)`` after one warm-up run, its last outputs, GPU busy and memory."""
    outputs: list[Any] = []

    def once() -> None:
        nonlocal outputs
        outputs = stage.run(asset)

    once()  # cuDNN autotuning, lazy CUDA init, allocator growth; on the CPU oneDNN's first calls (several x slower)
    with Watch(s.device) as watch:
        seconds = timed(once, s.device, repeat=repeat, warmup=0)
    return seconds, outputs, watch


def sdxl_network(pipe: Any, gsize: tuple[int, int], steps: int, s: Sizes, compile_unet: bool
                 ) -> tuple[float, float, list[str]]:
    """Bare calls of the loaded pipeline's modules at the generation size: VAE encode, ``steps`` UNet calls
    (batch 2: classifier-free guidance), VAE decode. (seconds, FLOPs, notes)."""
    import torch

    unet, vae = pipe.unet, pipe.vae
    dtype, dev = unet.dtype, unet.device
    gw, gh = gsize
    lat_h, lat_w = gh // 8, gw // 8
    ucfg = unet.config
    pooled = ucfg.projection_class_embeddings_input_dim - 6 * ucfg.addition_time_embed_dim
    x = torch.randn(2, 9, lat_h, lat_w, device=dev, dtype=dtype)
    ctx = torch.randn(2, 77, ucfg.cross_attention_dim, device=dev, dtype=dtype)
    added = {"text_embeds": torch.randn(2, pooled, device=dev, dtype=dtype),
             "time_ids": torch.tensor([[gh, gw, 0, 0, gh, gw]] * 2, device=dev, dtype=dtype)}
    image = torch.randn(1, 3, gh, gw, device=dev, dtype=vae.dtype)
    t = torch.tensor([500], device=dev)
    net = torch.compile(unet, fullgraph=True) if compile_unet else unet

    def one_step() -> Any:
        return net(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample

    def whole() -> Any:
        vae.encode(image).latent_dist.mean
        for _ in range(steps):
            one_step()
        return vae.decode(x[:1, :4].to(vae.dtype)).sample

    with torch.inference_mode():
        vae_flops = count_flops(lambda: (vae.encode(image), vae.decode(x[:1, :4].to(vae.dtype))))
        unet_flops = count_flops(lambda: unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added))
        step_s = timed(one_step, s.device, repeat=5 if s.full else 2, warmup=3 if compile_unet else 1)
        seconds = timed(whole, s.device, repeat=2 if s.full else 1, warmup=1)
    params = sum(p.numel() for p in unet.parameters())
    notes = [f"UNet {fmt_params(params)} in {str(dtype).replace('torch.', '')}, VAE in "
             f"{str(vae.dtype).replace('torch.', '')}; one UNet step (batch 2): {step_s * 1e3:.1f} ms"
             + ("; torch.compile" if compile_unet else "")]
    return seconds, vae_flops + unet_flops * steps, notes


def bench_flux(s: Sizes, size: int, steps: int) -> Result | None:
    """FLUX.1 Fill transformer network only (no stage uses it by default), when the card has the memory."""
    import torch
    from diffusers import FluxTransformer2DModel

    device, dtype, full = s.device, s.dtype, s.full
    if full:
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        if total < 40e9:
            return None
        cfg = dict(patch_size=1, in_channels=384, out_channels=64, num_layers=19, num_single_layers=38,
                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        txt = 512
    else:
        cfg = dict(patch_size=1, in_channels=384, out_channels=64, num_layers=1, num_single_layers=2,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
                   guidance_embeds=True, axes_dims_rope=(4, 6, 6))
        txt = 64
    torch.manual_seed(0)
    model = _built_in(device, dtype, lambda: FluxTransformer2DModel(**cfg))
    side = size // 16  # VAE /8, then 2×2 packing
    tokens = side * side
    ids = torch.zeros(tokens, 3, device=device)
    ids[:, 1] = torch.arange(side, device=device).repeat_interleave(side)
    ids[:, 2] = torch.arange(side, device=device).repeat(side)
    kw = dict(hidden_states=torch.randn(1, tokens, cfg["in_channels"], device=device, dtype=dtype),
              encoder_hidden_states=torch.randn(1, txt, cfg["joint_attention_dim"], device=device, dtype=dtype),
              pooled_projections=torch.randn(1, cfg["pooled_projection_dim"], device=device, dtype=dtype),
              timestep=torch.tensor([0.5], device=device, dtype=dtype), img_ids=ids,
              txt_ids=torch.zeros(txt, 3, device=device), guidance=torch.tensor([30.0], device=device, dtype=dtype))

    def one_step() -> Any:
        return model(**kw).sample

    with torch.inference_mode():
        flops = count_flops(one_step) * steps
        step_s = timed(one_step, device, repeat=3 if full else 2)
    params = sum(p.numel() for p in model.parameters())
    model = kw = None  # free the 12 B parameters before the next part
    free()
    return Result("↳ flux (network only)", f"FLUX.1 Fill transformer ({fmt_params(params)}) {size}², {steps} steps "
                  "(guidance-distilled: batch 1)", step_s * steps, flops, "image",
                  [f"one step: {step_s * 1e3:.1f} ms; VAE and T5 not included; no stage default uses it"])


def run_stages(ctx: Any, m: Models, photo: Any, s: Sizes, args: argparse.Namespace) -> tuple[list[Result], dict]:
    """Time every model-backed stage on the photo, each followed by its network-only row."""
    import numpy as np
    import torch

    from pipeline.models import manager_for
    from pipeline.stages.base import Asset

    results: list[Result] = []
    info: dict[str, Any] = {}
    heavy = 2 if s.full else 1  # repeats of the stages that run a diffusion model
    mp = f"{photo.shape[1]}×{photo.shape[0]}"

    def log(name: str, seconds: float) -> None:
        print(f"{name}: {seconds:.3f} s", file=sys.stderr, flush=True)

    # remove_background studio: no network of its own (the subject prior, U²-Netp at 320², when cached)
    studio = make_stage(ctx, "remove_background", {})
    sec, outs, w = time_stage(studio, Asset(photo), s, repeat=3 if s.full else 1)
    cutout = outs[0]
    prior = "with the U²-Netp subject prior (real weights)" if m.prior else "without the subject prior (not cached)"
    results.append(Result("remove_background studio", f"{mp} → cut-out, {prior}", sec, 0.0, "image", w.notes()))
    log("remove_background studio", sec)

    # remove_background rembg: the segmentation net at 1024², then the edge refined at full resolution
    rembg = make_stage(ctx, "remove_background", {"backend": "rembg"})
    sec, _, w = time_stage(rembg, Asset(photo), s, repeat=3 if s.full else 1)
    session = manager_for(ctx).load(rembg.model_ref(rembg.options, ctx.config))
    providers = session.inner_session.get_providers()
    results.append(Result("remove_background rembg", f"{mp} → cut-out; U-Net stand-in for BiRefNet "
                          f"({fmt_params(m.seg_params)}) at 1024² in onnxruntime", sec, m.seg_flops, "image",
                          w.notes() + [f"providers: {', '.join(providers)}"]))
    log("remove_background rembg", sec)
    name = session.inner_session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, 1024, 1024), dtype=np.float32)
    net = timed(lambda: session.inner_session.run(None, {name: x}), "cpu", repeat=3 if s.full else 1)
    results.append(Result("↳ network only", "one onnxruntime call of the segmentation net, 1024²", net, m.seg_flops,
                          "image", [f"stage overhead {overhead(sec, net)} (resize, full-size edge refinement)"]))
    info["segment"] = net

    # place_in_scene diffusers on the studio cut-out
    opts = {"backend": "diffusers", "prompt": PROMPT, "steps": s.steps, "seed": 0}
    scene_stage = make_stage(ctx, "place_in_scene", opts)
    pipe = manager_for(ctx).load(scene_stage.model_ref(scene_stage.options, ctx.config))
    sec, outs, w = time_stage(scene_stage, cutout, s, repeat=heavy)
    scene = outs[0]
    gsize = tuple(scene.notes["place_in_scene"]["generated_at"])
    net, flops, notes = sdxl_network(pipe, gsize, s.steps, s, args.compile)
    results.append(Result("place_in_scene diffusers", f"cut-out → {scene.width}×{scene.height} scene; SDXL inpainting "
                          f"generated at {gsize[0]}×{gsize[1]}, {s.steps} steps, CFG", sec, flops, "image",
                          w.notes() + [f"pipeline dtype {str(pipe.unet.dtype).replace('torch.', '')}"]))
    results.append(Result("↳ network only", f"VAE encode, {s.steps} × UNet (batch 2), VAE decode at "
                          f"{gsize[0]}×{gsize[1]}", net, flops, "image",
                          notes + [f"stage overhead {overhead(sec, net)} (text encoders, scheduler, "
                                   "pre/post-processing, full-size resize and composite)"]))
    log("place_in_scene diffusers", sec)
    info.update(sdxl=net, sdxl_flops=flops)

    # crops with generated fills on that scene
    crops = make_stage(ctx, "crops", {"ratios": CROP_RATIOS, "fill": "generate", "steps": s.steps, "seed": 0})
    sec, outs, w = time_stage(crops, scene, s, repeat=heavy)
    fills = [o for o in outs if o.notes["crops"]["fill"] == "generate"]
    sizes = ", ".join(f"{o.ratio} {o.width}×{o.height}"
                      + (" (generated)" if o.notes["crops"]["fill"] == "generate" else "") for o in outs)
    results.append(Result("crops fill generate", f"scene → {len(outs)} crops, {len(fills)} with generated canvas",
                          sec, flops * len(fills), "input", w.notes() + [sizes]))
    results.append(Result("↳ network only", f"{len(fills)} × the SDXL calls above (about the same generation size)",
                          net * len(fills), flops * len(fills), "input",
                          [f"stage overhead {overhead(sec, net * len(fills))} (framing, canvases, seed inpaint, seam "
                           "correction, resize back)"]))
    log("crops fill generate", sec)
    del pipe
    free()

    # upscale spandrel: Real-ESRGAN x4 through its tiles
    side = s.upscale_input
    y0, x0 = max(0, (scene.height - side) // 2), max(0, (scene.width - side) // 2)
    crop = Asset(np.ascontiguousarray(scene.pixels[y0:y0 + side, x0:x0 + side]), ratio="1:1")
    upscale = make_stage(ctx, "upscale", {"backend": "spandrel", "tile": s.upscale_tile})
    sec, outs, w = time_stage(upscale, crop, s, repeat=3 if s.full else 1)
    model = manager_for(ctx).load(upscale.model_ref(upscale.options, ctx.config))
    from pipeline.stages.spandrel_upscale import tile_starts

    o = upscale.options
    overlap = min(o.overlap, upscale._tile // 4)
    ys, xs = tile_starts(crop.height, upscale._tile, overlap), tile_starts(crop.width, upscale._tile, overlap)
    tiles = len(ys) * len(xs)
    t = min(upscale._tile, side)
    tile = torch.rand(1, 3, t, t, device=model.device, dtype=model.dtype)
    with torch.inference_mode():
        tile_flops = count_flops(lambda: model(tile))
        tile_s = timed(lambda: model(tile), s.device, repeat=3 if s.full else 1)
    out = outs[0]
    results.append(Result("upscale spandrel", f"{side}² crop → {out.width}×{out.height}: Real-ESRGAN x4 "
                          f"({model.architecture.id}, {s.esrgan[0]} filters, {s.esrgan[1]} block(s)), {tiles} tiles of "
                          f"{t}² (overlap {overlap})", sec, tile_flops * tiles, "image",
                          w.notes() + [f"dtype {str(model.dtype).replace('torch.', '')}"]))
    results.append(Result("↳ network only", f"{tiles} × one {t}² tile → {t * 4}²", tile_s * tiles, tile_flops * tiles,
                          "image", [f"one tile {tile_s * 1e3:.1f} ms; stage overhead {overhead(sec, tile_s * tiles)} "
                                    "(host↔device copies, feathered blending, rows)"]))
    log("upscale spandrel", sec)
    info.update(esrgan_tile=tile_s, esrgan_flops_per_px=tile_flops / (t * t))
    model = tile = None
    free()
    return results, info


# ------------------------------------------------------------------------------- the whole chain

CHAIN_RULE = """\
name: bench
steps:
  - remove_background: {{}}
  - place_in_scene: {{backend: diffusers, prompt: "{prompt}", steps: {steps}, seed: 0}}
  - crops: {{ratios: {ratios}, fill: generate, steps: {steps}, seed: 0}}
  - upscale: {{backend: spandrel, long_edge: {long_edge}}}
outputs:
  - {{channel: cutouts, from: remove_background}}
  - {{channel: webshop, from: upscale}}
"""


@dataclass
class ChainRun:
    inputs: int
    warmup: bool
    per_input: float  # wall seconds per input, end to end
    steps: dict[str, float]  # mean seconds per input of each step, from the job store
    outputs: int
    watch: Watch
    fills: float = 0.0  # generated crop fills per input (from the manifests)
    upscaled_px: float = 0.0  # input pixels the upscale network ran over, per input


def run_chain(folder: Path, config: Any, s: Sizes) -> ChainRun:
    """``s.chain`` inputs (plus one warm-up on the GPU) through the daemon's worker loop, read-ahead on."""
    import cv2

    from pipeline.intake import Intake
    from pipeline.models import load_for_start
    from pipeline.rules import load_rules
    from pipeline.store import JobStatus, Store
    from pipeline.synth import studio_shot
    from pipeline.worker import Worker

    config.rules_dir.mkdir(parents=True, exist_ok=True)
    rule = CHAIN_RULE.format(prompt=PROMPT, steps=s.steps, ratios=json.dumps(CROP_RATIOS), long_edge=UPSCALE_LONG_EDGE)
    (config.rules_dir / "bench.yaml").write_text(rule, encoding="utf-8")
    rules = load_rules(config)
    inbox = config.inboxes[0].path
    inbox.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(s.chain + (1 if s.full else 0)):
        rgb = studio_shot("white", s.chain_size, seed=10 + i).rgb
        files.append(inbox / f"shot_{i:02d}.jpg")
        cv2.imwrite(str(files[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    models = load_for_start(config, rules, lambda warning: print(f"chain: {warning}", file=sys.stderr))
    store = Store(config.database)
    intake = Intake(config, rules, store)
    jobs = [intake.submit(f, inbox).job for f in files]
    if any(j is None for j in jobs):
        raise SystemExit("bench/gpu.py: an input of the chain was not queued")
    warm, timed_jobs = (jobs[0], jobs[1:]) if s.full else (None, jobs)
    warmed = threading.Event()
    stop = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:  # the worker owns its own store connection, as in the daemon
        try:
            worker = Worker("bench", config, Store(config.database), rules, stop=stop)
            worker.ctx.models = models
            if warm is not None:
                worker.run_next(only=[warm.id])
            warmed.set()
            worker.run_forever(idle_max=0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)
            warmed.set()

    thread = threading.Thread(target=work, name="bench-worker", daemon=True)
    thread.start()
    warmed.wait()
    with Watch(s.device) as watch:
        t0 = time.perf_counter()
        while not failure:
            states = [store.get(j.id).status for j in timed_jobs]  # type: ignore[union-attr]
            if all(st in (JobStatus.DONE, JobStatus.FAILED) for st in states):
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
    stop.set()
    thread.join()
    if failure:
        raise failure[0]
    failed = [store.get(j.id) for j in timed_jobs if store.get(j.id).status is not JobStatus.DONE]  # type: ignore
    if failed:
        raise SystemExit(f"bench/gpu.py: chain job failed: {failed[0].error}")  # type: ignore[union-attr]
    steps: dict[str, float] = {}
    for j in timed_jobs:
        for row in store.steps(j.id):
            key = f"{row['step']} {row['backend']}"
            steps[key] = steps.get(key, 0.0) + row["seconds"] / len(timed_jobs)
    outputs = sum(len(store.outputs(j.id)) for j in timed_jobs)
    store.close()
    run = ChainRun(len(timed_jobs), warm is not None, elapsed / len(timed_jobs), steps, outputs, watch)
    for j in timed_jobs:  # what the networks did, from each job's manifest
        manifest = config.manifest_folder / "bench" / f"{Path(j.input_path).stem}.assetd.json"
        for out in json.loads(manifest.read_text(encoding="utf-8"))["outputs"]:
            crop, up = out["steps"].get("crops"), out["steps"].get("upscale")
            if out["channel"] == "webshop" and crop and up:
                run.fills += (crop["fill"] == "generate") / len(timed_jobs)
                if not up.get("skipped"):
                    run.upscaled_px += crop["size"][0] * crop["size"][1] / len(timed_jobs)
    return run


# ------------------------------------------------------------------------------------- report


def report(device_name: str, s: Sizes, results: list[Result], chain: ChainRun | None, info: dict, m: Models,
           photo_what: str, args: argparse.Namespace) -> str:
    peak = peak_tflops(device_name) if s.full else None
    lines = [f"## GPU benchmark: {device_name}", ""]
    if not s.full:
        lines += [f"**No CUDA GPU: run on the CPU at a reduced size** (width-reduced SDXL at 256², {s.steps} steps, "
                  f"{s.seg_base}-wide segmentation U-Net, {s.esrgan[0]}-filter {s.esrgan[1]}-block ESRGAN on a "
                  f"{s.upscale_input}² crop in {s.upscale_tile} px tiles, a {s.chain_size[0]}×{s.chain_size[1]} chain "
                  "without warm-up). The stage inputs are full size. The numbers show the code path works and what "
                  "the stages cost around their networks on this CPU, not production speed.", ""]
    lines += [f"The shipped stages (`stage.run`) with random weights at the real architectures' sizes, loaded through "
              f"the real loaders, dtype {str(s.dtype).replace('torch.', '')}. Stage input: {photo_what}. Peak dense "
              f"bf16: {f'{peak:.0f} TFLOP/s' if peak else 'unknown for this device'}. torch.compile (network-only "
              f"UNet): {'on' if args.compile else 'off'}. Times are medians of "
              f"{'2-3 runs' if s.full else 'one run'} after a warm-up run; ↳ rows time the bare network calls the "
              "stage above makes.", "",
              "| stage | what | time | GFLOP | achieved | arithmetic limit | notes |",
              "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        if r.flops:
            gflop, achieved = f"{r.flops / 1e9:,.1f}", fmt_rate(r.flops / r.seconds)
            limit = f"{r.flops / (peak * 1e12) * 1e3:.1f} ms" if peak else "n/a"
        else:
            gflop = achieved = limit = "–"
        lines.append(f"| {r.name} | {r.what} | {fmt_time(r.seconds)} / {r.unit} | {gflop} | {achieved} | {limit} | "
                     f"{'; '.join(r.notes)} |")
    if chain is not None:
        w, h = s.chain_size
        steps = sum(chain.steps.values())
        lines += ["", f"Whole chain through the worker loop (`Worker.run_forever`, the next input read and decoded "
                      f"while one runs): {w}×{h} JPEG inputs, studio cut-out → diffusers scene → crops "
                      f"({', '.join(CROP_RATIOS)}, generated fills) → spandrel to a {UPSCALE_LONG_EDGE} px long "
                      f"edge; outputs encoded and written ({chain.outputs} files). "
                      f"{chain.inputs} input(s) timed{', after one warm-up input' if chain.warmup else ''}.", "",
                  f"- measured end-to-end: {chain.per_input:.2f} s/input → **{3600 / chain.per_input:,.0f} inputs/hour "
                  f"per {'GPU' if s.full else 'device'}**",
                  "- inside the chain, per input (job store): "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in chain.steps.items())
                  + f"; sum {steps:.2f} s, so {max(0.0, chain.per_input - steps):.2f} s/input of reading, decoding, "
                    "encoding and writing is not hidden by the read-ahead",
                  f"- GPU busy while the chain ran: "
                  f"{f'{chain.watch.busy:.0f} %' if chain.watch.busy is not None else 'n/a (no GPU sampler)'}"
                  + (f"; peak CUDA memory {chain.watch.peak / 2**30:.1f} GiB" if chain.watch.peak else "")]
        flops = info["sdxl_flops"] * (1 + chain.fills) + info["esrgan_flops_per_px"] * chain.upscaled_px
        lines.append(f"- networks per input: 1 scene + {chain.fills:g} fill generation(s) of SDXL, Real-ESRGAN over "
                     f"{chain.upscaled_px / 1e6:.1f} MP of crops: {flops / 1e12:,.2f} TFLOP (the studio prior aside)"
                     + (f"; arithmetic limit {flops / (peak * 1e12):.2f} s/input ({3600 * peak * 1e12 / flops:,.0f} "
                        "inputs/hour at 100 % of peak)" if peak else ""))
    lines += ["", f"Models built and saved in {m.built_s:.0f} s (not in any timing).", "",
              "Published anchors (different card, real weights):", "",
              f"- {ANCHORS['sdxl']} (here, network only: {info['sdxl']:.2f} s"
              f"{' on reduced CPU settings' if not s.full else ''})",
              f"- {ANCHORS['segment']} (here, U-Net stand-in network only: {info['segment'] * 1e3:.1f} ms)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="also write the Markdown section to this file")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet of the network-only row (GPU)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 30 GPU, 2 CPU)")
    parser.add_argument("--flux-steps", type=int, default=28, help="FLUX Fill steps (GPU)")
    parser.add_argument("--size", type=parse_size, default=(6000, 4000), help="stage input WxH (default 6000x4000)")
    parser.add_argument("--photo", type=Path, help="a real photo with NAME.mask.png beside it (default: synthetic)")
    parser.add_argument("--chain", type=int, default=None,
                        help="inputs timed through the worker (default 3 GPU, 2 CPU)")
    parser.add_argument("--chain-size", type=parse_size, default=None,
                        help="chain input WxH (default 4000x3000 GPU, 480x360 CPU)")
    parser.add_argument("--no-chain", action="store_true", help="skip the whole-chain run")
    parser.add_argument("--no-flux", action="store_true", help="skip the FLUX Fill transformer")
    parser.add_argument("--keep", type=Path, help="build the models and the chain's folders here and keep them")
    args = parser.parse_args(argv)

    import torch
    from pipeline.torchcompat import ensure_torchvision_importable

    ensure_torchvision_importable()  # diffusers → transformers → torchvision, before any model import
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    full = torch.cuda.is_available()
    if full:
        device = "cuda"
        name = torch.cuda.get_device_name(0)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16  # = models.dtype auto
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        s = Sizes(True, device, dtype, args.steps or 30, args.size, args.chain_size or (4000, 3000), args.chain or 3)
    else:
        import platform

        device = "cpu"
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        args.compile = False
        s = Sizes(False, device, torch.float32, args.steps or 2, args.size, args.chain_size or (480, 360),
                  args.chain or 2, upscale_input=192, upscale_tile=128, esrgan=(8, 1), seg_base=16)
    print(f"device {device} ({name}), dtype {str(s.dtype).replace('torch.', '')}, "
          f"{'full-size models' if full else 'reduced models (no CUDA GPU)'}: SDXL native "
          f"{1024 if full else 256}², {s.steps} steps; ESRGAN {s.esrgan[0]}×{s.esrgan[1]} on {s.upscale_input}² in "
          f"{s.upscale_tile} px tiles; segmentation U-Net width {s.seg_base} at 1024²; stage input "
          f"{s.size[0]}×{s.size[1]}; chain {s.chain} × {s.chain_size[0]}×{s.chain_size[1]}", file=sys.stderr)

    folder = args.keep or Path(tempfile.mkdtemp(prefix="assetd-bench-gpu-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        m = build_models(folder, s)
        print(f"models built and saved in {m.built_s:.0f} s under {folder}", file=sys.stderr)
        config = bench_config(folder, m, s)
        from pipeline.stages.base import StageContext

        photo, photo_what = product_photo(s.size, args.photo)
        ctx = StageContext(config=config)  # one per worker: the stages share its model manager
        results, info = run_stages(ctx, m, photo, s, args)
        if ctx.models is not None:
            ctx.models.close()
        ctx = None
        free()
        if not args.no_flux:
            r = bench_flux(s, 1024 if full else 256, args.flux_steps if full else 2)
            if r is None:
                print("flux: skipped (not enough GPU memory)", file=sys.stderr)
            else:
                results.append(r)
        chain = None if args.no_chain else run_chain(folder, config, s)
        text = report(name, s, results, chain, info, m, photo_what, args)
        print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
