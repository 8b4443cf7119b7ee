"""The zygote: a process that has loaded everything scripts can reach, runs no script, and forks the
sandbox children of one pool, each of which then confines itself and serves.

A fresh interpreter that loads the sandbox costs ~150 ms; a fork of this one a few ms. That is what lets a
pool give every run (every trust domain) children of its own, replaced when another run needs them,
without losing the warm-pool speed. The zygote is started clean like a child used to be (`-I -S -B`,
empty environment, its own session) and is never confined itself: children confine themselves after the
fork (`child.prepare`), so no script ever runs in a process that outlives its run.

It speaks `protocol` on a Unix SOCK_SEQPACKET socket on fd 0 (one message per datagram, file descriptors
attached): the configuration first, then a fork request with the child's stdin and stdout, answered with the
child's pid and a pidfd. The zygote reaps its children; it exits when the parent closes the socket, and dies
with the parent.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
from typing import NoReturn

from dagrun.sandbox import confinement, protocol
from dagrun.sandbox.child import Channel, die_with, prepare, run_child
from dagrun.sandbox.protocol import ChildConfig
from dagrun.sandbox.runner import StepRunner

_CHILD_FDS = 2  # its stdin and stdout
_children: set[int] = set()  # forked and not reaped yet


def main() -> NoReturn:
    control = socket.socket(fileno=0)
    sys.stdout = sys.stderr  # /dev/null: fd 0 is the protocol
    config = protocol.parse_config(control.recv(protocol.MAX_ZYGOTE_MESSAGE_BYTES))
    die_with(os.getppid())
    StepRunner(config.settings, {})  # loads every module a script can reach, once
    seccomp = confinement.compile_seccomp()  # once for every child; finding libseccomp runs ldconfig
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake select: children are reaped below
    gc.collect()
    gc.freeze()  # what every child shares stays out of collections, so its pages stay shared
    while True:
        readable, _, _ = select.select([control.fileno(), wakeup_read], [], [])
        if wakeup_read in readable:
            os.read(wakeup_read, 4096)
            _reap()
        if 0 in readable:
            _fork_one(control, config, seccomp)


def _fork_one(control: socket.socket, config: ChildConfig, seccomp: bytes | None) -> None:
    message, fds, _flags, _address = socket.recv_fds(control, protocol.MAX_ZYGOTE_MESSAGE_BYTES, _CHILD_FDS)
    if not message:  # the parent closed the socket: the pool is gone, and so must its children be
        _end_children()
        os._exit(0)
    if len(fds) != _CHILD_FDS or not protocol.is_fork(message):
        os._exit(1)
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        control.detach()  # fd 0 becomes the child's stdin: this object must never close it
        _become_child(fds, config, seccomp, zygote_pid)
    _children.add(pid)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)  # before any reaping: the pid cannot be another process's yet
    try:
        socket.send_fds(control, [protocol.encode_forked(pid)], [pidfd])
    finally:
        os.close(pidfd)


def _become_child(fds: list[int], config: ChildConfig, seccomp: bytes | None, zygote_pid: int) -> NoReturn:
    """In the forked child: the pipes on fds 0 and 1, /dev/null on 2, nothing else open, a session of its
    own; then prepare (load, confine) and serve like any child."""
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.dup2(fds[0], 0)
        os.dup2(fds[1], 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the zygote's socket, its wakeup pipe, these fds
        reader = os.fdopen(0, "rb")
        channel = Channel(reader, 1)
    except BaseException:
        os._exit(1)
    run_child(reader, channel, lambda: prepare(config, channel, zygote_pid, seccomp))


def _reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _children.discard(pid)


def _end_children() -> None:
    """Kill the children still running and reap them all, so that none outlives the pool."""
    for pid in _children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
