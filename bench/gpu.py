"""GPU benchmark of the model-backed stages, with random weights at the real architectures' sizes.

Real weights cannot be fetched here, and compute does not depend on the weights' values, so each
stage times the full-size network built from its published configuration:

* place_in_scene / fill generate: the SDXL inpainting UNet (9 input channels) at 1024², 30 steps
  with classifier-free guidance (batch 2), bf16 + SDPA (diffusers' default attention), plus the
  SDXL VAE encode (masked image) and decode; ``--compile`` adds torch.compile on the UNet;
* FLUX.1 Fill transformer (12 B parameters) at 1024², when the card has the memory (≥ 40 GB);
* remove_background: a U-Net-class segmentation network at 1024² (batched, images/s); BiRefNet is
  a Swin-L network that cannot be built without its code, so this is a stand-in of known FLOPs;
* upscale: Real-ESRGAN x4 (RRDBNet, 64 filters, 23 blocks, built by spandrel) on a 1024² tile.

FLOPs are counted by running each network once under ``torch.utils.flop_counter`` (not guessed);
dividing by the card's peak dense bf16 rate gives the arithmetic limit. GPU busy % is sampled with
pynvml or ``nvidia-smi`` while a batch runs through the whole chain. Without a GPU everything runs
on the CPU at a reduced size (small resolution, 2 steps, width-reduced UNet/transformer) and says so.

    python bench/gpu.py [--markdown PATH] [--compile] [--steps 30] [--seg-batch 4] [--chain 3]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
# What one input costs in the chain: cut-out, one generated scene, generated fills for the crops
# that need new canvas (2 of the 4 default ratios, typically), and the 4 crops upscaled x4 from ~1024².
CHAIN = {"segment": 1, "sdxl": 3, "esrgan": 4}


@dataclass
class Result:
    name: str
    what: str
    seconds: float  # per unit (image or call)
    flops: float  # per unit
    unit: str = "image"
    notes: list[str] = field(default_factory=list)


def peak_tflops(name: str) -> float | None:
    for fragment, tflops in PEAK_TFLOPS:
        if fragment.lower() in name.lower():
            return tflops
    return None


def fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f} B params" if n >= 1e9 else f"{n / 1e6:.1f} M params"


def fmt_rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


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


# ------------------------------------------------------------------------------------- stages


def sdxl_configs(full: bool) -> tuple[dict, dict]:
    if full:
        unet = dict(sample_size=128, in_channels=9, out_channels=4, layers_per_block=2,
                    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2816)
        vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                   down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    else:  # width-reduced, same topology
        unet = dict(sample_size=32, in_channels=9, out_channels=4, layers_per_block=1,
                    block_out_channels=(32, 64, 128), transformer_layers_per_block=(1, 1, 1),
                    attention_head_dim=(2, 4, 8), cross_attention_dim=64, use_linear_projection=True,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    addition_embed_type="text_time", addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=6 * 8 + 32)
        vae = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4,
                   down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    return unet, vae


def bench_sdxl(device: str, dtype: Any, full: bool, size: int, steps: int, compile_unet: bool) -> Result:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    ucfg, vcfg = sdxl_configs(full)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**ucfg).to(device, dtype).eval()
    vae = AutoencoderKL(**vcfg).to(device, dtype).eval()
    lat = size // 8
    text_dim = ucfg["cross_attention_dim"]
    pooled = ucfg["projection_class_embeddings_input_dim"] - 6 * ucfg["addition_time_embed_dim"]
    x = torch.randn(2, 9, lat, lat, device=device, dtype=dtype)  # CFG: cond + uncond in one batch
    ctx = torch.randn(2, 77, text_dim, device=device, dtype=dtype)
    added = {"text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype)}
    image = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)
    net = torch.compile(unet, fullgraph=True) if compile_unet else unet

    def one_step() -> Any:
        return net(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample

    def whole() -> Any:
        with torch.inference_mode():
            vae.encode(image).latent_dist.mean  # masked image → latents
            for _ in range(steps):
                one_step()
            return vae.decode(x[:1, :4]).sample

    with torch.inference_mode():
        flops = count_flops(lambda: (vae.encode(image), unet(x, t, encoder_hidden_states=ctx,
                                                              added_cond_kwargs=added), vae.decode(x[:1, :4])))
    # count_flops ran one UNet step + the VAE: scale the UNet share to all steps
    with torch.inference_mode():
        unet_flops = count_flops(lambda: unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added))
    flops = flops + unet_flops * (steps - 1)
    with torch.inference_mode():
        step_s = timed(one_step, device, repeat=5 if full else 2, warmup=3 if compile_unet else 1)
    seconds = timed(whole, device, repeat=2 if full else 1)
    params = sum(p.numel() for p in unet.parameters())
    del unet, vae, net
    free()
    return Result("sdxl", f"SDXL inpaint UNet ({fmt_params(params)}) {size}², {steps} steps, CFG, VAE enc+dec",
                  seconds, flops, "image", [f"one UNet step (batch 2): {step_s * 1e3:.1f} ms"])


def bench_flux(device: str, dtype: Any, full: bool, size: int, steps: int) -> Result | None:
    import torch
    from diffusers import FluxTransformer2DModel

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
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the 12 B parameters directly in bf16 on the GPU
    try:
        with torch.device(device):
            model = FluxTransformer2DModel(**cfg).eval()
    finally:
        torch.set_default_dtype(previous)
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
    del model
    free()
    return Result("flux", f"FLUX.1 Fill transformer ({fmt_params(params)}) {size}², {steps} steps (guidance-"
                          f"distilled: batch 1)", step_s * steps, flops, "image",
                  [f"one step: {step_s * 1e3:.1f} ms; VAE and T5 not included"])


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
                return torch.sigmoid(self.head(x))

        return UNet()


def bench_segment(device: str, dtype: Any, full: bool, size: int, batch: int) -> Result:
    import torch

    torch.manual_seed(0)
    model = SegmentationUNet.build(64 if full else 16).to(device, dtype).eval()
    x = torch.rand(batch, 3, size, size, device=device, dtype=dtype)
    with torch.inference_mode():
        flops = count_flops(lambda: model(x[:1]))
        seconds = timed(lambda: model(x), device, repeat=3 if full else 1) / batch
    del model
    free()
    return Result("segment", f"U-Net segmentation stand-in {size}², batch {batch}", seconds, flops, "image",
                  [f"{1 / seconds:.1f} images/s"])


def bench_esrgan(device: str, dtype: Any, full: bool, tile: int) -> Result:
    import torch
    from pipeline.torchcompat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from spandrel import ModelLoader
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)
    model = ModelLoader(device="cpu").load_from_state_dict(net.state_dict())  # spandrel detects RRDBNet x4
    model.eval().to(device)
    if dtype != torch.float32 and model.supports_half:
        model.to(torch.float16 if not model.supports_bfloat16 else dtype)
    x = torch.rand(1, 3, tile, tile, device=device, dtype=model.dtype)
    with torch.inference_mode():
        flops = count_flops(lambda: model(x))
        seconds = timed(lambda: model(x), device, repeat=3 if full else 1)
    arch = model.architecture.id
    del model, net
    free()
    return Result("esrgan", f"Real-ESRGAN x4 ({arch}, 64 filters, 23 blocks) on a {tile}² tile → {tile * 4}²",
                  seconds, flops, "tile", [f"dtype {str(x.dtype).replace('torch.', '')}"])


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


def chain_busy(device: str, dtype: Any, full: bool, size: int, steps: int, images: int) -> tuple[float | None, float]:
    """Run ``images`` inputs through segment → SDXL scene → 2 fills → 4 × ESRGAN; GPU busy % and s/image."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from pipeline.torchcompat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from spandrel import ModelLoader
    from spandrel.architectures.ESRGAN import ESRGAN

    ucfg, vcfg = sdxl_configs(full)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**ucfg).to(device, dtype).eval()
    vae = AutoencoderKL(**vcfg).to(device, dtype).eval()
    seg = SegmentationUNet.build(64 if full else 16).to(device, dtype).eval()
    esr = ModelLoader(device="cpu").load_from_state_dict(ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23,
                                                                scale=4).state_dict())
    esr.eval().to(device)
    if dtype != torch.float32 and esr.supports_half:
        esr.to(dtype if esr.supports_bfloat16 else torch.float16)
    lat, tile = size // 8, (1024 if full else 64)
    pooled = ucfg["projection_class_embeddings_input_dim"] - 6 * ucfg["addition_time_embed_dim"]
    x = torch.randn(2, 9, lat, lat, device=device, dtype=dtype)
    ctx = torch.randn(2, 77, ucfg["cross_attention_dim"], device=device, dtype=dtype)
    added = {"text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype)}
    t = torch.tensor([500], device=device)
    img = torch.rand(1, 3, size, size, device=device, dtype=dtype)
    crop = torch.rand(1, 3, tile, tile, device=device, dtype=esr.dtype)

    def one_input() -> None:
        with torch.inference_mode():
            seg(img)
            for _ in range(CHAIN["sdxl"]):
                vae.encode(img)
                for _ in range(steps):
                    unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added)
                vae.decode(x[:1, :4])
            for _ in range(CHAIN["esrgan"]):
                esr(crop)

    one_input()  # warm-up
    sync(device)
    index = torch.device(device).index or 0 if device.startswith("cuda") else 0
    sampler = BusySampler(index) if device.startswith("cuda") else None
    t0 = time.perf_counter()
    if sampler is not None:
        with sampler:
            for _ in range(images):
                one_input()
            sync(device)
    else:
        for _ in range(images):
            one_input()
    per_image = (time.perf_counter() - t0) / images
    del unet, vae, seg, esr
    free()
    busy = statistics.mean(sampler.samples) if sampler is not None and sampler.samples else None
    return busy, per_image


# ------------------------------------------------------------------------------------- report


def report(device_name: str, full: bool, results: list[Result], busy: float | None, chain_s: float,
           chain_n: int, args: argparse.Namespace) -> str:
    peak = peak_tflops(device_name) if full else None
    lines = [f"## GPU benchmark: {device_name}", ""]
    if not full:
        lines += ["**No CUDA GPU: run on the CPU at a reduced size** (256² images, width-reduced SDXL UNet and FLUX "
                  "transformer, 16-wide segmentation U-Net, 64² ESRGAN tile, "
                  f"{args.steps} steps). The numbers show the code path works, not production speed.", ""]
    lines += [f"Random weights, same compute as the real models. Peak dense bf16: "
              f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown for this device'}. "
              f"torch.compile: {'on' if args.compile else 'off'}.", "",
              "| stage | what | time | GFLOP | achieved | arithmetic limit | notes |",
              "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        achieved = fmt_rate(r.flops / r.seconds)
        limit = f"{r.flops / (peak * 1e12) * 1e3:.1f} ms" if peak else "n/a"
        shown = f"{r.seconds:.3f} s" if r.seconds >= 1 else f"{r.seconds * 1e3:.1f} ms"
        lines.append(f"| {r.name} | {r.what} | {shown} / {r.unit} | {r.flops / 1e9:,.1f} | {achieved} | "
                     f"{limit} | {'; '.join(r.notes)} |")
    by = {r.name: r for r in results}
    chain_sum = sum(by[k].seconds * n for k, n in CHAIN.items() if k in by)
    chain_flops = sum(by[k].flops * n for k, n in CHAIN.items() if k in by)
    lines += ["", f"Chain per input: {CHAIN['segment']} segmentation, {CHAIN['sdxl']} SDXL generations "
                  f"(1 scene + 2 crop fills), {CHAIN['esrgan']} ESRGAN x4 tiles (4 crops).", "",
              f"- sum of stage times: {chain_sum:.2f} s/input → **{3600 / chain_sum:,.0f} inputs/hour per {'GPU' if full else 'device'}**",
              f"- measured end-to-end ({chain_n} input(s) back to back): {chain_s:.2f} s/input → "
              f"{3600 / chain_s:,.0f} inputs/hour",
              f"- GPU busy while the chain ran: {f'{busy:.0f} %' if busy is not None else 'n/a (no GPU sampler)'}"]
    if peak:
        lines.append(f"- arithmetic limit of the chain: {chain_flops / (peak * 1e12):.2f} s/input "
                     f"({3600 * peak * 1e12 / chain_flops:,.0f} inputs/hour at 100 % of peak)")
    lines += ["", "Published anchors (different card, real weights):", "",
              f"- {ANCHORS['sdxl']} (here: {by['sdxl'].seconds:.2f} s{' on reduced CPU settings' if not full else ''})",
              f"- {ANCHORS['segment']} (here, U-Net stand-in: {by['segment'].seconds * 1e3:.1f} ms)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="also write the Markdown section to this file")
    parser.add_argument("--compile", action="store_true", help="torch.compile the SDXL UNet (GPU)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 30 GPU, 2 CPU)")
    parser.add_argument("--flux-steps", type=int, default=28, help="FLUX Fill steps (GPU)")
    parser.add_argument("--seg-batch", type=int, default=4, help="segmentation batch size")
    parser.add_argument("--chain", type=int, default=3, help="inputs run through the whole chain for GPU busy %%")
    parser.add_argument("--no-flux", action="store_true", help="skip the FLUX Fill transformer")
    args = parser.parse_args(argv)

    import torch
    from pipeline.torchcompat import ensure_torchvision_importable

    ensure_torchvision_importable()  # diffusers → transformers → torchvision, before any model import
    full = torch.cuda.is_available()
    device = "cuda" if full else "cpu"
    if full:
        name = torch.cuda.get_device_name(0)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        import platform

        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        dtype = torch.float32
        args.compile = False
        print(f"no CUDA GPU: running on the CPU at a reduced size ({name})", file=sys.stderr)
    args.steps = args.steps or (30 if full else 2)
    size = 1024 if full else 256
    results = []
    stages: list[tuple[str, Callable[[], Result | None]]] = [
        ("segment", lambda: bench_segment(device, dtype, full, size, args.seg_batch if full else 1)),
        ("sdxl", lambda: bench_sdxl(device, dtype, full, size, args.steps, args.compile)),
        ("esrgan", lambda: bench_esrgan(device, dtype, full, 1024 if full else 64)),
    ]
    if not args.no_flux:
        stages.append(("flux", lambda: bench_flux(device, dtype, full, size, args.flux_steps if full else 2)))
    for label, fn in stages:
        t0 = time.perf_counter()
        r = fn()
        if r is None:
            print(f"{label}: skipped (not enough GPU memory)", file=sys.stderr)
            continue
        print(f"{label}: {r.seconds:.3f} s/{r.unit} ({time.perf_counter() - t0:.0f} s incl. build)", file=sys.stderr)
        results.append(r)
    chain_n = args.chain if full else 1
    busy, chain_s = chain_busy(device, dtype, full, size, args.steps, chain_n)
    text = report(name, full, results, busy, chain_s, chain_n, args)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
