"""The Ray tests share this: one local Ray instance per test session (``ray.init(num_cpus=2)``, about 4 s to start,
paid once), on which ``executor: ray`` daemons start and stop their actors.

A test module calls ``needs_ray()`` at import: without Ray (the ``scale`` extra) the module skips, saying why,
except under CI=true, where the Ray tests must run and the missing package fails them."""
from __future__ import annotations

import importlib.util
import os

import pytest


# the cut-out, then a square crop, into the webshop: cheap and deterministic
SHOP = """\
name: shop
steps:
  - remove_background: {}
  - crops: {ratios: ["1:1"]}
outputs:
  - {channel: webshop, from: crops}
"""


def ray_settings(max_restarts: int, actors: int = 1) -> str:
    """The config's ``executor: ray`` section for the shared instance: ``actors`` of half a CPU each, no GPU."""
    return (f"executor: ray\nray:\n  actors: {actors}\n  gpus_per_actor: 0\n  cpus_per_actor: 0.5\n"
            f"  max_restarts: {max_restarts}\n")


def needs_ray() -> None:
    if importlib.util.find_spec("ray") is None and os.environ.get("CI") != "true":
        pytest.skip("Ray is not installed (pip install -e '.[scale]'; under CI=true this is a failure)",
                    allow_module_level=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance with 2 CPUs and no GPU, shared by the session's Ray tests; fails (not skips) when Ray
    is missing under CI=true. The actors' processes import this checkout's ``pipeline`` (PYTHONPATH)."""
    assert importlib.util.find_spec("ray") is not None, "CI=true: the Ray tests must run, and Ray is missing"
    import ray

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="assetd-tests", configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield ray
    finally:
        ray.shutdown()
