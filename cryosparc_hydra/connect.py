"""Open a CryoSPARC session: URL, credentials (arguments, environment, prompt or the saved login),
and a server / cryosparc-tools version check at major.minor.
"""
from __future__ import annotations

import getpass
import os
import sys
import warnings
from typing import Optional
from urllib.parse import urlparse

from hydrapicker.errors import UserFacingError

from . import compat
from .extra import require


class ConnectionSetupError(UserFacingError):
    """Cannot connect to or log into CryoSPARC."""


class VersionMismatchError(UserFacingError):
    """The server and the installed cryosparc-tools differ at major.minor."""


def normalise_url(url: str) -> str:
    """Add ``http://`` when the scheme is missing (cryosparc-tools 5.0.3 requires one)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


def resolve_url(url: Optional[str]) -> str:
    url = url or os.environ.get("CRYOSPARC_URL") or os.environ.get("CRYOSPARC_BASE_URL")
    if not url:
        host = os.environ.get("CRYOSPARC_MASTER_HOSTNAME")
        port = os.environ.get("CRYOSPARC_BASE_PORT")
        if host:
            url = f"http://{host}:{port or 39000}"
    if not url:
        raise ConnectionSetupError(
            "no CryoSPARC URL: pass --url http://HOST:PORT (the address of the web interface), "
            "or set CRYOSPARC_URL")
    return normalise_url(url)


def saved_login_url(url: str, email: Optional[str]) -> Optional[str]:
    """The spelling of ``url`` under which ``python -m cryosparc.tools login`` saved a (non-expired) token
    (5.x), or None: the look-up is by exact key, and a login made with ``--url http://host:39000/`` is
    saved with its trailing slash, which :func:`normalise_url` strips."""
    try:
        auth = require("cryosparc.auth")
        sessions = auth.InstanceAuthSessions.load()
        for form in (url, url.rstrip("/") + "/"):
            if sessions.find(form, email) is not None:
                return form
    except Exception:
        pass
    return None


def _saved_login(url: str, email: Optional[str]) -> bool:
    """True when a saved login exists for ``url`` in either spelling (see :func:`saved_login_url`)."""
    return saved_login_url(url, email) is not None


def resolve_credentials(url: str, email=None, password=None, interactive: Optional[bool] = None):
    """``(email, password)``, or ``(email or None, None)`` when a saved login will be used."""
    email = email or os.environ.get("CRYOSPARC_EMAIL")
    password = password or os.environ.get("CRYOSPARC_PASSWORD")
    if email and password:
        return email, password
    if not compat.is_v4() and _saved_login(url, email):
        return email, None
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        if not email:
            email = input(f"CryoSPARC email for {url}: ").strip()
        password = getpass.getpass(f"CryoSPARC password for {email}: ")
        if email and password:
            return email, password
    raise ConnectionSetupError(
        f"no CryoSPARC credentials for {url}: set CRYOSPARC_EMAIL and CRYOSPARC_PASSWORD, or log in "
        f"once with: python -m cryosparc.tools login --url {url}")


def check_versions(server: str, tools: str) -> None:
    """Raise :class:`VersionMismatchError` when major.minor differ (a server ``develop`` build passes)."""
    s, t = compat.major_minor(server), compat.major_minor(tools)
    if s is None or t is None or s == t:
        return
    raise VersionMismatchError(
        f"CryoSPARC server {server} needs cryosparc-tools {s[0]}.{s[1]}.x, but {tools} is installed; "
        f'fix with: pip install "cryosparc-tools~={s[0]}.{s[1]}.0"')


def connect(url=None, email=None, password=None, *, interactive=None, log=print):
    """A connected ``cryosparc.tools.CryoSPARC`` after the version check."""
    tools = require("cryosparc.tools")
    url = resolve_url(url)
    email, password = resolve_credentials(url, email, password, interactive)
    if password is None and not compat.is_v4():
        url = saved_login_url(url, email) or url  # cryosparc-tools finds the saved token by this exact key
    version = compat.tools_version()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the version warning: checked below, as an error
            if compat.is_v4():
                parsed = urlparse(url)
                cs = tools.CryoSPARC(license=os.environ.get("CRYOSPARC_LICENSE_ID"),
                                     host=parsed.hostname, base_port=parsed.port or 39000,
                                     email=email, password=password)
            else:
                cs = tools.CryoSPARC(url, host=None, base_port=None, email=email, password=password)
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        cause = exc.__cause__ or exc
        raise ConnectionSetupError(
            f"could not connect to CryoSPARC at {url} with cryosparc-tools {version}: {first} "
            f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}). Check the URL "
            f"(the web interface address, base port), the credentials, and that the server's major.minor "
            f"version matches cryosparc-tools (a v4.x server needs: pip install \"cryosparc-tools~=4.7.0\")"
        ) from exc
    server = compat.server_version(cs)
    check_versions(server, version)
    log(f"Connected to CryoSPARC {server} at {url} (cryosparc-tools {version})")
    return cs
