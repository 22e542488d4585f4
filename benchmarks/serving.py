"""Serving speed: our endpoint vs `mlflow models serve`, same registered model, same load generator.

One run, one machine, side by side:

  ours /score        `python -m mnistops stage=deploy` (auth on, one log line per request to its
                     server.log), body {"data": [<one 28x28 image>]}
  ours /invocations  the same server, MLflow's body {"inputs": [<one 28x28 image>]}
  mlflow             `mlflow models serve -m models:/<name>/<version> --env-manager local --workers 1`
                     (uvicorn access log on), POST /invocations with the same body

Load: Debian's `wrk` on 127.0.0.1, single-image requests, for each of --connections (8,32) a
warm-up (--warmup s) then a measured run (--duration s, >= 20 unless --quick). The image is MNIST
test image 0 for every request. The Lua script's done() prints one JSON line (p50/p99, errors).

The model comes from the pipeline run into a fresh MNISTOPS_HOME (`--model-args`, default: the
default `cnn` architecture trained briefly: serving speed depends on the architecture, not on the
accuracy), or from an existing store (`--home`, its latest registered version). Every server this
starts is stopped at the end (also on Ctrl-C or an error). The markdown table goes to --out and
stdout. Nothing is asserted.

    MNISTOPS_DATA_MIRROR=file:///path/to/mnist python benchmarks/serving.py
    python benchmarks/serving.py --home ~/.mnistops --connections 8,32,64
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
            **{d: version(d) for d in ("mlflow", "uvicorn", "onnxruntime", "fastapi", "starlette", "uvloop",
                                       "httptools", "numpy")}}


# --------------------------------------------------------------------------- CPU accounting

def session_sched(sid: int) -> tuple:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of every thread in session ``sid``
    (the kernel's /proc/PID/task/TID/schedstat)."""
    run = wait = 0
    for pid in session_pids(sid):
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

class Ours:
    label = "mnistops"

    def __init__(self, home: Path, env: dict, port: int, model_uri: str, log: Path):
        self.home, self.env, self.port, self.model_uri, self.log = home, env, port, model_uri, log
        self.overrides = [f"endpoint.name={ENDPOINT_NAME}", f"endpoint.port={port}"]
        self.dir = home / "dev" / "endpoints" / ENDPOINT_NAME
        self.url = f"http://127.0.0.1:{port}"
        self.started = False
        self.pid: Optional[int] = None

    def start(self) -> None:
        self.started = True  # from here on, stop() has something to try
        run_logged([sys.executable, "-m", "mnistops", "stage=deploy", f"deploy.model='{self.model_uri}'",
                    *self.overrides], self.env, self.log, "stage=deploy")
        wait_http(f"{self.url}/health", 60, what="our endpoint")
        self.pid = int((self.dir / "server.pid").read_text().strip())
        self.key = (self.dir / "key").read_text().strip()
        self.server_log = self.dir / "server.log"

    def log_lines(self) -> int:
        with open(self.server_log, "rb") as f:
            return sum(1 for _ in f)

    def stop(self) -> None:
        if not self.started:
            return
        try:
            run_logged([sys.executable, "-m", "mnistops", "stage=endpoint", "endpoint.action=stop", *self.overrides],
                       self.env, self.log, "stage=endpoint endpoint.action=stop")
        except BaseException as exc:  # still make sure the process is gone
            print(f"  stop via stage=endpoint failed ({exc!r}); killing pid {self.pid}", flush=True)
        if self.pid is not None:
            kill_session(self.pid)


class Mlflow:
    label = "mlflow"

    def __init__(self, home: Path, env: dict, port: int, model_uri: str, log: Path):
        uri = f"sqlite:///{home / 'dev' / 'mlflow.db'}"
        self.env = dict(env, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri,
                        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")  # it execs `uvicorn` from PATH
        self.cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "-h", "127.0.0.1", "-p", str(port),
                    "--env-manager", "local", "--workers", "1"]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: Optional[subprocess.Popen] = None
        self.pid: Optional[int] = None

    def start(self) -> None:
        print(f"  $ {' '.join(shlex.quote(c) for c in self.cmd)}", flush=True)
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(self.cmd, cwd=self.log.parent, env=self.env, stdout=f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        wait_http(f"{self.url}/ping", 120, self.proc, "mlflow models serve")

    def stop(self) -> None:
        if self.proc is None:
            return
        kill_session(self.proc.pid)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


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


def measure(wrk: str, case: dict, connections: int, args) -> dict:
    server = case["server"]
    load = loadavg()
    wrk_run(wrk, case["script"], case["url"], connections, args.wrk_threads, args.warmup)
    lines0 = server.log_lines() if isinstance(server, Ours) else None
    sched0, busy0, kids0 = session_sched(server.pid), machine_cpu(), children_cpu()
    t0 = time.monotonic()
    r = wrk_run(wrk, case["script"], case["url"], connections, args.wrk_threads, args.duration)
    wall = time.monotonic() - t0
    sched1, busy1, kids1 = session_sched(server.pid), machine_cpu(), children_cpu()
    time.sleep(0.3)  # the last log lines reach the file
    secs = r["duration_us"] / 1e6
    row = {"name": case["name"], "connections": connections, "load": load, "requests": int(r["requests"]),
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
        row["logged"] = server.log_lines() - lines0
    row["errors"] = row["non2xx"] + row["socket"]
    print(f"  {case['name']:<22} c={connections:<3} {row['rps']:8.0f} req/s  p50 {row['p50_ms']:6.2f} ms  "
          f"p99 {row['p99_ms']:6.2f} ms  errors {row['errors']}  server CPU {row['server_cpu']:.2f} cores "
          f"({row['cpu_ms_per_req']:.2f} ms/req, waited {row['server_wait']:.2f}), wrk {row['wrk_cpu']:.2f}, "
          f"others {row['other_cpu']:.2f} (load before: {load})", flush=True)
    return row


# --------------------------------------------------------------------------- report

def report(rows: List[dict], info: dict, args, model_uri: str, model_desc: str, started: str, load0: str,
           trial: bool, checks: Dict[str, str]) -> str:
    conns = sorted({r["connections"] for r in rows})
    lines = ["# Serving: mnistops endpoint vs `mlflow models serve`", ""]
    if trial:
        lines += [f"> **TRIAL RUN** (`--quick`, {args.duration} s per run): not a reported measurement.", ""]
    lines += [f"Run {started} with `{' '.join(['python benchmarks/serving.py', *map(shlex.quote, sys.argv[1:])])}`.", "",
              f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}; "
              f"mlflow {info['mlflow']}, uvicorn {info['uvicorn']}, onnxruntime {info['onnxruntime']}, "
              f"fastapi {info['fastapi']}, starlette {info['starlette']}, uvloop {info['uvloop']}, "
              f"httptools {info['httptools']}, numpy {info['numpy']}; wrk {info['wrk']}. "
              f"Load average (1/5/15 min) at the start: {load0}; at the end: {loadavg()}. "
              "The machine is shared with other jobs: read the numbers next to the load and CPU columns.", "",
              f"Model: `{model_uri}` ({model_desc}). Both servers run the same ONNX graph (MLflow through the "
              "registered pyfunc wrapper), one worker process each. Serving speed depends on the "
              "architecture, not on the accuracy, so a briefly trained model is as good as a fully trained one here.",
              "",
              f"Load: `wrk -t{args.wrk_threads} -c<connections> -d{args.duration}s --latency` on 127.0.0.1 (keep-alive), "
              f"one 28x28 image per request (MNIST test image 0, integers 0-255, ~2.6 kB of JSON), after a "
              f"{args.warmup} s warm-up at the same concurrency. Runs one after the other, servers side by side.", "",
              "- **ours /score**: `python -m mnistops stage=deploy` (auth on: `Authorization: Bearer <key>`; "
              "request logging on: one line per request in its `server.log`), body `{\"data\": [image]}`.",
              "- **ours /invocations**: the same server, the same body as MLflow's: `{\"inputs\": [image]}`.",
              f"- **mlflow /invocations**: `mlflow models serve -m {model_uri} --env-manager local --workers 1` "
              "(no auth; uvicorn's access log on), body `{\"inputs\": [image]}`.", "",
              "| server | route | conns | req/s | p50 ms | p99 ms | max ms | errors (non-2xx + socket) | load avg before |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in conns:
        for r in [r for r in rows if r["connections"] == c]:
            server, route = r["name"].split(" ", 1)
            sock = r["socket"]
            err = f"{r['errors']} ({r['non2xx']} + {sock})"
            lines.append(f"| {server} | `{route}` | {c} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['max_ms']:.1f} | {err} | {r['load']} |")
    lines += ["", "Errors: wrk's count of HTTP answers with status >= 400, plus socket errors (connect, read, write, "
                  "timeout at 10 s).", "",
              "Where the CPU went during each measured run, in cores (CPU seconds per second; the machine has "
              f"{info['nproc']}). *server*: time on a CPU of all the server's threads (kernel schedstat); *waited*: "
              "time its threads were runnable but queued behind other work; *others*: all CPU use that was neither "
              "the server nor wrk (other jobs on the machine).", "",
              "| server | route | conns | server CPU ms / request | server | waited | wrk | others |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in conns:
        for r in [r for r in rows if r["connections"] == c]:
            server, route = r["name"].split(" ", 1)
            lines.append(f"| {server} | `{route}` | {c} | {r['cpu_ms_per_req']:.2f} | {r['server_cpu']:.2f} | "
                         f"{r['server_wait']:.2f} | {r['wrk_cpu']:.2f} | {r['other_cpu']:.2f} |")
    lines += ["",
              "## Against the targets", "",
              "| connections | ours /score vs mlflow (req/s) | ours /invocations vs mlflow (req/s) | "
              "ours p99 /score, /invocations | errors (ours) |", "|---:|---:|---:|---|---:|"]
    for c in conns:
        by = {r["name"]: r for r in rows if r["connections"] == c}
        m = by.get("mlflow /invocations")
        s, i = by.get("ours /score"), by.get("ours /invocations")
        if not (m and s and i):
            continue
        lines.append(f"| {c} | **{s['rps'] / m['rps']:.1f}x** | **{i['rps'] / m['rps']:.1f}x** | "
                     f"{s['p99_ms']:.1f} ms, {i['p99_ms']:.1f} ms | {s['errors'] + i['errors']} |")
    top = max(conns)
    by = {r["name"]: r for r in rows if r["connections"] == top}
    if all(k in by for k in ("mlflow /invocations", "ours /score", "ours /invocations")):
        m = by["mlflow /invocations"]
        ours = [by["ours /score"], by["ours /invocations"]]
        speed = min(r["rps"] for r in ours) / m["rps"]
        p99 = max(r["p99_ms"] for r in rows if r["name"].startswith("ours"))
        errors = sum(r["errors"] for r in rows if r["name"].startswith("ours"))
        mark = lambda ok: "met" if ok else "**missed**"
        lines += ["", f"Targets: >= 5x MLflow's req/s at {top} connections: {speed:.1f}x, {mark(speed >= 5)}; "
                      f"p99 <= 20 ms (ours, every run): worst {p99:.1f} ms, {mark(p99 <= 20)}; "
                      f"zero errors (ours): {errors}, {mark(errors == 0)}."]
    lines += ["", "## Checks", ""] + [f"- {k}: {v}" for k, v in checks.items()]
    logged = [r for r in rows if "logged" in r]
    if logged:
        lines.append("- request log lines written by our server during each measured run (vs requests answered): "
                     + ", ".join(f"{r['name'].split(' ', 1)[1]} c={r['connections']}: {r['logged']:,} / {r['requests']:,}"
                                 for r in logged))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, help="an existing MNISTOPS_HOME with a registered model (its latest "
                                                   "version is served); default: a fresh one, filled by the pipeline")
    p.add_argument("--model-args", default=DEFAULT_MODEL_ARGS,
                   help=f"overrides for the pipeline run that makes the model (default: {DEFAULT_MODEL_ARGS!r}, "
                        "the default cnn architecture); e.g. 'model=cnn_small trainer.max_epochs=1'")
    p.add_argument("--model-name", default="mnist-classifier", help="the registered model's name")
    p.add_argument("--duration", type=int, default=20, help="seconds per measured run (>= 20 unless --quick)")
    p.add_argument("--quick", action="store_true", help="allow --duration < 20; the table is marked as a trial")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each measured run")
    p.add_argument("--connections", default="8,32", help="comma-separated wrk connection counts")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (-t); 1 leaves a core to the server")
    p.add_argument("--only", default="score,invocations,mlflow",
                   help="which of score,invocations,mlflow to load (default: all three)")
    p.add_argument("--root", type=Path, help="work dir (fresh home, logs, Lua scripts); default: a temp dir")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown output (default: {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.duration < 20 and not args.quick:
        p.error("--duration must be >= 20 s for a reported run (use --quick for a trial)")
    if args.duration < 1 or args.warmup < 1:
        p.error("--duration and --warmup must be >= 1 s")
    conns = [int(c) for c in args.connections.split(",") if c.strip()]
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only <= {"score", "invocations", "mlflow"} or not only:
        p.error("--only takes score, invocations, mlflow")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")

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
    servers: list = []
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

        ours = Ours(home, env, free_port(), model_uri, log) if only & {"score", "invocations"} else None
        mlf = Mlflow(home, env, free_port(), model_uri, root / "mlflow.log") if "mlflow" in only else None
        checks: Dict[str, str] = {}
        cases = []
        if ours is not None:
            servers.append(ours)
            print(f"[ours] deploying {model_uri} on {ours.url}", flush=True)
            ours.start()
            auth = f'wrk.headers["Authorization"] = "Bearer {ours.key}"'
            for route, body in (("score", score_body), ("invocations", inv_body)):
                if route not in only:
                    continue
                script = root / f"ours-{route}.lua"
                script.write_text(LUA % {"body": json.dumps(str(body)), "auth": auth})
                url = f"{ours.url}/{route}"
                status, answer = post(url, body.read_bytes(), {"Authorization": f"Bearer {ours.key}"})
                digit = json.loads(answer)["predictions"][0]["digit"] if status == 200 else None
                no_key, _ = post(url, body.read_bytes(), {})
                checks[f"ours /{route}"] = (f"HTTP {status}, digit {digit} (label {label}); "
                                            f"without the key: HTTP {no_key}")
                if status != 200 or no_key != 401:
                    raise SystemExit(f"our /{route} is not ready to measure: {checks[f'ours /{route}']}")
                cases.append({"name": f"ours /{route}", "server": ours, "url": url, "script": script})
        if mlf is not None:
            servers.append(mlf)
            print(f"[mlflow] serving {model_uri} on {mlf.url}", flush=True)
            mlf.start()
            script = root / "mlflow.lua"
            script.write_text(LUA % {"body": json.dumps(str(inv_body)), "auth": ""})
            url = f"{mlf.url}/invocations"
            status, answer = post(url, inv_body.read_bytes(), {})
            digit = json.loads(answer)["predictions"][0]["digit"] if status == 200 else None
            checks["mlflow /invocations"] = f"HTTP {status}, digit {digit} (label {label})"
            if status != 200:
                raise SystemExit(f"mlflow's /invocations is not ready to measure: {answer[:300]!r}")
            cases.append({"name": "mlflow /invocations", "server": mlf, "url": url, "script": script})

        rows = []
        for c in conns:
            print(f"[load] {c} connections, {args.warmup} s warm-up + {args.duration} s each", flush=True)
            for case in cases:
                rows.append(measure(wrk, case, c, args))
        (root / "rows.json").write_text(json.dumps(rows, indent=2))
        ok = True
    finally:
        for server in reversed(servers):
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

    text = report(rows, info, args, model_uri, model_desc, started, load0, args.quick, checks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print()
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
