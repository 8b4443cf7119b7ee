"""Shared fixtures: the test run's own redis-server on a free loopback port (never a Redis on 6379).

`redis_server` is one server for the session (no persistence); `redis_url` gives each test its own key
prefix on it (``?prefix=``, understood by the Redis transport) and deletes that test's keys afterwards;
`redis_servers` starts extra servers (``appendonly yes`` for restart tests, a password or ACL user)
and kills every one it started.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

START_TIMEOUT_S = 20.0
_prefixes = itertools.count(1)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process bound to 127.0.0.1, with its files in `directory`."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra_args = extra_args
        self.tls = tls  # (certificate, key): serve TLS only, on `port`
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers (PING, or NOAUTH when it wants a password)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--bind", "127.0.0.1", "--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        if self.tls:
            cert, key = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert)]
            args += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        args += self.extra_args  # later options override earlier ones
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.process.returncode}:\n{log}")
            with contextlib.suppress(OSError), self._connect() as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer within {START_TIMEOUT_S} s")
            time.sleep(0.02)  # waiting for a process we started; tests only

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        if not self.tls:
            return sock
        context = ssl.create_default_context(cafile=str(self.tls[0]))
        return context.wrap_socket(sock, server_hostname="127.0.0.1")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM: it writes its append-only file first; SIGKILL: it does not)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop, then start again on the same port with the same files."""
        self.stop(sig)
        self.start()


class RedisServers:
    """Starts extra servers and stops every one it started."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._servers: list[RedisServer] = []

    def __call__(self, *extra_args: str, appendonly: bool = False, tls: bool = False) -> RedisServer:
        """A new server; `appendonly` keeps its data over restarts, `tls` serves only TLS with a
        self-signed certificate for 127.0.0.1 (`server.tls[0]`, also the CA to trust)."""
        directory = self._root / f"redis-{len(self._servers)}"
        args = (*extra_args, *(("--appendonly", "yes") if appendonly else ()))
        server = RedisServer(directory, extra_args=args, tls=self_signed_certificate(directory) if tls else None)
        self._servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in reversed(self._servers):
            server.stop(signal.SIGKILL)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, made with openssl (the test command installs it)."""
    require_program("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    args = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    args += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    return cert, key


def write_token_file(path: Path, token: str) -> Path:
    """A token file as dagrun accepts one: readable and writable by its owner only."""
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def require_program(name: str) -> None:
    """Fail (not skip) when a program the test command installs is missing: a skip would hide it."""
    if shutil.which(name) is None:
        pytest.fail(f"{name} is not installed; run the README's test command (bash .ci/test.sh), which installs it")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_program("redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


@pytest.fixture
def redis_prefix(redis_server: RedisServer) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"t{os.getpid()}-{next(_prefixes)}:"
    yield prefix
    with redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def redis_url(redis_server: RedisServer, redis_prefix: str) -> str:
    """The session server's URL with this test's prefix: ``redis://127.0.0.1:PORT/0?prefix=...``."""
    return f"{redis_server.url}?prefix={redis_prefix}"


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[RedisServers]:
    require_program("redis-server")
    servers = RedisServers(tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()
