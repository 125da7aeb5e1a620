"""The Ray a study runs on: a cluster named by address, or a local Ray started (and stopped) for the study."""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Any

from study.config import Resources
from trainables.errors import ConfigError


def resolve_address(address: str | None) -> str | None:
    """--address / ray_address, else $RAY_ADDRESS, else None (a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail at once when nothing answers at the cluster's 'host:port' (or 'ray://host:port'): Ray itself
    retries a silent address for minutes before it gives up."""
    host, sep, port = (address or "").split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # no address (a local Ray), 'auto' and other forms that Ray resolves itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except OSError as err:
        raise ConfigError(f"ray_address: nothing answers at '{address}' ({err or type(err).__name__}); start the "
                          f"head node with `ray start --head` and give its address, or leave ray_address unset "
                          f"for a local Ray") from None


def init_ray(address: str | None) -> bool:
    """Connect to the cluster at `address`, or (None) start a local Ray bound to 127.0.0.1. Returns True if
    we started it (and so must stop it). Token authentication stays on (Ray's default)."""
    import ray

    if ray.is_initialized():
        return False
    # "local" always starts a fresh Ray: never attach by accident to a `ray start` cluster (or its stale
    # address file) on this machine -- a cluster is used only when named.
    kwargs: dict[str, Any] = {"address": address or "local", "log_to_driver": True}
    if address is None:
        kwargs.update(dashboard_host="127.0.0.1", include_dashboard=False)
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        hint = "" if os.environ.get("RAY_AUTH_MODE") else (
            "; a cluster started with `ray start` uses token authentication: set RAY_AUTH_MODE=token here, with "
            "its token in ~/.ray/auth_token or RAY_AUTH_TOKEN (docs/cluster.md)")
        raise ConfigError(f"ray_address: cannot connect to Ray at '{address}' "
                          f"({str(err).splitlines()[0][:200]}){hint}") from None
    return True


def check_trial_fits(resources: Resources, started_ray: bool) -> None:
    """A trial that no node can hold would leave Tune waiting forever. On a Ray this command started (nothing
    will join it) that is a one-line error before anything is written; on a cluster, which may autoscale,
    a warning."""
    import ray

    cpu, gpu = resources.cpu, resources.gpu
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in nodes):
        return
    largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    have = f"CPU {largest.get('CPU', 0):g}, GPU {largest.get('GPU', 0):g}"
    field = "resources.gpu" if gpu > largest.get("GPU", 0) else "resources.cpu"
    if started_ray:
        raise ConfigError(f"{field}: a trial asks for {cpu:g} CPU and {gpu:g} GPU but this machine's local Ray has "
                          f"{have}; lower {field} (GPU fractions such as 0.5 share one GPU) or set ray_address "
                          f"to a cluster that has them")
    print(f"mmstudy: warning: no node of the Ray cluster has {cpu:g} CPU and {gpu:g} GPU for one trial (largest "
          f"node: {have}); trials wait until the cluster scales up", flush=True)


@contextmanager
def ray_session(address: str | None, resources: Resources):
    """Join the named cluster or start a local Ray, check that one trial fits, and always shut down a Ray
    this study started."""
    import ray

    address = resolve_address(address)
    check_ray_address(address)
    started = init_ray(address)
    try:
        check_trial_fits(resources, started)
        yield
    finally:
        if started:
            ray.shutdown()
