"""Output names as a studio sees them: {folder} from the inbox's sub-folders, web-safe names, one name per image."""
from __future__ import annotations

from pipeline.oneshot import run_once
from conftest import decode, ratio_of

RULE = """\
name: shop
steps:
  - crops: {ratios: ["1:1", "4:5"], fill: pad}
outputs:
  - {channel: webshop, from: crops}
"""


def test_folder_and_web_safe_names_reach_the_channel(workspace):
    text = workspace.config_path.read_text().replace(
        'background: "#ffffff"}', 'background: "#ffffff", filename: "{folder}_{stem}_{ratio}.{ext}", '
                                  'web_safe_names: true}')
    workspace.config_path.write_text(text)
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("10-shop.yaml", RULE)
    config, rules = workspace.load()
    shots = [workspace.shot("inbox/Summer Shoot/Café #1.jpg", seed=1), workspace.shot("inbox/b.JPG", seed=2)]
    results = run_once(config, rules, shots)
    assert [r["status"] for r in results] == ["done", "done"], results
    names = sorted(p.name for p in workspace.out("webshop").glob("*.jpg"))
    assert names == ["b_1x1.jpg", "b_4x5.jpg", "summer-shoot_cafe-1_1x1.jpg", "summer-shoot_cafe-1_4x5.jpg"]
    for name in names:
        assert decode(workspace.out("webshop") / name).shape[2] == 3
        assert abs(ratio_of(workspace.out("webshop") / name) - (1.0 if "1x1" in name else 0.8)) < 0.01
