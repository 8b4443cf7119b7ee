"""What every server of dagrun (worker servers, the REST API) says about where it listens."""

from __future__ import annotations

import errno
import ipaddress
import os
import ssl


def os_reason(exc: OSError) -> str:
    """What went wrong, in words and without the addresses asyncio adds: ``connection refused``."""
    if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the OS's
        return f"tls: {exc.strerror or exc}"
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc.strerror or exc or type(exc).__name__).lower()


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """``cannot listen on 127.0.0.1:8765: address already in use; pick another --port ...``."""
    hint = "; pick another --port or stop what holds it" if exc.errno == errno.EADDRINUSE else ""
    return f"cannot listen on {host}:{port}: {os_reason(exc)}{hint}"


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (a server elsewhere should use TLS)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
