"""place_in_scene backend diffusers with a reference image: a tiny random IP-Adapter and CLIP image encoder, saved
as a real adapter is laid out and loaded through diffusers' load_ip_adapter (CPU, offline)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline import models
from pipeline.cli import cli
from pipeline.rules import MatchSpec, Rule, StepSpec
from pipeline.stages.base import Asset, StageContext
from pipeline.stages.diffusion import DiffusersScene, DiffusersSceneOptions
from scenecases import cutout, placed
from tinymodels import make_config, netguard, skip_without, tiny_flux_fill, tiny_sd_inpaint  # noqa: F401

pytestmark = pytest.mark.usefixtures("netguard")


def build_ip_adapter(out: Path, pipeline: Path) -> Path:
    """An IP-Adapter for the tiny SD inpainting UNet, laid out as h94/IP-Adapter's: the weights file (image_proj.*,
    ip_adapter.N.to_k_ip/to_v_ip for each cross-attention, N = 1, 3, 5...) with image_encoder/ beside it."""
    skip_without("torch", "diffusers", "transformers", "safetensors")
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(str(pipeline / "unet"))
    cross, widths = unet.config.cross_attention_dim, list(unet.config.block_out_channels)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=4,
        projection_dim=32)).save_pretrained(str(out / "image_encoder"))
    proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=32, num_image_text_embeds=4)
    tensors = {f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in proj.state_dict().items()}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):  # self-attention: no adapter
            continue
        block = name.split(".")[0]
        hidden = (widths[-1] if block == "mid_block" else widths[::-1][int(name.split(".")[1])] if block == "up_blocks"
                  else widths[int(name.split(".")[1])])
        tensors[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.5
        tensors[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.5
        key += 2
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "ip-adapter_tiny.safetensors"))
    return out / "ip-adapter_tiny.safetensors"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    return build_ip_adapter(tmp_path_factory.mktemp("ip-adapter"), tiny_sd_inpaint())


def reference_image(path: Path, colour: tuple[int, int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    img = np.clip(np.array(colour, np.int16) + rng.integers(-40, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def scene(stage_opts: dict, ctx: StageContext, src: np.ndarray) -> Asset:
    options = DiffusersSceneOptions(**{"prompt": "on the sand", "steps": 2, "seed": 7, "scale": 0.8, **stage_opts})
    stage = DiffusersScene(options, ctx)
    stage.prepare()
    (out,) = stage.run(Asset(src))
    return out


def test_reference_steers_the_scene_and_the_subject_stays_exact(tmp_path, adapter):
    ctx = StageContext(make_config(tmp_path, diffusers=str(tiny_sd_inpaint())))
    red = reference_image(tmp_path / "red.png", (220, 40, 30))
    blue = reference_image(tmp_path / "blue.png", (20, 60, 230), seed=1)
    src = cutout()
    opts = {"reference": red, "reference_strength": 1.0, "ip_adapter": str(adapter)}
    out = scene(opts, ctx, src)
    region, subject, opaque = placed(out, src)
    np.testing.assert_array_equal(region[opaque], subject[opaque])
    note = out.notes["place_in_scene"]
    assert note["reference"] == str(red) and note["reference_strength"] == 1.0 and note["ip_adapter"] == str(adapter)
    assert note["pipeline"] == "StableDiffusionInpaintPipeline"

    other = scene({**opts, "reference": blue}, ctx, src)
    assert not np.array_equal(other.pixels, out.pixels)  # the reference changes the scene
    np.testing.assert_array_equal(placed(other, src)[0][opaque], subject[opaque])
    # one worker runs both steps on one adapter pipeline: each run sets its own strength, so the same seed and
    # reference give the same scene after a weaker one
    weak = scene({**opts, "reference_strength": 0.0}, ctx, src)
    assert not np.array_equal(weak.pixels, out.pixels)
    np.testing.assert_array_equal(scene(opts, ctx, src).pixels, out.pixels)
    # a step without a reference in that worker is not steered by the adapter: as in a worker that never had one
    plain = scene({}, ctx, src)
    assert "reference" not in plain.notes["place_in_scene"]
    alone = scene({}, StageContext(make_config(tmp_path, diffusers=str(tiny_sd_inpaint()))), src)
    np.testing.assert_array_equal(plain.pixels, alone.pixels)


def check_cli(ws, *args: str):
    return CliRunner().invoke(cli, [*args, "--config", str(ws.config_path)], catch_exceptions=False)


def reference_rule(ws, **opts: str) -> None:
    body = ", ".join(f"{k}: {v}" for k, v in {"backend": "diffusers", "model": str(tiny_sd_inpaint()),
                                               "prompt": "on linen", "reference": "scenes/marble.jpg", **opts}.items())
    ws.add_rule("05-reference.yaml", f"name: referenced\nmatch: {{folder: ref}}\nsteps:\n  - remove_background: {{}}\n"
                                     f"  - place_in_scene: {{{body}}}\noutputs: [{{channel: webshop}}]\n")


def test_a_missing_adapter_fails_check_and_models_check_naming_it(workspace, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(workspace.root / "hf-home"))
    workspace.write_config(extra="device: cpu\nmodels: {cache_dir: model-cache}\n")
    reference_rule(workspace)
    for command in (("check",), ("models", "check")):
        result = check_cli(workspace, *command)
        assert result.exit_code == 1, result.output
        assert ("IP-Adapter 'h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors' is not in the local model "
                f"cache; fetch it with: assetd models pull --config {workspace.config_path}") in result.output
        assert "rule referenced, step place_in_scene" in result.output


def test_check_passes_with_the_adapter_on_disk_and_refuses_a_missing_reference(workspace, adapter):
    workspace.write_config(extra="device: cpu\n")
    reference_rule(workspace, ip_adapter=str(adapter))
    result = check_cli(workspace, "models", "check")
    assert result.exit_code == 0, result.output
    assert f"✓ diffusers+ip_adapter model {tiny_sd_inpaint()} + {adapter} loads offline" in result.output
    result = check_cli(workspace, "models", "pull")
    assert result.exit_code == 0, result.output
    assert f"{adapter}: local file, nothing to fetch" in result.output
    reference_rule(workspace, ip_adapter=str(adapter), reference="scenes/gone.jpg")
    result = check_cli(workspace, "check")
    assert result.exit_code == 1
    assert f"place_in_scene.reference: file {workspace.root / 'scenes' / 'gone.jpg'} does not exist" in result.output


def test_an_adapter_in_the_hugging_face_cache_loads_offline(workspace, adapter, monkeypatch):
    """The default kind of name, owner/name/folder/file, found in the cache as assetd models pull leaves it."""
    import shutil

    repo = workspace.root / "model-cache" / "huggingface" / "models--acme--IP-Adapter"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(adapter.parent, repo / "snapshots" / commit / "sd15")
    monkeypatch.setenv("HF_HOME", str(workspace.root / "hf-home"))
    workspace.write_config(extra="device: cpu\nmodels: {cache_dir: model-cache}\n")
    reference_rule(workspace, ip_adapter=f"acme/IP-Adapter/sd15/{adapter.name}")
    result = check_cli(workspace, "models", "check")
    assert result.exit_code == 0, result.output
    assert f"+ acme/IP-Adapter/sd15/{adapter.name} loads offline" in result.output
    shutil.rmtree(repo / "snapshots" / commit / "sd15" / "image_encoder")
    result = check_cli(workspace, "models", "check")
    assert result.exit_code == 1
    assert f"IP-Adapter 'acme/IP-Adapter/sd15/{adapter.name}' is incomplete" in result.output
    assert "with its image_encoder/ folder beside it" in result.output


def test_a_pipeline_without_ip_adapter_support_is_named(tmp_path, adapter):
    config = make_config(tmp_path)
    spec = StepSpec("place_in_scene", "diffusers", DiffusersSceneOptions(
        prompt="x", model=str(tiny_flux_fill()), reference=reference_image(tmp_path / "r.png", (90, 90, 90)),
        ip_adapter=str(adapter)))
    rule = Rule(name="flux", path=Path("flux.yaml"), match=MatchSpec(), steps=[spec], outputs=[])
    (problem,) = models.check_models(config, [rule]).problems
    assert "is a FluxFillPipeline, which takes no IP-Adapter: reference needs an SD/SDXL inpainting pipeline" in problem
