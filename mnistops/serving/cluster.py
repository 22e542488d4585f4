"""The worker processes of one endpoint, kept on one state: an admin change is a two-phase commit.

Every worker listens on a control port of its own (127.0.0.1, ephemeral) and registers it in
``run/workers/<pid>.json``. The worker that receives an admin request coordinates, holding the
endpoint's lock file (``run/state.lock``, so changes run one at a time across workers):

1. plan the new state from the committed one on disk (a bad request fails here: nothing changed);
2. ``prepare`` it on every worker, itself included: each loads and warms what it lacks; any refusal
   aborts everywhere (nothing changed, the admin hears why);
3. write ``state.json`` (the new generation) atomically;
4. ``commit`` on every worker: each swaps the new state in at once. The admin's answer goes out
   after every live worker has committed, so any request after it is served from the new state.

A worker that starts (or restarts) loads the state on disk, then registers under the same lock and
catches up if a change was committed meanwhile, so it can never miss one. A worker that died
mid-change comes back from ``state.json``. Control messages carry the admin key.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Callable, List, Optional

from mnistops.serving.deployments import read_state, write_state
from mnistops.serving.live_state import LiveState
from mnistops.serving.protocol import ProtocolError
from mnistops.serving.settings import RUN_DIR, KeyRing

log = logging.getLogger("mnistops.serving")

WORKERS_DIR = "workers"
LOCK_FILE = "state.lock"
PREPARE_TIMEOUT_S = 110.0  # model loads; the admin client waits 120 s
MESSAGE_LIMIT = 64 * 1024 * 1024


class Peer:
    """Another worker's control port."""

    def __init__(self, pid: int, port: int, path: Path):
        self.pid, self.port, self.path = pid, port, path

    async def call(self, message: dict, timeout: float) -> dict:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5.0)
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout)
        finally:
            writer.close()
        if not line:
            raise ConnectionResetError(f"worker {self.pid} closed the control connection")
        return json.loads(line)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by its new parent) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True  # no /proc (not Linux): the signal check is all there is




class Cluster:
    def __init__(self, endpoint_dir: Path, live: LiveState, admin_keys: KeyRing):
        self.dir = Path(endpoint_dir)
        self.run = self.dir / RUN_DIR
        self.workers = self.run / WORKERS_DIR
        self.live = live
        self.admin_keys = admin_keys
        self.pid = os.getpid()
        self.port: Optional[int] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._local = asyncio.Lock()

    # ------------------------------------------------------------------ lock file
    async def _locked(self) -> int:
        self.run.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    # ------------------------------------------------------------------ membership
    @property
    def registration(self) -> Path:
        return self.workers / f"{self.pid}.json"

    async def join(self) -> None:
        """Listen, then register under the lock, catching up with any change committed meanwhile."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MESSAGE_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        fd = await self._locked()
        try:
            state = read_state(self.dir)
            if state["generation"] != self.live.generation:
                log.info("worker %d: generation %d committed while it started; catching up", self.pid,
                         state["generation"])
                await self.live.catch_up(state)
            self.workers.mkdir(parents=True, exist_ok=True)
            tmp = self.workers / f".{self.pid}.tmp"
            tmp.write_text(json.dumps({"pid": self.pid, "port": self.port}))
            os.replace(tmp, self.registration)
        finally:
            self._unlock(fd)

    async def leave(self) -> None:
        self.registration.unlink(missing_ok=True)
        if self._server is not None:
            self._server.close()

    def peers(self) -> List[Peer]:
        out = []
        for path in sorted(self.workers.glob("*.json")):
            try:
                info = json.loads(path.read_text())
                pid, port = int(info["pid"]), int(info["port"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if pid == self.pid:
                continue
            if not process_alive(pid):
                path.unlink(missing_ok=True)  # a worker that died: it registers again when it restarts
                continue
            out.append(Peer(pid, port, path))
        return out

    # ------------------------------------------------------------------ the control port
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not line:
                return
            answer = await self._handle(json.loads(line))
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except Exception as exc:  # a broken message must not take the worker down
            log.warning("worker %d: bad control message: %r", self.pid, exc)
        finally:
            writer.close()

    async def _handle(self, msg: dict) -> dict:
        key = msg.get("key", "")
        if not isinstance(key, str) or not self.admin_keys.allows(b"Bearer " + key.encode()):
            return {"ok": False, "status": 401, "error": "control message without the admin key"}
        op, txn = msg.get("op"), msg.get("txn", "")
        try:
            if op == "prepare":
                await self.live.prepare(txn, msg["state"])
            elif op == "commit":
                self.live.commit(txn)
            elif op == "abort":
                self.live.abort(txn)
            elif op == "status":
                return {"ok": True, "pid": self.pid, "status": self.live.status()}
            else:
                return {"ok": False, "status": 400, "error": f"unknown control op {op!r}"}
        except ProtocolError as exc:
            return {"ok": False, "status": exc.status, "error": exc.message, "field": exc.field}
        except Exception as exc:
            log.exception("worker %d: control op %s failed", self.pid, op)
            return {"ok": False, "status": 500, "error": f"worker {self.pid}: {type(exc).__name__}: {exc}"}
        return {"ok": True, "pid": self.pid}

    def _message(self, op: str, txn: str, **extra: Any) -> dict:
        return {"key": self.admin_key, "op": op, "txn": txn, **extra}

    @property
    def admin_key(self) -> str:
        return self.admin_keys.first()

    # ------------------------------------------------------------------ a change, on every worker
    async def change(self, plan: Callable[[dict], dict]) -> dict:
        """Apply ``plan(committed state) -> new state`` on every worker; returns the new state."""
        async with self._local:
            fd = await self._locked()
            try:
                current = read_state(self.dir)
                new = plan(current)  # a refused change raises here: nothing changed
                new["generation"] = current["generation"] + 1
                txn = uuid.uuid4().hex
                peers = self.peers()
                await self._prepare_all(txn, new, peers)
                write_state(self.dir, {k: new[k] for k in ("deployments", "traffic", "mirror_traffic", "previous",
                                                           "generation")})
                self.live.commit(txn)
                await self._broadcast(peers, self._message("commit", txn), 30.0, "commit")
                return new
            finally:
                self._unlock(fd)

    async def _prepare_all(self, txn: str, new: dict, peers: List[Peer]) -> None:
        async def local() -> Optional[dict]:
            try:
                await self.live.prepare(txn, new)
            except ProtocolError as exc:
                return {"ok": False, "status": exc.status, "error": exc.message, "field": exc.field}
            return {"ok": True}

        results = await asyncio.gather(local(), *[self._call(p, self._message("prepare", txn, state=new),
                                                             PREPARE_TIMEOUT_S) for p in peers])
        failed = [r for r in results if r is not None and not r.get("ok")]
        if failed:
            self.live.abort(txn)
            await self._broadcast(peers, self._message("abort", txn), 10.0, "abort")
            first = failed[0]
            raise ProtocolError(first.get("error", "a worker refused the change"), first.get("field"),
                                status=int(first.get("status", 503)))

    async def _call(self, peer: Peer, message: dict, timeout: float) -> Optional[dict]:
        """A peer's answer; None when the peer is gone (it will start from state.json)."""
        try:
            return await peer.call(message, timeout)
        except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError) as exc:
            if not process_alive(peer.pid):
                peer.path.unlink(missing_ok=True)
                return None
            return {"ok": False, "status": 503, "error": f"worker {peer.pid} unreachable: {exc}"}
        except (asyncio.TimeoutError, OSError, ValueError) as exc:
            if not process_alive(peer.pid):
                return None
            return {"ok": False, "status": 503, "error": f"worker {peer.pid} did not answer: {exc!r}"}

    async def _broadcast(self, peers: List[Peer], message: dict, timeout: float, what: str) -> None:
        results = await asyncio.gather(*[self._call(p, message, timeout) for p in peers])
        for peer, r in zip(peers, results):
            if r is not None and not r.get("ok"):
                log.error("worker %d did not %s: %s", peer.pid, what, r.get("error"))

    async def statuses(self) -> List[dict]:
        """Every live worker's view (this one first), for /admin/state."""
        mine = {"pid": self.pid, "status": self.live.status()}
        others = await asyncio.gather(*[self._call(p, self._message("status", ""), 10.0) for p in self.peers()])
        return [mine] + [r for r in others if r is not None and r.get("ok")]

