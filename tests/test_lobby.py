"""The lobby's bookkeeping, without sockets: who is closed to make room, who is refused, who stops counting.
The servers' behaviour over real connections is in tests/api/test_lobby.py and tests/executors/test_lobby.py."""

from __future__ import annotations

import asyncio

import pytest

from dagrun.serving.lobby import Lobby, LobbySettings


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


def full_lobby(count: int, *, header_timeout_s: float = 30.0) -> tuple[Lobby, list[FakeTransport]]:
    lobby = Lobby(LobbySettings(header_timeout_s=header_timeout_s, max_unauthenticated=count), name="test")
    members = [FakeTransport() for _ in range(count)]
    assert all(lobby.enter(transport) for transport in members)
    return lobby, members


def test_unusable_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unusable lobby settings"):
        LobbySettings(header_timeout_s=0)
    with pytest.raises(ValueError, match="unusable lobby settings"):
        LobbySettings(max_unauthenticated=0)


async def test_a_full_lobby_closes_the_connection_waiting_longest_for_a_newcomer() -> None:
    lobby, (first, second, third) = full_lobby(3)
    with lobby.serving(first):  # answered, then waits again: now the most recent to wait
        pass
    newcomer = FakeTransport()
    assert lobby.enter(newcomer)
    assert second.aborted and not first.aborted and not third.aborted
    assert len(lobby) == 3


async def test_a_lobby_full_of_connections_being_answered_refuses_a_newcomer() -> None:
    lobby, members = full_lobby(2)
    with lobby.serving(members[0]), lobby.serving(members[1]):
        assert not lobby.enter(FakeTransport())
    assert not any(member.aborted for member in members)


async def test_an_authenticated_connection_no_longer_counts_nor_times_out() -> None:
    lobby, (authenticated, idle) = full_lobby(2, header_timeout_s=0.05)
    with lobby.serving(authenticated):
        lobby.leave(authenticated)
    assert len(lobby) == 1 and lobby.enter(FakeTransport())
    await asyncio.sleep(0.1)  # past the header timeout
    assert idle.aborted and not authenticated.aborted
    assert len(lobby) == 0
