"""Whose file a name is, as `assetd process` leaves it: one file done again replaces its own outputs; the same
shot at another path (another folder, another rule) never replaces them, even with the same content: its
output takes the clash name, and the job says so in a review reason naming both."""
from __future__ import annotations

import hashlib
import json

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.store import Store

SHOP = """\
name: shop
match: {folder: "shop/**"}
steps:
  - crops: {ratios: ["1:1"], fill: pad}
outputs:
  - {channel: webshop, from: crops}
"""

# Another rule writing the same names into the same channel, with other pixels (the subject framed tighter).
TIGHT = """\
name: tight
match: {folder: "tight/**"}
steps:
  - crops: {ratios: ["1:1"], fill: pad, subject_fill: 0.9}
outputs:
  - {channel: webshop, from: crops}
"""


def process(ws, *paths, force=False):
    args = ["process", *map(str, paths), "--config", str(ws.config_path), "--json"] + (["--force"] if force else [])
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def studio(workspace):
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("10-shop.yaml", SHOP)
    workspace.add_rule("20-tight.yaml", TIGHT)
    return workspace


def test_another_rules_output_of_the_same_shot_is_never_replaced(workspace, caplog):
    ws = studio(workspace)
    first = ws.shot("inbox/shop/boat.jpg", seed=3, subject="box")
    (ws.inbox / "tight").mkdir()
    second = ws.inbox / "tight" / "boat.jpg"
    second.write_bytes(first.read_bytes())  # the very same shot, dropped for the other rule

    (one,) = process(ws, first)
    assert one["status"] == "done" and one["rule"] == "shop" and one["review"] == []
    webshop = ws.out("webshop")
    kept = webshop / "boat_1x1.jpg"
    assert [o["path"] for o in one["outputs"]] == [str(kept)]
    shop_bytes = kept.read_bytes()

    (two,) = process(ws, second)
    assert two["status"] == "done" and two["rule"] == "tight"
    short = hashlib.sha256(first.read_bytes()).hexdigest()[:8]
    moved = webshop / f"boat_1x1-{short}.jpg"
    assert [o["path"] for o in two["outputs"]] == [str(moved)]
    assert sorted(p.name for p in webshop.iterdir()) == sorted(["boat_1x1.jpg", moved.name])
    assert kept.read_bytes() == shop_bytes  # the shop rule's file, untouched
    assert moved.read_bytes() != shop_bytes  # the tight rule's own pixels, beside it
    assert two["review"] == [f"outputs: channel webshop: boat_1x1.jpg is job 1's output (shop/boat.jpg, rule shop), "
                             f"left as it is; this job's is {moved.name}"]
    assert any(r.levelname == "WARNING" and "job 2 needs review" in r.message and str(second) in r.message
               and two["review"][0] in r.message for r in caplog.records)  # the log says so too

    store = Store(ws.root / "state" / "assetd.sqlite3")
    try:
        (shop_out,) = store.outputs(1)
        assert shop_out.path == str(kept) and shop_out.replaced_by is None and shop_out.sha256 == digest(kept)
        assert store.get(2).review == two["review"]  # on the job page and in `assetd jobs` too
    finally:
        store.close()
    manifest = json.loads(ws.manifest("shop", "boat").read_text())
    assert [(o["path"], o["sha256"]) for o in manifest["outputs"]] == [(str(kept), digest(kept))]  # still true
    assert json.loads(ws.manifest("tight", "boat").read_text())["review"] == two["review"]

    # each file done again replaces its own output, under its own name, and says nothing
    (again,) = process(ws, second, force=True)
    assert [o["path"] for o in again["outputs"]] == [str(moved)]
    (shop_again,) = process(ws, first, force=True)
    assert [o["path"] for o in shop_again["outputs"]] == [str(kept)] and shop_again["review"] == []
    assert sorted(p.name for p in webshop.iterdir()) == sorted(["boat_1x1.jpg", moved.name])
    assert kept.read_bytes() == shop_bytes


def test_the_same_shot_in_another_folder_of_one_rule_gets_its_own_name(workspace):
    """Same content, same rule, another path (a copy of the shot in a sub-folder): its outputs are copied from
    the first job's, under a name of its own, and the first job's file and records stay as they were."""
    ws = studio(workspace)
    first = ws.shot("inbox/shop/boat.jpg", seed=3, subject="box")
    (ws.inbox / "shop" / "more").mkdir()
    copy = ws.inbox / "shop" / "more" / "boat.jpg"
    copy.write_bytes(first.read_bytes())

    (one,) = process(ws, first)
    (two,) = process(ws, copy)
    webshop = ws.out("webshop")
    short = hashlib.sha256(first.read_bytes()).hexdigest()[:8]
    assert [o["path"] for o in one["outputs"]] == [str(webshop / "boat_1x1.jpg")]
    assert [o["path"] for o in two["outputs"]] == [str(webshop / f"boat_1x1-{short}.jpg")]
    assert (webshop / "boat_1x1.jpg").read_bytes() == (webshop / f"boat_1x1-{short}.jpg").read_bytes()
    assert two["review"] == [f"outputs: channel webshop: boat_1x1.jpg is job 1's output (shop/boat.jpg, rule shop), "
                             f"left as it is; this job's is boat_1x1-{short}.jpg"]
    store = Store(ws.root / "state" / "assetd.sqlite3")
    try:
        assert store.get(2).copied_from == 1
        assert [o.replaced_by for o in store.outputs(1)] == [None]
    finally:
        store.close()
    assert ws.manifest("shop", "boat").exists() and ws.manifest("shop", f"boat-{short}").exists()


def test_a_file_assetd_did_not_write_keeps_its_name_and_the_job_says_so(workspace):
    ws = studio(workspace)
    shot = ws.shot("inbox/shop/boat.jpg", seed=3, subject="box")
    webshop = ws.out("webshop")
    webshop.mkdir(parents=True)
    (webshop / "boat_1x1.jpg").write_bytes(b"the retoucher's own version")

    (done,) = process(ws, shot)
    short = hashlib.sha256(shot.read_bytes()).hexdigest()[:8]
    assert (webshop / "boat_1x1.jpg").read_bytes() == b"the retoucher's own version"
    assert [o["path"] for o in done["outputs"]] == [str(webshop / f"boat_1x1-{short}.jpg")]
    assert done["review"] == ["outputs: channel webshop: boat_1x1.jpg is a file assetd did not write, left as it "
                              f"is; this job's is boat_1x1-{short}.jpg"]
