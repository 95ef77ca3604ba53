"""A real Milvus standalone server for the tests: ``milvus-server`` (PyPI ``milvus`` 2.3.x, embedded
etcd, local storage) in a temporary folder, on free ports, stopped as a whole process group.

Every port is chosen free: the proxy (gRPC, the URI), the internal ones, and the embedded etcd's
client and peer ports — ``milvus-server --etcd-port`` only tells Milvus where etcd is, the embedded
etcd itself listens on 2379/2380 unless its own config file (``ETCD_CONFIG_PATH``, read by Milvus
through its environment overrides) says otherwise, so two servers on one machine would collide.
``milvus-server`` is a Python wrapper around ``milvus run standalone``: a SIGTERM to the wrapper
leaves the child holding the ports, so the server runs in its own session and :meth:`stop`
signals the whole group, waits for the proxy port to close, then kills what is left.

A restart (:meth:`kill` then :meth:`start`) keeps the data folder and every port.  The wrapper
checks each port by binding it without ``SO_REUSEADDR`` and, if that fails, silently takes the next
free one: after a SIGKILL the dead server's connections sit in TIME_WAIT for 60 s, so a restart
at once came up on another proxy port (a client waiting on the old URI saw "no server" for
minutes).  :meth:`start` therefore waits until every port can be bound that way, and checks the
proxy port the wrapper wrote into ``configs/milvus.yaml``.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PORT_OPTIONS = (
    "--root-coord-port", "--proxy-port", "--proxy-internal-port", "--query-coord-port", "--query-node-port",
    "--index-coord-port", "--index-node-port", "--data-coord-port", "--data-node-port",
)
START_TIMEOUT = 180.0  # seconds: a cold start on 2 busy cores


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def bindable(port: int) -> bool:
    """Whether ``port`` can be bound without ``SO_REUSEADDR`` (as the ``milvus-server`` wrapper checks)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_bindable(ports: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(bindable(p) for p in ports):
        if time.monotonic() > deadline:
            raise TimeoutError(f"ports {ports} still in use after {timeout:g} s")
        time.sleep(0.5)


def executable() -> str | None:
    """The ``milvus-server`` command of this Python's environment (or on PATH), None without the package."""
    here = Path(sys.executable).parent / "milvus-server"
    return str(here) if here.is_file() else shutil.which("milvus-server")


class MilvusServer:
    """One ``milvus-server`` process group: :meth:`start`, :meth:`stop`, :meth:`pause` / :meth:`resume`
    (SIGSTOP / SIGCONT: an outage without a restart), :attr:`uri`."""

    def __init__(self, data: Path, *, authorization: bool = False):
        self.data = Path(data)
        self.authorization = authorization
        self.proc: subprocess.Popen | None = None
        self.ports: list[int] = []  # chosen at the first start, kept by a restart
        self.port = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> MilvusServer:
        exe = executable()
        if exe is None:
            raise FileNotFoundError("milvus-server not found: pip install 'milvus>=2.3,<=2.3.5'")
        self.data.mkdir(parents=True, exist_ok=True)
        if self.ports:  # a restart: the old ports, once the wrapper's bind check can take them again
            wait_bindable(self.ports, timeout)
        self.ports = self.ports or free_ports(len(PORT_OPTIONS) + 2)
        etcd, peer, rest = self.ports[0], self.ports[1], self.ports[2:]
        etcd_config = self.data / "etcd-embed.yaml"
        etcd_config.write_text(
            f"listen-client-urls: http://127.0.0.1:{etcd}\nadvertise-client-urls: http://127.0.0.1:{etcd}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n"
        )
        cmd = [exe, "--data", str(self.data), "--etcd-port", str(etcd)]
        for option, port in zip(PORT_OPTIONS, rest):
            cmd += [option, str(port)]
        if self.authorization:
            cmd += ["--authorization-enabled", "true"]
        self.port = rest[PORT_OPTIONS.index("--proxy-port")]
        env = dict(os.environ, ETCD_CONFIG_PATH=str(etcd_config))
        # small: few threads and caches (2 cores shared by many processes in CI)
        env.update(GOMAXPROCS="2", QUERYNODE_SEGCORE_KNOWHERETHREADPOOLNUMRATIO="1")
        self.log = (self.data / "milvus-server.out").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.wait_ready(timeout)
        return self

    def configured_port(self) -> int | None:
        """The proxy port the wrapper wrote into ``configs/milvus.yaml`` (None before it wrote it)."""
        try:
            text = (self.data / "configs" / "milvus.yaml").read_text()
        except OSError:
            return None
        section = text.split("\nproxy:\n", 1)[-1]
        for line in section.splitlines():
            if line.startswith("  port:"):
                return int(line.split(":")[1].split("#")[0])
            if line and not line.startswith(" "):
                break
        return None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until a client lists collections (the proxy port alone opens before Milvus serves)."""
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-server exited with {self.proc.returncode}; see {self.data}/logs")
            moved = self.configured_port()
            if moved not in (None, self.port):
                self.stop()
                raise RuntimeError(f"milvus-server took proxy port {moved}, not {self.port} (port in use)")
            if port_open(self.port):
                try:
                    client = MilvusClient(uri=self.uri, token="root:Milvus" if self.authorization else "", timeout=3)
                    client.list_collections()
                    client.close()
                    return
                except Exception as exc:  # noqa: BLE001 - not ready yet
                    last = exc
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"milvus-server did not serve at {self.uri} within {timeout:g} s (last: {last})")

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash: no graceful stop); :meth:`start` restarts it."""
        self._signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()
        self.proc = None

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the whole group, wait for the proxy port to close, then SIGKILL the group."""
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (self.proc.poll() is None or port_open(self.port)):
            time.sleep(0.2)
        self._signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()
        self.proc = None
