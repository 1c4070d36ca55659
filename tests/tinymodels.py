"""Tiny random-weight models, built in the tests and saved, so the real loading paths run offline.

Each builder writes a model the way its library expects to find one (``save_pretrained`` folders,
spandrel-detectable state dicts, an ONNX file for rembg) and the backends load it back through
``DiffusionPipeline.from_pretrained`` / ``spandrel.ModelLoader`` / rembg sessions. Builds are
memoised per test session (several modules share them). ``netguard`` blocks and counts every
non-loopback network attempt; the model tests fail if there was one.

The libraries these need are optional (the ``models`` and ``test`` extras): without one, a builder
skips the test that asked for it and ``needs(...)`` marks a test to skip, each naming what is missing.
``make test`` installs both extras, so nothing skips there.
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

_BUILT: dict[str, Path] = {}
_ROOT: Path | None = None


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="assetd-tinymodels-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def _memo(name: str, build) -> Path:
    if name not in _BUILT:
        _BUILT[name] = build(_root() / name)
    return _BUILT[name]


# ------------------------------------------------------------------------- optional packages


def missing(*modules: str) -> list[str]:
    """The packages among ``modules`` that are not installed (found without importing them)."""
    gone = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                gone.append(name)
        except (ImportError, ValueError):
            gone.append(name)
    return gone


def _reason(gone: list[str]) -> str:
    return (f"needs {', '.join(gone)}, not installed (the models/test extras: make test, or "
            "pip install -c constraints.txt -e '.[test]')")


def needs(*modules: str) -> pytest.MarkDecorator:
    """Skip the marked test (or module, as ``pytestmark``) when one of ``modules`` is not installed."""
    gone = missing(*modules)
    return pytest.mark.skipif(bool(gone), reason=_reason(gone))


def skip_without(*modules: str) -> None:
    """In a builder: skip the calling test when one of ``modules`` is not installed."""
    gone = missing(*modules)
    if gone:
        pytest.skip(_reason(gone))


# ----------------------------------------------------------------------------- network guard


class NetGuard:
    """Replaces socket connect / getaddrinfo: loopback and unix sockets pass, the rest raise."""

    LOCAL = ("localhost", "127.0.0.1", "::1", None)

    def __init__(self) -> None:
        self.attempts: list[tuple[str, object]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        orig_connect = socket.socket.connect
        orig_gai = socket.getaddrinfo
        guard = self

        def connect(sock: socket.socket, address: object) -> object:
            host = address[0] if isinstance(address, tuple) else None
            if sock.family == getattr(socket, "AF_UNIX", None) or host in guard.LOCAL:
                return orig_connect(sock, address)
            guard.attempts.append(("connect", address))
            raise OSError("network disabled in tests")

        def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
            if host in guard.LOCAL:
                return orig_gai(host, *args, **kwargs)
            guard.attempts.append(("getaddrinfo", host))
            raise socket.gaierror("network disabled in tests")

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def netguard(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetGuard]:
    """Block the network for one test and fail it if anything tried to connect."""
    guard = NetGuard()
    guard.install(monkeypatch)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield guard
    assert guard.attempts == [], f"network attempts during the test: {guard.attempts}"


# ------------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(folder: Path) -> Path:
    """A byte-level CLIP BPE vocabulary (ids < 1000) and a few merges, written locally."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    tokens = ["<|startoftext|>", "!", "<|endoftext|>"]
    tokens += [c for c in chars if c not in tokens] + [c + "</w>" for c in chars]
    merges = ["t h", "th e</w>", "c a", "ca t</w>", "o n</w>", "d o", "do g</w>"]
    tokens += [m.replace(" ", "") for m in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    # transformers 5: the vocab_file/merges_file constructor silently builds a 2-token tokenizer
    return CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder)), model_max_length=77)


def _clip_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=2, hidden_size=32, intermediate_size=37,
                          layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
                          hidden_act="gelu", projection_dim=32)


# --------------------------------------------------------------------------------- diffusers


def _shim() -> None:
    from pipeline.torchcompat import ensure_torchvision_importable

    ensure_torchvision_importable()


def build_sd_inpaint(out: Path) -> Path:
    """A StableDiffusionInpaintPipeline with 32/64-channel UNet and VAE (native size 64²), saved."""
    skip_without("torch", "diffusers", "transformers")
    _shim()
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=9,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=CLIPTextModel(_clip_text_config()),
                                          tokenizer=_clip_tokenizer(out.parent / "clip-tokenizer"), unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(str(out))
    return out


def build_flux_fill(out: Path) -> Path:
    """A FluxFillPipeline with a one-block transformer and a tiny T5 (tokenizer built in memory), saved."""
    skip_without("torch", "diffusers", "transformers")
    _shim()
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    # in_channels = 4·latent(2) packed noise + 4·latent(2) packed masked image + 4·(vae scale 1)² packed mask
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=20, out_channels=8, num_layers=1,
                                         num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                         joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=2, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    t5, t5_tokenizer = _tiny_t5()
    pipe = FluxFillPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                            text_encoder=CLIPTextModel(_clip_text_config()),
                            tokenizer=_clip_tokenizer(out.parent / "clip-tokenizer"), text_encoder_2=t5,
                            tokenizer_2=t5_tokenizer, transformer=transformer)
    pipe.save_pretrained(str(out))
    return out


def _tiny_t5():
    """A two-layer T5 encoder and a Unigram T5 tokenizer built in memory (no sentencepiece file, no download)."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,"]
    pieces += [("▁" + c, -4.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(9, -1, -1)]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=10, model_max_length=512)
    encoder = T5EncoderModel(T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                      relative_attention_num_buckets=8, decoder_start_token_id=0))
    return encoder, tokenizer


def build_flux_kontext(out: Path) -> Path:
    """A FluxKontextPipeline with a one-block transformer, a one-level VAE (native size 128²) and tiny text
    encoders, saved. Kontext puts the image's latents beside the noise in the sequence, not in the channels:
    in_channels is 4·latent(2) packed, as for plain FLUX."""
    skip_without("torch", "diffusers", "transformers")
    _shim()
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=2, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    t5, t5_tokenizer = _tiny_t5()
    pipe = FluxKontextPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                               text_encoder=CLIPTextModel(_clip_text_config()),
                               tokenizer=_clip_tokenizer(out.parent / "clip-tokenizer"), text_encoder_2=t5,
                               tokenizer_2=t5_tokenizer, transformer=transformer)
    pipe.save_pretrained(str(out))
    return out


def tiny_flux_kontext() -> Path:
    return _memo("tiny-flux-kontext", build_flux_kontext)


def tiny_sd_inpaint() -> Path:
    return _memo("tiny-sd-inpaint", build_sd_inpaint)


def tiny_flux_fill() -> Path:
    return _memo("tiny-flux-fill", build_flux_fill)


# ---------------------------------------------------------------------------------- spandrel


def build_esrgan(out: Path, scale: int = 4) -> Path:
    """An ESRGAN (RRDBNet) with 16 filters and 2 blocks, saved as .safetensors for spandrel to detect."""
    skip_without("torch", "spandrel", "safetensors")
    _shim()
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    return out


def build_span(out: Path, scale: int = 2) -> Path:
    skip_without("torch", "spandrel", "safetensors")
    _shim()
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(0)
    net = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    return out


def tiny_esrgan_x4() -> Path:
    return _memo("esrgan_x4.safetensors", lambda p: build_esrgan(p, 4))


def tiny_span_x2() -> Path:
    return _memo("span_x2.safetensors", lambda p: build_span(p, 2))


# ------------------------------------------------------------------------------------- rembg


def build_dark_subject_onnx(out: Path) -> Path:
    """An ONNX 'segmentation' net that calls dark pixels subject: sigmoid(-k·mean(rgb) + b) per pixel.

    Fixed weights, not random: on a dark product over a white backdrop its mask is solid where the
    product is, so the tests can check the opaque pixels. Exported with the legacy exporter (needs onnx).
    """
    skip_without("torch", "onnx")
    import torch

    class DarkIsSubject(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 1)
            with torch.no_grad():
                self.conv.weight.fill_(-10.0)
                self.conv.bias.fill_(5.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.conv(x))

    out.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter: fast, no onnxscript
        torch.onnx.export(DarkIsSubject().eval(), (torch.rand(1, 3, 320, 320),), str(out), input_names=["input.1"],
                          output_names=["out"], opset_version=17, dynamo=False)
    return out


def tiny_dark_subject_onnx() -> Path:
    return _memo("dark_subject.onnx", build_dark_subject_onnx)


def folder_size(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def make_config(tmp_path: Path, **models: Any) -> Any:
    """A Config on the CPU whose file lives in ``tmp_path``; ``models`` overrides the models section."""
    from pipeline.config import config_from_dict

    data = {"device": "cpu", "models": {"unload_after_seconds": 60.0, **models}}
    return config_from_dict(data, tmp_path / "config.yaml")
