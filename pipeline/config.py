"""The daemon's configuration: typed, validated before anything starts, defaults defined once here.

Every key is documented in ``config.example.yaml`` and the README; ``tests/test_docs.py`` fails
when one is missing. Relative paths resolve against the folder of the config file, once, as the
schema builds the config.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


from .errors import ConfigError
from .formats import CHANNEL_EXTENSIONS, CHANNEL_FORMATS
from .schema import build, opt, read_yaml, resolve_path

FORMATS = CHANNEL_FORMATS  # the channel formats, from the one format table
EXTENSIONS = CHANNEL_EXTENSIONS  # the extension of each one's files
_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")


def check_colour(value: str) -> str | None:
    return None if _COLOUR.match(value) else f"expected a colour like '#ffffff', got {value!r}"


def check_filename(value: str) -> str | None:
    from .outputs import template_problem  # outputs imports the stages; keep config light to import

    return template_problem(value)


def check_size(value: str | dict[str, str]) -> str | None:
    from .sizes import check_size as size_problem  # sizes imports the stages' geometry; keep config light

    return size_problem(value)


def check_device(value: str) -> str | None:
    ok = value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value)
    return None if ok else f"expected auto, cpu, cuda or cuda:N, got {value!r}"


@dataclass
class InboxConfig:
    path: Path = opt(None, required=True, doc="folder to watch")
    create: bool = opt(False, doc="create the folder when it is missing as assetd starts and was never watched on this "
                                  "database; never later: one watched before that is missing (a share unmounted, a "
                                  "folder renamed away, while running or down) is waited for, not recreated")
    recursive: bool = opt(True, doc="watch sub-folders too")
    polling: bool = opt(False, doc="poll instead of OS events: use for SMB/NFS shares where inotify never fires")
    poll_interval_seconds: float = opt(5.0, min=0.1, doc="how often the polling observer looks (polling: true)")
    settle_seconds: float = opt(2.0, min=0.0, doc="size and mtime unchanged this long before a file is taken")
    after: str = opt("keep", choices=("keep", "move"),
                     doc="keep: inputs stay where they are; move: once its job has ended for good, an input moves "
                         "to done_folder (done) or error_folder (failed, with NAME.error.txt giving the reason)")
    done_folder: Path | None = opt(None, doc="where after: move puts inputs whose job is done, keeping their "
                                             "sub-folder; default <inbox>/done (never watched)")
    error_folder: Path | None = opt(None, doc="where after: move puts inputs whose job failed, keeping their "
                                              "sub-folder; default <inbox>/error (never watched)")

    @property
    def done(self) -> Path:
        """The folder done inputs move to (``after: move``)."""
        return Path(os.path.abspath(self.done_folder or self.path / "done"))

    @property
    def error(self) -> Path:
        """The folder failed inputs move to (``after: move``), each with its ``NAME.error.txt``."""
        return Path(os.path.abspath(self.error_folder or self.path / "error"))

    def sets_aside(self, path: Path) -> bool:
        """True for a path in this inbox's done or error folder (``after: move``): never watched, never taken."""
        if self.after != "move":
            return False
        path = Path(os.path.abspath(path))
        return path.is_relative_to(self.done) or path.is_relative_to(self.error)


@dataclass
class SafeZone:
    """Fractions of a channel's outputs kept free of the subject (a platform's overlays: profile bar, replies)."""

    top: float = opt(0.0, min=0.0, max=0.9, doc="of the height, at the top")
    bottom: float = opt(0.0, min=0.0, max=0.9, doc="of the height, at the bottom")
    left: float = opt(0.0, min=0.0, max=0.9, doc="of the width, at the left")
    right: float = opt(0.0, min=0.0, max=0.9, doc="of the width, at the right")


@dataclass
class CopySpace:
    """A side of the frame kept free of the subject, for text (crops' ``copy_space``, a channel's ``copy_space``)."""

    side: str = opt("right", choices=("left", "top", "right", "bottom"), doc="left | right | top | bottom")
    fraction: float = opt(0.35, min=0.0, max=0.9, doc="the share of the frame's width (left, right) or height (top, "
                                                       "bottom) kept free")


def check_copy_space(value: "CopySpace | dict[str, CopySpace]") -> str | None:
    from .stages.framing import parse_ratio

    for ratio in value if isinstance(value, dict) else ():
        try:
            parse_ratio(ratio)
        except ValueError as exc:
            return str(exc)
    return None


def check_safe_zone(value: "SafeZone | dict[str, SafeZone]") -> str | None:
    from .stages.framing import parse_ratio  # the stages import config; keep config light to import

    zones = value if isinstance(value, dict) else {"": value}
    for ratio, zone in zones.items():
        try:
            if ratio:
                parse_ratio(ratio)
        except ValueError as exc:
            return str(exc)
        if zone.top + zone.bottom >= 0.9 or zone.left + zone.right >= 0.9:
            return f"{ratio + ': ' if ratio else ''}top + bottom and left + right must leave room (each under 0.9)"
    return None


@dataclass
class ChannelConfig:
    name: str = field(default="", metadata={"internal": True})
    path: Path = opt(None, required=True, doc="output folder of this channel")
    format: str = opt("png", choices=FORMATS, doc=" | ".join(FORMATS))
    quality: int = opt(90, min=1, max=100, doc="encoder quality for jpeg and webp")
    long_edge: int | None = opt(None, min=16, doc="shrink outputs so the long edge is at most this (never enlarges)")
    size: str | dict[str, str] | None = opt(
        None, check=check_size, expected="a size like 1080x1350, or ratios mapped to sizes like {'4:5': 1080x1350}",
        doc="exact pixels of every output, WIDTHxHEIGHT (1080x1350), or one per ratio ({'4:5': 1080x1350, "
            "'9:16': 1080x1920}); the rule's upscale step enlarges what is smaller")
    min_long_edge: int | None = opt(None, min=16, doc="the least long edge of an output: the rule's upscale step "
                                                      "enlarges what is shorter, else the output is not written")
    background: str | None = opt(
        None, check=check_colour, doc="flatten transparency onto this colour; formats without alpha default to white"
    )
    filename: str = opt("{stem}_{ratio}.{ext}", check=check_filename,
                        doc="file name template: {stem} {folder} {ratio} {variant} {step} {rule} {channel} {ext} "
                                "{hash8}")
    web_safe_names: bool = opt(False,
                               doc="make every name a lower-case ASCII slug (é → e; spaces, #, %, &, ? ... → -)")
    bits: int = opt(8, choices=(8, 16), doc="8 or 16 bits per channel (16 only for png and tiff)")
    png_compression: int = opt(6, min=1, max=9,
                               doc="zlib level of png outputs (1-9): 1 writes about 2x faster, files up to 2x larger; "
                                   "above 6 files are hardly smaller, only slower")
    metadata: str = opt("default", choices=("default", "keep", "strip"),
                        doc="default keeps copyright/artist/date/camera and drops GPS; keep; strip")
    safe_zone: SafeZone | dict[str, SafeZone] = opt(
        SafeZone(), check=check_safe_zone, doc="fractions of each output kept free of the subject: {top, bottom, left, "
        "right}, or per ratio ({'9:16': {top: 0.14, bottom: 0.2}}); crops frames the subject outside them")
    copy_space: CopySpace | dict[str, CopySpace] | None = opt(
        None, check=check_copy_space, expected="{side: left, right, top or bottom, fraction: 0 to 0.9}, or a mapping "
                                               "of ratios to those",
        doc="a side of this channel's crops kept free of the subject for text, {side: right, fraction: 0.35}, or per "
            "ratio; crops frames each ratio with it (channels taking one ratio must agree)")
    publish: str = opt("at_once", choices=("at_once", "on_approval"),
                       doc="at_once: outputs land in the channel folder when the job ends; on_approval: they wait in "
                           "the staging folder until approved (review page, `assetd approve`), then are published "
                           "atomically; rejected ones never are")
    staging: Path | None = opt(None, doc="where this channel's outputs wait for approval (publish: on_approval); "
                                         "default: a folder staging/<channel> beside the database")
    dpi: float | None = opt(None, min=1.0, max=100_000.0,
                            doc="print resolution written into outputs (pixels per inch); null: the input's own, "
                                "when it states one")

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


@dataclass
class NotifyConfig:
    urls: list[str] = opt([], doc="apprise URLs (mailto://, slack://, json://, ...); empty: no notifications")
    digest_after_idle_seconds: float = opt(60.0, min=0.0, doc="send the batch digest once the queue was idle this long")
    timeout_seconds: float = opt(10.0, min=0.1, doc="give up on one delivery attempt after this long")
    retry_seconds: float = opt(60.0, min=0.1, doc="wait this long before retrying an undelivered message")
    title: str = opt("assetd", doc="prefix of every notification title")


@dataclass
class InputConfig:
    max_pixels: int = opt(250_000_000, min=1, doc="refuse images larger than this (checked from the header)")
    raw_half_size: bool = opt(False, doc="decode camera RAW at half size (fast previews)")
    raw_memory_mb: int = opt(4096, min=256, doc="memory limit of the RAW decoding subprocess")
    colour_intent: str = opt("perceptual", choices=("perceptual", "relative"),
                             doc="ICC rendering intent when converting to sRGB: perceptual | relative")
    min_signal: float = opt(0.5, min=0.0,
                            doc="refuse a decoded image as blank when no channel's standard deviation reaches "
                                "this many levels of its depth (of 255, or 65535 at 16 bits); 0: never")


@dataclass
class ModelsConfig:
    """Where models live and how they run. ``rembg``, ``diffusers``, ``instruct`` and ``spandrel`` are their
    backends' default models: a backend's ``ModelKind.setting`` names its key here (a backend without one needs none)."""

    cache_dir: Path | None = opt(None, doc="where model weights live: <cache_dir>/assetd/u2netp.onnx (the studio "
                                 "subject prior), <cache_dir>/huggingface, <cache_dir>/rembg; default: "
                                 "${XDG_CACHE_HOME:-~/.cache}/assetd/u2netp.onnx and the Hugging Face / rembg caches")
    rembg: str = opt("birefnet-general", doc="default model of remove_background backend rembg")
    diffusers: str = opt("diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                         doc="default pipeline of place_in_scene backend diffusers and fill: generate")
    instruct: str = opt("black-forest-labs/FLUX.1-Kontext-dev",
                        doc="default pipeline of place_in_scene backend instruct (an instruction-edit model)")
    spandrel: Path | None = opt(None, doc="default weights file of upscale backend spandrel")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = opt("auto", doc="auto: bf16/fp16 on GPU, fp32 on CPU")
    cpu_offload: bool = opt(False, doc="move diffusers sub-models to the GPU only while they run (small cards)")
    unload_after_seconds: float = opt(900.0, min=0.0, doc="free a model unused this long (0: never)")


@dataclass
class ManifestsConfig:
    folder: Path | None = opt(None, doc="where each job's manifest (<rule>/<stem>.assetd.json: input, rule version, "
                              "outputs, steps, review) is written; default: a folder manifests beside the database")
    beside_outputs: bool = opt(False, doc="also write the manifest into every channel folder the job wrote to "
                               "(channel folders hold deliverables only by default)")


def check_free(value: str | int) -> str | None:
    from .health import parse_amount  # health imports the store; keep config light to import

    try:
        parse_amount(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class ProblemsConfig:
    """When the process, not a job, has a problem (a disk, an inbox, the GPU, a model): work pauses, one alert
    goes out when it starts and one when it clears, and no job is charged an attempt."""

    min_free: str | int = opt("2%", check=check_free, expected="bytes (500MB, 2GB, a plain integer) or a "
                              "percentage (2%)",
                              doc="free space an output or database volume keeps: bytes (500MB, 2GB, a plain integer) "
                                  "or a percentage of the volume (2%); below it the rules writing there pause (0: only "
                                  "a full disk pauses); more than a volume holds is refused (check, run)")
    resume_free: str | int | None = opt(None, check=lambda v: None if v is None else check_free(v),
                                        expected="bytes (750MB, 3GB, a plain integer) or a percentage (3%), or null",
                                        doc="work resumes once the volume has this much free again, at least "
                                            "min_free (lower is refused: it would pause and resume over and over); "
                                            "null: min_free and half of it again (hysteresis), at most halfway to a "
                                            "free volume")
    check_seconds: float = opt(10.0, min=0.1, doc="how often volumes are measured and paused problems looked at again")
    alert_after_seconds: float = opt(60.0, min=0.0,
                                     doc="a problem lasting this long sends its alert (and then one when it clears); "
                                         "shorter blips are only logged (0: at once)")
    gpu_oom_limit: int = opt(3, min=1, doc="CUDA out of memory on this many jobs in a row pauses the model-backed "
                                           "rules (fewer: the job retries as usual)")


def check_listen(value: str | None) -> str | None:
    if value is None:
        return None
    from .web.server import parse_listen  # the web package imports starlette: keep config light to import

    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class ReviewConfig:
    """The review page (``assetd serve``; ``assetd run`` serves it too when ``listen`` is set)."""

    listen: str | None = opt(None, check=check_listen, expected="HOST:PORT, like 127.0.0.1:8765",
                             doc="HOST:PORT the review page listens on; null: `assetd run` serves no page and "
                                 "`assetd serve` uses 127.0.0.1:8765. Anything but loopback needs token or token_file")
    token: str | None = opt(None, doc="access token (the page's password, and a bearer token for scripts and "
                                      "Prometheus); required unless listening on loopback only")
    token_file: Path | None = opt(None, doc="a file holding the access token (keeps the secret out of this file)")
    previews_folder: Path | None = opt(None, doc="where thumbnails and previews are cached (made once per file); "
                                                 "default: a folder previews beside the database")
    page_size: int = opt(50, min=10, max=500, doc="jobs per page on the night view")


def check_address(value: str | None) -> str | None:
    if value is None or value == "auto" or re.fullmatch(r"(ray://)?[A-Za-z0-9_.:\[\]-]+:\d+", value):
        return None
    return f"expected null, auto, ray://HOST:PORT or HOST:PORT, got {value!r}"


def check_actors(value: int | str) -> str | None:
    if value == "per_gpu" or (isinstance(value, int) and 1 <= value <= 256):
        return None
    return f"expected a number of actors (1-256) or per_gpu, got {value!r}"


@dataclass
class RayConfig:
    """The Ray cluster the chain runs on (``executor: ray``): one actor per GPU, models resident, while this
    process stays the coordinator (watcher, store, writing of outputs)."""

    address: str | None = opt(None, check=check_address,
                              doc="null: start a Ray instance on this machine (several GPUs, one box); auto: the "
                                  "cluster this machine joined with `ray start`; ray://HOST:10001: a remote head "
                                  "through Ray Client")
    actors: int | str = opt(1, check=check_actors, expected="a number of actors or per_gpu",
                            doc="chain actors `assetd run` starts (`assetd process` starts one), each running one "
                                "job at a time with one read ahead; per_gpu: one per GPU of the cluster (at least 1)")
    gpus_per_actor: float | None = opt(None, min=0.0, doc="GPUs each actor reserves (0: CPU only; a fraction shares "
                                                          "a GPU); null: 1 when the cluster has GPUs, else 0")
    cpus_per_actor: float = opt(1.0, min=0.0, doc="CPUs each actor reserves on its node")
    max_restarts: int = opt(3, min=0, doc="Ray restarts a dead actor (its node lost, a kill) this often before "
                                          "assetd starts a fresh one; the job it was running is charged one crash")
    namespace: str = opt("assetd", doc="Ray namespace of the actors (two daemons on one cluster use two)")


@dataclass
class Config:
    source: Path = field(default=Path("config.yaml"), metadata={"internal": True})
    database: Path = opt(Path("state/assetd.sqlite3"), doc="SQLite job store")
    device: str = opt("auto", check=check_device, doc="auto | cpu | cuda | cuda:N")
    workers: int = opt(1, min=1, max=64, doc="jobs run at the same time (executor: local; ignored under ray)")
    executor: str = opt("local", choices=("local", "ray"),
                        doc="local: the chain runs in worker threads of this process; ray: on the actors of a Ray "
                            "cluster (see ray), while this process keeps the store and writes the outputs")
    rules_dir: Path = opt(Path("rules"), doc="folder of rule files (*.yaml), tried in file-name order")
    max_attempts: int = opt(3, min=1, doc="a job failing transiently this often is failed for good")
    retry_delay_seconds: float = opt(30.0, min=0.0, doc="first retry delay; doubles on each attempt")
    lease_seconds: float = opt(900.0, min=1.0, doc="a running job whose worker has not renewed its lease for this long "
                                                   "is taken back (its worker died); a live worker renews it every "
                                                   "third of it, however long a step takes")
    quarantine_after_crashes: int = opt(2, min=1, doc="a job that was running this many times when assetd died "
                                        "(crash or kill) is failed for good as quarantined; its neighbours go on")
    rescan_seconds: float = opt(300.0, min=1.0, doc="full rescan of the inboxes for events the OS dropped")
    log_level: str = opt("info", choices=("debug", "info", "warning", "error"), doc="daemon log level")
    inboxes: list[InboxConfig] = opt([], doc="watched folders")
    channels: dict[str, ChannelConfig] = opt({}, doc="named output destinations")
    notify: NotifyConfig = opt(NotifyConfig(), doc="notifications")
    input: InputConfig = opt(InputConfig(), doc="how inputs are read")
    models: ModelsConfig = opt(ModelsConfig(), doc="model-backed backends (GPU)")
    manifests: ManifestsConfig = opt(ManifestsConfig(), doc="job manifests")
    problems: ProblemsConfig = opt(ProblemsConfig(), doc="problem processes: disk space, GPU, models (pause + alert)")
    review: ReviewConfig = opt(ReviewConfig(), doc="the review page and /metrics (`assetd serve`)")
    ray: RayConfig = opt(RayConfig(), doc="the Ray cluster of executor: ray (`pip install -e '.[scale]'`)")
    on_rule_change: str = opt("new_files", choices=("new_files", "reprocess"),
                              doc="new_files: an edited rule applies to files that arrive after the change "
                                  "(`assetd reprocess` redoes earlier ones); reprocess: once assetd has the changed "
                                  "rule (reloaded, or at the next start) every file still in the inboxes is redone "
                                  "under it, replacing its outputs")

    @property
    def manifest_folder(self) -> Path:
        return self.manifests.folder or self.database.parent / "manifests"

    @property
    def previews_folder(self) -> Path:
        return self.review.previews_folder or self.database.parent / "previews"

    def staging_folder(self, channel: ChannelConfig) -> Path:
        """Where ``channel``'s outputs wait for approval (``publish: on_approval``)."""
        return channel.staging or self.database.parent / "staging" / channel.name

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    def resolve(self, path: Path | str) -> Path:
        """A path from the config or a rule, made absolute against the config file's folder."""
        return resolve_path(path, self.base_dir)


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    path = Path(path).absolute()
    try:
        data = read_yaml(path, "config file")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config_from_dict(data, path)


def database_only(path: Path | str) -> Config | None:
    """For the commands that only read the job store (``assetd jobs``) when the config file does not load: a
    Config with the defaults and the ``database`` the file names, read from its raw YAML and resolved as
    ``load_config`` resolves it (the default one beside the file when the YAML itself cannot be parsed). None
    when the file cannot be read or its ``database`` key is itself wrong."""
    path = Path(path).absolute()
    if not path.is_file():
        return None
    try:
        data = read_yaml(path, "config file")
    except ValueError:  # not YAML at all (the default database then)
        data = None
    given = {"database": data["database"]} if isinstance(data, dict) and "database" in data else {}
    try:
        return config_from_dict(given, path)
    except ConfigError:
        return None


def _inboxes_twice(inboxes: list[InboxConfig]) -> list[str]:
    """The same folder configured as two inboxes (nested ones are fine: the innermost owns a file)."""
    errors, seen = [], {}
    for i, inbox in enumerate(inboxes):
        if inbox.path is not None:
            j = seen.setdefault(inbox.path.resolve(), i)
            if j != i:
                errors.append(f"inboxes[{i}].path: {inbox.path} is inboxes[{j}] ({inboxes[j].path}) again")
    return errors


def config_from_dict(data: object, source: Path) -> Config:
    errors: list[str] = []
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    data = dict(data or {})
    raw_channels = data.pop("channels", None)
    cfg: Config = build(Config, data, "", errors, base=source.parent, source=source)
    # channels are keyed by name; give each its name
    if raw_channels is not None and not isinstance(raw_channels, dict):
        errors.append(f"channels: expected a mapping of channel names to settings, got {raw_channels!r}")
    if isinstance(raw_channels, dict):
        for name, body in raw_channels.items():
            cfg.channels[str(name)] = build(ChannelConfig, body, f"channels.{name}", errors, base=source.parent,
                                            name=str(name))
    for name, ch in cfg.channels.items():
        from .sizes import channel_size_problems

        errors.extend(f"channels.{name}.{p}" for p in channel_size_problems(ch))
        if ch.bits == 16 and ch.format not in ("png", "tiff"):
            errors.append(f"channels.{name}.bits: 16 bits needs format png or tiff, not {ch.format}")
        if ch.filename and ("/" in ch.filename or "\\" in ch.filename or "{ext}" not in ch.filename):
            errors.append(f"channels.{name}.filename: expected a file name with {{ext}} and no folders, "
                          f"got {ch.filename!r}")
    errors.extend(_inboxes_twice(cfg.inboxes))
    for name, ch in cfg.channels.items():
        for i, inbox in enumerate(cfg.inboxes):
            if ch.path is not None and inbox.path is not None and (
                    ch.path == inbox.path or (inbox.recursive and ch.path.is_relative_to(inbox.path))):
                errors.append(f"channels.{name}.path: {ch.path} lies inside inboxes[{i}] ({inbox.path}); "
                              "its outputs would be taken as new inputs")
    for i, inbox in enumerate(cfg.inboxes):  # what assetd writes must not be taken as new inputs
        def watched(path: Path) -> bool:
            return path.is_relative_to(inbox.path) and (inbox.recursive or path.parent == inbox.path)

        if inbox.path is None:
            continue
        if watched(cfg.database):
            errors.append(f"database: {cfg.database} lies inside inboxes[{i}] ({inbox.path}); its files would be "
                          "taken as new inputs")
        elif watched(cfg.manifest_folder / "rule" / "x.assetd.json"):
            errors.append(f"manifests.folder: {cfg.manifest_folder} lies inside inboxes[{i}] ({inbox.path})")
    errors.extend(_set_aside_problems(cfg))
    errors.extend(_free_space_problems(cfg.problems))
    if errors:
        raise ConfigError([f"{source}: {e}" for e in errors])
    return cfg


def _free_space_problems(problems: ProblemsConfig) -> list[str]:
    """``resume_free`` below ``min_free`` in the same units: a volume between the two would pause and resume over
    and over. A percentage against bytes depends on the volume: ``Problems.setting_problems`` (check, run)."""
    from .health import parse_amount

    if problems.resume_free is None:
        return []
    try:
        low, high = parse_amount(problems.min_free), parse_amount(problems.resume_free)
    except ValueError:
        return []  # said by the keys' own checks
    if (low.percent is None) != (high.percent is None):
        return []
    below = high.percent < low.percent if high.percent is not None and low.percent is not None \
        else high.bytes < low.bytes
    if not below:
        return []
    return [f"problems.resume_free: {high} is below problems.min_free {low}; a volume between the two would pause "
            "and resume over and over: set resume_free at or above min_free, or leave it out (min_free and half of "
            "it again)"]


def _set_aside_problems(cfg: Config) -> list[str]:
    """An inbox's done and error folders (``after: move``) must be nobody else's: not an inbox or a folder
    holding one, not inside another inbox (which would take the moved files as new ones), not a channel."""
    errors = []
    inboxes = [(j, Path(os.path.abspath(inbox.path))) for j, inbox in enumerate(cfg.inboxes) if inbox.path is not None]
    for i, inbox in enumerate(cfg.inboxes):
        if inbox.path is None or inbox.after != "move":
            continue
        for key, folder in (("done_folder", inbox.done), ("error_folder", inbox.error)):
            where = f"inboxes[{i}].{key}: {folder}"
            holding = [(j, root) for j, root in inboxes if folder.is_relative_to(root)]
            innermost = max(holding, key=lambda h: len(h[1].parts), default=None)
            held = next(((j, root) for j, root in inboxes if root.is_relative_to(folder)), None)
            if held is not None:
                errors.append(f"{where} is or holds inboxes[{held[0]}] ({held[1]}); inputs would be moved into a "
                              "watched folder")
            elif innermost is not None and innermost[0] != i:
                errors.append(f"{where} lies inside inboxes[{innermost[0]}] ({innermost[1]}), which would take the "
                              "moved files as new inputs")
            for name, ch in cfg.channels.items():
                if ch.path is not None and (folder.is_relative_to(os.path.abspath(ch.path))
                                            or Path(os.path.abspath(ch.path)).is_relative_to(folder)):
                    errors.append(f"{where} is, holds or lies inside channel {name} ({ch.path}); inputs and "
                                  "deliverables would mix")
    return errors
