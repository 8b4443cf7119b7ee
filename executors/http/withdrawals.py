"""The requests an HTTP worker holds that their callers may still take back, by the caller's request id.

`POST /withdraw` names a request by the id its `POST /execute` carried (`wire.REQUEST_ID`). Both travel on
connections of their own, so a withdrawal may come first: it is kept a while (EARLY_WITHDRAWALS of them)
for its request, which is then taken back as soon as it comes.
"""

from __future__ import annotations

from dagrun.contract.dispatch import Dispatch

EARLY_WITHDRAWALS = 1000


class Withdrawals:
    def __init__(self) -> None:
        self._held: dict[str, Dispatch] = {}
        self._early: dict[str, None] = {}  # withdrawals for requests not held (yet), oldest first

    def hold(self, request_id: str | None, dispatch: Dispatch) -> None:
        """`dispatch` is the step of request `request_id` (None: its caller cannot take it back)."""
        if request_id is None:
            return
        self._held[request_id] = dispatch
        if self._early.pop(request_id, False) is None:
            dispatch.withdraw()

    def release(self, request_id: str | None) -> None:
        """The request was answered."""
        if request_id is not None:
            self._held.pop(request_id, None)

    def withdraw(self, request_id: str) -> None:
        """Take the request back unless its step started; a request not held yet is taken back on arrival."""
        dispatch = self._held.get(request_id)
        if dispatch is not None:
            dispatch.withdraw()
            return
        self._early[request_id] = None
        if len(self._early) > EARLY_WITHDRAWALS:
            del self._early[next(iter(self._early))]
