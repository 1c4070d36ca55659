"""The job page (``/jobs/{id}``): a job's input and outputs side by side, a before/after slider, the subject
check overlay, every ratio as a contact sheet with the channel's safe zones and copy space drawn, the manifest
(steps and timings, scale factors, fallbacks, matte uncertainty, review reasons), a failed job's error and its
class, and each output's approval state. Images come from ``files`` (by id); this module only reads the store,
the config and the job's manifest."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import previews
from ..config import ChannelConfig, Config
from ..store import Job, JobStatus
from ..text import printable
from .failures import failure_class
from .templating import render

APPROVAL = {None: "published", "pending": "awaiting approval", "approved": "approved", "rejected": "rejected"}


def local(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _for_ratio(value: Any, ratio: str | None) -> Any:
    """A channel setting given once or per ratio (``safe_zone``, ``copy_space``), for one output's ratio."""
    if isinstance(value, dict):
        return value.get(ratio or "", value.get("default"))
    return value


def zones(channel: ChannelConfig | None, ratio: str | None) -> dict[str, Any]:
    """The bands to draw over an output, as percentages: the channel's safe zone and its copy space."""
    if channel is None:
        return {}
    drawn: dict[str, Any] = {}
    zone = _for_ratio(channel.safe_zone, ratio)
    if zone is not None and any((zone.top, zone.bottom, zone.left, zone.right)):
        drawn["safe"] = {side: round(getattr(zone, side) * 100, 2) for side in ("top", "bottom", "left", "right")
                         if getattr(zone, side)}
    space = _for_ratio(channel.copy_space, ratio)
    if space is not None and space.fraction:
        drawn["copy"] = {"side": space.side, "percent": round(space.fraction * 100, 2)}
    return drawn


def manifest_of(state: Any, job: Job) -> tuple[dict[str, Any] | None, str | None]:
    """The job's central manifest (its first), or None and why it cannot be read."""
    records = state.store.manifests(job.id)
    if not records:
        return None, None
    try:
        return json.loads(Path(records[0].path).read_text(encoding="utf-8")), None
    except (OSError, ValueError) as exc:
        return None, f"manifest {printable(records[0].path)} cannot be read ({type(exc).__name__})"


def highlights(steps: dict[str, Any], order: list[str] | None = None) -> list[tuple[str, str]]:
    """What a retoucher looks for in an output's step notes, one (step, text) for every step the output went
    through, in the chain's order (``order``: the steps as the job ran them; else the steps' usual order): what
    each did and its key figures (pixels removed, the region recoloured, backends, scale factors, fallbacks, the
    matte's uncertainty, framing). A step the page has no words for still gets a line of its figures, so nothing
    the output went through is only in the raw notes."""
    from ..stages.base import steps as known_steps

    ranked = list(dict.fromkeys([*(order or []), *known_steps()]))
    names = sorted((k for k in steps if k != "input" and isinstance(steps[k], dict)),
                   key=lambda k: (ranked.index(k) if k in ranked else len(ranked), k))
    lines: list[tuple[str, str]] = []
    for name in names:
        text = _SAID.get(name, _figures)(steps[name])
        if text:
            lines.append((name, text))
    return lines


def _count(value: Any) -> str:
    """A pixel count as a retoucher reads it (6,155); "?" for anything else."""
    return f"{value:,}" if isinstance(value, int) else _number(value)


def _retouch(rt: dict[str, Any]) -> str:
    parts = [f"removed {_count(rt.get('removed_pixels', 0))} px"
             + (f" in {rt['regions']} region{'s' * (rt['regions'] != 1)}" if rt.get("regions") else "")
             + (f" (backend {rt['backend']})" if rt.get("backend") else "")]
    painted = rt.get("remove_mask")
    if isinstance(painted, dict):
        parts.append(f"painted in {painted.get('file', 'its remove mask')}: {_count(painted.get('pixels'))} px")
    elif painted:
        parts.append(f"remove mask: {painted}")
    spots = rt.get("backdrop_spots")
    if isinstance(spots, dict):
        parts.append(f"backdrop spots: {spots['skipped']}" if spots.get("skipped") else
                     f"{_count(spots.get('spots'))} backdrop spots ({_count(spots.get('pixels'))} px)")
    if isinstance(rt.get("protected"), dict):
        parts.append(f"protected by {rt['protected'].get('file')}: {_count(rt['protected'].get('pixels'))} px")
    if rt.get("subject_pixels"):
        parts.append(f"the painted removal covers {_count(rt['subject_pixels'])} px of the subject")
    return ", ".join(parts)


def _recolor(rc: dict[str, Any]) -> str:
    if rc.get("untouched"):
        return f"passed on untouched as {rc.get('variant', 'the original')}"
    to = rc.get("colour") or ", ".join(f"{k} {_number(rc[k])}" for k in ("hue_shift", "chroma_scale") if k in rc)
    parts = [f"{rc['variant']}: " if rc.get("variant") else ""]
    parts[0] += f"{rc.get('mean', '?')} → {rc.get('result', to or '?')}" + (f" (swatch {to})" if rc.get("colour") else
                                                                            (f" ({to})" if to else ""))
    region = f"region {rc.get('region', '?')}, {_count(rc.get('pixels'))} px"
    if isinstance(rc.get("share"), (int, float)):
        region += f" ({rc['share']:.0%} of the subject)"
    parts.append(region)
    if isinstance(rc.get("delta_e"), (int, float)):
        parts.append(f"ΔE2000 {rc['delta_e']:g} from the target")
    if isinstance(rc.get("max_lightness_change"), (int, float)):
        parts.append(f"L* moved ≤ {rc['max_lightness_change']:g}")
    return ", ".join(parts)


def _remove_background(rb: dict[str, Any]) -> str:
    parts = [f"backend {rb.get('backend', '?')}"]
    if rb.get("prior"):
        parts.append(f"prior {rb['prior']}")
    if rb.get("uncertain_outline") is not None:
        parts.append(f"matte uncertain on {rb['uncertain_outline']:.1%} of the outline")
    if rb.get("shadow"):
        parts.append(f"shadow {rb['shadow']}")
    return ", ".join(parts)


def _place_in_scene(ps: dict[str, Any]) -> str:
    if ps.get("backend") in ("diffusers", "instruct"):  # a generated scene: the seed gives it again
        text = f"generated by {ps.get('model', '?')}, seed {ps.get('seed', '?')}"
    elif ps.get("scene"):
        text = f"scene {ps['scene']}, scene scaled {_number(ps.get('scene_scale', 1))}×"
        if ps.get("scene_enlarged"):
            text += " (enlarged past max_scene_enlarge)"
    elif ps.get("colour") or ps.get("gradient"):
        text = f"on {ps.get('colour') or ' → '.join(map(str, ps['gradient']))}"
    else:
        text = f"scene {ps.get('scene', '?')}"
    if isinstance(ps.get("match_light"), dict):
        text += f", match_light {_number(ps['match_light'].get('strength'))}"
    return text + (f", variant {ps['variant']}" if ps.get("variant") else "")


def _tone_match(tm: dict[str, Any]) -> str:
    if tm.get("gains"):
        return (f"gains {', '.join(f'{g:g}' for g in tm['gains'])}, exposure {tm.get('exposure_stops', 0):+g} stops, "
                f"largest ΔE {tm.get('delta_e_max', 0):g} (max_delta_e {_number(tm.get('max_delta_e'))})")
    return str(tm.get("skipped", "no change"))


def _crops(cr: dict[str, Any]) -> str:
    parts = [f"fill {cr.get('fill', '?')}", f"framing {cr.get('framing', '?')}"]
    if cr.get("subject_fill") is not None:
        parts.append(f"subject fills {cr['subject_fill']:.0%}")
    if cr.get("fallback"):
        fb = cr["fallback"]
        parts.append(f"fallback {fb.get('to')}: {fb.get('why')}" if isinstance(fb, dict) else f"fallback {fb}")
    if cr.get("cut_subject"):
        parts.append("the subject is cut by the frame")
    if cr.get("scene_enlarged"):
        parts.append(f"scene enlarged {_number(cr['scene_enlarged'])}×")
    return ", ".join(parts)


def _upscale(up: dict[str, Any]) -> str:
    return (f"{up.get('backend', '?')} ×{up.get('factor', 1):.3g}"
            + (f" ({up['from'][0]}×{up['from'][1]} → {up['to'][0]}×{up['to'][1]})"
               if up.get("from") and up.get("to") else ""))


def _figures(notes: dict[str, Any]) -> str:
    """A step the page has no words for: its plain figures (numbers and words), as the manifest has them."""
    said = [f"{k} {_number(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
            for k, v in notes.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    return ", ".join(said[:6]) or "ran"


_SAID = {"retouch": _retouch, "remove_background": _remove_background, "recolor": _recolor,
         "place_in_scene": _place_in_scene, "tone_match": _tone_match, "crops": _crops, "upscale": _upscale}


def _number(value: Any) -> str:
    """A number from a manifest as written (``4``, ``2.5``); "?" for anything else (a manifest edited by hand)."""
    return f"{value:g}" if isinstance(value, (int, float)) else "?"


def on_purpose(steps: dict[str, Any]) -> str | None:
    """Why the subject check shows the subject differing from the input on purpose (a step that changes it, as
    its notes say), or None: then it should not differ."""
    why = []
    rc = steps.get("recolor") or {}
    if rc and not rc.get("untouched"):
        to = rc.get("colour") or rc.get("result")
        why.append(f"recoloured on purpose by recolor{f' to {to}' if to else ''} (its region only, lightness kept)")
    rt = steps.get("retouch") or {}
    if rt.get("subject_pixels"):
        painted = rt.get("remove_mask") if isinstance(rt.get("remove_mask"), dict) else {}
        why.append(f"changed on purpose by retouch ({_number(rt['subject_pixels'])} px removed as painted in "
                   f"{painted.get('file', 'its remove mask')})")
    ml = (steps.get("place_in_scene") or {}).get("match_light")
    if isinstance(ml, dict):
        why.append(f"changed on purpose by place_in_scene's match_light (strength {_number(ml.get('strength'))})")
    tm = steps.get("tone_match") or {}
    if tm.get("changes_subject"):
        why.append(f"changed on purpose by tone_match (ΔE ≤ {_number(tm.get('max_delta_e'))})")
    return "; ".join(why) or None


def job_page(request: Request) -> Response:
    """``/jobs/{job_id}``"""
    state = request.app.state
    config: Config = state.config
    job = state.store.get(request.path_params["job_id"])
    if job is None:
        return render(request, "job.html", status_code=404, job=None, job_id=request.path_params["job_id"])
    manifest, manifest_problem = manifest_of(state, job)
    notes = {o.get("path"): o.get("steps") or {} for o in (manifest or {}).get("outputs", [])}
    ran = [s["step"] for s in state.store.steps(job.id)]  # the chain's order, as the job ran it
    outputs = []
    for row in state.store.output_rows(job.id):
        channel = config.channels.get(row["channel"])
        steps = notes.get(row["path"], {})
        outputs.append({
            "id": row["id"], "channel": row["channel"], "ratio": row["ratio"], "step": row["step"],
            "variant": row.get("variant"), "group": row["ratio"] or step_label(row["step"]),
            "name": Path(row["path"]).name, "path": row["path"], "width": row["width"], "height": row["height"],
            "scale": row["scale"], "bytes": row["bytes"], "replaced_by": row.get("replaced_by"),
            "sha256": row.get("sha256"),
            "approval": APPROVAL.get(row.get("approval"), row.get("approval")),
            "approval_key": row.get("approval") or "published", "staged_path": row.get("staged_path"),
            "zones": zones(channel, row["ratio"]), "highlights": highlights(steps, ran),
            "on_purpose": on_purpose(steps),
            "notes": json.dumps(steps, indent=2, sort_keys=True) if steps else "",
        })
    from .actions import job_context  # actions reads this module's APPROVAL

    actions = job_context(request, job)
    for o in outputs:
        o.update(actions["states"].get(o["id"], {}))
    for o in outputs:
        if o["replaced_by"]:  # history: its picture only while the cache still has it (never a broken image)
            o["kept_thumb"] = previews.kept_view(config, o["sha256"], "thumb") is not None
    current = [o for o in outputs if not o["replaced_by"]]
    moved = state.store.moved(job.id)
    steps = [dict(s, when=local(s.get("finished_at"))[11:]) for s in state.store.steps(job.id)]
    return render(
        request, "job.html", job=job, job_id=job.id, outputs=outputs, current=current, steps=steps,
        replaced_by=sorted({o["replaced_by"] for o in outputs if o["replaced_by"]}),
        total_seconds=sum(s["seconds"] or 0 for s in steps),
        error_class=failure_class(job) if job.status is JobStatus.FAILED else None,
        input_name=Path(job.input_path).name, input_where=moved.dest if moved else job.input_path,
        manifest_problem=manifest_problem, created=local(job.created_at), finished=local(job.finished_at),
        groups=list(dict.fromkeys(o["group"] for o in outputs if not o["ratio"]))
        + sorted({o["ratio"] for o in outputs if o["ratio"]}, key=_ratio_key),
        actions=actions,
    )


def step_label(step: str | None) -> str:
    """What the contact sheet calls a row of outputs without a ratio: the step that made them, as a retoucher
    says it (remove_background's are the cut-out; a retouched or recoloured full frame is its step's)."""
    return "cut-out" if step == "remove_background" else (step or "output")


RATIO_ORDER = ("1:1", "4:5", "9:16", "16:9")  # the contact sheet's rows after the full frames: the usual ones first


def _ratio_key(ratio: str) -> tuple[int, float, str]:
    """The contact sheet's order, the same on every page: 1:1, 4:5, 9:16, 16:9, then any other from the tallest to
    the widest (a ratio written 2:2 or 8:10 takes the place of its reduced form)."""
    try:
        w, h = (float(x) for x in ratio.split(":"))
        shape = w / h
    except (ValueError, ZeroDivisionError):
        return (len(RATIO_ORDER) + 1, 0.0, ratio)
    for i, known in enumerate(RATIO_ORDER):
        kw, kh = (float(x) for x in known.split(":"))
        if abs(shape - kw / kh) < 1e-9:
            return (i, shape, ratio)
    return (len(RATIO_ORDER), shape, ratio)


def routes() -> list[BaseRoute]:
    return [Route("/jobs/{job_id:int}", job_page)]
