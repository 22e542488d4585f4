"""Serving speed on every core: our endpoint with 1 and N workers vs a minimal FastAPI server and
`mlflow models serve` with the same worker counts, same registered model, same load generator.

Servers of one worker count run side by side; each is measured alone (the others idle), in
--rounds rounds that take the servers in turn (the order alternating), so ours and its peer meet
the same background load; the tables give the median of the rounds and their range:

  ours      `python -m mnistops stage=deploy endpoint.workers=W` (supervised gunicorn + uvicorn
            workers, connections spread by the least-connected-worker acceptor; scoring key on, the
            data collector keeping every request, one log line per request),
            POST /invocations {"inputs": [<one 28x28 image>]} (--ours-route /score: {"data": [...]})
  minimal   the peer: FastAPI + onnxruntime + orjson in ~30 lines (MINIMAL below: no auth, no
            logging, no collection, no batching), `uvicorn --workers W`, POST /score {"data": [...]}
  mlflow    `mlflow models serve -m models:/<name>/<version> --env-manager local --workers W`,
            POST /invocations {"inputs": [<one 28x28 image>]}

W is 1 and N (--workers, default: the CPU count; --only-n: N alone). Load: Debian's `wrk -t1` on
127.0.0.1, for each of --connections (8,32) a warm-up (--warmup s) then a measured run (--duration
s). The image is MNIST test image 0. The Lua script's done() prints one JSON line (p50/p99, errors).
Each of ours' runs also reports the share of requests each worker logged (how the connections
spread). Then a kill test: ours with N workers under `wrk -c8`, one worker SIGKILLed: wrk's failed
requests, and the time until a new worker has loaded the model and joined.

The model comes from the pipeline run into a fresh MNISTOPS_HOME (`--model-args`, default: the
default `cnn` architecture trained briefly: serving speed depends on the architecture, not on the
accuracy), or from an existing store (`--home`, its latest registered version). Every server this
starts is stopped at the end (also on Ctrl-C or an error). The markdown table goes to --out and
stdout. Nothing is asserted.

    MNISTOPS_DATA_MIRROR=file:///path/to/mnist python benchmarks/serving.py
    python benchmarks/serving.py --home ~/.mnistops --only ours,minimal --only-n --connections 8 --rounds 5
    python benchmarks/serving.py --quick --duration 5          # a trial; the table says so
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "serving.md"
DEFAULT_MODEL_ARGS = "trainer.max_epochs=1 trainer.limit_train_batches=50"
ENDPOINT_NAME = "bench"  # its own endpoint dir, so a store's own endpoint (endpoints/mnist) is left alone
VENV_BIN = Path(sys.executable).parent


def scripts_dir() -> Path:
    """Where the console scripts (uvicorn, mlflow) of the installed packages live (this venv, or the
    one whose site-packages it shares)."""
    import uvicorn

    for candidate in (VENV_BIN, Path(uvicorn.__file__).resolve().parents[4] / "bin"):
        if (candidate / "uvicorn").is_file():
            return candidate
    raise SystemExit("no `uvicorn` script found next to this Python: pip install -e .")

LUA = r"""
wrk.method = "POST"
local f = assert(io.open(%(body)s, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
%(auth)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%.0f, "duration_us": %%.0f, "bytes": %%.0f, ' ..
    '"p50_us": %%.1f, "p90_us": %%.1f, "p99_us": %%.1f, "max_us": %%.1f, "mean_us": %%.1f, ' ..
    '"connect": %%.0f, "read": %%.0f, "write": %%.0f, "timeout": %%.0f, "status": %%.0f}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status))
end
"""


# --------------------------------------------------------------------------- machine

def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version as v

    try:
        return v(dist)
    except PackageNotFoundError:
        return "-"


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout
    return out.split("[")[0].replace("wrk", "").strip() or "?"


def machine(wrk: str) -> dict:
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "kernel": platform.release(), "wrk": wrk_version(wrk),
            **{d: version(d) for d in ("mlflow", "gunicorn", "uvicorn", "onnxruntime", "fastapi", "starlette", "uvloop",
                                       "httptools", "numpy")}}


# --------------------------------------------------------------------------- CPU accounting

def tree_pids(root: int) -> List[int]:
    """``root`` and every process below it (a supervisor, its master, their workers)."""
    children: Dict[int, List[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                raw = Path(entry.path, "stat").read_text()
                ppid = int(raw[raw.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_sched(root: int) -> tuple:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of every thread under ``root``
    (the kernel's /proc/PID/task/TID/schedstat)."""
    run = wait = 0
    for pid in tree_pids(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            except OSError:
                continue
            run += int(fields[0])
            wait += int(fields[1])
    return run / 1e9, wait / 1e9


def raise_autogroup(root: int, nice: Optional[int]) -> None:
    """Give ``root``'s process tree (each session in it is a scheduler autogroup of its own: servers
    start in sessions of their own) the autogroup nice ``nice`` (root only): on a machine shared with
    other jobs, `nice` alone does not lift a process above other sessions."""
    if nice is None:
        return
    for pid in tree_pids(root):
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        except OSError:
            pass


def children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def machine_cpu() -> tuple:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return total - idle, total


# --------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, headers: Dict[str, str], timeout: float = 10.0):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_http(url: str, timeout: float, proc: Optional[subprocess.Popen] = None, what: str = "server") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited (code {proc.returncode}) before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise SystemExit(f"{what} did not answer {url} within {timeout:.0f} s")


def run_logged(cmd: List[str], env: dict, log: Path, what: str) -> str:
    print(f"  $ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}); log: {log}\n" + "\n".join(proc.stdout.splitlines()[-15:]))
    return proc.stdout


def latest_version(home: Path, name: str) -> str:
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'dev' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise SystemExit(f"no registered model {name!r} in {uri}")
    return str(max(int(v.version) for v in versions))


def test_image(home: Path):
    from mnistops.data.idx import read_idx

    base = home / "data" / "mnist"
    for images, labels in (("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                           ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        if (base / images).is_file():
            return read_idx(base / images)[0], int(read_idx(base / labels)[0])
    raise SystemExit(f"no MNIST test images in the data cache {base}")


# --------------------------------------------------------------------------- servers

MINIMAL = r"""
import os
import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(os.environ["MINIMAL_ONNX"], opts, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
app = FastAPI()


@app.post("/score")
async def score(request: Request) -> Response:
    body = orjson.loads(await request.body())
    x = np.asarray(body["data"], dtype=np.float32).reshape(-1, 1, 28, 28) / np.float32(255.0)
    logits = sess.run(None, {name: x})[0]
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    preds = [{"digit": int(p.argmax()), "probabilities": p} for p in probs]
    return Response(orjson.dumps({"predictions": preds}, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")
"""


class Server:
    """A server under test, started in a session of its own; ``pid`` is the root of its process tree."""

    label = "?"
    path = "/score"
    pid: Optional[int] = None
    proc: Optional[subprocess.Popen] = None

    def stop(self) -> None:
        if self.proc is not None:
            kill_session(self.proc.pid)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None

    def _popen(self, cmd: List[str], env: dict, log: Path, cwd: Path) -> None:
        print(f"  $ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid


class Ours(Server):
    label = "ours"

    def __init__(self, home: Path, env: dict, port: int, model_uri: str, log: Path, workers: Optional[int] = None,
                 route: str = "/invocations"):
        self.home, self.env, self.port, self.model_uri, self.log = home, env, port, model_uri, log
        self.path = route
        self.workers = workers
        self.overrides = [f"endpoint.name={ENDPOINT_NAME}", f"endpoint.port={port}",
                          *([f"endpoint.workers={workers}"] if workers else [])]
        self.dir = home / "dev" / "endpoints" / ENDPOINT_NAME
        self.url = f"http://127.0.0.1:{port}"
        self.started = False

    def start(self) -> None:
        self.started = True  # from here on, stop() has something to try
        run_logged([sys.executable, "-m", "mnistops", "stage=deploy", f"deploy.model='{self.model_uri}'",
                    *self.overrides], self.env, self.log, "stage=deploy")
        wait_http(f"{self.url}/health", 60, what="our endpoint")
        self.pid = int((self.dir / "server.pid").read_text().strip())
        self.key = (self.dir / "primary.key").read_text().strip()
        self.server_log = self.dir / "server.log"

    def worker_pids(self) -> List[int]:
        pids = []
        for f in (self.dir / "run" / "workers").glob("*.json"):
            try:
                os.kill(int(f.stem), 0)
                pids.append(int(f.stem))
            except (OSError, ValueError):
                pass
        return sorted(pids)

    def log_lines(self) -> Dict[int, int]:
        """Request log lines of the benchmarked route so far, per worker pid (the line carries it)."""
        needle = f" POST {self.path} ".encode()
        out: Dict[int, int] = {}
        with open(self.server_log, "rb") as f:
            for line in f:
                if b" mnistops.serving " in line and needle in line:
                    pid = int(line.split(b" ", 4)[3])
                    out[pid] = out.get(pid, 0) + 1
        return out

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        try:
            run_logged([sys.executable, "-m", "mnistops", "stage=endpoint", "endpoint.action=stop", *self.overrides],
                       self.env, self.log, "stage=endpoint endpoint.action=stop")
        except BaseException as exc:  # still make sure the processes are gone
            print(f"  stop via stage=endpoint failed ({exc!r}); killing pid {self.pid}", flush=True)
            if self.pid is not None:
                for pid in reversed(tree_pids(self.pid)):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


class Minimal(Server):
    label = "minimal"

    def __init__(self, root: Path, env: dict, port: int, onnx: Path, log: Path, workers: int):
        (root / "minimal_server.py").write_text(MINIMAL)
        self.root, self.env, self.log, self.workers = root, dict(env, MINIMAL_ONNX=str(onnx)), log, workers
        self.cmd = [sys.executable, "-m", "uvicorn", "minimal_server:app", "--host", "127.0.0.1", "--port", str(port),
                    "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                    "--log-level", "warning"]
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self._popen(self.cmd, self.env, self.log, self.root)
        wait_http(f"{self.url}/docs", 60, self.proc, "the minimal server")


class Mlflow(Server):
    label = "mlflow"
    path = "/invocations"

    def __init__(self, home: Path, env: dict, port: int, model_uri: str, log: Path, workers: int = 1):
        uri = f"sqlite:///{home / 'dev' / 'mlflow.db'}"
        bin_dir = scripts_dir()
        self.env = dict(env, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri,
                        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")  # it execs `uvicorn` from PATH
        self.cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "-h", "127.0.0.1", "-p", str(port),
                    "--env-manager", "local", "--workers", str(workers)]
        self.url = f"http://127.0.0.1:{port}"
        self.log, self.workers = log, workers

    def start(self) -> None:
        self._popen(self.cmd, self.env, self.log, self.log.parent)
        wait_http(f"{self.url}/ping", 120, self.proc, "mlflow models serve")


def session_pids(sid: int) -> List[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                raw = Path(entry.path, "stat").read_text()
                if int(raw[raw.rindex(")") + 2:].split()[3]) == sid:
                    pids.append(int(entry.name))
            except (OSError, ValueError):
                pass
    return pids


def kill_session(sid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group ``sid`` (a server started in its own session), SIGKILL what is left."""
    try:
        os.killpg(sid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline and session_pids(sid):
        time.sleep(0.1)
    if session_pids(sid):
        try:
            os.killpg(sid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- load

def wrk_run(wrk: str, script: Path, url: str, connections: int, threads: int, seconds: int) -> dict:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
           "-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed (exit {proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    out = json.loads(line[len("WRKJSON "):])
    out["text"] = proc.stdout
    return out


def measure(wrk: str, case: dict, connections: int, args, round_no: int = 0) -> dict:
    server = case["server"]
    load = loadavg()
    wrk_run(wrk, case["script"], case["url"], connections, args.wrk_threads, args.warmup)
    lines0 = server.log_lines() if isinstance(server, Ours) else None
    sched0, busy0, kids0 = tree_sched(server.pid), machine_cpu(), children_cpu()
    t0 = time.monotonic()
    r = wrk_run(wrk, case["script"], case["url"], connections, args.wrk_threads, args.duration)
    wall = time.monotonic() - t0
    sched1, busy1, kids1 = tree_sched(server.pid), machine_cpu(), children_cpu()
    time.sleep(0.3)  # the last log lines reach the file
    secs = r["duration_us"] / 1e6
    row = {"name": case["name"], "server": server.label, "round": round_no, "workers": case.get("workers", 1),
           "connections": connections, "load": load, "requests": int(r["requests"]),
           "seconds": secs, "rps": r["requests"] / secs, "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000,
           "p99_ms": r["p99_us"] / 1000, "max_ms": r["max_us"] / 1000, "mean_ms": r["mean_us"] / 1000,
           "non2xx": int(r["status"]),
           "socket": int(r["connect"] + r["read"] + r["write"] + r["timeout"]),
           "socket_detail": {k: int(r[k]) for k in ("connect", "read", "write", "timeout")},
           "server_cpu": (sched1[0] - sched0[0]) / wall, "server_wait": (sched1[1] - sched0[1]) / wall,
           "cpu_ms_per_req": (sched1[0] - sched0[0]) / max(1, r["requests"]) * 1000,
           "wrk_cpu": (kids1 - kids0) / wall,
           "machine_cpu": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * (os.cpu_count() or 1)}
    row["other_cpu"] = max(0.0, row["machine_cpu"] - row["server_cpu"] - row["wrk_cpu"])
    if lines0 is not None:
        lines1 = server.log_lines()
        per_worker = sorted((n - lines0.get(pid, 0) for pid, n in lines1.items() if n > lines0.get(pid, 0)),
                            reverse=True)
        row["logged"] = sum(per_worker)
        row["per_worker"] = per_worker  # requests each worker logged: how the connections spread
    row["errors"] = row["non2xx"] + row["socket"]
    spread = "/".join(f"{n / max(1, sum(row.get('per_worker', [])) ) * 100:.0f}" for n in row.get("per_worker", []))
    print(f"  r{round_no} {case['name']:<22} c={connections:<3} {row['rps']:8.0f} req/s  p50 {row['p50_ms']:6.2f} ms  "
          f"p99 {row['p99_ms']:6.2f} ms  errors {row['errors']}  server CPU {row['server_cpu']:.2f} cores "
          f"({row['cpu_ms_per_req']:.2f} ms/req, waited {row['server_wait']:.2f}), wrk {row['wrk_cpu']:.2f}, "
          f"others {row['other_cpu']:.2f} (load before: {load})" + (f" per worker % {spread}" if spread else ""),
          flush=True)
    return row


def kill_test(wrk: str, ours: Ours, script: Path, args) -> dict:
    """``wrk -c8`` on ours (N workers); one worker SIGKILLed after 3 s: wrk's failed requests, and
    the time until a replacement worker has loaded the model and joined (it serves from then on)."""
    seconds = max(10, args.duration // 2 + 3)
    result: dict = {}

    def load():
        result["wrk"] = wrk_run(wrk, script, f"{ours.url}{ours.path}", 8, args.wrk_threads, seconds)

    import threading

    t = threading.Thread(target=load)
    t.start()
    time.sleep(3)
    before = ours.worker_pids()
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    back = None
    while time.monotonic() - killed < seconds:
        now = ours.worker_pids()
        if len(now) >= len(before) and victim not in now:
            back = time.monotonic() - killed
            break
        time.sleep(0.01)
    t.join()
    r = result["wrk"]
    return {"workers": len(before), "seconds": seconds, "requests": int(r["requests"]),
            "failed": int(r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"]),
            "detail": {k: int(r[k]) for k in ("status", "connect", "read", "write", "timeout")},
            "back_s": back, "rps": r["requests"] / (r["duration_us"] / 1e6)}


# --------------------------------------------------------------------------- report

def median(xs: List[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def spread(xs: List[float], fmt: str = "{:,.0f}") -> str:
    """``median (min-max)`` of several rounds; the one value when there is one round."""
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def report(rows: List[dict], info: dict, args, model_uri: str, model_desc: str, started: str, load0: str,
           trial: bool, checks: Dict[str, str], kill: Optional[dict], n: int, ours_route: str) -> str:
    conns = sorted({r["connections"] for r in rows})
    rounds = max(r["round"] for r in rows) + 1 if rows else 0
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["server"], r["workers"], r["connections"]), []).append(r)
    order = sorted(groups, key=lambda k: (k[2], k[1], ["ours", "minimal", "mlflow"].index(k[0])))
    lines = ["# Serving: mnistops endpoint vs a minimal server and `mlflow models serve`", ""]
    if trial:
        lines += [f"> **TRIAL RUN** (`--quick`, {args.duration} s per run): not a reported measurement.", ""]
    loads = [float(r["load"].split()[0]) for r in rows if r["load"] != "?"]
    lines += [f"Run {started} with `{' '.join(['python benchmarks/serving.py', *map(shlex.quote, sys.argv[1:])])}`.", "",
              f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}; "
              f"mlflow {info['mlflow']}, gunicorn {info['gunicorn']}, uvicorn {info['uvicorn']}, "
              f"onnxruntime {info['onnxruntime']}, fastapi {info['fastapi']}, starlette {info['starlette']}, "
              f"uvloop {info['uvloop']}, httptools {info['httptools']}, numpy {info['numpy']}; wrk {info['wrk']}. "
              f"Load average (1/5/15 min) at the start: {load0}; at the end: {loadavg()}; 1-min load before the "
              f"measured runs: {spread(loads, '{:.2f}') if loads else '?'}. "
              "The machine is shared with other jobs: read the numbers next to the load and CPU columns.", "",
              f"Model: `{model_uri}` ({model_desc}); every server runs its ONNX graph on the CPU (MLflow through "
              f"the registered pyfunc wrapper). N = {n}.", "",
              f"Load: `wrk -t{args.wrk_threads} -c<connections> -d{args.duration}s --latency` on 127.0.0.1 (keep-alive), "
              f"one 28x28 image per request (MNIST test image 0, integers 0-255, ~2.6 kB of JSON), after a "
              f"{args.warmup} s warm-up at the same concurrency. **{rounds} round(s)**: the servers run side by side "
              "(idle but for the one measured); each round measures each server in turn (the order alternates "
              "between rounds), one at a time; cells are the median of the rounds (min–max).", "",
              f"- **ours**: `python -m mnistops stage=deploy endpoint.workers=W`: scoring key checked, every "
              f"request's inputs and outputs collected, one log line per request, metrics; `POST {ours_route}`.",
              "- **minimal**: FastAPI + onnxruntime + orjson, nothing else (the `MINIMAL` app in the script), "
              "`uvicorn --workers W`; `POST /score` `{\"data\": [image]}`.",
              "- **mlflow**: `mlflow models serve --env-manager local --workers W`; `POST /invocations` "
              "`{\"inputs\": [image]}`.", "",
              "| server | workers | conns | req/s | p50 ms | p99 ms | max ms | errors |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in order:
        g = groups[key]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {spread([r['rps'] for r in g])} | "
                     f"{spread([r['p50_ms'] for r in g], '{:.2f}')} | {spread([r['p99_ms'] for r in g], '{:.2f}')} | "
                     f"{spread([r['max_ms'] for r in g], '{:.1f}')} | {sum(r['errors'] for r in g)} |")
    lines += ["", "Errors: wrk's count of answers with status >= 400 plus socket errors (connect, read, write, "
                  "timeout at 10 s), summed over the rounds.", "",
              "Every measured run, in order (load: the 1/5/15-minute load average before it; *per worker*: the "
              "share of the run's requests each of ours' workers logged, i.e. how the connections spread):", "",
              "| round | server | workers | conns | req/s | p99 ms | server CPU ms / req | server cores | waited | wrk | "
              "others | per worker % | load before |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        pw = r.get("per_worker")
        share = "/".join(f"{x / max(1, sum(pw)) * 100:.0f}" for x in pw) if pw else "-"
        lines.append(f"| {r['round'] + 1} | {r['server']} | {r['workers']} | {r['connections']} | {r['rps']:,.0f} | "
                     f"{r['p99_ms']:.2f} | {r['cpu_ms_per_req']:.2f} | {r['server_cpu']:.2f} | {r['server_wait']:.2f} | "
                     f"{r['wrk_cpu']:.2f} | {r['other_cpu']:.2f} | {share} | {r['load']} |")
    lines += ["", "CPU columns in cores (CPU seconds per second; the machine has "
              f"{info['nproc']}): *server*: all the server's processes and threads (kernel schedstat); *waited*: "
              "time its threads were runnable but queued for a CPU; *others*: CPU used by neither the server nor "
              "wrk (other jobs)."]
    mark = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    by_round = {(r["server"], r["workers"], r["connections"], r["round"]): r for r in rows}

    def ratios(a: str, wa: int, b: str, wb: int, c: int, key: str = "rps") -> List[float]:
        out = []
        for k in range(rounds):
            x, y = by_round.get((a, wa, c, k)), by_round.get((b, wb, c, k))
            if x and y and y[key]:
                out.append(x[key] / y[key])
        return out

    def cell(xs: List[float], target: Optional[float] = None, low: bool = True) -> str:
        if not xs:
            return "-"
        m = median(xs)
        text = spread(xs, "{:.2f}")
        return text if target is None else f"{text} ({mark(m >= target if low else m <= target)})"

    lines += ["", "## Against the targets", "",
              "Ratios per round (ours and its peer measured in the same round), median (min–max) over the rounds; "
              "the target is judged on the median.", "",
              "| conns | ours N / ours 1 (>= 1.7x) | ours / minimal, 1 worker (>= 0.90) | ours / minimal, N workers "
              "(>= 0.90) | ours p99 / minimal p99, N workers (<= 1.25 at 8) | ours / mlflow, N workers |",
              "|---:|---:|---:|---:|---:|---:|"]
    for c in conns:
        lines.append(f"| {c} | {cell(ratios('ours', n, 'ours', 1, c), 1.7)} | "
                     f"{cell(ratios('ours', 1, 'minimal', 1, c), 0.9)} | {cell(ratios('ours', n, 'minimal', n, c), 0.9)} | "
                     f"{cell(ratios('ours', n, 'minimal', n, c, 'p99_ms'), 1.25 if c == 8 else None, low=False)} | "
                     f"{cell(ratios('ours', n, 'mlflow', n, c))} |")
    errors = sum(r["errors"] for r in rows if r["server"] == "ours")
    lines += ["", f"Errors of ours over every run: {errors} ({mark(errors == 0)})."]
    if kill:
        back = f"{kill['back_s']:.2f} s" if kill["back_s"] is not None else "not within the run"
        lines += ["", "## A worker killed under load", "",
                  f"Ours with {kill['workers']} workers under `wrk -c8` for {kill['seconds']} s; one worker SIGKILLed "
                  f"3 s in: **{kill['failed']} failed requests** of {kill['requests']:,} ({kill['detail']}); a new "
                  f"worker had loaded the deployments and joined **{back}** after the kill (the other worker served "
                  f"meanwhile: {kill['rps']:,.0f} req/s over the whole run)."]
    lines += ["", "## Checks", ""] + [f"- {k}: {v}" for k, v in checks.items()]
    logged = [r for r in rows if "logged" in r]
    if logged:
        lines.append("- request log lines written by our server during each measured run (vs requests answered): "
                     + ", ".join(f"r{r['round'] + 1} {r['workers']}w c={r['connections']}: {r['logged']:,} / "
                                 f"{r['requests']:,}" for r in logged))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main

def onnx_of(home: Path, model_uri: str, root: Path) -> Path:
    import mlflow

    uri = f"sqlite:///{home / 'dev' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    path = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(root / "model")))
    return path / "artifacts" / "model.onnx"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, help="an existing MNISTOPS_HOME with a registered model (its latest "
                                                   "version is served); default: a fresh one, filled by the pipeline")
    p.add_argument("--model-args", default=DEFAULT_MODEL_ARGS,
                   help=f"overrides for the pipeline run that makes the model (default: {DEFAULT_MODEL_ARGS!r}, "
                        "the default cnn architecture); e.g. 'model=cnn_small trainer.max_epochs=1'")
    p.add_argument("--model-name", default="mnist-classifier", help="the registered model's name")
    p.add_argument("--duration", type=int, default=15, help="seconds per measured run (>= 15 unless --quick)")
    p.add_argument("--quick", action="store_true", help="allow --duration < 15; the table is marked as a trial")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each measured run")
    p.add_argument("--connections", default="8,32", help="comma-separated wrk connection counts")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="N (default: the CPU count)")
    p.add_argument("--autogroup-nice", type=int, help="as root: the scheduler autogroup nice (-20..19) of every "
                   "server's sessions and of this script's own (wrk), e.g. -10 on a shared machine")
    p.add_argument("--only-n", action="store_true", help="measure N workers only (not 1 as well)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each measures every server in turn (default 3)")
    p.add_argument("--ours-route", default="/invocations", choices=["/invocations", "/score"],
                   help="the route of ours under load (default /invocations, the MLflow protocol)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (-t)")
    p.add_argument("--only", default="ours,minimal,mlflow", help="which of ours,minimal,mlflow to run")
    p.add_argument("--no-kill", action="store_true", help="skip the worker-kill test")
    p.add_argument("--root", type=Path, help="work dir (fresh home, logs, Lua scripts); default: a temp dir")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown output (default: {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.duration < 15 and not args.quick:
        p.error("--duration must be >= 15 s for a reported run (use --quick for a trial)")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.duration < 1 or args.warmup < 1:
        p.error("--duration and --warmup must be >= 1 s")
    conns = [int(c) for c in args.connections.split(",") if c.strip()]
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not set(only) <= {"ours", "minimal", "mlflow"} or not only:
        p.error("--only takes ours, minimal, mlflow")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    n = args.workers
    counts = [n] if args.only_n else sorted({1, n})

    raise_autogroup(os.getpid(), args.autogroup_nice)
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load0 = loadavg()
    info = machine(wrk)
    print(f"machine: {info['nproc']} CPUs ({info['cpu']}), load {load0}; mlflow {info['mlflow']}, "
          f"uvicorn {info['uvicorn']}, onnxruntime {info['onnxruntime']}, wrk {info['wrk']}", flush=True)
    root = args.root or Path(tempfile.mkdtemp(prefix="mnistops-serving-"))
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)  # the Lua scripts hold the endpoint key
    log = root / "bench.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    running: list = []
    rows: List[dict] = []
    checks: Dict[str, str] = {}
    kill = None
    ok = False
    try:
        if args.home:
            home = args.home.resolve()
            model_desc = f"latest version in the existing store {home}"
        else:
            home = root / "home"
            if not env.get("MNISTOPS_DATA_MIRROR"):
                raise SystemExit("set MNISTOPS_DATA_MIRROR=file:///path/to/mnist (or pass --home)")
            print(f"[model] pipeline into a fresh MNISTOPS_HOME={home} (load {loadavg()})", flush=True)
            run_logged([sys.executable, "-m", "mnistops", *shlex.split(args.model_args)],
                       dict(env, MNISTOPS_HOME=str(home)), log, "the pipeline")
            model_desc = f"`python -m mnistops {args.model_args}`" + ("" if "model=" in args.model_args
                                                                    else ", i.e. the default `cnn` architecture")
        env["MNISTOPS_HOME"] = str(home)
        model_uri = f"models:/{args.model_name}/{latest_version(home, args.model_name)}"
        image, label = test_image(home)
        score_body = root / "score.json"
        inv_body = root / "invocations.json"
        score_body.write_bytes(json.dumps({"data": [image.tolist()]}, separators=(",", ":")).encode())
        inv_body.write_bytes(json.dumps({"inputs": [image.tolist()]}, separators=(",", ":")).encode())
        onnx = onnx_of(home, model_uri, root) if "minimal" in only else None

        def servers(workers: int):
            for kind in only:
                if kind == "ours":
                    yield Ours(home, env, free_port(), model_uri, log, workers, args.ours_route)
                elif kind == "minimal":
                    yield Minimal(root, env, free_port(), onnx, root / "minimal.log", workers)
                else:
                    yield Mlflow(home, env, free_port(), model_uri, root / "mlflow.log", workers)

        for workers in counts:
            cases = []
            for server in servers(workers):
                name = f"{server.label} w={workers}"
                print(f"[{name}] starting ({model_uri})", flush=True)
                running.append(server)
                server.start()
                raise_autogroup(server.pid, args.autogroup_nice)
                headers = {}
                auth = ""
                if isinstance(server, Ours):
                    headers = {"Authorization": f"Bearer {server.key}"}
                    auth = f'wrk.headers["Authorization"] = "Bearer {server.key}"'
                    if len(server.worker_pids()) != workers:
                        raise SystemExit(f"ours runs {len(server.worker_pids())} workers, not {workers}")
                body = inv_body if server.path == "/invocations" else score_body
                script = root / f"{server.label}-{workers}.lua"
                script.write_text(LUA % {"body": json.dumps(str(body)), "auth": auth})
                url = server.url + server.path
                status, answer = post(url, body.read_bytes(), headers)
                digit = json.loads(answer)["predictions"][0]["digit"] if status == 200 else None
                check = f"HTTP {status}, digit {digit} (label {label})"
                if isinstance(server, Ours):
                    check += f"; without the key: HTTP {post(url, body.read_bytes(), {})[0]}"
                checks[name] = check
                if status != 200:
                    raise SystemExit(f"{name} is not ready to measure: {check} {answer[:300]!r}")
                cases.append({"name": name, "server": server, "url": url, "script": script, "workers": workers})
            for round_no in range(args.rounds):  # interleaved: each round measures every server in turn
                for case in (cases if round_no % 2 == 0 else cases[::-1]):
                    for c in conns:
                        rows.append(measure(wrk, case, c, args, round_no))
            for case in cases:
                server = case["server"]
                if isinstance(server, Ours) and workers == n and n > 1 and not args.no_kill:
                    print(f"[{case['name']}] killing a worker under load", flush=True)
                    kill = kill_test(wrk, server, case["script"], args)
                    print(f"  {kill}", flush=True)
                server.stop()
                running.remove(server)
        (root / "rows.json").write_text(json.dumps({"rows": rows, "kill": kill}, indent=2))
        ok = True
    finally:
        for server in reversed(running):
            print(f"[stop] {server.label} on {server.url}", flush=True)
            try:
                server.stop()
            except BaseException as exc:  # keep stopping the others
                print(f"  could not stop {server.label}: {exc!r}", flush=True)
        for lua in root.glob("*.lua"):  # they hold the key
            lua.unlink()
        if ok and not args.keep and args.root is None:
            shutil.rmtree(root, ignore_errors=True)
        elif not ok:
            print(f"logs kept in {root}", flush=True)

    text = report(rows, info, args, model_uri, model_desc, started, load0, args.quick, checks, kill, n,
                  args.ours_route)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print()
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
