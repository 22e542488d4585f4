"""CPU per request of the endpoint app itself, ours vs the minimal server's, with no sockets and no
load generator: a number that a busy machine hardly moves, unlike wrk's req/s and p99.

Each app runs in a process of its own and gets requests through its whole ASGI stack (middleware,
routing, handler), called as uvicorn calls it, ``--concurrency`` requests in flight at a time:

  ours     ``create_app`` on a copy of an endpoint dir made by ``stage=deploy`` (scoring key, request
           log with every request's inputs and outputs, access log, metrics in multiprocess mode, as a
           server worker runs them); POST /invocations {"inputs": [image]}
  minimal  the ``MINIMAL`` app of ``benchmarks/serving.py``; POST /score {"data": [image]}

The measure: the process's CPU time (every thread: our request-log writer included) per request,
over ``--windows`` windows of ``--requests`` requests after a warm-up; the table gives the minimum
(the least disturbed window) and the median. Ours runs with the environment its supervisor gives a
server (``MALLOC_ENV``). uvicorn's HTTP parsing and socket writes are left out:
they cost both servers the same. ``--src`` imports mnistops from another checkout (e.g. an older
commit, ``git archive <commit> mnistops | tar -x -C /tmp/old``) to compare versions side by side.

    python benchmarks/serving_cpu.py --endpoint-dir ~/.mnistops/dev/endpoints/mnist
    python benchmarks/serving_cpu.py --endpoint-dir DIR --concurrency 1,4 --src /tmp/old
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as bench  # noqa: E402  (benchmarks/serving.py: MINIMAL, the test image, machine info)


# --------------------------------------------------------------------------- one app, in a child process

def build(kind: str, endpoint_dir: Path, work: Path):
    """(ASGI app, path, body, headers) of ``kind``, in this (child) process."""
    home = endpoint_dir.parents[2]  # <home>/<env>/endpoints/<name>
    image, _ = bench.test_image(home)
    if kind == "ours":
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "prometheus")  # as under the supervisor
        (work / "prometheus").mkdir()
        copy = work / "home" / endpoint_dir.parent.parent.name / "endpoints" / endpoint_dir.name
        shutil.copytree(endpoint_dir, copy, ignore=shutil.ignore_patterns("run", "*.log"))
        os.dup2(os.open(work / "server.log", os.O_WRONLY | os.O_CREAT), 1)  # the access log's lines
        from mnistops.serving.app import create_app
        from mnistops.serving.master import configure_logging

        configure_logging("info")
        body = json.dumps({"inputs": [image.tolist()]}, separators=(",", ":")).encode()
        key = (copy / "primary.key").read_text().strip()
        return create_app(copy, freeze_gc=True), "/invocations", body, [(b"authorization", f"Bearer {key}".encode())]
    onnx = next(endpoint_dir.glob("models/*/artifacts/model.onnx"))
    os.environ["MINIMAL_ONNX"] = str(onnx)
    namespace: dict = {}
    exec(compile(bench.MINIMAL, "minimal_server.py", "exec"), namespace)
    body = json.dumps({"data": [image.tolist()]}, separators=(",", ":")).encode()
    return namespace["app"], "/score", body, []


async def drive(app, path: str, body: bytes, extra: list, concurrency: int, requests: int, windows: int) -> dict:
    headers = [(b"host", b"127.0.0.1:5080"), (b"content-length", str(len(body)).encode()),
               (b"content-type", b"application/json"), *extra]
    statuses: dict = {}

    async def one() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "server": ("127.0.0.1", 5080), "client": ("127.0.0.1", 50000), "scheme": "http",
                 "method": "POST", "root_path": "", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "headers": list(headers), "state": {}}
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop() if messages else await asyncio.sleep(3600)

        async def send(message):
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope, receive, send)

    async def clients(n: int) -> None:
        async def client(k: int) -> None:
            for _ in range(k):
                await one()
        await asyncio.gather(*(client(n // concurrency) for _ in range(concurrency)))

    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                         inbox.get, outbox.put))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise SystemExit(f"the app did not start: {started}")
    await clients(max(400, requests // 4))  # warm-up: the batcher measures its model, caches fill
    statuses.clear()
    per = requests // concurrency * concurrency
    cpu = []
    for _ in range(windows):
        c0 = time.process_time()
        await clients(per)
        await asyncio.sleep(0.3)  # the request-log writer's turn for this window lands in it
        cpu.append((time.process_time() - c0) / per * 1000)
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await lifespan
    return {"cpu_ms": cpu, "statuses": statuses, "requests": per}


def child(args) -> int:
    if args.src:
        sys.path.insert(0, str(args.src))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="serving-cpu-") as work:
        app, path, body, extra = build(args.child, args.endpoint_dir.resolve(), Path(work))
        out = asyncio.run(drive(app, path, body, extra, args.child_c, args.requests, args.windows))
    if args.src:
        import mnistops

        out["src"] = str(Path(mnistops.__file__).parent.parent)
    print("RESULT " + json.dumps(out), file=sys.stderr, flush=True)
    return 0


# --------------------------------------------------------------------------- the parent

def server_env(checkout: Path) -> dict:
    """The variables the supervisor of that checkout adds to its server's environment (``MALLOC_ENV``:
    glibc reads them at start-up, so the child gets them from here); none where it has none."""
    text = (checkout / "mnistops" / "serving" / "supervisor.py").read_text()
    found = re.search(r"^MALLOC_ENV = (\{.*?\})", text, re.M)
    return ast.literal_eval(found.group(1)) if found else {}


def run_child(kind: str, c: int, args, src) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--child-c", str(c), "--endpoint-dir", str(args.endpoint_dir),
           "--requests", str(args.requests), "--windows", str(args.windows), *(["--src", str(src)] if src else [])]
    env = dict(os.environ, **(server_env(src or bench.REPO) if kind == "ours" else {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{kind} c={c} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(line[len("RESULT "):])
    if set(out["statuses"]) != {"200"}:
        raise SystemExit(f"{kind} c={c}: answers other than 200: {out['statuses']}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint-dir", type=Path, required=True,
                   help="an endpoint dir made by stage=deploy (<home>/<env>/endpoints/<name>); copied, never changed")
    p.add_argument("--concurrency", default="1,4", help="requests in flight, comma-separated (4: one worker's "
                   "share of wrk -c8 on 2 workers)")
    p.add_argument("--requests", type=int, default=2000, help="requests per window")
    p.add_argument("--windows", type=int, default=5, help="measured windows per app and concurrency")
    p.add_argument("--src", type=Path, action="append", default=[],
                   help="also measure ours imported from this checkout (repeatable)")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-c", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.src = args.src[0] if args.src else None
        return child(args)
    if not (args.endpoint_dir / "server.json").is_file():
        p.error(f"--endpoint-dir {args.endpoint_dir}: no server.json (make one with stage=deploy)")
    variants = [("ours", None)] + [("ours", s.resolve()) for s in args.src] + [("minimal", None)]
    lines = [f"CPU per request in-process, {time.strftime('%Y-%m-%d %H:%M %Z')}, load average before: "
             f"{bench.loadavg()}; {args.windows} windows of {args.requests} requests each; endpoint "
             f"{args.endpoint_dir}", "",
             "| app | in flight | CPU ms / request, min | median | windows |", "|---|---:|---:|---:|---|"]
    for c in [int(x) for x in args.concurrency.split(",") if x.strip()]:
        for kind, src in variants:
            out = run_child(kind, c, args, src)
            cpu = out["cpu_ms"]
            name = kind if src is None else f"{kind} ({out.get('src', src)})"
            lines.append(f"| {name} | {c} | {min(cpu):.3f} | {median(cpu):.3f} | "
                         f"{' '.join(f'{x:.3f}' for x in cpu)} |")
            print(lines[-1], flush=True)
    lines.append(f"\nLoad average after: {bench.loadavg()}.")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
