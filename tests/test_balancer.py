"""The least-connected-worker acceptor (mnistops/serving/balancer.py), in one process: two acceptors
stand for two workers on one listening socket (each its own descriptor of it, as after a fork), real
TCP connections on 127.0.0.1. The spread over real worker processes is tested in
test_supervised_endpoint.py."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mnistops.serving import balancer
from mnistops.serving.balancer import Acceptor, Board


def test_the_board_prefers_the_least_connected_serving_worker():
    board = Board(4)
    a, b = board.claim(), board.claim()
    assert (a, b) == (0, 1)
    assert board.least(a) and board.least(b)  # nobody serves yet: nobody to defer to
    board.publish(a, True, 3)
    board.publish(b, True, 2)
    assert not board.least(a) and board.least(b)
    board.publish(b, True, 3)
    assert board.least(a) and board.least(b)  # a tie: either may take it
    board.publish(b, False, 0)  # b stops serving (shutting down): a no longer defers to it
    board.publish(a, True, 9)
    assert board.least(a)
    assert board.connections()[:2] == [9, None]
    board.release(a)  # the master clears a dead worker's slot, and hands it out again
    assert board.connections()[0] is None and board.claim() == 0
    assert [board.claim(), board.claim(), board.claim()] == [2, 3, None]  # full: that worker goes unbalanced


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Worker:
    """One acceptor with its connections, as a worker process holds them."""

    def __init__(self, sock: socket.socket, board: Board):
        self.protocols: set = set()
        worker = self

        class Counted(Echo):
            def connection_made(self, transport):
                super().connection_made(transport)
                worker.protocols.add(self)

            def connection_lost(self, exc):
                worker.protocols.discard(self)
                worker.acceptor.publish()

        self.acceptor = Acceptor(sock, Counted, lambda: len(self.protocols), board, board.claim())

    @property
    def held(self) -> int:
        return self.acceptor.held()


async def until(condition, what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"not within {timeout:.0f} s: {what}"
        await asyncio.sleep(0.005)


async def connect(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    return writer


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@pytest.mark.integration  # listens on 127.0.0.1
def test_connections_opened_at_once_spread_evenly(monkeypatch):
    monkeypatch.setattr(balancer, "MAX_DEFER_S", 600.0)  # no fallback: the rule alone decides

    async def main():
        sock = listening()
        board = Board(4)
        a, b = Worker(sock, board), Worker(sock.dup(), board)
        a.acceptor.start()
        b.acceptor.start()
        writers = await asyncio.gather(*[connect(sock.getsockname()[1]) for _ in range(8)])
        assert (a.held, b.held) == (4, 4)
        for w in writers[:3]:  # closed connections leave the board
            w.close()
        await until(lambda: a.held + b.held == 5, "three closed connections counted off")
        more = [await connect(sock.getsockname()[1]) for _ in range(3)]  # one at a time: still even
        assert sorted((a.held, b.held)) == [4, 4]
        for w in writers[3:] + more:
            w.close()
        for w in (a, b):
            w.acceptor.close()
        sock.close()

    asyncio.run(main())


@pytest.mark.integration  # listens on 127.0.0.1
def test_a_worker_that_does_not_accept_is_not_waited_for(monkeypatch):
    """A serving peer with fewer connections that never accepts (stuck): after MAX_DEFER_S the
    other takes the connection anyway."""
    monkeypatch.setattr(balancer, "MAX_DEFER_S", 0.05)

    async def main():
        sock = listening()
        board = Board(4)
        stuck = board.claim()
        board.publish(stuck, True, 0)
        a = Worker(sock, board)
        board.publish(a.acceptor.slot, True, 5)  # a holds more than the stuck peer
        a.acceptor.start()
        writer = await connect(sock.getsockname()[1])
        assert a.held == 1
        writer.close()
        a.acceptor.close()
        assert board.connections()[a.acceptor.slot] is None  # closed: no longer serving
        sock.close()

    asyncio.run(main())
