"""Connections spread over the workers: the least-connected worker accepts the next one.

The workers share the master's one listening socket. Left to the event loops, the first worker to
wake accepts every connection that is waiting: 8 keep-alive connections opened at once could all land
on one worker while the other idles (the benchmark once measured 0.42x the minimal server that way).
So each worker accepts for itself (``Acceptor``, one connection per wake-up) and publishes how many
connections it holds on a ``Board`` (a few bytes of memory shared from the master, one slot per
worker). A worker takes a waiting connection only when no other serving worker holds fewer; else it
steps back for ``DEFER_S`` and looks again, and after ``MAX_DEFER_S`` of nobody taking it (the
others busy, stuck, or gone) it takes it anyway: a connection never waits on a worker that cannot
accept. The kernel's SO_REUSEPORT hashing would spread connections only at random (4/4 for 8
connections in a quarter of the cases) and would share the port with any same-user program that also
sets it; one socket keeps the port refused to every other program as before.

The master (``master.py``) makes the board before it forks, gives each worker a slot and clears the
slot when the worker exits; ``BalancedServer`` is uvicorn's server with the acceptor in place of its
own accept loop (what uvicorn does with the accepted socket is unchanged).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import select
import socket
from typing import Callable, List, Optional

from uvicorn.server import Server

log = logging.getLogger("mnistops.serving")

DEFER_S = 0.001  # a worker that holds more connections than another looks again this much later
MAX_DEFER_S = 0.025  # ... and takes a connection that nobody took for this long
BACKOFF_S = 0.1  # after running out of file descriptors
_READY, _OPEN = 0, 1  # the two ints of a slot


class Board:
    """One slot per worker: (serving?, connections held). Made in the master before the fork, so every
    worker shares the same memory; each worker writes only its own slot, the master clears a slot
    when its worker exits."""

    def __init__(self, slots: int):
        self.slots = slots
        self._mm = mmap.mmap(-1, slots * 8)
        self._v = memoryview(self._mm).cast("i")
        self._taken: set = set()

    # ---------------------------------------------------------------- the master's side
    def claim(self) -> Optional[int]:
        """A free slot for a worker about to be forked (cleared); None when all are taken (more workers
        than the board was made for: that worker accepts as uvicorn would, unbalanced)."""
        slot = next((i for i in range(self.slots) if i not in self._taken), None)
        if slot is not None:
            self._taken.add(slot)
            self.clear(slot)
        return slot

    def release(self, slot: Optional[int]) -> None:
        if slot is not None:
            self.clear(slot)
            self._taken.discard(slot)

    def clear(self, slot: int) -> None:
        self._v[2 * slot + _READY] = 0
        self._v[2 * slot + _OPEN] = 0

    # ---------------------------------------------------------------- a worker's side
    def publish(self, slot: int, serving: bool, connections: int) -> None:
        self._v[2 * slot + _OPEN] = connections
        self._v[2 * slot + _READY] = 1 if serving else 0

    def connections(self) -> List[Optional[int]]:
        """Connections held by each slot's worker; None for a slot without a serving worker."""
        v = self._v
        return [v[2 * i + _OPEN] if v[2 * i + _READY] else None for i in range(self.slots)]

    def least(self, slot: int) -> bool:
        """True when no other serving worker holds fewer connections than ``slot``'s."""
        v = self._v
        mine = v[2 * slot + _OPEN]
        for i in range(self.slots):
            if i != slot and v[2 * i + _READY] and v[2 * i + _OPEN] < mine:
                return False
        return True


class Acceptor:
    """Accepts on the shared listening socket for one worker, one connection per wake-up, by the
    board's rule; hands each connection to ``protocol_factory`` on the running loop. Looks like an
    ``asyncio.Server`` to uvicorn (``close``/``wait_closed``) so its shutdown stops it."""

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                 open_connections: Callable[[], int], board: Board, slot: int):
        self.sock, self.factory, self.board, self.slot = sock, protocol_factory, board, slot
        self._open_connections = open_connections
        self.handing = 0  # accepted, not yet made into a connection
        self.loop = asyncio.get_running_loop()
        self.fd = sock.fileno()
        self.closed = False
        self._reading = False
        self._waiting_since: Optional[float] = None
        self._tasks: set = set()
        sock.setblocking(False)

    def start(self) -> None:
        self.publish()
        self._arm()

    def held(self) -> int:
        return self._open_connections() + self.handing

    def publish(self) -> None:
        if not self.closed:
            self.board.publish(self.slot, True, self.held())

    # ---------------------------------------------------------------- the loop's callbacks
    def _arm(self) -> None:
        if not self.closed and not self._reading:
            self.loop.add_reader(self.fd, self._ready)
            self._reading = True

    def _disarm(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.fd)
            self._reading = False

    def _look_again(self) -> None:
        if self.closed:
            return
        if self._waiting_since is not None and not select.select([self.fd], [], [], 0)[0]:
            self._waiting_since = None  # another worker took it
        self._arm()

    def _ready(self) -> None:
        """A connection waits on the socket."""
        now = self.loop.time()
        if not self.board.least(self.slot):
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since < MAX_DEFER_S:
                self._disarm()
                self.loop.call_later(DEFER_S, self._look_again)
                return
        self._waiting_since = None
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.error("worker cannot accept connections (%s); trying again in %.1fs", exc, BACKOFF_S)
                self._disarm()
                self.loop.call_later(BACKOFF_S, self._arm)
                return
            raise
        self.handing += 1
        self.publish()
        task = self.loop.create_task(self._hand(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except Exception as exc:  # the client went away before it became a connection
            log.debug("an accepted connection failed to start: %r", exc)
            conn.close()
        finally:
            self.handing -= 1
            self.publish()

    # ---------------------------------------------------------------- asyncio.Server's part
    def close(self) -> None:
        if not self.closed:
            self._disarm()
            self.closed = True
            self.board.publish(self.slot, False, 0)  # others stop deferring to this worker

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class BalancedServer(Server):
    """uvicorn's server whose connections come from an ``Acceptor`` per listening socket."""

    def __init__(self, config, board: Board, slot: int):
        super().__init__(config)
        self.board, self.slot = board, slot

    async def startup(self, sockets: Optional[List[socket.socket]] = None) -> None:
        await super().startup(sockets=[])  # the lifespan (models load), no listening of its own
        if not self.started:
            return
        config, state = self.config, self.server_state
        acceptors: List[Acceptor] = []

        class Counted(config.http_protocol_class):  # the board hears when a connection closes
            def connection_lost(self, exc):
                super().connection_lost(exc)
                for a in acceptors:
                    a.publish()

        def factory() -> asyncio.Protocol:
            return Counted(config=config, server_state=state, app_state=self.lifespan.state)

        for sock in sockets or []:
            acceptor = Acceptor(sock, factory, lambda: len(state.connections), self.board, self.slot)
            acceptors.append(acceptor)
            self.servers.append(acceptor)
        for acceptor in acceptors:
            acceptor.start()
