"""Signatures of the Redis transport's entries: HMAC-SHA256 with a key derived from the workers' shared token.

Anyone who can write to the Redis can append entries; only holders of the token can sign them, and
workers and callers refuse what is unsigned or signed with another key. A signature covers the bytes
stored and what places them, each part length-prefixed after a label naming the kind of entry: a request
its stream, request id, reply stream and envelope; a result its reply stream, request id and envelope; a
cancel notice its cancel stream and the entry it withdraws. So a signed entry is refused anywhere but
where it was written for: a request moved to another context or redirected to another reply stream, a
result filed under another request or caller, a notice for another context. Copying a signed entry to
its own place again is not refused: a request then runs again (as after a claim; its caller keeps the
first result), a result or a notice again changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Mapping

from dagrun.errors import ExecutorSetupError

KEY_LABEL = b"dagrun redis transport entries v1"  # the key is HMAC(token, KEY_LABEL): never the token itself
MAC_BYTES = 32  # SHA-256
REQUEST, RESULT, NOTICE = b"request", b"result", b"notice"  # what a signature is for; signed first
SIGNATURE_FIELD = b"sig"  # of a request entry and of a cancel notice; a result carries its MAC in front


class Signer:
    """Signs and checks the entries of one shared token: `Signer.from_token(token, who=...)`."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        # Copied per signature: keying an HMAC, or hmac.digest() naming its hash, costs 2-4 µs with OpenSSL 3.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    @classmethod
    def from_token(cls, token: str | None, *, who: str) -> Signer:
        """The signer of `token`; ExecutorSetupError naming `who` and the fix when there is no token."""
        if not token:
            raise ExecutorSetupError(
                f"{who}: the redis transport needs the workers' shared token to sign its entries; give it "
                "with --token-file FILE (the same token on workers and orchestrators; token= in the embedding API)"
            )
        return cls(hmac.digest(token.encode(), KEY_LABEL, "sha256"))

    def sign(self, kind: bytes, *parts: bytes) -> bytes:
        """The MAC of `parts` signed as `kind`."""
        mac = self._keyed.copy()
        mac.update(b"".join((kind, _lengths(len(parts)).pack(*map(len, parts)), *parts)))
        return mac.digest()

    def is_signed(self, signature: bytes | None, kind: bytes, *parts: bytes) -> bool:
        """True when `signature` is the MAC of `parts` signed as `kind` (compared in constant time)."""
        return signature is not None and hmac.compare_digest(signature, self.sign(kind, *parts))

    def problem(self, signature: bytes | None, kind: bytes, *parts: bytes) -> str | None:
        """None when `signature` is the MAC of `parts` signed as `kind`; else what is wrong, for a log line."""
        if signature is None:
            return "it is not signed"
        if not self.is_signed(signature, kind, *parts):
            return "its signature does not match (signed with another token, or for another place)"
        return None

    def request_fields(self, stream: str, request_id: bytes, reply_stream: bytes, envelope: bytes) -> tuple[bytes, ...]:
        """The fields of a request entry for `stream`, its signature last."""
        signature = self.sign(REQUEST, stream.encode(), request_id, reply_stream, envelope)
        return (b"id", request_id, b"reply", reply_stream, b"req", envelope, SIGNATURE_FIELD, signature)

    def request_problem(self, stream: str, fields: Mapping[bytes, bytes]) -> str | None:
        """None when `fields` are a request entry signed for `stream`; else what is wrong, never their contents."""
        if not fields:
            return "it has no fields (deleted while pending)"
        parts = (fields.get(b"id", b""), fields.get(b"reply", b""), fields.get(b"req", b""))
        return self.problem(fields.get(SIGNATURE_FIELD), REQUEST, stream.encode(), *parts)

    def seal_result(self, reply_stream: bytes, request_id: bytes, envelope: bytes) -> bytes:
        """A result envelope as stored in a reply entry: its MAC, then the envelope."""
        return self.sign(RESULT, reply_stream, request_id, envelope) + envelope

    def open_result(self, reply_stream: bytes, request_id: bytes, sealed: bytes) -> bytes | None:
        """The envelope of a sealed result for `request_id` on `reply_stream`; None when it is not signed so."""
        signature, envelope = sealed[:MAC_BYTES], sealed[MAC_BYTES:]
        return envelope if self.is_signed(signature, RESULT, reply_stream, request_id, envelope) else None


@functools.cache
def _lengths(count: int) -> struct.Struct:
    """How the lengths of `count` parts are packed in front of them (4 bytes each, big-endian)."""
    return struct.Struct(f">{count}I")
