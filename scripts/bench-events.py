#!/usr/bin/env python3
"""What the event stream costs the request path: serial v2 requests through a running `dilu up`'s gateway,
in alternating rounds without and with N followers of `GET /v1/events/stream` (server-sent events) connected,
each follower a `curl -N` process of its own reading every event; prints p50/p99 per condition and their ratios.

    scripts/bench-events.py --url http://127.0.0.1:8080 --function relu --request FILE [--followers 4]
        [--rounds 6] [--requests 1500]

Events are not emitted per request: what a follower can cost the gateway is the server's work for the stream
(history, keep-alives, the vertical watcher's events while shares move) on the same process.
"""
import argparse
import http.client
import statistics
import subprocess
import time
import urllib.parse


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def followers(url, n):
    """`n` followers of the event stream, each its own process (`curl -N`), reading every event."""
    return [subprocess.Popen(["curl", "-sN", f"{url}/v1/events/stream"], stdout=subprocess.DEVNULL)
            for _ in range(n)]


def round_of(url, function, body, n):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    path = f"/v2/models/{function}/infer"
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("POST", path, body=body, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"POST {path}: {resp.status}")
        times.append(time.perf_counter() - start)
    conn.close()
    return times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--function", required=True)
    p.add_argument("--request", required=True)
    p.add_argument("--followers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=1500)
    a = p.parse_args()
    body = open(a.request, "rb").read()
    round_of(a.url, a.function, body, 200)  # warm-up
    results = {"without": [], "with": []}
    medians = {"without": [], "with": []}
    for r in range(a.rounds * 2):
        condition = ("without", "with")[(r + r // 2) % 2]
        running = followers(a.url, a.followers) if condition == "with" else []
        if running:
            time.sleep(0.3)
        times = round_of(a.url, a.function, body, a.requests)
        for p in running:
            p.terminate()
            p.wait()
        results[condition] += times
        medians[condition].append(statistics.median(times))
    for condition in ("without", "with"):
        t = results[condition]
        print(f"{condition:>7} followers: n={len(t)} p50={percentile(t, 0.5) * 1e6:.0f} us "
              f"p99={percentile(t, 0.99) * 1e6:.0f} us")
    ratio50 = percentile(results["with"], 0.5) / percentile(results["without"], 0.5)
    ratio99 = percentile(results["with"], 0.99) / percentile(results["without"], 0.99)
    print(f"ratio with/without: p50 {ratio50:.3f}, p99 {ratio99:.3f} "
          f"(median of round medians {statistics.median(medians['with']) / statistics.median(medians['without']):.3f})")


if __name__ == "__main__":
    main()
