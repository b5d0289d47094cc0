"""Section 4 of scripts/gpu-check.sh: the node agent on a real GPU.

Starts `dilu agent` with NVML discovery and the interposer, then runs two PyTorch instances (worker.py burn)
through the agent's API on the discovered GPU, so the agent's token manager (not hand-set budgets) divides the
GPU every 5 ms window:

  phase "alone"  A (inference, request 0.3, limit 1.0) runs alone: it may use the whole GPU (vertical scaling up)
  phase "both"   B (inference, request 0.7, limit 1.0) joins: the token manager divides the GPU between them
  phase "swap"   A's request is raised to 0.7 and B's lowered to 0.3 through PATCH /instances/{id}/quota

Prints each phase's iteration rates and A's share, the budgets the agent reported mid-phase, and how long A's
rate took to follow the swap.

Usage: agent.py DILU_BIN INTERPOSER WORKER GPU_CAPACITY_PER_WINDOW WORKDIR
"""
import json
import subprocess
import sys
import time
import urllib.request

DILU, INTERPOSER, WORKER, CAPACITY, WORK = sys.argv[1:6]
PHASE_S = 6.0


def main() -> None:
    agent = subprocess.Popen(
        [DILU, "agent", "--data-dir", f"{WORK}/agent", "--listen", "127.0.0.1:0", "--interposer", INTERPOSER,
         "--gpu-capacity", CAPACITY, "--cpu-cores", "0"],
        stdout=subprocess.PIPE, stderr=open(f"{WORK}/agent.err", "w"), text=True)
    try:
        run(agent)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        print("agent stderr (device discovery):")
        for line in open(f"{WORK}/agent.err"):
            if "device" in line or "nvml" in line.lower() or "error" in line.lower():
                print("  " + line.rstrip())


def run(agent: subprocess.Popen) -> None:
    line = agent.stdout.readline().strip()
    address = line.rsplit(" ", 1)[-1]
    base = address if address.startswith("http") else "http://" + address
    token = open(f"{WORK}/agent/token").read().strip()

    def call(method, path, body=None, text=False):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read().decode()
            return raw if text else json.loads(raw)

    report = call("GET", "/devices")
    gpus = [d["device"] for d in report["devices"] if d["device"]["kind"] == "gpu"]
    print("agent devices:", json.dumps([d["device"] for d in report["devices"]]), "notes:", report["notes"])
    if not gpus:
        print("NO GPU DISCOVERED: section skipped")
        return
    uuid = gpus[0]["uuid"]

    def start(name, request, seconds):
        return call("POST", "/instances", {
            "name": name, "command": ["python3", WORKER, "burn", str(seconds)], "device": uuid,
            "quota": {"request": request, "limit": 1.0}, "kind": "inference", "restart": "never"})

    def budgets(label):
        for inst in call("GET", "/instances")["instances"]:
            b = inst.get("budgeting") or {}
            print(f"  [{label}] {inst['id']}: request {inst['quota']['request']} share {b.get('share')} "
                  f"budget {b.get('budget')} usage/window {b.get('usage_avg_per_window', 0):.0f}")

    start("a", 0.3, 3 * PHASE_S + 2)
    time.sleep(PHASE_S)
    budgets("alone")
    t_both = time.monotonic()
    start("b", 0.7, 2 * PHASE_S + 1)
    time.sleep(PHASE_S * 0.7)
    budgets("both")
    time.sleep(PHASE_S * 0.3)
    call("PATCH", "/instances/b/quota", {"request": 0.3})  # lower first: never over 100 %
    call("PATCH", "/instances/a/quota", {"request": 0.7})
    t_swap = time.monotonic()
    time.sleep(PHASE_S * 0.7)
    budgets("swap")
    time.sleep(PHASE_S * 0.3 + 3)

    def bins(name):
        text = call("GET", f"/instances/{name}/logs?bytes=4000000", text=True)
        return [json.loads(l) for l in text.splitlines() if l.startswith("{")]

    a, b = bins("a"), bins("b")
    if not a or not b:
        print("instance output missing; logs:", call("GET", "/instances/a/logs", text=True)[-2000:],
              call("GET", "/instances/b/logs", text=True)[-2000:])
        return

    def rate(xs, lo, hi):
        sel = [x for x in xs if lo <= x["wall"] < hi]
        return sum(x["iters"] for x in sel) / (0.1 * len(sel)) if sel else float("nan")

    alone = rate(a, a[0]["wall"] + 1.0, t_both - 0.2)
    ra1, rb1 = rate(a, t_both + 1.5, t_swap - 0.2), rate(b, t_both + 1.5, t_swap - 0.2)
    end = min(a[-1]["wall"], b[-1]["wall"])
    ra2, rb2 = rate(a, t_swap + 1.5, end), rate(b, t_swap + 1.5, end)
    print(f"alone: A {alone:.1f} it/s (request 0.3, limit 1.0)")
    print(f"both (0.3/0.7): A {ra1:.1f} it/s, B {rb1:.1f} it/s, A share {ra1 / (ra1 + rb1):.3f}, "
          f"together {(ra1 + rb1) / alone:.2f}x A alone")
    print(f"swap (0.7/0.3): A {ra2:.1f} it/s, B {rb2:.1f} it/s, A share {ra2 / (ra2 + rb2):.3f}")
    after = [x for x in a if x["wall"] >= t_swap]
    reaction = next((x["wall"] - t_swap for x in after if x["iters"] / 0.1 >= 0.85 * ra2), float("nan"))
    print(f"reaction of A to its raised request: {reaction * 1000:.0f} ms (bins are 100 ms)")
    for name in ("a", "b"):
        c = call("GET", f"/instances/{name}").get("counters") or {}
        print(f"  {name} counters: launches {c.get('launches')} delayed {c.get('launches_delayed')} "
              f"delay {c.get('delay_seconds', 0):.2f} s")


if __name__ == "__main__":
    main()
