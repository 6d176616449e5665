"""Speed: throughput and latency of `flowerpipe serve` under concurrent clients.

Load on `flowerpipe serve` over loopback: a fixed number of POST /predict requests with real
photos from a number of concurrent clients; throughput, p50 and p99 latency, failed requests.

The service runs as `flowerpipe serve` in its own process; the clients share this one (asyncio,
one connection each), so on a small machine they take some of the CPU the service could use."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import ROOT, arguments, report


@contextlib.contextmanager
def service(model: Path, threads: int, log: Path) -> Iterator[str]:
    """`flowerpipe serve MODEL` on a free loopback port, until the block ends; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "flowerpipe.cli", "serve", str(model), "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen([*command, "--threads", str(threads)], cwd=ROOT, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx2.get(f"{url}/healthz").raise_for_status()
                break
            except httpx2.TransportError:
                if proc.poll() is not None:
                    raise SystemExit(f"flowerpipe serve exited {proc.returncode}: see {log}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


async def load(url: str, bodies: list[bytes], requests: int, clients: int) -> dict[str, float | int]:
    """`requests` POST /predict calls shared out to `clients` concurrent clients."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    todo = iter(range(requests))
    limits = httpx2.Limits(max_connections=clients)
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def one_client() -> None:
            for i in todo:  # shared: each request is taken once
                start = time.perf_counter()
                try:
                    response = await client.post(
                        "/predict", content=bodies[i % len(bodies)], headers={"Content-Type": "image/jpeg"}
                    )
                    ok = response.status_code == 200 and "label" in response.json()
                    statuses[str(response.status_code) if ok else f"bad {response.status_code}"] += 1
                except httpx2.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "clients": clients,
        "requests": requests,
        "failed": requests - statuses["200"],
        "req/s": requests / seconds,
        "p50 ms": 1000 * statistics.median(latencies),
        "p99 ms": 1000 * cuts[98],
    }


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/model.onnx", help="the exported model")
    parser.add_argument("--requests", type=int, default=2000, help="requests per load level (default 2000)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64], help="concurrent clients")
    parser.add_argument("--images", type=int, default=100, help="photos the requests cycle through")
    parser.add_argument("--threads", type=int, default=0, help="the service's onnxruntime threads")
    args = parser.parse_args()
    photos = sorted(args.photos.rglob("*.jpg"))
    photos = photos[:: max(1, len(photos) // args.images)][: args.images]
    bodies = [p.read_bytes() for p in photos]
    with service(args.model, args.threads, args.work / "serve.log") as url:
        rows = [asyncio.run(load(url, bodies, args.requests, n)) for n in args.clients]
    size = statistics.median(len(b) for b in bodies)
    extra = {"model": str(args.model), "photos": len(bodies), "median_photo_bytes": size}
    report(args.results, "serve_load", rows, extra)


if __name__ == "__main__":
    main()
