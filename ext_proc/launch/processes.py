"""Start, watch and stop the child processes of a Babelgate stack (Envoy, ext_proc servers, demo providers)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class LaunchError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Supervisor:
    """Owns every process it starts and stops them all, newest first."""

    log_dir: Path | None = None
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              stdout: int | None = None) -> Child:
        """Start a child in its own session; its output goes to `log_dir/<name>.log` when a log dir is set."""
        log_path = self.log_dir / f"{name}.log" if self.log_dir is not None else None
        log_file: IO | None = log_path.open("ab") if log_path is not None else None
        try:
            process = subprocess.Popen(
                list(argv), env={**os.environ, **(env or {})},
                stdout=stdout if stdout is not None else log_file, stderr=log_file, start_new_session=True)
        finally:
            if log_file is not None:
                log_file.close()
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def start_reporting(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
                        timeout: float = 20.0) -> tuple[Child, dict]:
        """Start a child that prints one JSON line when it is ready (its port, typically) and return that line."""
        child = self.start(name, argv, env, stdout=subprocess.PIPE)
        assert child.process.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(child.process.stdout.fileno(), False)
        buffer = b""
        while time.monotonic() < deadline:
            chunk = child.process.stdout.read() or b""
            buffer += chunk
            if b"\n" in buffer:
                return child, json.loads(buffer.split(b"\n", 1)[0])
            if not child.alive():
                raise LaunchError(f"{name} exited with code {child.process.returncode} before it was ready\n"
                                  f"{child.log_tail()}")
            time.sleep(0.02)
        raise LaunchError(f"{name} did not report ready within {timeout:.0f}s")

    def check(self) -> None:
        for child in self.children:
            if not child.alive():
                raise LaunchError(f"{child.name} exited with code {child.process.returncode}\n{child.log_tail()}")

    def signal_all(self, sig: int, skip: Sequence[str] = ()) -> None:
        for child in self.children:
            if child.name not in skip and child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(sig)

    def stop_all(self, timeout: float = 10.0) -> None:
        for child in reversed(self.children):
            if child.alive():
                _signal(child.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(child.process, signal.SIGKILL)
                child.process.wait(5)
            if child.process.stdout is not None:
                child.process.stdout.close()
        self.children.clear()


def _signal(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (N ext_proc processes listen on port, port+1, ...)."""
    for _ in range(100):
        first = free_port(host)
        if all(_bindable(host, first + offset) for offset in range(1, count)):
            return first
    raise LaunchError(f"no run of {count} free ports found on {host}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float, supervisor: Supervisor | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if supervisor is not None:
                supervisor.check()
            time.sleep(0.05)
    raise LaunchError(f"nothing listened on {host}:{port} within {timeout:.0f}s")


def wait_for_envoy(admin_port: int, timeout: float, supervisor: Supervisor | None = None) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{admin_port}/ready"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if supervisor is not None:
            supervisor.check()
        time.sleep(0.05)
    raise LaunchError(f"Envoy was not ready within {timeout:.0f}s")
