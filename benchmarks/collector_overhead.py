"""What the data collector costs: our endpoint's throughput with collection on vs off, one run.

Two endpoints of the same registered model on this machine, deployed by `stage=deploy`: one with
the collector on (`endpoint.collect.sampling_rate=1.0`: every request's inputs and outputs kept),
one with `endpoint.collect.enabled=false`. Both get the same `wrk` load on `/score` (one image per
request), in alternating rounds (on, off, on, off, ...) so drifting machine load hits both alike.
Target: collection cuts throughput by at most 10 %. Servers, model and load generator as in
`benchmarks/serving.py` (whose helpers this reuses). Nothing is asserted; the table goes to --out.

    MNISTOPS_DATA_MIRROR=file:///path/to/mnist python benchmarks/collector_overhead.py
    python benchmarks/collector_overhead.py --home ~/.mnistops --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as bench  # noqa: E402  (benchmarks/serving.py: machine info, servers, wrk, CPU accounting)

DEFAULT_OUT = bench.REPO / "benchmarks" / "results" / "collector.md"


class Endpoint(bench.Ours):
    """Our endpoint under its own name, with extra overrides (the collector's switch)."""

    def __init__(self, home: Path, env: dict, port: int, model_uri: str, log: Path, name: str, extra: list):
        super().__init__(home, env, port, model_uri, log)
        self.overrides = [f"endpoint.name={name}", f"endpoint.port={port}", *extra]
        self.dir = home / "dev" / "endpoints" / name
        self.monitor_dir = home / "dev" / "monitoring" / name


def collected(monitor_dir: Path) -> int:
    return sum(1 for f in (monitor_dir / "requests").glob("*.jsonl") for _ in open(f, "rb"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, help="an existing MNISTOPS_HOME with a registered model")
    p.add_argument("--model-args", default=bench.DEFAULT_MODEL_ARGS)
    p.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="on/off pairs per connection count")
    p.add_argument("--connections", default="32")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    info = bench.machine(wrk)
    started, load0 = time.strftime("%Y-%m-%d %H:%M %Z"), bench.loadavg()
    root = Path(tempfile.mkdtemp(prefix="mnistops-collector-"))
    os.chmod(root, 0o700)
    log = root / "bench.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    servers = []
    rows = []
    try:
        if args.home:
            home = args.home.resolve()
        else:
            home = root / "home"
            bench.run_logged([sys.executable, "-m", "mnistops", *shlex.split(args.model_args)],
                             dict(env, MNISTOPS_HOME=str(home)), log, "the pipeline")
        env["MNISTOPS_HOME"] = str(home)
        model_uri = f"models:/mnist-classifier/{bench.latest_version(home, 'mnist-classifier')}"
        image, _ = bench.test_image(home)
        body = root / "score.json"
        body.write_bytes(json.dumps({"data": [image.tolist()]}, separators=(",", ":")).encode())
        cases = []
        for label, name, extra in (("collect on", "bench-collect-on", ["endpoint.collect.sampling_rate=1.0"]),
                                   ("collect off", "bench-collect-off", ["endpoint.collect.enabled=false"])):
            server = Endpoint(home, env, bench.free_port(), model_uri, log, name, extra)
            servers.append(server)
            server.start()
            script = root / f"{name}.lua"
            script.write_text(bench.LUA % {"body": json.dumps(str(body)),
                                           "auth": f'wrk.headers["Authorization"] = "Bearer {server.key}"'})
            cases.append({"name": f"{label} /score", "server": server, "url": f"{server.url}/score", "script": script})
        for c in [int(x) for x in args.connections.split(",")]:
            for r in range(args.rounds):
                for case in (cases if r % 2 == 0 else cases[::-1]):
                    before = collected(case["server"].monitor_dir)
                    row = bench.measure(wrk, case, c, args)
                    time.sleep(0.5)  # the writer's last flush
                    row["collected"] = collected(case["server"].monitor_dir) - before
                    rows.append(row)
    finally:
        for server in servers:
            server.stop()
        for lua in root.glob("*.lua"):
            lua.unlink()
    lines = ["# Data collector overhead: throughput with collection on vs off", "",
             f"Run {started} with `python benchmarks/collector_overhead.py {' '.join(map(shlex.quote, sys.argv[1:]))}`.",
             "", f"Machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, uvicorn {info['uvicorn']}, "
                 f"onnxruntime {info['onnxruntime']}, wrk {info['wrk']}. Load average at the start {load0}, at the end "
                 f"{bench.loadavg()}.", "",
             f"Model `{model_uri}`; two endpoints deployed by `stage=deploy`, one with every request's inputs and "
             "outputs collected (`sampling_rate=1.0`), one with `endpoint.collect.enabled=false`; "
             f"`wrk -t{args.wrk_threads} -c<conns> -d{args.duration}s` on `/score`, one image per request, "
             f"{args.rounds} alternating rounds.", "",
             "| case | conns | round | req/s | p50 ms | p99 ms | errors | records written | server CPU ms/req | others (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        lines.append(f"| {r['name']} | {r['connections']} | {i // 2 + 1} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['errors']} | {r['collected']:,} | {r['cpu_ms_per_req']:.3f} | "
                     f"{r['other_cpu']:.2f} |")
    on = median(r["rps"] for r in rows if r["name"].startswith("collect on"))
    off = median(r["rps"] for r in rows if r["name"].startswith("collect off"))
    loss = 1 - on / off
    cpu_on = median(r["cpu_ms_per_req"] for r in rows if r["name"].startswith("collect on"))
    cpu_off = median(r["cpu_ms_per_req"] for r in rows if r["name"].startswith("collect off"))
    lines += ["", f"Median throughput: collection on {on:,.0f} req/s, off {off:,.0f} req/s: "
                  f"**{loss * 100:+.1f} % loss** (target <= 10 %: {'met' if loss <= 0.10 else '**missed**'}). "
                  f"Median server CPU per request (steadier than req/s on a shared machine): on {cpu_on:.3f} ms, "
                  f"off {cpu_off:.3f} ms: collection costs {(cpu_on / cpu_off - 1) * 100:+.1f} % CPU per request."]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
