"""Real `redis-server` processes for tests: one standalone server, or a Redis Cluster of masters.

Servers listen on free 127.0.0.1 ports, keep nothing on disk (`--save "" --appendonly no`), and can be stopped
(gracefully or killed), frozen and started again on the SAME port, so tests can take Redis away mid-load and bring
it back. Whoever starts one stops it: use them as context managers or in fixtures with a finalizer.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ext_proc.launch.processes import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
CLUSTER_SLOTS = 16384


def free_ports(count: int) -> list[int]:
    """Distinct free ports, below the kernel's ephemeral range (see `free_port`)."""
    return [free_port() for _ in range(count)]


def _ask(port: int, *words: str, timeout: float = 0.5) -> bytes:
    """One command over a raw socket (inline protocol); the reply's payload."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(" ".join(words).encode() + b"\r\n")
        reply = b""
        while b"\r\n" not in reply:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError(f"redis on port {port} closed the connection")
            reply += chunk
        header, _, body = reply.partition(b"\r\n")
        if not header.startswith(b"$"):
            return header
        size = int(header[1:])
        while len(body) < size + 2:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError(f"redis on port {port} closed the connection")
            body += chunk
        return body[:size]


class RedisServer:
    """One redis-server. `start()` picks a free port the first time and reuses it on every restart."""

    def __init__(self, directory: Path, *, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.directory = Path(directory)
        self.port = port or free_ports(1)[0]
        self.extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--daemonize", "no", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if _ask(self.port, "PING").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.directory}/redis.log")
            time.sleep(0.01)

    def stop(self, *, kill: bool = False) -> None:
        """Graceful shutdown (SIGTERM), or SIGKILL with `kill=True`: the crash a deployment can suffer."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered, like a hung or overloaded Redis."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class RedisClusterServers:
    """A Redis Cluster of `masters` masters and no replicas, each node a `RedisServer` with its own directory and
    an explicit cluster bus port (so the classic `port + 10000` need not be free)."""

    def __init__(self, directory: Path, *, masters: int = 3) -> None:
        self.directory = Path(directory)
        ports = free_ports(2 * masters)
        self.nodes: list[RedisServer] = []
        for index in range(masters):
            port, bus_port = ports[2 * index], ports[2 * index + 1]
            self.nodes.append(RedisServer(
                self.directory / f"node{index}", port=port,
                extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-port", str(bus_port), "--cluster-node-timeout", "1000")))

    @property
    def url(self) -> str:
        """Any node works as the client's startup node; the client discovers the rest."""
        return self.nodes[0].url

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        try:
            for node in self.nodes:
                node.start()
            created = subprocess.run(
                [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            self.wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Every node must agree the cluster is up and every slot is served before clients are pointed at it."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [_ask(port, "CLUSTER", "INFO").decode() for port in self.ports]
            if all("cluster_state:ok" in info and f"cluster_slots_ok:{CLUSTER_SLOTS}" in info
                   and f"cluster_known_nodes:{len(self.nodes)}" in info for info in infos):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("Redis Cluster did not become ready:\n" + "\n".join(infos))
            time.sleep(0.05)

    def __enter__(self) -> RedisClusterServers:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
