"""Tracking URIs without their secrets: the one redaction rule, and where a URI's credentials go instead.

A study writes its tracking URI into study.json, study.yaml, the parent run's params and artifacts, Tune's
pickles, report.md and every message it prints -- all of which people other than its author read. So a URI
such as `http://user:pw@host` is cut at the door: its credentials move into the environment variables the
store's client reads for this process (MLflow's MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN, PostgreSQL's
PGUSER / PGPASSWORD), and from then on the process only ever holds the URI without them. A later command
on the same study (resume, report, sync, debug --from-run) needs those variables set.
"""
from __future__ import annotations

import os
import re
import sys
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from trainables.errors import ConfigError

# Query parameters whose value is a secret (names compared in lower case without - and _): passwords, tokens,
# API and access keys, signatures (S3/Azure presigned URLs). `sslkey`, a path, is not one.
SECRET_PARAM = re.compile(r"passw|pwd|token|secret|credential|signature|apikey|accesskey|privatekey"
                          r"|^(key|sig|auth|authorization|code)$")
# Userinfo (`scheme://user:password@`) anywhere in a text; the part before the last @ of the authority.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@'\"]*@")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`)]+")

# Where a URI's credentials can go, by scheme: (user variable, password variable, token variable).
_HTTP = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_POSTGRES = ("PGUSER", "PGPASSWORD", None)  # libpq reads them (psycopg, SQLAlchemy's default driver)
_noted: set[str] = set()


def is_secret_param(name: str) -> bool:
    return bool(SECRET_PARAM.search(name.lower().replace("-", "").replace("_", "")))


def redact(uri: str) -> str:
    """`uri` without userinfo and without secret-looking query parameters (the one redaction rule)."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # not a URL at all (e.g. an unbalanced IPv6 bracket): cut whatever looks like userinfo
        return _USERINFO.sub(r"\g<scheme>", uri)
    netloc = parts.netloc.rpartition("@")[2]
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not is_secret_param(k)]
    if netloc == parts.netloc and len(query) == len(parse_qsl(parts.query, keep_blank_values=True)):
        return uri  # nothing secret: the URI exactly as given
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))


def redact_text(text: str) -> str:
    """Every URL in a message redacted (an error from a library may quote the URI it was given)."""
    return _URL.sub(lambda m: redact(m.group(0)), _USERINFO.sub(r"\g<scheme>", text))


def adopt(uri: str, field: str = "tracking_uri") -> str:
    """The URI to use and store: without credentials, which move into the client's environment variables for
    this process (said once, on stdout). A secret that no variable can carry is refused: storing it is the
    alternative. `field` names the setting in that error."""
    clean = redact(uri)
    if clean == uri:
        return uri
    parts = urlsplit(uri)
    scheme = parts.scheme.lower().split("+")[0]
    names = _HTTP if scheme in ("http", "https") else _POSTGRES if scheme in ("postgresql", "postgres") else None
    moved: dict[str, str] = {}
    user, at, _ = parts.netloc.rpartition("@")
    if at:
        if names is None:
            raise ConfigError(f"{field}: '{clean}' carries a user name or password, which every record of the study "
                              f"would keep; give them through the store's own configuration instead (in the URI "
                              f"only for http(s) and postgresql, whose credentials mmstudy passes through the "
                              f"environment)")
        name, colon, password = user.partition(":")
        moved.update({names[0]: unquote(name)} if name else {})
        moved.update({names[1]: unquote(password)} if colon else {})
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if not is_secret_param(key):
            continue
        normal = key.lower().replace("-", "").replace("_", "")
        target = (names[2] if names and normal in ("token", "accesstoken") else
                  names[1] if names and scheme.startswith("postgres") and normal == "password" else None)
        if target is None:
            raise ConfigError(f"{field}: '{clean}' would need its query parameter '{key}' (a secret), which every "
                              f"record of the study would keep; give it through the store's own configuration "
                              f"instead (e.g. MLFLOW_TRACKING_TOKEN for a bearer token)")
        moved[target] = value
    os.environ.update(moved)
    if moved and clean not in _noted:
        _noted.add(clean)
        print(f"mmstudy: the tracking URI's credentials are used from {', '.join(sorted(moved))} for this command; "
              f"records keep '{clean}' without them, so set those variables for resume, report, sync and "
              f"debug --from-run", file=sys.stdout, flush=True)
    return clean


def adopt_environment() -> str | None:
    """$MLFLOW_TRACKING_URI adopted, and rewritten without its credentials (Ray workers and MLflow's own
    default read it too); None when it is not set."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    clean = adopt(uri, "MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = clean
    return clean
