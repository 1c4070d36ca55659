"""Rules: loading, validation messages, matching in file-name order, versions."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.rules import folder_matches, load_rules, match_rule
from pipeline.stages.framing import Zones, parse_ratio

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("pattern, folder, expected", [
    ("**", "", True),
    ("**", "a/b", True),
    ("", "", True),
    ("products/**", "products", True),
    ("products/**", "products/shoes/red", True),
    ("products/**", "product", False),
    ("products/**", "other/products", False),
    ("products/*", "products/shoes", True),
    ("products/*", "products/shoes/red", False),
    ("*/raw", "client1/raw", True),
    ("**/raw", "a/b/raw", True),
    ("**/raw", "raw", True),
    ("**/raw", "a/raw/x", False),
    ("shoot-2026-??", "shoot-2026-11", True),
])
def test_folder_globs(pattern, folder, expected):
    assert folder_matches(pattern, folder) is expected


def test_example_rules_load_with_the_example_config():
    config = load_config(ROOT / "config.example.yaml")
    rules = load_rules(config)
    assert [r.name for r in rules] == ["products", "cutouts"]
    products = rules[0]
    assert [s.step for s in products.steps] == ["remove_background", "place_in_scene", "crops", "upscale"]
    assert [s.backend for s in products.steps] == ["studio", "composite", "geometry", "lanczos"]


def test_first_match_wins_and_why_not_explains(workspace):
    config, rules = workspace.load()
    assert match_rule(rules, PurePosixPath("products/shoes/a.jpg")).name == "products"
    assert match_rule(rules, PurePosixPath("misc/a.jpg")).name == "cutouts"
    assert match_rule(rules, PurePosixPath("misc/a.gif")) is None
    products = rules[0]
    assert "folder 'misc' does not match 'products/**'" in products.why_not(PurePosixPath("misc/a.jpg"))
    assert "extension .gif" in products.why_not(PurePosixPath("products/a.gif"))


def _problems(workspace, text: str) -> list[str]:
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("bad.yaml", text)
    config = load_config(workspace.config_path)
    with pytest.raises(ConfigError) as info:
        load_rules(config)
    return info.value.problems


@pytest.mark.parametrize("body, expected", [
    ("steps: [{cartoonify: {}}]\noutputs: [{channel: cutouts}]", "unknown step 'cartoonify'"),
    ("steps: [{remove_background: {backend: magic}}]\noutputs: [{channel: cutouts}]",
     "unknown backend 'magic' for remove_background (known:"),
    ("steps: [{crops: {}}, {remove_background: {}}]\noutputs: [{channel: cutouts}]", "must run in the order"),
    ("steps: [{remove_background: {}}]\noutputs: [{channel: tiktok}]", "'tiktok' is not a configured channel"),
    ("steps: [{remove_background: {}}]\noutputs: [{channel: cutouts, from: crops}]", "'crops' is not a step"),
    ("steps: [{crops: {ratios: ['1:1']}}]\noutputs: [{channel: webshop, from: crops, ratios: ['4:5']}]",
     "'4:5' is not one of the crops step's ratios"),
    ("steps: [{remove_background: {trim: maybe}}]\noutputs: [{channel: cutouts}]",
     "steps[0].remove_background.trim: expected true or false"),
    ("steps: [{remove_background: {}}]\noutputs: [{channel: cutouts}]\nmatch: {folders: x}", "match.folders: unknown key"),
    ("steps: []\noutputs: [{channel: cutouts}]", "steps: expected a list of steps"),
    ("steps: [{remove_background: {}}]", "outputs: expected a list"),
    ("steps: [{upscale: {}}]\noutputs: [{channel: cutouts}]",
     "steps[0].upscale: no long_edge or factor, and none of channels cutouts sets long_edge"),
    ("steps: [{crops: {}}, {upscale: {}}]\noutputs: [{channel: cutouts, from: crops}]",
     "steps[1].upscale: no long_edge or factor, and no output of this rule is from upscale"),
    ("steps: [remove_background]\noutputs: [{channel: cutouts}, {channel: cutouts}]",
     "outputs[0] and outputs[1] both send remove_background to channel cutouts"),
    ("steps: [remove_background]\noutputs: [{channel: cutouts, source: input}]",
     "outputs[0].source: unknown key (known keys: channel, from, ratios)"),
    ("steps: [crops]\noutputs: [{channel: webshop, ratios: [1:1]}]",
     "outputs[0].ratios: expected a list of ratios like ['1:1'], got [61]"),
    ("steps: [remove_background]\noutputs: [{channel: cutouts}]\nstep: [crops]",
     "step: unknown key (known keys: name,"),
    ("steps: [remove_background]\noutputs: [{channel: cutouts}]\nmatch: {extensions: [jpg, .GIF]}",
     "match.extensions: gif: GIF files are not accepted (only JPEG, PNG, TIFF, WebP, HEIF/HEIC, AVIF and camera RAW); "
     "every such file would fail its job: remove gif from the list"),
])
def test_rule_problems_name_the_file_and_key(workspace, body, expected):
    found = _problems(workspace, "name: bad\n" + body + "\n")
    assert any(expected in p for p in found), found
    assert all("bad.yaml" in p for p in found)


def test_duplicate_rule_names_are_rejected(workspace):
    workspace.add_rule("30-again.yaml", "name: cutouts\nsteps: [remove_background]\noutputs: [{channel: cutouts}]\n")
    config = load_config(workspace.config_path)
    with pytest.raises(ConfigError, match="already used"):
        load_rules(config)


def test_version_changes_when_the_rule_or_its_channel_changes(workspace):
    config, rules = workspace.load()
    before = {r.name: r.version for r in rules}
    assert {r.name: r.version for r in load_rules(config)} == before
    workspace.add_rule("20-cutouts.yaml", "name: cutouts\nsteps: [{remove_background: {trim: true}}]\n"
                                          "outputs: [{channel: cutouts}]\n")
    after = {r.name: r.version for r in load_rules(config)}
    assert after["cutouts"] != before["cutouts"] and after["products"] == before["products"]
    config.channels["webshop"].quality = 70
    assert load_rules(config)[0].version != before["products"]


def test_options_left_at_their_defaults_do_not_change_the_version(workspace):
    """An upgrade that adds an option (at its default) must not make every rule 'changed'."""
    config, rules = workspace.load()
    before = {r.name: r.version for r in rules}
    workspace.add_rule("20-cutouts.yaml", "name: cutouts\nsteps: [{remove_background: {trim: false}}]\n"
                                          "outputs: [{channel: cutouts}]\n")
    config.channels["cutouts"].png_compression = 6  # spelled out, same as the default
    assert {r.name: r.version for r in load_rules(config)} == before
    config.channels["cutouts"].png_compression = 5
    assert load_rules(config)[1].version != before["cutouts"]


def test_parse_ratio():
    """Rules check ratios with the crops step's parser (framing.parse_ratio), which refuses instead of
    returning None."""
    assert parse_ratio("16:9") == (16, 9)
    for text in ("0:9", "wide"):
        with pytest.raises(ValueError):
            parse_ratio(text)


def _with_channel(workspace, channel: str, settings: str) -> None:
    """Give one of the workspace's channels extra settings (``filename: ...``)."""
    lines = workspace.config_path.read_text().splitlines()
    lines = [line.replace("}", ", " + settings + "}", 1) if line.strip().startswith(channel + ":") else line
             for line in lines]
    workspace.config_path.write_text("\n".join(lines) + "\n")


def test_a_filename_that_gives_two_crops_one_name_is_refused(workspace):
    _with_channel(workspace, "instagram", 'filename: "{stem}.{ext}"')
    problems = _problems(workspace, "name: bad\nsteps: [{crops: {ratios: ['1:1', '4:5', '9:16']}}]\n"
                                    "outputs: [{channel: instagram, from: crops, ratios: ['4:5', '9:16']}]\n")
    assert problems == [f"{workspace.root / 'rules' / 'bad.yaml'}: outputs: crops 4:5 and crops 9:16 would both be "
                        "named 'shot.jpg' in channel instagram (filename '{stem}.{ext}'): put {ratio} in its filename"]


def test_a_filename_without_ratio_or_step_for_two_steps_is_refused(workspace):
    _with_channel(workspace, "cutouts", 'filename: "{stem}.{ext}"')
    problems = _problems(workspace, "name: bad\nsteps: [remove_background, {crops: {ratios: ['1:1']}}]\n"
                                    "outputs: [{channel: cutouts, from: remove_background}, {channel: cutouts}]\n")
    assert len(problems) == 1 and "remove_background and crops 1:1 would both be named 'shot.png'" in problems[0]
    assert "put {ratio} or {step} in its filename" in problems[0]


def test_a_filename_that_is_empty_for_an_output_without_ratio_is_refused(workspace):
    _with_channel(workspace, "cutouts", 'filename: "{ratio}.{ext}"')
    problems = _problems(workspace, "name: bad\nsteps: [remove_background]\noutputs: [{channel: cutouts}]\n")
    assert len(problems) == 1
    assert ("outputs[0]: channel cutouts: filename template '{ratio}.{ext}' gave an unusable name '.png' "
            "(for remove_background of an input shot.jpg)") in problems[0]


def test_one_image_per_channel_may_drop_the_ratio(workspace):
    _with_channel(workspace, "webshop", 'filename: "{stem}.{ext}"')
    _with_channel(workspace, "cutouts", 'filename: "{stem}.{ext}"')
    config, rules = workspace.load()
    assert [r.name for r in rules] == ["products", "cutouts"]


def test_upscale_without_size_aims_each_ratio_at_the_largest_long_edge_of_its_channels(workspace):
    workspace.add_rule("10-products.yaml", "name: products\nsteps: [{crops: {ratios: ['1:1', '4:5']}}, upscale]\n"
                                           "outputs: [{channel: webshop, from: upscale, ratios: ['1:1']},\n"
                                           "          {channel: instagram, from: upscale, ratios: ['4:5']},\n"
                                           "          {channel: banners, from: crops}]\n")
    config, rules = workspace.load()
    upscale = rules[0].step("upscale")
    # webshop 600 at 1:1, instagram 500 at 4:5; banners (640) gets crops, not upscale
    assert upscale.options.targets == {"1:1": 600, "4:5": 500} and upscale.options.long_edge is None
    before = rules[0].version
    config.channels["webshop"].long_edge = 700
    again = load_rules(config)[0]
    assert again.step("upscale").options.targets == {"1:1": 700, "4:5": 500} and again.version != before


def test_duplicate_extensions_are_listed_once(workspace):
    workspace.add_rule("20-cutouts.yaml", "name: cutouts\nmatch: {extensions: [jpg, JPG, .jpg, png]}\n"
                                          "steps: [remove_background]\noutputs: [{channel: cutouts}]\n")
    cutouts = workspace.load()[1][1]
    assert cutouts.match.extensions == ["jpg", "png"]
    assert cutouts.why_not(PurePosixPath("a.gif")) == "extension .gif is not one of jpg, png"


def test_two_channels_writing_one_folder_may_not_clash(workspace):
    text = workspace.config_path.read_text().replace("out/instagram", "out/webshop")
    workspace.config_path.write_text(text)
    problems = _problems(workspace, "name: bad\nsteps: [{crops: {ratios: ['1:1', '4:5']}}]\n"
                                    "outputs: [{channel: webshop, ratios: ['1:1']}, {channel: instagram}]\n")
    assert problems == [f"{workspace.root / 'rules' / 'bad.yaml'}: outputs: crops 1:1 and crops 1:1 would both be "
                        f"named 'shot_1x1.jpg' in folder {workspace.out('webshop')} (channels webshop and instagram): "
                        "put {channel} in their filenames"]


def test_steps_may_run_in_another_order_where_their_needs_hold(workspace):
    """A step goes wherever what it needs holds (stages.base.STEPS): upscale before crops is fine, its
    outputs have no ratios; a scene after crops (it needs the whole image) is refused."""
    workspace.add_rule("30-big.yaml", "name: big\nmatch: {folder: big}\nsteps: [{upscale: {factor: 2}}, crops]\n"
                                      "outputs: [{channel: webshop, ratios: ['1:1']},\n"
                                      "          {channel: cutouts, from: upscale}]\n")
    config, rules = workspace.load()
    assert [s.step for s in rules[2].steps] == ["upscale", "crops"]
    assert [o.source for o in rules[2].outputs] == ["crops", "upscale"]
    problems = _problems(workspace, "name: bad\nsteps: [{upscale: {factor: 2}}, crops]\n"
                                    "outputs: [{channel: webshop, from: upscale, ratios: ['1:1']}]\n")
    assert any("outputs[0].ratios: only outputs from crops (or a later step) have ratios" in p for p in problems)
    problems = _problems(workspace, "name: bad\nsteps: [crops, {place_in_scene: {colour: '#ffffff'}}]\n"
                                    "outputs: [{channel: cutouts}]\n")
    assert problems == [f"{workspace.root / 'rules' / 'bad.yaml'}: steps[1].place_in_scene: needs the whole image "
                        "(not yet cropped to ratios), which crops takes away: must run in the order "
                        "place_in_scene → crops, got crops → place_in_scene"]


def test_a_resolved_default_is_part_of_the_version(workspace):
    """Stage.resolve runs before the version is taken: upscale left to aim at its channels' long_edge (600)
    versions like the same rule that spells 600 out, and unlike one asking for 700."""
    body = ("name: products\nsteps: [{{crops: {{ratios: ['1:1']}}}}, {upscale}]\n"
            "outputs: [{{channel: webshop, from: upscale}}]\n")
    versions = []
    for upscale in ("upscale", "{upscale: {long_edge: 600}}", "{upscale: {long_edge: 700}}"):
        workspace.add_rule("10-products.yaml", body.format(upscale=upscale))
        versions.append(workspace.load()[1][0].version)
    assert versions[0] == versions[1] != versions[2]


def test_a_rule_with_upscale_before_crops_runs_in_its_order(workspace):
    """A newly valid order runs as written: the crops are cut from the enlarged image."""
    import json

    from click.testing import CliRunner
    from PIL import Image

    from pipeline.cli import cli

    workspace.add_rule("05-big.yaml", "name: big\nmatch: {folder: big}\n"
                                      "steps: [{upscale: {factor: 2}}, {crops: {ratios: ['1:1'], fill: pad}}]\n"
                                      "outputs: [{channel: cutouts}, {channel: banners, from: upscale}]\n")
    shot = workspace.shot("inbox/big/a.jpg", "grey", seed=4, subject="box")
    result = CliRunner().invoke(cli, ["process", str(shot), "--config", str(workspace.config_path), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with Image.open(shot) as im:
        size = im.size
    (job,) = json.loads(result.output)["results"]
    assert job["rule"] == "big" and job["status"] == "done", job
    outputs = job["outputs"]
    crop = next(o for o in outputs if o["step"] == "crops")
    big = next(o for o in outputs if o["step"] == "upscale")
    assert crop["ratio"] == "1:1" and crop["width"] == crop["height"]
    assert big["ratio"] is None and max(big["width"], big["height"]) == min(640, 2 * max(size))


def test_a_path_option_versions_as_written(workspace):
    """Path options arrive resolved against the config's folder; the version sees them as a rule writes them,
    so resolving them when rules load changed no version."""
    from dataclasses import dataclass

    from pipeline.rules import OutputSpec, Rule, StepSpec, rule_version
    from pipeline.schema import build, opt

    @dataclass
    class Options:
        scene: Path | None = opt(None)
        folder: Path = opt(Path("scenes"))

    config, _ = workspace.load()

    def version(options: dict) -> str:
        built = build(Options, options, "o", [], base=config.base_dir)
        rule = Rule(name="r", path=Path("r.yaml"), match=None, steps=[StepSpec("place_in_scene", "composite", built)],
                    outputs=[OutputSpec(channel="cutouts", source="place_in_scene")])
        return rule_version(rule, config)

    assert version({}) == version({"folder": "scenes"}) == version({"folder": str(config.base_dir / "scenes")})
    written = version({"scene": "scenes/a.jpg"})
    assert written == version({"scene": str(config.base_dir / "scenes" / "a.jpg")}) != version({})
    assert written != version({"scene": "scenes/b.jpg"})


def test_a_new_step_is_one_declaration_and_one_backend(workspace):
    """What a new step's module does (define_step, one @register'd backend) is all a rule needs to place it,
    checked against what it needs, and for the chain to run it."""
    import dataclasses

    import numpy as np

    from pipeline.chain import Chain
    from pipeline.stages.base import STEPS, Asset, Stage, StageContext, define_step, registered

    @dataclasses.dataclass
    class LabelOptions:
        text: str = "sale"

    class Label(Stage):
        step, backend, Options = "label", "corner", LabelOptions

        def run(self, asset: Asset) -> list[Asset]:
            out = asset.derive(asset.pixels.copy(), asset.matte)
            out.notes["label"] = {"text": self.options.text, "ratio": asset.ratio}
            return [out]

    define_step("label", "corner", needs=("ratio",), doc="writes a label on each crop")
    try:
        with registered(Label):
            workspace.add_rule("30-label.yaml", "name: label\nmatch: {folder: label}\n"
                                                "steps: [{crops: {ratios: ['1:1', '16:9']}}, {label: {text: new}}]\n"
                                                "outputs: [{channel: webshop}]\n")
            config, rules = workspace.load()
            rule = next(r for r in rules if r.name == "label")
            assert [(s.step, s.backend) for s in rule.steps] == [("crops", "geometry"), ("label", "corner")]
            assert rule.outputs[0].source == "label"
            results = Chain(rule, StageContext(config)).run(Asset(np.full((40, 60, 3), 200, np.uint8)))
            assert [a.notes["label"] for a in results["label"]] == [{"text": "new", "ratio": "1:1"},
                                                                    {"text": "new", "ratio": "16:9"}]
            problems = _problems(workspace, "name: bad\nsteps: [label, crops]\noutputs: [{channel: webshop}]\n")
            assert any("steps[0].label: needs one image per crop ratio" in p for p in problems)
    finally:
        STEPS.pop("label", None)


FRAMED = ("name: products\nsteps: [{crops: {ratios: ['1:1', '4:5', '9:16', '16:9']}}]\n"
          "outputs: [{channel: webshop, from: crops, ratios: ['1:1']},\n"
          "          {channel: instagram, from: crops, ratios: ['4:5', '9:16']},\n"
          "          {channel: banners, from: crops, ratios: ['16:9']},\n"
          "          {channel: cutouts, from: crops, ratios: ['9:16']}]\n")


def test_channel_safe_zones_are_folded_into_crops_per_ratio(workspace):
    workspace.add_rule("10-products.yaml", FRAMED)
    before = workspace.load()[1][0]
    assert before.step("crops").options.safe_zones == {}
    _with_channel(workspace, "instagram", "safe_zone: {'9:16': {top: 0.14, bottom: 0.2}}")
    _with_channel(workspace, "cutouts", "safe_zone: {top: 0.1, bottom: 0.25, left: 0.05}")
    _with_channel(workspace, "banners", "safe_zone: {right: 0.1}")
    config, rules = workspace.load()
    zones = rules[0].step("crops").options.safe_zones
    # 9:16 goes to instagram and cutouts: the larger zone on each side; 4:5 to instagram, whose zone is only 9:16's
    assert zones == {"9:16": Zones(left=0.05, top=0.14, bottom=0.25), "16:9": Zones(right=0.1)}
    assert rules[0].version != before.version, "the channels' zones are part of the rule's version"


def test_a_channel_copy_space_frames_the_ratios_it_receives(workspace):
    from pipeline.config import CopySpace

    workspace.add_rule("10-products.yaml", FRAMED)
    before = workspace.load()[1][0]
    _with_channel(workspace, "banners", "copy_space: {side: right, fraction: 0.35}")
    rule = workspace.load()[1][0]
    crops = rule.step("crops").options
    assert crops.copy_space_for("16:9") == CopySpace("right", 0.35)  # banners get 16:9
    assert [crops.copy_space_for(r) for r in ("1:1", "4:5", "9:16")] == [None, None, None]
    assert rule.version != before.version, "the channel's copy space is part of the rule's version"
    # two channels taking one ratio must agree: one frame per ratio
    _with_channel(workspace, "cutouts", "copy_space: {'9:16': {side: left, fraction: 0.3}}")
    _with_channel(workspace, "instagram", "copy_space: {'9:16': {side: top, fraction: 0.2}}")
    with pytest.raises(ConfigError) as info:
        workspace.load()
    (problem,) = [p for p in info.value.problems if "copy_space" in p]
    assert problem.endswith("steps[0].crops: ratio 9:16: channel instagram asks for copy_space top 0.2, channel "
                            "cutouts asks for copy_space left 0.3: one frame per ratio cannot give both; send them "
                            "different ratios or agree")


def test_safe_zones_of_channels_that_get_no_crops_are_left_out(workspace):
    _with_channel(workspace, "cutouts", "safe_zone: {top: 0.3}")
    config, rules = workspace.load()
    products = next(r for r in rules if r.name == "products")
    assert products.step("crops").options.safe_zones == {}  # cutouts gets remove_background, before crops


def test_safe_zones_with_copy_space_that_leave_no_room_are_refused(workspace):
    _with_channel(workspace, "instagram", "safe_zone: {'9:16': {top: 0.14, bottom: 0.2}}")
    problems = _problems(workspace, FRAMED.replace(
        "ratios: ['1:1', '4:5', '9:16', '16:9']",
        "ratios: ['1:1', '4:5', '9:16', '16:9'], fill_range: [0.7, 0.9], "
        "copy_space: {'9:16': {side: top, fraction: 0.35}, '16:9': {side: right, fraction: 0.35}}"))
    assert problems == [f"{workspace.root / 'rules' / 'bad.yaml'}: steps[0].crops: ratio 9:16: the safe_zone of channel "
                        "instagram (top 0.14, bottom 0.2) and copy_space top 0.35 leave 0.45 of the height to the "
                        "subject, which needs 0.455 at fill 0.7 (fill_range's loosest); lower the zones, the copy "
                        "space or fill_range"]
    # the story zones alone leave 0.66 of the height: enough at the default fill_range (0.6)
    (workspace.root / "rules" / "bad.yaml").unlink()
    workspace.add_rule("10-products.yaml", FRAMED)
    assert workspace.load()[1][0].step("crops").options.safe_zones == {"9:16": Zones(top=0.14, bottom=0.2)}


def test_zones_need_framing_by_fill(workspace):
    _with_channel(workspace, "instagram", "safe_zone: {'9:16': {top: 0.14, bottom: 0.2}}")
    problems = _problems(workspace, FRAMED.replace("ratios: ['1:1', '4:5', '9:16', '16:9']",
                                                   "ratios: ['1:1', '4:5', '9:16', '16:9'], subject_fill: null"))
    assert problems == [f"{workspace.root / 'rules' / 'bad.yaml'}: steps[0].crops: ratio 9:16: subject_fill null (the "
                        "largest frame) cannot keep the safe_zone of channel instagram free; set a subject_fill for "
                        "9:16"]


@pytest.mark.parametrize("crops, problem", [
    ("{subject_fill: {'9:16': 0.7, '3:2': 0.8}}", "steps[0].crops.subject_fill: 3:2 is not one of the ratios"),
    ("{subject_fill: 0.95}", "steps[0].crops.subject_fill: 0.95 for 1:1 lies outside fill_range [0.6, 0.9]"),
    ("{copy_space: {side: middle}}", "copy_space: expected {side: left, right, top or bottom, fraction: 0 to 0.9}"),
    ("{copy_space: {'2:1': {side: left}}}", "steps[0].crops.copy_space: 2:1 is not one of the ratios"),
    ("{fill_range: [0.9]}", "expected [loosest, tightest]"),
])
def test_framing_options_are_checked(workspace, crops, problem):
    problems = _problems(workspace, f"name: bad\nsteps: [{{crops: {crops}}}]\noutputs: [{{channel: webshop}}]\n")
    assert any(problem in p for p in problems), problems
