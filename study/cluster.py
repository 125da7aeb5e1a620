"""The Ray a study runs on: a cluster named by address, or a local Ray started (and stopped) for the study.

What a local Ray exposes (docs/cluster.md, "What listens where"): Ray 2.60 has no public setting that binds a
node to 127.0.0.1 (on Linux `--node-ip-address=127.0.0.1` is replaced by the machine's address), so its GCS,
raylet, object manager and worker ports listen on every interface and its agents on the machine's address;
Ray's token authentication (on by default for a local Ray) is what guards them, so mmstudy keeps the token
file private and warns when `RAY_AUTH_MODE=disabled` turns it off.
"""
from __future__ import annotations

import json
import os
import socket
import stat
from contextlib import contextmanager
from pathlib import Path
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


# Set by Ray's job supervisor in the environment of every entrypoint it starts (`ray job submit`): the job's
# runtime_env and metadata, which ray.init reads back. Its presence is how a driver knows it runs as a Ray job.
JOB_DRIVER_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_working_dir() -> Path | None:
    """The uploaded working directory this driver runs in when it is a Ray job submitted with --working-dir
    (a temporary copy on the head node, deleted with the job's runtime environment), else None."""
    raw = os.environ.get(JOB_DRIVER_ENV)
    if raw is None:
        return None
    try:
        uploaded = (json.loads(raw).get("runtime_env") or {}).get("working_dir")
    except (ValueError, AttributeError):
        uploaded = None
    return Path.cwd().resolve() if uploaded else None


def local_store_path(tracking_uri: str) -> str | None:
    """The file or folder of an MLflow store kept on this machine (sqlite, file: or a plain path), else None
    for a server. 'sqlite://' (in memory) is '' -- a store that ends with the process."""
    if tracking_uri.startswith("sqlite:"):
        return tracking_uri[len("sqlite:///"):] if tracking_uri.startswith("sqlite:///") else ""
    if tracking_uri.startswith("file:"):
        return tracking_uri[len("file://"):] if tracking_uri.startswith("file://") else tracking_uri[len("file:"):]
    return None if "://" in tracking_uri else tracking_uri


def check_job_paths(storage: str | Path, tracking_uri: str, storage_field: str = "storage_path") -> None:
    """Refuse, before anything is written, a study whose folder or MLflow store would live in the driver's
    working directory when it runs as a Ray job: that directory is a temporary copy of the submitted one, so
    a relative storage_path (default 'runs') or the default sqlite:///mlflow.db would be lost with the job."""
    if JOB_DRIVER_ENV not in os.environ:
        return
    uploaded = job_working_dir()
    store = local_store_path(tracking_uri)
    for field, value, path in ((storage_field, str(storage), str(storage)), ("tracking_uri", tracking_uri, store)):
        if path is None:
            continue  # a tracking server
        inside = not path or not os.path.isabs(path) or (
            uploaded is not None and Path(path).resolve().is_relative_to(uploaded))
        if inside:
            raise ConfigError(
                f"{field}: '{value}' would be written inside this Ray job's working directory ({Path.cwd()}), a "
                f"temporary copy that Ray deletes; a study submitted as a Ray job needs an absolute storage_path on "
                f"storage every node shares (storage_path=/shared/studies) and a tracking server or an absolute "
                f"store (--tracking-uri http://HOST:5000 or sqlite:////shared/mlflow.db)")


def warn_if_auth_disabled() -> None:
    """Ray's token is what guards its ports (see the module docstring); say so when it is switched off."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        print("mmstudy: warning: RAY_AUTH_MODE=disabled turns off Ray's token authentication: anyone who can reach "
              "this machine's Ray ports (they listen on every interface) can run code as you; unset it or set "
              "RAY_AUTH_MODE=token", flush=True)


def keep_token_private() -> None:
    """Make the token file a local Ray will use readable by its owner only. Ray writes ~/.ray/auth_token
    with the process umask (0644 by default); an existing file is opened for writing, not replaced, so an
    empty placeholder created here 0600 keeps that mode once Ray puts a fresh token in it. A token given in
    RAY_AUTH_TOKEN has no file; a RAY_AUTH_TOKEN_PATH file is tightened but never created (Ray refuses a
    missing one, and that must stay an error)."""
    if os.environ.get("RAY_AUTH_MODE", "token").strip().lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named) if named else Path.home() / ".ray" / "auth_token"
    if not named and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # made meanwhile by another Ray: tightened below
    try:
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            path.chmod(0o600)
    except OSError:
        pass  # no file (Ray reports a missing RAY_AUTH_TOKEN_PATH itself) or one we may not change


def init_ray(address: str | None) -> bool:
    """Connect to the cluster at `address`, or (None) start a local Ray. Returns True if we started it (and
    so must stop it). Token authentication stays on (Ray's default for a local Ray), its file private."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        keep_token_private()
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
    warn_if_auth_disabled()
    check_ray_address(address)
    started = init_ray(address)
    try:
        check_trial_fits(resources, started)
        yield
    finally:
        if started:
            ray.shutdown()
