"""Bounded HTTP load test of the cmcrec service.

Starts ``cmcrec serve`` for ``--model DIR`` on a free loopback port (or targets
a running server with ``--url``, loopback only), runs ``--clients`` concurrent
clients until ``--requests`` requests have been sent or ``--max-seconds`` have
passed, whichever comes first, stops the server it started, and prints a table
(and with ``--json`` one JSON line) of latencies and throughput.

The requests mix ``POST /recommend`` for training users, ``POST
/recommend/new-user`` with a few ratings of training items and ``POST /predict``
for a training user and a handful of items; ids come from the model directory
(``vocab.json``, ``train_ratings.safetensors``), drawn with a seeded generator.

Example::

    cmcrec train --model mf --dataset movietweetings-100k --epochs 2 --out /tmp/mt-mf --no-evaluate
    python benchmarks/load.py --model /tmp/mt-mf --clients 32 --requests 2000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

from cmcrec.artifacts import atomic_write_text
from cmcrec.benchmarks.common import machine

ENDPOINTS = {"recommend": "/recommend", "new-user": "/recommend/new-user", "predict": "/predict"}
DEFAULT_MIX = "recommend=2,new-user=1,predict=1"


@dataclass
class Result:
    """Latencies and failures of one endpoint."""

    latencies_ms: list[float] = field(default_factory=list)  # of successful requests only
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return len(self.latencies_ms) + self.errors

    def add(self, ms: float, status: str, ok: bool) -> None:
        # A failed request's time (an instant 4xx, or a timeout) is no latency of the service.
        if ok:
            self.latencies_ms.append(ms)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.errors += not ok


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, weight = part.partition("=")
        if not eq or name not in ENDPOINTS:
            raise SystemExit(f"--mix: expected name=weight with name in {sorted(ENDPOINTS)}, got {part!r}")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise SystemExit(f"--mix: weight of {name!r} is not a number: {weight!r}") from None
        if mix[name] < 0:
            raise SystemExit(f"--mix: weight of {name!r} must be >= 0, got {weight}")
    if not mix or sum(mix.values()) <= 0:
        raise SystemExit(f"--mix: give at least one positive weight, got {text!r}")
    return mix


def check_loopback(url: str) -> str:
    """The URL without a trailing slash; exits unless its host is a loopback address."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise SystemExit(f"--url: expected http://127.0.0.1:PORT, got {url!r}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"--url: refusing non-loopback host {host!r}; this load test only targets this machine")
    return url.rstrip("/")


class Workload:
    """Seeded request bodies built from a model directory's ids.

    Args:
        model_dir: the artifact the server serves.
        seed: seed of the body generator.
        rated_items: ratings per new-user request.
        predict_items: items per ``/predict`` request.
        k: ``k`` of recommendation requests.
    """

    def __init__(self, model_dir: Path, seed: int, rated_items: int = 5, predict_items: int = 20, k: int = 10):
        from safetensors.numpy import load_file

        try:
            vocab = json.loads((model_dir / "vocab.json").read_text())
            manifest = json.loads((model_dir / "manifest.json").read_text())
            train = load_file(str(model_dir / "train_ratings.safetensors"))
        except (OSError, ValueError) as e:
            raise SystemExit(f"--model {model_dir}: not a readable model directory ({e})") from None
        self.users = np.asarray(vocab["users"], dtype=object)[np.unique(train["user"])]
        self.items = np.asarray(vocab["items"], dtype=object)
        self.rated = self.items[np.unique(train["item"])]
        self.levels = np.asarray(manifest["scale"]["levels"], dtype=np.float64)
        self.rng = np.random.default_rng(seed)
        self.rated_items = min(rated_items, len(self.rated))
        self.predict_items = min(predict_items, len(self.items))
        self.k = k

    def body(self, endpoint: str) -> dict:
        rng = self.rng
        if endpoint == "recommend":
            return {"user": str(rng.choice(self.users)), "k": self.k}
        if endpoint == "new-user":
            items = rng.choice(self.rated, size=self.rated_items, replace=False)
            return {"ratings": {str(i): float(rng.choice(self.levels)) for i in items}, "k": self.k}
        items = rng.choice(self.items, size=self.predict_items, replace=False)
        return {"user": str(rng.choice(self.users)), "items": [str(i) for i in items]}


async def run_load(
    base: str,
    workload: Workload,
    mix: dict[str, float],
    clients: int,
    requests: int,
    max_seconds: float,
    timeout: float,
) -> tuple[dict[str, Result], float]:
    """Send ``requests`` requests from ``clients`` concurrent clients; stop early after ``max_seconds``."""
    names = list(mix)
    weights = np.asarray([mix[n] for n in names]) / sum(mix.values())
    plan = [names[i] for i in workload.rng.choice(len(names), size=requests, p=weights)]
    bodies = [(name, workload.body(name)) for name in plan]  # built up front: no client-side cost in the timings
    results = {name: Result() for name in names}
    next_request = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:

        async def one_client() -> None:
            nonlocal next_request
            while next_request < len(bodies) and time.perf_counter() < deadline:
                name, body = bodies[next_request]
                next_request += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(ENDPOINTS[name], json=body)
                    status, ok = str(r.status_code), r.status_code == 200
                except httpx.HTTPError as e:
                    status, ok = type(e).__name__, False
                results[name].add((time.perf_counter() - t0) * 1000.0, status, ok)

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return results, time.perf_counter() - start


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(model_dir: Path, startup_seconds: float):
    """Run ``cmcrec serve`` on a free loopback port; yield its URL; stop it on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "cmcrec", "serve", "--model", str(model_dir), "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc, startup_seconds, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen | None, seconds: float, log=None) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = b""
            if log is not None:
                log.seek(0)
                tail = log.read()[-4000:]
            raise SystemExit(f"server exited with status {proc.returncode}:\n{tail.decode(errors='replace')}")
        try:
            r = httpx.get(f"{url}/health", timeout=2.0)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}/health did not answer within {seconds:g} s")


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(results: dict[str, Result], seconds: float, args: argparse.Namespace, health: dict) -> dict:
    all_ms = [ms for r in results.values() for ms in r.latencies_ms]
    n = sum(r.sent for r in results.values())

    def stats(ms: list[float], errors: int) -> dict:
        p50, p99 = percentile(ms, 50), percentile(ms, 99)
        return {
            "requests": len(ms) + errors,
            "errors": errors,
            "p50_ms": None if p50 is None else round(p50, 2),
            "p99_ms": None if p99 is None else round(p99, 2),
        }

    summary = stats(all_ms, sum(r.errors for r in results.values()))
    return summary | {
        "rps": round(len(all_ms) / seconds, 1) if seconds > 0 else None,  # successful requests
        "clients": args.clients,
        "endpoint_mix": {name: r.sent for name, r in results.items()},
        "per_endpoint": {
            name: stats(r.latencies_ms, r.errors) | {"statuses": r.statuses} for name, r in results.items()
        },
        "seconds": round(seconds, 2),
        "stopped_by": "requests" if n >= args.requests else "max-seconds",
        "model": health.get("model"),
        "num_users": health.get("num_users"),
        "num_items": health.get("num_items"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def table(summary: dict) -> str:
    rows = [("endpoint", "requests", "errors", "p50 ms", "p99 ms")]
    for name, s in summary["per_endpoint"].items():
        rows.append((name, s["requests"], s["errors"], s["p50_ms"], s["p99_ms"]))
    rows.append(("all", summary["requests"], summary["errors"], summary["p50_ms"], summary["p99_ms"]))
    lines = ["  ".join(f"{str(c):>10}" if j else f"{str(c):<10}" for j, c in enumerate(row)) for row in rows]
    lines.append(
        f"{summary['rps']} requests/s with {summary['clients']} clients over {summary['seconds']} s "
        f"(stopped by {summary['stopped_by']}); model {summary['model']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="Model directory (served, and the source of ids).")
    p.add_argument("--url", help="Target this running server (loopback only) instead of starting one.")
    p.add_argument("--clients", type=int, default=32, help="Concurrent clients (default 32).")
    p.add_argument("--requests", type=int, default=2000, help="Total requests (default 2000).")
    p.add_argument("--max-seconds", type=float, default=120.0, help="Stop sending after this long (default 120).")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"Endpoint weights (default {DEFAULT_MIX}).")
    p.add_argument("--k", type=int, default=10, help="k of recommendation requests (default 10).")
    p.add_argument("--timeout", type=float, default=30.0, help="Per-request timeout in seconds (default 30).")
    p.add_argument("--startup-seconds", type=float, default=120.0, help="Wait this long for the server to start.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the request generator.")
    p.add_argument("--json", action="store_true", help="Print one JSON line instead of the table.")
    p.add_argument("--out", type=Path, help="Also write the JSON summary to this file (atomically).")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 1024:
        p.error(f"--clients must be in 1..1024, got {args.clients}")
    if not 1 <= args.requests <= 1_000_000:
        p.error(f"--requests must be in 1..1000000, got {args.requests}")
    if not 0 < args.max_seconds <= 3600:
        p.error(f"--max-seconds must be in (0, 3600], got {args.max_seconds}")
    if not 1 <= args.k <= 1000:
        p.error(f"--k must be in 1..1000, got {args.k}")
    mix = parse_mix(args.mix)
    workload = Workload(args.model, args.seed, k=args.k)

    def measure(url: str, health: dict) -> dict:
        results, seconds = asyncio.run(
            run_load(url, workload, mix, args.clients, args.requests, args.max_seconds, args.timeout)
        )
        return summarise(results, seconds, args, health)

    if args.url:
        url = check_loopback(args.url)
        summary = measure(url, wait_healthy(url, None, args.startup_seconds))
    else:
        with serve(args.model, args.startup_seconds) as url:
            summary = measure(url, wait_healthy(url, None, args.startup_seconds))
    line = json.dumps(summary)
    print(line if args.json else table(summary))
    if summary["errors"]:
        # Latencies of a run with failures do not describe the service: say so, write nothing.
        print(f"load.py: {summary['errors']} request(s) failed; no results written", file=sys.stderr)
        return 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
