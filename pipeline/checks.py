"""``assetd check``: everything that can be known wrong before the daemon starts."""
from __future__ import annotations

import os
from pathlib import Path

from .config import Config, InboxConfig
from .errors import ConfigError
from .rules import load_rules
from .stages.base import stage_class


def _writable(folder: Path) -> bool:
    """Can ``folder`` be written, or created under its nearest existing parent?"""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _size_warnings(rules: list, config: Config) -> list[str]:
    """Channels that need pixels (size, min_long_edge) fed an image no upscale step enlarges: an input too small
    for them fails those outputs, which cannot be known before it comes."""
    from .sizes import need_text, needs_pixels

    lines = []
    for rule in rules:
        for spec in rule.outputs:
            channel = config.channels[spec.channel]
            if not needs_pixels(channel) or spec.source == "upscale":
                continue
            ratio = spec.ratios[0] if spec.ratios and len(spec.ratios) == 1 else None
            why = (f"rule {rule.name} has no upscale step" if rule.step("upscale") is None else
                   f"rule {rule.name} sends channel {channel.name} {spec.source}, which no upscale step enlarges")
            lines.append(f"{rule.path}: {why}: an image smaller than channel {channel.name} needs "
                         f"({need_text(channel, ratio)}) is not written and fails its job")
    return lines


def _variant_notes(rules: list, config: Config) -> list[str]:
    """Channels fed the variants a rule's steps make (colourways, scenes, generated variations) whose filename has
    no ``{variant}``: their files get ``_{variant}`` before the extension; say so, with a name as it will be."""
    from .outputs import has_field, output_name

    lines = []
    for rule in rules:
        names: list[str] = []  # the variants of one input after each step, by the steps' order
        made: dict[str, list[str]] = {}
        ratios: list[str | None] = [None]  # the ratios an output of each step has (after crops)
        made_ratios: dict[str, list[str | None]] = {}
        for spec in rule.steps:
            new = stage_class(spec.step, spec.backend).variants(spec.options)
            if new:
                names = [f"{a}-{b}" for a in names for b in new] if names else list(new)
            ratios = list(getattr(spec.options, "ratios", None) or ratios) if spec.step == "crops" else ratios
            made[spec.step], made_ratios[spec.step] = list(names), ratios
        told: set[str] = set()
        for out in rule.outputs:
            channel = config.channels[out.channel]
            variants = made.get(out.source, [])
            if not variants or has_field(channel.filename, "variant") or channel.name in told:
                continue
            told.add(channel.name)
            ratio = out.ratios[0] if out.ratios else made_ratios[out.source][0]
            example = output_name(channel, stem="shot", rel_path="shot.jpg", ratio=ratio, step=out.source,
                                  rule=rule.name, hash8="0123abcd", variant=variants[0])
            lines.append(f"{rule.path}: rule {rule.name} makes {len(variants)} variants of each input "
                         f"({', '.join(variants[:4])}{', ...' if len(variants) > 4 else ''}); channel {channel.name}'s "
                         f"filename {channel.filename!r} has no {{variant}}, so each gets _{{variant}} before the "
                         f"extension: {example}")
    return lines


MASK_WARNINGS_SHOWN = 10  # masks no rule reads, listed one a line; more are counted


def _mask_warnings(config: Config, rules: list) -> list[str]:
    """Masks a retoucher put in an inbox (``NAME.remove.png``...) that nothing will read: no shot of that name
    beside them, or the rule taking their shot has no step that reads them (``stages.masks.unused_masks``). The
    job would only say so in its review reasons, after the night's run."""
    from .ignore import is_ignored_name
    from .intake import relative_path
    from .rules import match_rule
    from .stages.masks import mask_kind, shots_of, unused_masks

    lines: list[str] = []
    seen: set[Path] = set()
    for inbox in config.inboxes:
        root = Path(os.path.abspath(inbox.path))
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if inbox.recursive and not is_ignored_name(d)
                             and not inbox.sets_aside(Path(folder, d)))
            for name in sorted(files):
                kind = mask_kind(name)
                if kind is None or name.startswith((".", "~$")):  # a hidden or an Office owner file: not a mask
                    continue
                mask = Path(folder, name)
                if mask in seen:  # an inbox inside another: walked twice
                    continue
                seen.add(mask)
                shots = shots_of(mask)
                if not shots:
                    lines.append(f"{mask}: a {kind} mask with no shot of its name beside it "
                                 f"({name[:-len(f'.{kind}.png')]}.jpg, .tif...); nothing reads it")
                for shot in shots:
                    if shot in seen:
                        continue
                    seen.add(shot)
                    rule = match_rule(rules, relative_path(config, shot, root))
                    if rule is not None:
                        lines.extend(f"{shot}: {line}; it will not be used" for line in unused_masks(rule, shot))
    if len(lines) > MASK_WARNINGS_SHOWN:
        more = len(lines) - MASK_WARNINGS_SHOWN
        lines = lines[:MASK_WARNINGS_SHOWN] + [f"... and {more} more mask(s) nothing reads "
                                               "(`assetd explain NAME.KIND.png` says why for one)"]
    return lines


def _inbox_problems(inbox: InboxConfig) -> list[str]:
    """A missing inbox folder the daemon will not create, and done/error folders it cannot write (after: move)."""
    problems = []
    if not inbox.path.is_dir():
        if not inbox.create:
            problems.append(f"path: {inbox.path} does not exist and will not be created (create: false); the daemon "
                            "waits for it: create it, mount the share, or set create: true")
        elif not _writable(inbox.path):
            problems.append(f"path: {inbox.path} does not exist and cannot be created")
    if inbox.after == "move":
        for key, folder in (("done_folder", inbox.done), ("error_folder", inbox.error)):
            if not _writable(folder):
                problems.append(f"{key}: {folder} is not writable: after: move cannot put inputs there")
    return problems


def _space_problems(config: Config, rules: list) -> list[str]:
    """``problems.min_free``/``resume_free`` that cannot work on the volumes assetd writes to: more than a volume
    holds, or resume_free below min_free there (``Problems.setting_problems``); `assetd run` refuses them too."""
    from .health import Problems

    return [f"{config.source}: {line}" for line in Problems(None, None, config, rules=rules).setting_problems()]


def _space_warnings(config: Config, rules: list) -> list[str]:
    """Volumes assetd writes to that are below ``problems.min_free`` now: the daemon would pause their rules."""
    from .health import Problems, format_bytes, parse_amount

    lines = []
    low = parse_amount(config.problems.min_free)
    for volume, usage in Problems(None, None, config, rules=rules).measure():
        if usage.free < low.of(usage.total) <= usage.total:  # more than the volume holds: a problem (above)
            lines.append(f"{volume.key}: {format_bytes(usage.free)} free, below problems.min_free {low} "
                         f"({', '.join(map(str, volume.folders))}): the daemon pauses the rules writing there "
                         "until there is room")
    return lines


def _review_problems(config: Config) -> list[str]:
    """The review page (review:): an unreadable token_file, or review.listen beyond loopback without a token
    (`assetd run` would refuse to start)."""
    from .web.security import access_token, exposure_problem

    try:
        access_token(config)
        problem = exposure_problem(config, config.review.listen) if config.review.listen else None
    except ConfigError as exc:
        return [f"{config.source}: {p}" for p in exc.problems]
    return [problem] if problem else []


def _staging_problems(config: Config) -> list[str]:
    """The staging folders of the channels publishing on approval: writable, and apart from every channel folder
    (a file staged in one would be published at once) and from each other."""
    problems = []
    channel_folders = {Path(os.path.realpath(c.path)): n for n, c in config.channels.items() if c.path is not None}
    staged: dict[Path, str] = {}
    for name, channel in config.channels.items():
        if channel.publish != "on_approval":
            continue
        folder = config.staging_folder(channel)
        key = f"{config.source}: channels.{name}.staging"
        real = Path(os.path.realpath(folder))
        if not _writable(folder):
            problems.append(f"{key}: {folder} is not writable: this channel's outputs cannot wait for approval there")
        held = [n for p, n in channel_folders.items() if real.is_relative_to(p)]
        if held:
            problems.append(f"{key}: {folder} overlaps the folder of channel {held[0]}: staged outputs would be "
                            "published before they are approved; give it a folder of its own")
        if real in staged:
            problems.append(f"{key}: {folder} is also the staging folder of channel {staged[real]}; give each its own")
        staged.setdefault(real, name)
    return problems


def _cluster_report(config: Config) -> tuple[list[str], list[str], list[str]]:
    """``executor: ray``: the cluster ``assetd run`` would use (nodes, CPUs, GPUs, what is free of them now, the
    actors it would start), and what would stop it there: Ray not installed, the address not answering, actors that
    no node can hold (problems), or that what is free now cannot hold (a warning: another assetd holds the rest).
    Returns (problems, warnings, info lines)."""
    from .scaleout import INSTALL, describe_cluster, ray_installed, token_auth, unreachable

    key = f"{config.source}: ray"
    if not ray_installed():
        return [f"{config.source}: executor: ray needs Ray, which is not installed here: {INSTALL}"], [], []
    why = unreachable(config.ray.address)
    if why:
        return [f"{key}.address: {config.ray.address} does not answer ({why}): start the head node there (`ray "
                "start --head`, README \"Scaling out\") or correct the address; nothing can run until it "
                "answers"], [], []
    try:
        cluster = describe_cluster(config)
    except ConfigError as exc:
        return [f"{config.source}: {p}" for p in exc.problems], [], []
    problems: list[str] = []
    warnings: list[str] = []
    nodes = "; ".join(f"{n['node']} ({n['cpus']:g} CPUs, {n['gpus']:g} GPUs)" for n in cluster.nodes)
    info = [f"executor: ray: {cluster.address}: {len(cluster.nodes)} node(s) alive: {nodes}",
            f"executor: ray: would start {cluster.actors} chain actor(s), {cluster.gpus_per_actor:g} GPU and "
            f"{cluster.cpus_per_actor:g} CPU each (namespace {config.ray.namespace}); each loads the rules' models "
            "from its own node's cache when it starts"]
    info.append(f"executor: ray: {cluster.free_summary()}")
    info.append(f"executor: ray: token authentication: {token_auth()}")
    placement = cluster.placement_problems(config)
    problems += [f"{key}.{p}" for p in placement]
    busy = cluster.free_problem()
    if busy and not placement:
        warnings.append(f"{key}.{busy}; `assetd run` refuses to start until they are free (`assetd process` "
                        f"needs room for one actor{'' if cluster.fits_free(1) else ', and has none either'})")
    if config.workers != 1:
        warnings.append(f"{config.source}: workers: {config.workers} is ignored under executor: ray (each actor "
                        "runs one job at a time, with one read ahead); set ray.actors instead")
    return problems, warnings, info


def run_checks(config: Config) -> tuple[list[str], list[str], list[str]]:
    """Returns (problems, warnings, info lines)."""
    problems: list[str] = []
    warnings: list[str] = []
    info: list[str] = [f"config {config.source} is valid"]
    try:
        rules = load_rules(config)
    except ConfigError as exc:
        problems.extend(exc.problems)
        rules = []
    else:
        info.append(f"{len(rules)} rule(s): " + ", ".join(r.name for r in rules))
        info.extend(_variant_notes(rules, config))
    warnings.extend(_size_warnings(rules, config))
    problems.extend(_space_problems(config, rules))
    warnings.extend(_space_warnings(config, rules))
    warnings.extend(_mask_warnings(config, rules))
    if not config.inboxes:
        warnings.append(f"{config.source}: inboxes: none configured; only `assetd process` will do anything")
    for i, inbox in enumerate(config.inboxes):
        problems.extend(f"{config.source}: inboxes[{i}].{p}" for p in _inbox_problems(inbox))
        if inbox.create and not inbox.path.exists() and _writable(inbox.path):
            info.append(f"inboxes[{i}]: {inbox.path} does not exist yet; the daemon creates it at its first start "
                        "(create: true)")
    for name, channel in config.channels.items():
        if not _writable(channel.path):
            problems.append(f"{config.source}: channels.{name}.path: {channel.path} is not writable")
    problems.extend(_staging_problems(config))
    if not _writable(config.database.parent):
        problems.append(f"{config.source}: database: folder {config.database.parent} is not writable")
    if not _writable(config.manifest_folder):
        problems.append(f"{config.source}: manifests.folder: {config.manifest_folder} is not writable")
    problems.extend(_review_problems(config))
    if config.notify.urls:
        import apprise

        for i, url in enumerate(config.notify.urls):
            if not apprise.Apprise().add(url):
                problems.append(f"{config.source}: notify.urls[{i}]: apprise does not understand {url!r}")
    model_steps = [s for r in rules for s in r.steps if stage_class(s.step, s.backend).runs_model(s.options)]
    if config.executor == "ray":
        for found, more in zip((problems, warnings, info), _cluster_report(config)):
            found.extend(more)
        models = _model_checks(config, rules, model_steps, device=None, clean=False)
        warnings.extend(f"on this machine (the coordinator: it runs no chain under executor: ray, and each actor "
                        f"checks its own node's models when it starts): {line}" for line in models[0] + models[1])
        info.extend(models[2])
        return problems, warnings, info
    from .models import resolve_device

    device = resolve_device(config.device) if model_steps else "cpu"
    if model_steps and device == "cpu" and config.device.startswith("cuda"):
        problems.append(f"{config.source}: device: {config.device!r} asked for, but no CUDA GPU is usable "
                        "here (use auto to fall back to the CPU)")
    elif model_steps and device == "cpu":
        warnings.append(f"device {config.device!r} resolves to the CPU: model-backed steps will be slow")
    models = _model_checks(config, rules, model_steps, device, clean=not problems)
    for found, more in zip((problems, warnings, info), models):
        found.extend(more)
    return problems, warnings, info


def _model_checks(config: Config, rules: list, model_steps: list, device: str | None, clean: bool
                  ) -> tuple[list[str], list[str], list[str]]:
    """The rules' models (and the studio backend's subject prior) in this machine's cache: (problems, warnings,
    info lines); ``device``: where the model-backed steps run here (None: not here, executor: ray); ``clean``: no
    other problem was found (only then is "they load" said)."""
    from .models import check_models, model_refs

    if not model_refs(config, rules):
        return [], [], []
    checked = check_models(config, rules)
    info = []
    if model_steps and clean and not checked.problems and device is not None:
        info.append(f"{len(model_steps)} model-backed step(s) load offline on {device}")
    for ref in checked.loaded:
        if ref.kind == "prior":
            from .prior import prior_file

            info.append(f"{ref.used_by}: studio's subject prior {ref.name} loads ({prior_file(config)})")
    return list(checked.problems), list(checked.warnings), info
