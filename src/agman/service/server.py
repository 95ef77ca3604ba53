"""Running the app on uvicorn: the listening socket (bound before anything is announced), the
checks before serving beyond localhost, and connection guards uvicorn lacks.

uvicorn closes a keep-alive connection idle after a response (``keep_alive``), but not one that
never sends a complete request head (a half-open or slow-loris connection): each holds a file
descriptor for ever, until the server cannot accept any more.  :class:`GuardedH11Protocol` gives
every connection ``header_timeout`` seconds to send its request head (from connecting, or from the
end of the previous response), and keeps at most ``max_connections`` open: past that, the
connection idle the longest is closed to make room (a new one is refused only when every
connection is busy with a request).

At the open-files limit: ``max_connections`` is lowered to what ``RLIMIT_NOFILE`` allows
(:func:`connection_budget`), and so is the number of connections accepted in one event-loop turn
(asyncio accepts up to the listen backlog at once, before any of them can be closed to make room:
a flood of connections took every descriptor).  A failed ``accept()`` is logged once per
``ACCEPT_LOG_SECONDS`` with a count (:class:`AcceptErrorLog`), not once per try with a traceback.
The access log never shows a token (:class:`RedactSecrets`).
"""
from __future__ import annotations

import asyncio
import copy
import errno
import ipaddress
import logging
import re
import resource
import socket
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

from agman.errors import AgmanError, UsageError
from agman.service.limits import LOG_LEVELS, ServiceLimits

log = logging.getLogger(__name__)

LOCAL_NAMES = ["localhost", "127.0.0.1", "[::1]"]  # an IPv6 Host header keeps its brackets
FD_RESERVE = 64  # descriptors kept for the process's own files (libraries, index files, logs)
ACCEPT_LOG_SECONDS = 10.0  # a failing accept() is logged at most once per this many seconds
SECRET_PARAMETER = re.compile(r"(?i)([?&](?:token|access_token)=)[^&#\s]*")


class ListenError(AgmanError):
    """The address cannot be listened on (port in use, address not on this machine, no permission)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) only reaches this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_exposure(host: str, token: str | None, insecure_no_token: bool) -> None:
    """Refuse to serve a non-loopback address without a token unless explicitly asked to."""
    if token or insecure_no_token or is_loopback(host):
        return
    raise UsageError(
        f"--host {host} makes the service reachable from other machines, and no token is set: anyone who can "
        "reach it could search the catalog and read its images. Set a token (AGMAN_TOKEN=<secret> in the "
        "environment, or --token) and send 'Authorization: Bearer <secret>', or pass --insecure-no-token "
        "if the network is trusted (e.g. behind a reverse proxy that authenticates)"
    )


def default_allowed_hosts(host: str, extra: list[str] | None = None) -> list[str]:
    """The ``Host`` names accepted: the bound address (for a wildcard address, this machine's name),
    the loopback names, and ``extra``."""
    names = list(LOCAL_NAMES)
    bare = host.strip("[]")
    if bare in ("0.0.0.0", "::", ""):
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.append(f"[{bare}]" if ":" in bare else bare)
    names += list(extra or [])
    return list(dict.fromkeys(n.lower() for n in names if n))


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket bound and listening on ``host:port`` (port 0: any free port); a clear
    :class:`ListenError` naming the address when it cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: unknown address ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        why = {
            errno.EADDRINUSE: "the port is already in use (another server is running there?); choose another --port",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "the address is not one of this machine's",
        }.get(exc.errno, exc.strerror)
        raise ListenError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def open_files_limit() -> int:
    """The process's open-files limit, its soft limit raised to the hard one first when allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def accept_burst(max_connections: int) -> int:
    """How many connections asyncio may accept in one event-loop turn (uvicorn's ``backlog``, also
    the listen queue): a quarter of the connection cap, so that the cap, one burst and the one
    before it (whose dropped connections close a turn later) fit in the descriptors the cap leaves."""
    return max(4, min(2048, max_connections // 4))


def connection_budget(limits: ServiceLimits) -> int:
    """``limits.max_connections``, lowered to what the open-files limit allows (each connection may
    hold a second descriptor for a spooled upload, and :func:`accept_burst` more may be accepted
    before the idle ones are closed); the soft limit is raised to the hard one first."""
    soft = open_files_limit()
    allowed = (soft - FD_RESERVE) // 2
    if allowed < 8:
        raise AgmanError(f"the open-files limit ({soft}) leaves no room for connections; raise it (ulimit -n)")
    if limits.max_connections > allowed:
        log.warning("max_connections lowered from %d to %d by the open-files limit (%d)",
                    limits.max_connections, allowed, soft)
    return min(limits.max_connections, allowed)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a bound on open connections (see the
    module).  Subclassed per server by :func:`protocol_class` with its settings."""

    header_timeout = 10.0
    max_connections = 1000

    def connection_made(self, transport) -> None:
        self._head_timer = None
        self._idle_since = 0.0
        super().connection_made(transport)
        self._expect_head()
        if len(self.connections) > self.max_connections:
            idle = [c for c in self.connections if c is not self and getattr(c, "_is_idle", lambda: False)()]
            (min(idle, key=lambda c: c._idle_since) if idle else self)._drop()

    def _is_idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _expect_head(self) -> None:
        self._cancel_head_timer()
        self._idle_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._is_idle():
            self._drop()

    def _drop(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head arrived
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._is_idle():
            self._expect_head()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


class AcceptErrorLog:
    """The event loop's exception handler: "socket.accept() out of system resource" (no descriptor
    left for a new connection) logged once per ``interval`` seconds, one line with how often it
    happened meanwhile; anything else goes to asyncio's default handler."""

    def __init__(self, interval: float = ACCEPT_LOG_SECONDS):
        self.interval = interval
        self.last = float("-inf")
        self.suppressed = 0

    def __call__(self, loop, context: dict) -> None:
        if not str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        exc = context.get("exception")
        log.error(
            "cannot accept new connections: %s (open-files limit %d; %d more failed accepts in the last %.0f s); "
            "connections are refused until some close; raise the limit (ulimit -n) or lower --max-connections",
            getattr(exc, "strerror", None) or exc, resource.getrlimit(resource.RLIMIT_NOFILE)[0], self.suppressed,
            min(now - self.last, self.interval),
        )
        self.last, self.suppressed = now, 0


class RedactSecrets(logging.Filter):
    """Access-log lines with the values of secret query parameters (``?token=…``) replaced by
    ``<redacted>``: a browser's first ``/?token=`` request must not leave the token in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(SECRET_PARAMETER.sub(r"\1<redacted>", a) if isinstance(a, str) else a
                                for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = SECRET_PARAMETER.sub(r"\1<redacted>", record.msg)
        return True


def protocol_class(limits: ServiceLimits, max_connections: int) -> type[GuardedH11Protocol]:
    return type("ServerProtocol", (GuardedH11Protocol,),
                {"header_timeout": limits.header_timeout, "max_connections": max_connections})


def access_level(log_level: str) -> str:
    """The access log's level: at least INFO (its lines' level), whatever ``log_level`` says, so
    that asking for the access log shows it."""
    return log_level.upper() if LOG_LEVELS.index(log_level) >= LOG_LEVELS.index("info") else "INFO"


def log_config(log_level: str) -> dict:
    """uvicorn's logging configuration with agman's own loggers on its handler at ``log_level``."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["agman"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    return config


def server_config(app, sock: socket.socket, limits: ServiceLimits, forwarded_allow_ips: str | None = None,
                  log_level: str = "warning", access_log: bool = False):
    """The uvicorn configuration :func:`serve` runs (logging set up as it is made)."""
    import uvicorn

    if log_level not in LOG_LEVELS:
        raise UsageError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    max_connections = connection_budget(limits)
    config = uvicorn.Config(
        app,
        http=protocol_class(limits, max_connections),
        backlog=accept_burst(max_connections),
        timeout_keep_alive=int(max(1, round(limits.keep_alive))),
        log_config=log_config(log_level),
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        forwarded_allow_ips=forwarded_allow_ips,
    )
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())
    if access_log:  # uvicorn has set each of its loggers to log_level
        access.setLevel(access_level(log_level))
    return config


def _guarded_server(config):
    """A uvicorn Server whose event loop logs failed accepts through :class:`AcceptErrorLog`."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
            await super().startup(sockets=sockets)

    return Server(config)


def serve(app, sock: socket.socket, limits: ServiceLimits, forwarded_allow_ips: str | None = None,
          log_level: str = "warning", access_log: bool = False) -> None:
    """Serve ``app`` on the listening ``sock`` until interrupted; ``log_level`` one of
    :data:`LOG_LEVELS`, ``access_log`` one line per request."""
    _guarded_server(server_config(app, sock, limits, forwarded_allow_ips, log_level, access_log)).run(sockets=[sock])
