"""Where the API server is and how the operator logs in: the in-cluster service account or a kubeconfig.

The operator's client (``client.Kube``) needs six facts: the server's URL, the CA, a client
certificate or a bearer token, whether to verify TLS, the TLS server name and a proxy. This
module reads them itself in the two cases an operator meets, the same way client-go does:

- **In a pod**: ``KUBERNETES_SERVICE_HOST``/``PORT`` and the service account's files. The
  projected token is rotated by the kubelet (bound tokens expire), so it is read again once a
  minute, as client-go does; a token read once would be refused after an hour.
- **A kubeconfig** (``--kubeconfig``, ``$KUBECONFIG``, which may list files merged first-wins, or
  ``~/.kube/config``): the current context's cluster (``server``, ``certificate-authority[-data]``,
  ``insecure-skip-tls-verify``, ``tls-server-name``, ``proxy-url``) and user (``client-certificate
  [-data]``, ``client-key[-data]``, ``token``, ``tokenFile``). Relative paths are relative to the
  file that names them.

A kubeconfig user that needs a plugin to log in (``exec``, as EKS and GKE write them, or the
old ``auth-provider``) or basic auth is handed to the ``kubernetes`` package's loader, which
runs those plugins and refreshes their tokens; only then is that package imported.

Why not always the ``kubernetes`` package: importing it (``kubernetes.client``'s 800-odd model
classes, ``kubernetes.dynamic`` and the JSON-schema validator it pulls in) costs the operator
12 MB of its resident set, and kopf imports the whole package too whenever it is importable.
The operator's process marks it unimportable when this module did not need it
(``kube/cli.py``); the memory figures are in bench/README.md ("Memory and restart").
"""

from __future__ import annotations

import atexit
import base64
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

#: Seconds a token file's content is trusted before it is read again (client-go: one minute).
TOKEN_REREAD_SECONDS = 60.0


class LoginError(ValueError):
    """A kubeconfig or service account the operator cannot log in with (says which field)."""


def _no_token() -> str | None:
    return None


@dataclass(frozen=True)
class Connection:
    """The API server and the operator's credentials for it."""

    host: str
    ca_file: str | None = None
    ca_data: str | None = None
    """PEM text."""
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    proxy: str | None = None
    authorization: Callable[[], str | None] = field(default=_no_token, compare=False)
    """The Authorization header's value now (``Bearer <token>``), or None."""
    via_kubernetes: bool = False
    """Whether the ``kubernetes`` package had to log in (an exec plugin or auth provider)."""

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file or None, cadata=self.ca_data or None)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file or None)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class TokenFile:
    """``Bearer <the file's token>``, read again when older than ``every`` seconds."""

    def __init__(self, path: str | Path, every: float = TOKEN_REREAD_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.every = every
        self.clock = clock
        self._token = ""
        self._read_at: float | None = None

    def __call__(self) -> str | None:
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.every:
            try:
                self._token = self.path.read_text(encoding="utf-8").strip()
            except OSError:
                if self._read_at is None:
                    raise
            self._read_at = now
        return f"Bearer {self._token}" if self._token else None


def connect(kubeconfig: str | None = None) -> Connection:
    """The in-cluster service account when running in a pod (and no kubeconfig is named), else the kubeconfig."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster()
    paths = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    return from_kubeconfig([p for p in paths.split(os.pathsep) if p])


def in_cluster(environ: Mapping[str, str] | None = None, account: Path = SERVICE_ACCOUNT) -> Connection:
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise LoginError("KUBERNETES_SERVICE_HOST is not set: not running in a pod")
    if not (account / "token").exists():
        raise LoginError(f"{account / 'token'} does not exist: the pod has no service account token mounted")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return Connection(
        host=f"https://{host}:{port}",
        ca_file=str(account / "ca.crt"),
        authorization=TokenFile(account / "token"),
    )


def from_kubeconfig(paths: list[str]) -> Connection:
    import yaml

    if not paths:
        raise LoginError("no kubeconfig: set KUBECONFIG or write ~/.kube/config")
    current: str | None = None
    named: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {"contexts": {}, "clusters": {}, "users": {}}
    for raw in paths:
        path = Path(os.path.expanduser(raw))
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise LoginError(f"kubeconfig {path}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise LoginError(f"kubeconfig {path}: not YAML ({e})") from None
        if not isinstance(config, dict):
            raise LoginError(f"kubeconfig {path}: expected a mapping at the top")
        current = current or config.get("current-context")
        for section, entries in named.items():
            single = section[:-1]
            for item in config.get(section) or []:
                if isinstance(item, dict) and item.get("name") not in entries:
                    entries[str(item.get("name"))] = (item.get(single) or {}, path.parent)
    if not current:
        raise LoginError(f"kubeconfig {os.pathsep.join(paths)}: current-context is not set")
    if current not in named["contexts"]:
        raise LoginError(f"kubeconfig: current-context {current!r} is not among its contexts")
    context, _ = named["contexts"][current]
    for section in ("clusters", "users"):
        if context.get(section[:-1]) not in named[section]:
            raise LoginError(f"kubeconfig: context {current!r} names {section[:-1]} {context.get(section[:-1])!r}, "
                             f"which is not among its {section}")
    cluster, cluster_dir = named["clusters"][context["cluster"]]
    user, user_dir = named["users"][context["user"]]
    if not cluster.get("server"):
        raise LoginError(f"kubeconfig: cluster {context['cluster']!r} has no server")
    if user.get("exec") or user.get("auth-provider") or user.get("username"):
        return _via_kubernetes(os.pathsep.join(paths))

    def file(entry: dict[str, Any], key: str, base: Path) -> str | None:
        value = entry.get(key)
        return str(base / os.path.expanduser(str(value))) if value else None

    cert_file, key_file = file(user, "client-certificate", user_dir), file(user, "client-key", user_dir)
    if user.get("client-certificate-data"):
        cert_file = key_file = _private_file(
            _pem(user["client-certificate-data"], "client-certificate-data")
            + "\n" + _pem(user.get("client-key-data") or "", "client-key-data")
        )
    token_file = file(user, "tokenFile", user_dir)
    authorization: Callable[[], str | None] = _no_token
    if user.get("token"):
        bearer = f"Bearer {user['token']}"
        authorization = lambda: bearer  # noqa: E731
    elif token_file:
        authorization = TokenFile(token_file)
    return Connection(
        host=str(cluster["server"]),
        ca_file=file(cluster, "certificate-authority", cluster_dir),
        ca_data=_pem(cluster["certificate-authority-data"], "certificate-authority-data")
        if cluster.get("certificate-authority-data") else None,
        cert_file=cert_file,
        key_file=key_file,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name") or None,
        proxy=_proxy(cluster.get("proxy-url")),
        authorization=authorization,
    )


def from_configuration(configuration: Any) -> Connection:
    """A ``kubernetes.client.Configuration`` as a Connection (its hook refreshes plugin tokens)."""

    def authorization() -> str | None:
        bearer = configuration.auth_settings().get("BearerToken")
        return str(bearer["value"]) if bearer and bearer.get("value") else None

    return Connection(
        host=str(configuration.host).rstrip("/"),
        ca_file=configuration.ssl_ca_cert or None,
        ca_data=configuration.ca_cert_data or None,
        cert_file=configuration.cert_file or None,
        key_file=configuration.key_file or None,
        insecure=not configuration.verify_ssl,
        tls_server_name=configuration.tls_server_name or None,
        proxy=_proxy(configuration.proxy),
        authorization=authorization,
        via_kubernetes=True,
    )


def _via_kubernetes(paths: str) -> Connection:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=paths, client_configuration=configuration, persist_config=False)
    return from_configuration(configuration)


def _proxy(url: Any) -> str | None:
    """The kubeconfig's proxy-url (client-go uses it for every request; aiohttp speaks HTTP proxies only)."""
    if not url:
        return None
    if not str(url).startswith(("http://", "https://")):
        raise LoginError(f"proxy-url {url}: the operator speaks to HTTP(S) proxies only")
    return str(url)


def _pem(data: str, key: str) -> str:
    try:
        return base64.b64decode(data, validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise LoginError(f"kubeconfig: {key} is not base64-encoded PEM") from None


def _private_file(text: str) -> str:
    """A file only this user can read, removed at exit (the ssl module loads certificates from files only)."""
    fd, path = tempfile.mkstemp(prefix="mlvisor-client-", suffix=".pem")
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    atexit.register(_remove, path)
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
