#!/usr/bin/env python3
"""What transparent capture costs against proxy mode, measured in the same run.

Two "pods" in network namespaces joined by a veth pair (10.232.0.1 and 10.232.0.2, inside the
namespaces only). Pod B: the bench app on 127.0.0.1:8080 behind a vakt (mTLS on 15443). Pod A:
two vakts from the same build, as vakt's UID:
  - proxy:        `outbound.capture: proxy` on 127.0.0.1:15002; the load generator sends to it
                  (as an app with HTTP_PROXY does);
  - transparent:  `outbound.capture: transparent` on 127.0.0.1:15001 with `vakt net setup` rules;
                  the load generator dials 10.232.0.2:8080 directly and the kernel redirects it.
Both send every request to B's vakt over mTLS with the same Host, so the arms differ only in how
the connection reached the A-side vakt: the NAT redirect, SO_ORIGINAL_DST and the egress lookup.

Rounds alternate the arms. Per arm and round:
  - keep-alive: the load generator (benches/mesh/load.rs) for --duration seconds on
    --connections connections: requests per second, and the A-side vakt's CPU per 1,000 requests;
  - new connections: --churn connections, one request each (`Connection: close`), from a small
    client: connections per second, and the A-side vakt's CPU per 1,000 connections.
Medians over rounds, and transparent/proxy ratios. Needs root, ip, nft and setpriv.

    benches/capture/run                   # builds, then runs this with 6 rounds
    benches/capture/run --instructions 5  # and 5 callgrind windows per arm (valgrind)
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
TD = "cluster.local"
A, B = "10.232.0.1", "10.232.0.2"
PROXY_UID, APP_UID = 1337, 1000
TARGET = f"{B}:8080"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def in_ns(ns: str, uid: int | None, argv: list[str]) -> list[str]:
    prefix = ["ip", "netns", "exec", ns]
    if uid is not None:
        prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    return prefix + argv


class Pods:
    """The two namespaces, the processes started in them (stopped by pid), removed on exit."""

    def __init__(self, tag: str):
        self.a, self.b = f"vkb{tag}a", f"vkb{tag}b"
        self.procs: list[subprocess.Popen] = []
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        va, vb = f"vkb{tag}va", f"vkb{tag}vb"
        sh("ip", "link", "add", va, "netns", self.a, "type", "veth", "peer", "name", vb, "netns", self.b)
        for ns, dev, addr in ((self.a, va, A), (self.b, vb, B)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def start(self, ns: str, uid: int | None, argv: list[str], log: Path) -> subprocess.Popen:
        p = subprocess.Popen(in_ns(ns, uid, argv), stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vakt_config(work: Path, name: str, admin: int, body: str, file: str) -> Path:
    d = work / name
    path = work / f"{file}.yaml"
    key = work / f"{file}-chain.key"
    key.write_text(os.urandom(32).hex())
    path.write_text(
        f"identity:\n  trust_domain: {TD}\n  cert: {d / 'cert.pem'}\n  key: {d / 'key.pem'}\n"
        f"  trust_bundle: {d / 'bundle.pem'}\n"
        f"audit:\n  sink: file\n  file:\n    path: {work / (file + '-audit.log')}\n    fsync: 1s\n"
        f"  chain_key:\n    key_file: {key}\n    key_id: bench\n"
        f"  checkpoint_file: {work / (file + '-checkpoints.jsonl')}\n  checkpoint_stdout: false\n"
        f"admin:\n  listen: 127.0.0.1:{admin}\nlog:\n  level: warn\n" + body
    )
    return path


def wait_ready(pods: Pods, ns: str, admin: int, seconds: float = 10.0) -> None:
    probe = (
        "import socket,sys\n"
        f"s=socket.create_connection(('127.0.0.1',{admin}),timeout=1)\n"
        "s.sendall(b'GET /ready HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "sys.exit(0 if s.recv(64).startswith(b'HTTP/1.1 200') else 1)\n"
    )
    for _ in range(int(seconds * 10)):
        if subprocess.run(in_ns(ns, None, ["/usr/bin/python3", "-c", probe]), capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"vakt on admin port {admin} in {ns} not ready")


CHURN_CLIENT = """
import socket, sys, time, json
host, port, n, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
limit = float(sys.argv[5]) if len(sys.argv) > 5 else None
req = f"GET / HTTP/1.1\\r\\nHost: {target}\\r\\nConnection: close\\r\\n\\r\\n".encode()
ok = 0
start = time.perf_counter()
for _ in range(n):
    if limit is not None and time.perf_counter() - start > limit:
        break
    with socket.create_connection((host, port)) as s:
        s.sendall(req)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        ok += data.startswith(b"HTTP/1.1 200")
print(json.dumps({"ok": ok, "seconds": time.perf_counter() - start}))
"""


def callgrind(pid: int, command: str, work: Path, name: str) -> int | None:
    """`zero` the counters of a vakt under callgrind, or `dump` them and return the instructions
    counted since the last zero. The vakt must be busy: valgrind takes the command at its next
    scheduling point, and an idle one sits in a system call."""
    before = set(work.glob(f"callgrind.{name}.*"))
    # As vakt's UID: vgdb reaches a valgrind of another user only through ptrace.
    subprocess.run(["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", "--",
                    "callgrind_control", f"--vgdb-prefix={work / ('vgdb-' + name)}", f"--{command}", str(pid)],
                   check=True, capture_output=True, timeout=60)
    if command == "zero":
        return None
    deadline = time.time() + 30
    while time.time() < deadline:
        for dump in set(work.glob(f"callgrind.{name}.*")) - before:
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith(("totals:", "summary:")):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"no callgrind dump from {name}")


def counter(pods: Pods, admin: int, metric: str) -> float:
    """The sum of a counter's outbound series on a vakt's /metrics."""
    fetch = (
        "import socket\n"
        f"s=socket.create_connection(('127.0.0.1',{admin}),timeout=10)\n"
        "s.sendall(b'GET /metrics HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "d=b''\n"
        "while True:\n"
        "    c=s.recv(65536)\n"
        "    if not c: break\n"
        "    d+=c\n"
        "print(d.decode())\n"
    )
    text = subprocess.run(in_ns(pods.a, None, ["/usr/bin/python3", "-c", fetch]),
                          check=True, capture_output=True, text=True).stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(metric + "{") and 'direction="outbound"' in line)


def count_instructions(args, pods: Pods, work: Path, conf_t: Path, conf_p: Path) -> dict:
    """Both A-side vakts again, under callgrind: per arm, windows of keep-alive load and of new
    connections. Each window is a zero and a dump of the counters while the load runs, and the
    requests (connections) the vakt's own counters saw in between."""
    def start(name: str, conf: Path) -> subprocess.Popen:
        return pods.start(pods.a, PROXY_UID, [
            "valgrind", "--tool=callgrind", f"--vgdb-prefix={work / ('vgdb-' + name)}",
            f"--callgrind-out-file={work / ('callgrind.' + name + '.%p')}",
            args.vakt, "run", "--config", str(conf)], work / f"vakt-{name}-callgrind.log")

    arms = {"transparent": (start("transparent", conf_t), 15021, f"http://{TARGET}/", (B, 8080)),
            "proxy": (start("proxy", conf_p), 15022, "http://127.0.0.1:15002/", ("127.0.0.1", 15002))}
    wait_ready(pods, pods.a, 15021, 120)
    wait_ready(pods, pods.a, 15022, 120)
    window = 8.0
    per: dict[str, dict[str, list[float]]] = {n: {"per_request": [], "per_connection": []} for n in arms}
    for w in range(args.instructions + 1):
        for name, (proc, admin, url, (host, port)) in arms.items():
            for kind, metric, argv in (
                ("per_request", "vakt_requests_total",
                 [args.load, url, "--host", TARGET, "--connections", "8", "--duration", f"{window + 8:g}s"]),
                ("per_connection", "vakt_connections_total",
                 ["/usr/bin/python3", str(work / "churn.py"), host, str(port), "100000", TARGET,
                  str(window + 8)]),
            ):
                load = subprocess.Popen(in_ns(pods.a, APP_UID, argv), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                time.sleep(3)
                # The counters are read outside the window, so /metrics is not counted in it.
                before = counter(pods, admin, metric)
                callgrind(proc.pid, "zero", work, name)
                time.sleep(window)
                instructions = callgrind(proc.pid, "dump", work, name)
                after = counter(pods, admin, metric)
                load.wait()
                if w == 0:
                    continue  # the first window warms the connection pools up
                if after <= before:
                    raise RuntimeError(f"{name}: nothing served in a callgrind window")
                per[name][kind].append(instructions / (after - before))
            if w:
                print(f"instructions window {w} {name}: {per[name]['per_request'][-1]:,.0f} per request, "
                      f"{per[name]['per_connection'][-1]:,.0f} per connection", file=sys.stderr)
    for proc, _, _, _ in arms.values():
        proc.terminate()
    return {n: {k: statistics.median(v) for k, v in d.items()} for n, d in per.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vakt", required=True, help="the vakt under test (release build)")
    ap.add_argument("--dev-tools", required=True, help="a vakt with the dev feature (certs)")
    ap.add_argument("--app", required=True, help="benches/mesh app binary (mesh_app)")
    ap.add_argument("--load", required=True, help="benches/mesh load generator (mesh_load)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--churn", type=int, default=1500)
    ap.add_argument("--instructions", type=int, default=0, metavar="N",
                    help="then N callgrind windows per arm: instructions per request and per connection")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = ap.parse_args()

    work = Path(sh("mktemp", "-d", "/tmp/vakt-capture-bench.XXXXXX").strip())
    os.chmod(work, 0o755)
    sh(args.dev_tools, "certs", "init", "--dir", str(work / "ca"), "--trust-domain", TD)
    for name, sa in (("a", "web"), ("b", "billing")):
        sh(args.dev_tools, "certs", "issue", "--ca", str(work / "ca"), "--spiffe-id",
           f"spiffe://{TD}/ns/shop/sa/{sa}", "--out", str(work / name))
    (work / "policy.yaml").write_text(
        "routes:\n  - id: everything\n    methods: [GET]\n    path: /**\n    allow:\n"
        f"      - peers: [\"spiffe://{TD}/ns/shop/sa/web\"]\n")
    upstream = (f"  upstreams:\n  - authority: {TARGET}\n    address: {B}:15443\n"
                f"    spiffe_id: spiffe://{TD}/ns/shop/sa/billing\n")
    conf_b = vakt_config(work, "b", 15021, f"inbound:\n  listen: 0.0.0.0:15443\n  app: 127.0.0.1:8080\n"
                                            f"  policy: {work / 'policy.yaml'}\n", "b")
    conf_t = vakt_config(work, "a", 15021, "outbound:\n  listen: 127.0.0.1:15001\n  capture: transparent\n"
                         + upstream, "a-transparent")
    conf_p = vakt_config(work, "a", 15022, "outbound:\n  listen: 127.0.0.1:15002\n  capture: proxy\n"
                         + upstream, "a-proxy")
    sh("chown", "-R", f"{PROXY_UID}:{PROXY_UID}", str(work))
    (work / "churn.py").write_text(CHURN_CLIENT)
    os.chmod(work / "churn.py", 0o644)

    pods = Pods(str(os.getpid() % 10000))
    try:
        sh(*in_ns(pods.a, None, [args.vakt, "net", "setup", f"--proxy-uid={PROXY_UID}"]))
        pods.start(pods.b, APP_UID, [args.app, "127.0.0.1:8080"], work / "app.log")
        pods.start(pods.b, PROXY_UID, [args.vakt, "run", "--config", str(conf_b)], work / "vakt-b.log")
        wait_ready(pods, pods.b, 15021)
        arms = {
            "transparent": {"proc": pods.start(pods.a, PROXY_UID, [args.vakt, "run", "--config", str(conf_t)],
                                               work / "vakt-t.log"),
                            "url": f"http://{TARGET}/", "dial": (B, 8080)},
            "proxy": {"proc": pods.start(pods.a, PROXY_UID, [args.vakt, "run", "--config", str(conf_p)],
                                         work / "vakt-p.log"),
                      "url": "http://127.0.0.1:15002/", "dial": ("127.0.0.1", 15002)},
        }
        wait_ready(pods, pods.a, 15021)
        wait_ready(pods, pods.a, 15022)
        rows: dict[str, list[dict]] = {name: [] for name in arms}
        for r in range(args.rounds):
            order = list(arms) if r % 2 == 0 else list(reversed(arms))
            for name in order:
                arm = arms[name]
                pid = arm["proc"].pid
                before = cpu_seconds(pid)
                out = json.loads(subprocess.run(
                    in_ns(pods.a, APP_UID, [args.load, arm["url"], "--host", TARGET, "--connections",
                                            str(args.connections), "--duration", f"{args.duration}s"]),
                    check=True, capture_output=True, text=True).stdout)
                keepalive_cpu = cpu_seconds(pid) - before
                before = cpu_seconds(pid)
                host, port = arm["dial"]
                churn = json.loads(subprocess.run(
                    in_ns(pods.a, APP_UID, ["/usr/bin/python3", str(work / "churn.py"), host, str(port),
                                            str(args.churn), TARGET]),
                    check=True, capture_output=True, text=True).stdout)
                churn_cpu = cpu_seconds(pid) - before
                if out["non_2xx"] or out["errors"] or churn["ok"] != args.churn:
                    raise RuntimeError(f"{name}: failed requests: {out} {churn}")
                row = {
                    "rps": out["rps"],
                    "cpu_ms_per_1k_requests": 1e6 * keepalive_cpu / out["requests"],
                    "connections_per_s": args.churn / churn["seconds"],
                    "cpu_ms_per_1k_connections": 1e6 * churn_cpu / args.churn,
                }
                rows[name].append(row)
                print(f"round {r + 1} {name}: {json.dumps({k: round(v, 2) for k, v in row.items()})}",
                      file=sys.stderr)
        instructions = None
        if args.instructions:
            for arm in arms.values():
                arm["proc"].terminate()
                arm["proc"].wait(timeout=15)
            instructions = count_instructions(args, pods, work, conf_t, conf_p)
    finally:
        pods.close()
        shutil.rmtree(work, ignore_errors=True)

    med = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in rows.items()}
    ratio = {k: med["transparent"][k] / med["proxy"][k] if med["proxy"][k] else float("nan") for k in med["proxy"]}
    if instructions:
        result_instructions = instructions
    else:
        result_instructions = None
    result = {"instructions": result_instructions, "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()), "rounds": args.rounds, "duration_s": args.duration, "connections": args.connections,
              "churn": args.churn, "median": med, "ratio_transparent_over_proxy": ratio, "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capture.json").write_text(json.dumps(result, indent=2) + "\n")
    commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    lines = [
        "# Transparent capture against proxy mode",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, {os.cpu_count()} cpus.",
        "",
        f"`benches/capture/run`: {args.rounds} alternating rounds; keep-alive load {args.duration:g} s on "
        f"{args.connections} connections (benches/mesh/load.rs), then {args.churn} new connections with one "
        "request each. CPU is the A-side vakt's (the one the arm goes through). Medians; ratio = "
        "transparent / proxy.",
        "",
        "| measure | proxy | transparent | ratio |",
        "|---|---|---|---|",
    ]
    names = {"rps": "keep-alive requests per second", "cpu_ms_per_1k_requests": "vakt CPU per 1,000 requests (ms)",
             "connections_per_s": "new connections per second", "cpu_ms_per_1k_connections":
             "vakt CPU per 1,000 new connections (ms)"}
    for k, label in names.items():
        lines.append(f"| {label} | {med['proxy'][k]:.1f} | {med['transparent'][k]:.1f} | {ratio[k]:.3f}x |")
    if instructions:
        lines += [
            "",
            f"Instructions of the A-side vakt (valgrind callgrind, {args.instructions} windows per arm, medians): "
            "repeatable where CPU time on a shared machine is not.",
            "",
            "| measure | proxy | transparent | ratio |",
            "|---|---|---|---|",
        ]
        for k, label in (("per_request", "instructions per keep-alive request"),
                         ("per_connection", "instructions per new connection (one request)")):
            p_, t_ = instructions["proxy"][k], instructions["transparent"][k]
            lines.append(f"| {label} | {p_:,.0f} | {t_:,.0f} | {t_ / p_:.3f}x |")
    lines += [
        "",
        "The instruction counts are vakt's own code (user space). The redirect itself is the kernel's: NAT on",
        "a connection's first packet, then conntrack translating every packet both ways. That shows in the",
        "timed columns only: in the rates, and in vakt's CPU (which includes the kernel's work on vakt's own",
        "sends and receives).",
    ]
    (args.out / "capture.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
