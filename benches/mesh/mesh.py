#!/usr/bin/env python3
"""The mesh benchmark: the same two-hop mTLS mesh built from vakt and from Envoy, and the direct
path, measured in one run, alternating, on loopback. Started by `benches/mesh/run`, which
installs the tools and builds the binaries; this script only orchestrates and measures.

    load generator -> client sidecar (plaintext in, mTLS out) -> server sidecar (mTLS in,
    token + policy + audit/access log to a file + metrics) -> app

Both meshes do the same work on every request:
  * mTLS between the sidecars with SPIFFE X.509-SVIDs (TLS 1.3, HTTP/2 between sidecars), the
    client checking the server's exact SPIFFE ID and the server checking the client's trust domain;
  * a Bearer access token (RS256) checked against a local JWKS: signature, iss, aud, exp (vakt
    also typ, alg, lifetime, LoA); verified tokens cached on both (Envoy's jwt_cache, vakt's
    verified-token cache), with 1,000 distinct tokens in rotation for throughput runs;
  * an RBAC / policy decision on method + path + peer SPIFFE ID + token scope;
  * one access record per request written to a file (Envoy access log; vakt audit event, with
    its hash chain and pseudonymised subject) on each sidecar, and metrics.
Before measuring, the script checks that both meshes refuse a request without a token, with a
token lacking the scope, and on a path outside the policy — so nothing is measured with a check
switched off.

Measured per system and round, with the load generator of benches/mesh/load.rs (hyper, one
thread, a different token on every request): throughput at 64 keep-alive connections (closed
model), latency p50/p99/p99.9 at fixed rates (open model, latency from each request's due time,
i.e. coordinated-omission corrected), CPU seconds of the proxies per 1,000 requests (from
/proc/<pid>/stat), idle and peak RSS per proxy (VmRSS, VmHWM), non-2xx responses and socket
errors. Medians over rounds; ratios vakt/Envoy and vakt/direct.

With `--instructions SECONDS` (and usually `--baseline-vakt OLD`), the timed runs are replaced
by instruction counts: both vakt sidecars run under valgrind's callgrind, and after a warm-up
that caches every token, each window of SECONDS of load gives each sidecar's instructions per
request (its whole process: request path, audit writer thread, timers; the certificate re-read
is moved out of the window). Within one run, windows of one build agree within ~6% where CPU
time on this shared machine spreads by ±25%, so a change of ~5% between two builds shows. Across
runs the counts move more (when the machine is busy, fewer requests share each TLS record and
wake-up), so only builds measured in the same run are compared. Writes instructions.{md,json}.

With `--dpop` (and `--baseline-vakt` naming the same binary), the `vakt` mesh is sent
DPoP-bound tokens (RFC 9449), each request with a fresh ES256 proof made before the run, while
`vakt-base` gets the same tokens' Bearer twins: DPoP against Bearer in one run.

With `--hot-text FILE` (as `benches/mesh/run --hot-text` does), the same callgrind run profiles
which of the binary's functions execute, from start-up on, and writes the linker script that puts
them together in front of the rest of the code (see hot_text.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import hot_text

TRUST_DOMAIN = "bench.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/app"
AUTHORITY = "app.bench.local:8080"
AUDIENCE = "bench-api"
SCOPE = "bench.read"
PATH = "/api/items/42"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[mesh] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
            last = status
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s (last: {last})")


class Proc:
    """A process this script started (and alone stops, by pid)."""

    def __init__(self, name: str, argv: list[str], cpus: str, logdir: Path, env: dict | None = None):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self.log_file = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            ["taskset", "-c", cpus, *argv],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        # Highest anonymous and file-backed resident memory seen by `sample` (VmHWM has only the
        # total): the file-backed part is the binary's code, shared with every process of it.
        self.peak_kb = {"RssAnon": 0, "RssFile": 0}

    def sample(self) -> None:
        try:
            for key in self.peak_kb:
                self.peak_kb[key] = max(self.peak_kb[key], self.status_kb(key))
        except (OSError, ValueError):
            pass

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # after the comm field: state(0) ... utime(11) stime(12)
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log_file.close()


def run(argv: list[str], **kw) -> str:
    out = subprocess.run(argv, check=True, capture_output=True, text=True, **kw)
    return out.stdout


# ------------------------------------------------------------------------------------------------
# Set-up: PKI, issuer, tokens, configs
# ------------------------------------------------------------------------------------------------


def make_pki(vakt: str, work: Path) -> dict[str, Path]:
    run([vakt, "certs", "init", "--dir", str(work / "ca"), "--trust-domain", TRUST_DOMAIN])
    for name, spiffe in (("client", CLIENT_ID), ("server", SERVER_ID)):
        run([vakt, "certs", "issue", "--ca", str(work / "ca"), "--spiffe-id", spiffe, "--out", str(work / name)])
    return {"ca": work / "ca" / "ca.pem"}


def vakt_identity(work: Path, name: str, reload_interval: str | None) -> str:
    d = work / name
    return (
        f"identity:\n  trust_domain: {TRUST_DOMAIN}\n  cert: {d / 'cert.pem'}\n  key: {d / 'key.pem'}\n"
        f"  trust_bundle: {d / 'bundle.pem'}\n"
        + (f"  reload_interval: {reload_interval}\n" if reload_interval else "")
    )


def keyed_audit(vakt: str) -> bool:
    """Whether a vakt build chains its audit file under a key (and then requires one): builds
    from before the keyed chain refuse the keys as unknown."""
    return b"checkpoint_file" in Path(vakt).read_bytes()


def knows_dpop(vakt: str) -> bool:
    """Whether a vakt build checks DPoP proofs (and then requires HelseID tokens to be DPoP-bound
    unless told otherwise): builds from before refuse the `dpop` keys as unknown."""
    return b"nonce_secret_file" in Path(vakt).read_bytes()


def vakt_common(work: Path, name: str, admin: int, keyed: bool) -> str:
    chain = (
        f"  chain_key:\n    key_file: {work / 'chain.key'}\n    key_id: bench1\n"
        f"  checkpoint_file: {work / 'checkpoints' / f'{name}.jsonl'}\n"
        if keyed else ""
    )
    return (
        f"pseudonymisation:\n  key_file: {work / 'pseudonym.key'}\n  key_id: bench1\n"
        f"audit:\n  sink: file\n  file:\n    path: {work / 'audit' / f'{name}.log'}\n    fsync: 1s\n"
        f"  on_audit_failure: deny\n" + chain +
        f"admin:\n  listen: 127.0.0.1:{admin}\n"
        f"log:\n  format: json\n  level: warn\n"
    )


POLICY = f"""version: 1
routes:
  - id: items-read
    methods: [GET]
    path: /api/items/{{item}}
    allow:
      - peers: [{CLIENT_ID}]
        scopes_any: [{SCOPE}]
        min_loa: substantial
    rate_limit:
      per_second: 1000000
      burst: 1000000
      key: subject
"""


def write_vakt_configs(work: Path, ports: dict[str, int], issuer: str, keyed: bool, tag: str = "",
                       reload_interval: str | None = None, dpop: bool = False) -> tuple[Path, Path]:
    """`tag` names a second vakt mesh (`--baseline-vakt`): its own ports, policy and audit files.
    `reload_interval`: of the certificate safety-net re-read (`--instructions` keeps it out of the
    measured window)."""
    if tag:
        ports = ports | {k.removesuffix(tag): v for k, v in ports.items() if k.endswith(tag)}
    work_root, work = work, work / tag.strip("_") if tag else work
    work.mkdir(exist_ok=True)
    for shared in ("ca", "client", "server"):
        if not (work / shared).exists():
            (work / shared).symlink_to(work_root / shared)
    (work / "pseudonym.key").write_bytes(os.urandom(48).hex().encode())
    (work / "chain.key").write_bytes(os.urandom(32))
    (work / "checkpoints").mkdir()
    # Each file in a directory of its own, as in a pod (ConfigMap mount, log volume): vakt
    # watches the policy's directory, which must not be the one the audit log grows in.
    (work / "policy").mkdir()
    (work / "audit").mkdir()
    (work / "policy" / "policy.yaml").write_text(POLICY)
    server = (
        vakt_identity(work, "server", reload_interval)
        + f"inbound:\n  listen: 127.0.0.1:{ports['vakt_server']}\n  app: 127.0.0.1:{ports['app']}\n"
        f"  policy: {work / 'policy' / 'policy.yaml'}\n"
        + f"oidc:\n  issuers:\n    - issuer: {issuer}\n      profile: helseid\n      audiences: [{AUDIENCE}]\n"
        f"      algorithms: [RS256]\n      allow_insecure_loopback: true\n"
        + (f"      dpop:\n        required: false\n" if dpop else "")
        + f"  verified_token_cache: 10000\n"
        # Room for every proof a DPoP run could send at Bearer speed within proof_window plus
        # leeway: a full cache would refuse requests and measure refusals.
        + (f"  dpop:\n    public_url: http://{AUTHORITY}\n    replay_cache: 1000000\n" if dpop else "")
        + vakt_common(work, "server", ports["vakt_server_admin"], keyed)
    )
    client = (
        vakt_identity(work, "client", reload_interval)
        + f"outbound:\n  listen: 127.0.0.1:{ports['vakt_client']}\n  upstreams:\n"
        f"    - authority: {AUTHORITY}\n      address: 127.0.0.1:{ports['vakt_server']}\n"
        f"      spiffe_id: {SERVER_ID}\n"
        + vakt_common(work, "client", ports["vakt_client_admin"], keyed)
    )
    sp, cp = work / "vakt-server.yaml", work / "vakt-client.yaml"
    sp.write_text(server)
    cp.write_text(client)
    return sp, cp


def envoy_tls_common(work: Path, name: str, san_matcher: str, alpn: str, indent: int) -> str:
    d = work / name
    block = f"""common_tls_context:
  tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
  alpn_protocols: [{alpn}]
  tls_certificates:
  - certificate_chain: {{filename: "{d / 'cert.pem'}"}}
    private_key: {{filename: "{d / 'key.pem'}"}}
  validation_context:
    trusted_ca: {{filename: "{work / 'ca' / 'ca.pem'}"}}
    match_typed_subject_alt_names:
    - san_type: URI
      matcher: {san_matcher}"""
    pad = " " * indent
    return "\n" + "\n".join(pad + line for line in block.splitlines())


def envoy_access_log(path: Path) -> str:
    return f"""
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{path}"
              log_format:
                json_format:
                  time: "%START_TIME%"
                  request_id: "%REQ(X-REQUEST-ID)%"
                  peer: "%DOWNSTREAM_PEER_URI_SAN%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                  status: "%RESPONSE_CODE%"
                  flags: "%RESPONSE_FLAGS%"
                  details: "%RESPONSE_CODE_DETAILS%"
                  duration_ms: "%DURATION%\""""


def write_envoy_configs(work: Path, ports: dict[str, int], issuer: str, jwks: str) -> tuple[Path, Path]:
    client = f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['envoy_client_admin']}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['envoy_client']}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          codec_type: AUTO{envoy_access_log(work / 'envoy-client-access.log')}
          route_config:
            virtual_hosts:
            - name: app
              domains: ["{AUTHORITY}"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: server_sidecar}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: server_sidecar
    type: STATIC
    load_assignment:
      cluster_name: server_sidecar
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['envoy_server']}}}}}}}}}]}}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: app.bench.local{envoy_tls_common(work, 'client', '{exact: "' + SERVER_ID + '"}', 'h2', 8)}
"""
    server = f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['envoy_server_admin']}}}}}
static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['envoy_server']}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true{envoy_tls_common(work, 'server', '{prefix: "spiffe://' + TRUST_DOMAIN + '/"}', 'h2, http/1.1', 10)}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          codec_type: AUTO
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{uri: true}}{envoy_access_log(work / 'envoy-server-access.log')}
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: app}}}}]
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                devidp:
                  issuer: "{issuer}"
                  audiences: ["{AUDIENCE}"]
                  local_jwks: {{inline_string: {json.dumps(jwks)}}}
                  forward: false
                  payload_in_metadata: jwt_payload
                  jwt_cache_config: {{jwt_cache_size: 10000}}
              rules:
              - match: {{prefix: "/"}}
                requires: {{provider_name: devidp}}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  items-read:
                    permissions:
                    - and_rules:
                        rules:
                        - header: {{name: ":method", string_match: {{exact: GET}}}}
                        - url_path: {{path: {{safe_regex: {{regex: "^/api/items/[^/]+$"}}}}}}
                    principals:
                    - and_ids:
                        ids:
                        - authenticated: {{principal_name: {{exact: "{CLIENT_ID}"}}}}
                        - sourced_metadata:
                            metadata_matcher:
                              filter: envoy.filters.http.jwt_authn
                              path: [{{key: jwt_payload}}, {{key: scope}}]
                              value: {{list_match: {{one_of: {{string_match: {{exact: "{SCOPE}"}}}}}}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: app
    type: STATIC
    load_assignment:
      cluster_name: app
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['app']}}}}}}}}}]}}]
"""
    cp, sp = work / "envoy-client.yaml", work / "envoy-server.yaml"
    cp.write_text(client)
    sp.write_text(server)
    return sp, cp


# ------------------------------------------------------------------------------------------------
# Load generators
# ------------------------------------------------------------------------------------------------

def load(args, url: str, tokens: Path, seconds: float, rate: int | None = None,
         proofs: Path | None = None) -> dict:
    """One run of the load generator (benches/mesh/load.rs) on the load core."""
    argv = ["taskset", "-c", args.load_cpus, args.load, url, "--host", AUTHORITY, "--tokens", str(tokens),
            "--connections", str(args.connections), "--duration", f"{seconds}s"]
    if rate:
        argv += ["--rate", str(rate)]
    if proofs:
        argv += ["--dpop-proofs", str(proofs)]
    return json.loads(run(argv))


# Proofs made per second of a DPoP run: above what the mesh serves with Bearer tokens, so a run
# never runs out; one that does says so.
DPOP_PROOFS_PER_SECOND = 16_000


def dpop_proofs(args, work: Path, tokens: Path, seconds: float) -> Path:
    """Fresh proofs for one run, proof i for token i mod n (made just before it: their iat must be
    within a minute of the requests)."""
    out = work / "dpop-proofs.txt"
    out.write_text(run([args.dev_tools, "dev-idp", "proof", "--dpop-key", str(work / "dpop.key"),
                        "--url", f"http://{AUTHORITY}{PATH}", "--tokens", str(tokens),
                        "--count", str(int(seconds * DPOP_PROOFS_PER_SECOND) + 1000)]))
    return out


def throughput(args, url: str, tokens: Path, seconds: float, proofs: Path | None = None) -> dict:
    r = load(args, url, tokens, seconds, proofs=proofs)
    if r.get("proofs_used_up"):
        raise RuntimeError(f"{url}: the DPoP run used up its proofs; raise DPOP_PROOFS_PER_SECOND")
    return {"requests": r["requests"], "rps": r["rps"], "non_2xx": r["non_2xx"], "socket_errors": r["errors"]}


def latency(args, url: str, tokens: Path, rate: int, seconds: float) -> dict:
    r = load(args, url, tokens, seconds, rate)
    lat = r["latency_ms"]
    return {
        "rate": rate,
        "rps": r["rps"],
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "p999_ms": lat["p999"],
        "max_ms": lat["max"],
        "non_2xx": r["non_2xx"],
        "errors": r["errors"] + r["not_sent"],
    }


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


class System:
    def __init__(self, name: str, url: str, procs: list[Proc], dpop: bool = False):
        self.name = name
        self.url = url
        self.procs = procs  # the proxies whose CPU and memory are reported (empty: direct)
        self.dpop = dpop  # sent DPoP-bound tokens with proofs (`--dpop`)


def check_enforced(system: System, good: str, no_scope: str, timeout: float = 5.0) -> None:
    """Both meshes must refuse what their policy does not allow, or the comparison is void."""
    host = {"Host": AUTHORITY}
    cases = [
        ("valid token, allowed path", {**host, "Authorization": f"Bearer {good}"}, system.url, 200),
        ("no token", host, system.url, 401),
        ("token without the scope", {**host, "Authorization": f"Bearer {no_scope}"}, system.url, 403),
        ("path outside the policy", {**host, "Authorization": f"Bearer {good}"},
         system.url.replace("/api/items/42", "/admin/items"), 403),
        ("forged token", {**host, "Authorization": f"Bearer {good[:-4]}AAAA"}, system.url, 401),
    ]
    for what, headers, url, want in cases:
        status, body = http_get(url, headers, timeout)
        if status != want:
            raise RuntimeError(f"{system.name}: {what}: expected {want}, got {status}: {body[:200]!r}")
    log(f"{system.name}: enforcement checked (200 allowed; 401 no token / forged; 403 scope / path)")


def check_dpop(system: System, tokens: Path, proofs: Path) -> None:
    """The DPoP mesh must take a fresh proof and refuse its replay and the bound token as Bearer."""
    token = tokens.read_text().split()[0]
    proof = proofs.read_text().split()[0]
    dpop = {"Host": AUTHORITY, "Authorization": f"DPoP {token}", "DPoP": proof}
    cases = [
        ("DPoP token with a fresh proof", dpop, 200),
        ("the same proof again", dpop, 401),
        ("the bound token as Bearer", {"Host": AUTHORITY, "Authorization": f"Bearer {token}"}, 401),
    ]
    for what, headers, want in cases:
        status, body = http_get(system.url, headers)
        if status != want:
            raise RuntimeError(f"{system.name}: {what}: expected {want}, got {status}: {body[:200]!r}")
    log(f"{system.name}: DPoP checked (200 fresh proof; 401 replay, bound token as Bearer)")


def requests_served(admin_port: int) -> float:
    """The sidecar's `vakt_requests_total`, all labels."""
    _, body = http_get(f"http://127.0.0.1:{admin_port}/metrics", timeout=60.0)
    return sum(float(line.split()[-1]) for line in body.decode().splitlines()
               if line.startswith("vakt_requests_total"))


# The certificate and policy re-reads run on file-watch events, not per request: their share of a
# window depends on how many requests the window held, so they are counted apart.
RELOAD_FUNCTION = re.compile(r"<vakt::(tls::reload::CertStore|policy::reload::PolicyStore)>::reload\b")


def reload_instructions(dump: Path) -> int:
    """Instructions inside the certificate and policy reloads of one callgrind dump."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no", str(dump)],
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line)
        if not m or "=>" in line:
            continue
        hit = RELOAD_FUNCTION.search(m.group(2))
        if hit:
            found[hit.group(1)] = max(found.get(hit.group(1), 0), int(m.group(1).replace(",", "")))
    return sum(found.values())


def callgrind_window(proc: Proc, work: Path, command: str) -> tuple[int, int] | None:
    """`zero` the counters of a sidecar under callgrind, or `dump` them and return the
    instructions counted since the last zero, and those of them spent in file reloads."""
    before = set(work.glob(f"callgrind.{proc.name}.{proc.pid}*"))
    run(["callgrind_control", "--" + command, str(proc.pid)])
    if command == "zero":
        return None
    deadline = time.time() + 30
    while time.time() < deadline:
        new = set(work.glob(f"callgrind.{proc.name}.{proc.pid}*")) - before
        for dump in new:
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith(("totals:", "summary:")):
                    return int(line.split()[1]), reload_instructions(dump)
        time.sleep(0.2)
    raise RuntimeError(f"no callgrind dump from {proc.name}")


def count_instructions(args, systems: list["System"], admin: dict[str, int], tokens_file: Path,
                       n_tokens: int, work: Path) -> int:
    """Instructions per request of each vakt sidecar, from callgrind: repeatable where CPU time
    on this shared machine is not, so an A/B of two builds (`--baseline-vakt`) shows changes of a
    few percent. The windows start after every token is cached and the connections are up."""
    for s in systems:
        served = 0
        while served < 1.2 * n_tokens:  # every token verified once, then cache hits only
            t = throughput(args, s.url, tokens_file, 5)
            if not t["requests"] or t["non_2xx"] or t["socket_errors"]:
                raise RuntimeError(f"{s.name}: warm-up failed: {t}")
            served += t["requests"]
    results: dict[str, list[dict]] = {s.name: [] for s in systems}
    for rnd in range(args.rounds):
        order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
        for s in order:
            for p in s.procs:
                # profiling the layout keeps every instruction since start-up
                callgrind_window(p, work, "dump" if args.hot_text else "zero")
            before = {p.name: requests_served(admin[p.name]) for p in s.procs}
            t = throughput(args, s.url, tokens_file, args.instructions)
            after = {p.name: requests_served(admin[p.name]) for p in s.procs}
            per_request = {}
            for p in s.procs:
                ir, reloads = callgrind_window(p, work, "dump")
                role = p.name.rsplit("-", 1)[1]
                served_here = max(after[p.name] - before[p.name], 1)
                per_request[role] = ir / served_here
                per_request[role + "_path"] = (ir - reloads) / served_here
            per_request["both"] = per_request["client"] + per_request["server"]
            per_request["both_path"] = per_request["client_path"] + per_request["server_path"]
            results[s.name].append({"requests": t["requests"], "non_2xx": t["non_2xx"], **per_request})
            log(f"round {rnd + 1} {s.name}: {t['requests']} requests, instructions per request: "
                f"client {per_request['client']:,.0f}, server {per_request['server']:,.0f}; "
                f"without file reloads {per_request['both_path']:,.0f}")
    keys = ("client", "server", "both", "client_path", "server_path", "both_path")
    med = {name: {k: median([r[k] for r in rs]) for k in keys} for name, rs in results.items()}
    lines = [
        f"Instructions per request (valgrind callgrind), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{args.rounds} windows of {args.instructions:g} s per build, medians; each sidecar's whole "
        "process (request path, audit writer thread, timers), token cache warm.",
        "",
        "| build | client sidecar | server sidecar | both | ratio to vakt-base "
        "| both, without file reloads | ratio to vakt-base |",
        "|---|---|---|---|---|---|---|",
    ]
    base = med.get("vakt-base", {})
    for name, m in med.items():
        ratio = f"{m['both'] / base['both']:.3f}" if base else "–"
        path_ratio = f"{m['both_path'] / base['both_path']:.3f}" if base else "–"
        lines.append(f"| {name} | {m['client']:,.0f} | {m['server']:,.0f} | {m['both']:,.0f} | {ratio} "
                     f"| {m['both_path']:,.0f} | {path_ratio} |")
    lines += ["", "File reloads (certificate and policy re-reads on file-watch events) are counted apart: "
              "their share per request depends on how many requests a window held."]
    md = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "instructions.json").write_text(json.dumps({"median": med, "windows": results}, indent=2) + "\n")
    (out / "instructions.md").write_text(md)
    print(md)
    failed = [name for name, rs in results.items() if any(r["non_2xx"] for r in rs)]
    if failed:
        log(f"INVALID RUN: non-2xx answers from {', '.join(failed)}")
        return 1
    return 0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vakt", required=True)
    ap.add_argument("--dev-tools", required=True,
                    help="a vakt built with the `dev` feature (cargo build --bin vakt): the benchmark's "
                         "PKI and token issuer; the vakt under test is built without it")
    ap.add_argument("--app", required=True)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--load", required=True, help="the load generator (benches/mesh/load.rs)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per throughput run")
    ap.add_argument("--latency-duration", type=float, default=5.0, help="seconds per fixed-rate run")
    ap.add_argument("--rates", default="1000,2000,5000")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--systems", default="direct,envoy,vakt")
    ncpu = len(os.sched_getaffinity(0))
    ap.add_argument("--load-cpus", default="0", help="cores for the load generator")
    ap.add_argument("--sut-cpus", default="1" if ncpu > 1 else "0",
                    help="cores for everything under test (app, sidecars)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--baseline-vakt", help="a second vakt binary, measured as `vakt-base` in the same run")
    ap.add_argument("--dpop", action="store_true",
                    help="send `vakt` DPoP-bound tokens with a proof per request (`vakt-base`: Bearer)")
    ap.add_argument("--instructions", type=float, default=0.0, metavar="SECONDS",
                    help="instead of the timed runs: count the instructions each vakt sidecar "
                         "executes per request (valgrind callgrind), over windows of SECONDS of "
                         "load, --rounds times per build; writes instructions.{md,json}")
    ap.add_argument("--hot-text", metavar="FILE",
                    help="with the --instructions run (4 s windows unless given), write the "
                         "linker script of the binary's executed functions to FILE (hot_text.py)")
    args = ap.parse_args()
    if args.hot_text and not args.instructions:
        args.instructions = 4.0
    rates = [int(r) for r in args.rates.split(",") if r]
    systems_wanted = args.systems.split(",")

    work = Path(tempfile.mkdtemp(prefix="vakt-mesh-bench-"))
    procs: list[Proc] = []

    def start(name: str, argv: list[str], cpus: str | None = None) -> Proc:
        p = Proc(name, argv, cpus or args.sut_cpus, work)
        procs.append(p)
        return p

    counting = args.instructions > 0
    if counting:
        for tool in ("valgrind", "callgrind_control"):
            if not shutil.which(tool):
                raise SystemExit(f"--instructions needs {tool} (Debian: apt-get install valgrind)")
        systems_wanted = [s for s in systems_wanted if s == "vakt"]
    reload_interval = "1h" if counting else None
    # Under callgrind a sidecar starts ~50x slower.
    ready_timeout = 300.0 if counting else 30.0

    def start_vakt(name: str, binary: str, config: Path) -> Proc:
        argv = [binary, "run", "--config", str(config)]
        if counting:
            names = ["--demangle=no"] if args.hot_text else []  # the symbol table's names
            argv = ["valgrind", "--tool=callgrind", *names, f"--callgrind-out-file={work}/callgrind.{name}.%p", *argv]
        return start(name, argv)

    started = time.time()
    sampling = threading.Event()

    def sample_memory() -> None:
        while not sampling.wait(0.2):
            for p in list(procs):
                p.sample()

    threading.Thread(target=sample_memory, daemon=True).start()
    try:
        log(f"work directory {work}; load on cpu {args.load_cpus}, system under test on cpu {args.sut_cpus}")
        layout = hot_text_layout(Path(args.vakt))
        log(f"vakt's code layout: {layout}")
        ports = {k: free_port() for k in (
            "app", "idp", "vakt_client", "vakt_server", "vakt_client_admin", "vakt_server_admin",
            "envoy_client", "envoy_server", "envoy_client_admin", "envoy_server_admin",
            "vakt_client_base", "vakt_server_base", "vakt_client_admin_base", "vakt_server_admin_base")}
        make_pki(args.dev_tools, work)

        # The issuer (not under test: it serves discovery + JWKS at start-up and on refresh).
        start("idp", [args.dev_tools, "dev-idp", "serve", "--listen", f"127.0.0.1:{ports['idp']}",
                      "--dir", str(work / "keys")], cpus=args.load_cpus)
        issuer = f"http://127.0.0.1:{ports['idp']}"
        wait_ready(f"{issuer}/.well-known/openid-configuration")
        _, disco = http_get(f"{issuer}/.well-known/openid-configuration")
        jwks = http_get(json.loads(disco)["jwks_uri"])[1].decode()
        mint = [args.dev_tools, "dev-idp", "mint", "--dir", str(work / "keys"), "--issuer", issuer,
                "--profile", "helseid", "--audience", AUDIENCE, "--lifetime", "2h", "--level", "high"]
        tokens = run(mint + ["--scope", SCOPE, "--scope", "bench.other", "--count", str(args.tokens)]).split()
        no_scope = run(mint + ["--scope", "bench.other", "--sub", "no-scope"]).strip()
        tokens_file = work / "tokens.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")
        log(f"minted {len(tokens)} distinct RS256 tokens")
        dpop_tokens_file = work / "dpop-tokens.txt"
        if args.dpop:
            bound = run(mint + ["--scope", SCOPE, "--scope", "bench.other", "--count", str(args.tokens),
                                "--dpop-key", str(work / "dpop.key")]).split()
            dpop_tokens_file.write_text("\n".join(bound) + "\n")
            log(f"minted {len(bound)} distinct DPoP-bound RS256 tokens")

        start("app", [args.app, f"127.0.0.1:{ports['app']}"])
        wait_port(ports["app"])
        systems: list[System] = []
        admin: dict[str, int] = {}  # vakt sidecar name -> admin port
        if "direct" in systems_wanted:
            systems.append(System("direct", f"http://127.0.0.1:{ports['app']}{PATH}", []))
        if "envoy" in systems_wanted:
            es, ec = write_envoy_configs(work, ports, issuer, jwks)
            version = run([args.envoy, "--version"]).strip().split("version:")[-1].strip()
            server = start("envoy-server", [args.envoy, "-c", str(es), "--concurrency", "1",
                                            "--log-level", "warn", "--base-id", "71"])
            client = start("envoy-client", [args.envoy, "-c", str(ec), "--concurrency", "1",
                                            "--log-level", "warn", "--base-id", "72"])
            for p in ("envoy_server_admin", "envoy_client_admin"):
                wait_ready(f"http://127.0.0.1:{ports[p]}/ready")
            log(f"envoy {version} up")
            systems.append(System("envoy", f"http://127.0.0.1:{ports['envoy_client']}{PATH}", [client, server]))
        if "vakt" in systems_wanted:
            vs, vc = write_vakt_configs(work, ports, issuer, keyed_audit(args.vakt),
                                        reload_interval=reload_interval, dpop=knows_dpop(args.vakt))
            server = start_vakt("vakt-server", args.vakt, vs)
            client = start_vakt("vakt-client", args.vakt, vc)
            admin[server.name], admin[client.name] = ports["vakt_server_admin"], ports["vakt_client_admin"]
            for p in ("vakt_server_admin", "vakt_client_admin"):
                wait_ready(f"http://127.0.0.1:{ports[p]}/ready", ready_timeout)
            log("vakt up")
            systems.append(System("vakt", f"http://127.0.0.1:{ports['vakt_client']}{PATH}", [client, server],
                                  dpop=args.dpop))
        if args.baseline_vakt:
            # A second vakt build on the same machine in the same run (A/B of a change).
            vs, vc = write_vakt_configs(work, ports, issuer, keyed_audit(args.baseline_vakt), tag="_base",
                                        reload_interval=reload_interval, dpop=knows_dpop(args.baseline_vakt))
            server = start_vakt("vakt-base-server", args.baseline_vakt, vs)
            client = start_vakt("vakt-base-client", args.baseline_vakt, vc)
            admin[server.name], admin[client.name] = ports["vakt_server_admin_base"], ports["vakt_client_admin_base"]
            for p in ("vakt_server_admin_base", "vakt_client_admin_base"):
                wait_ready(f"http://127.0.0.1:{ports[p]}/ready", ready_timeout)
            log(f"baseline vakt ({args.baseline_vakt}) up")
            systems.append(System("vakt-base", f"http://127.0.0.1:{ports['vakt_client_base']}{PATH}", [client, server]))

        for s in systems:
            if s.name != "direct":
                # Under callgrind the first request (mTLS handshake, token check) takes seconds.
                check_enforced(s, tokens[0], no_scope, 120.0 if counting else 5.0)
        idle_rss = {s.name: [p.status_kb("VmRSS") for p in s.procs] for s in systems}
        if counting:
            rc = count_instructions(args, systems, admin, tokens_file, len(tokens), work)
            if args.hot_text and rc == 0:
                vakt_procs = [p for p in procs if p.name in ("vakt-server", "vakt-client")]
                for p in vakt_procs:
                    p.stop()  # callgrind writes the part since the last dump at exit
                dumps = sorted(f for p in vakt_procs for f in work.glob(f"callgrind.{p.name}.{p.pid}*"))
                log("hot text: " + hot_text.write(dumps, Path(args.vakt), Path(args.hot_text)))
            return rc

        def run_tokens(s: System, seconds: float) -> tuple[Path, Path | None]:
            if s.dpop:
                return dpop_tokens_file, dpop_proofs(args, work, dpop_tokens_file, seconds)
            return tokens_file, None

        if args.dpop:
            if counting:
                raise SystemExit("--dpop measures time, not instructions")
            check_dpop(next(s for s in systems if s.dpop), dpop_tokens_file,
                       dpop_proofs(args, work, dpop_tokens_file, 0))

        # Warm-up: connections, pools, token caches (every token seen once).
        for s in systems:
            warm_tokens, warm_proofs = run_tokens(s, 2)
            throughput(args, s.url, warm_tokens, 2, proofs=warm_proofs)

        results: dict[str, dict] = {s.name: {"throughput": [], "latency": {r: [] for r in rates}} for s in systems}
        for rnd in range(args.rounds):
            order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
            for s in order:
                run_with, proofs = run_tokens(s, args.duration)
                cpu0 = [p.cpu_seconds() for p in s.procs]
                t = throughput(args, s.url, run_with, args.duration, proofs=proofs)
                cpu = sum(p.cpu_seconds() for p in s.procs) - sum(cpu0)
                t["proxy_cpu_ms_per_1k"] = (cpu / t["requests"] * 1e6) if s.procs and t["requests"] else 0.0
                results[s.name]["throughput"].append(t)
                log(f"round {rnd + 1} {s.name}: {t['rps']:.0f} rps at {args.connections} connections, "
                    f"non-2xx {t['non_2xx']}, proxy CPU {t['proxy_cpu_ms_per_1k']:.1f} ms/1k")
                for r in rates:
                    lat = latency(args, s.url, tokens_file, r, args.latency_duration)
                    results[s.name]["latency"][r].append(lat)
                    log(f"round {rnd + 1} {s.name} @ {r} rps: p50 {lat['p50_ms']:.3f} ms, "
                        f"p99 {lat['p99_ms']:.3f} ms, p99.9 {lat['p999_ms']:.3f} ms, non-2xx {lat['non_2xx']}")
        for s in systems:
            for p in s.procs:
                if not p.alive():
                    raise RuntimeError(f"{p.name} died; see {p.log_path}")
        peak_rss = {s.name: [p.status_kb("VmHWM") for p in s.procs] for s in systems}
        sampling.set()
        peak_split = {s.name: [(p.peak_kb["RssAnon"], p.peak_kb["RssFile"]) for p in s.procs] for s in systems}

        summary = summarise(systems, results, rates, idle_rss, peak_rss, peak_split)
        server_audit = work / "audit" / "server.log"
        audit_lines = sum(1 for _ in open(server_audit)) if server_audit.exists() else 0
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {cpu_model()}",
            "kernel": platform.release(),
            "envoy": run([args.envoy, "--version"]).strip().split("version:")[-1].strip() if "envoy" in systems_wanted else None,
            "rounds": args.rounds,
            "connections": args.connections,
            "distinct_tokens": len(tokens),
            "duration_s": args.duration,
            "latency_duration_s": args.latency_duration,
            "load_cpus": args.load_cpus,
            "sut_cpus": args.sut_cpus,
            "vakt_server_audit_events": audit_lines,
            "vakt_code_layout": layout,
            "wall_seconds": round(time.time() - started, 1),
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "mesh.json").write_text(json.dumps({"meta": meta, "summary": summary, "rounds": results}, indent=2) + "\n")
        md = markdown(meta, summary, rates)
        (out / "mesh.md").write_text(md)
        print(md)
        log(f"wrote {out / 'mesh.md'} and {out / 'mesh.json'} in {meta['wall_seconds']} s")
        failed = [n for n, v in summary.items() if v["non_2xx"] or v["socket_errors"]]
        if failed:
            log(f"INVALID RUN: non-2xx answers or socket errors from {', '.join(failed)} "
                f"(see the process logs in {work}, kept)")
            args.keep = True
            return 1
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_ok(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout
    except OSError:
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


def summarise(systems, results, rates, idle_rss, peak_rss, peak_split) -> dict:
    summary = {}
    for s in systems:
        r = results[s.name]
        summary[s.name] = {
            "rps": median([t["rps"] for t in r["throughput"]]),
            "proxy_cpu_ms_per_1k": median([t["proxy_cpu_ms_per_1k"] for t in r["throughput"]]),
            "non_2xx": sum(t["non_2xx"] for t in r["throughput"])
            + sum(l["non_2xx"] for rr in rates for l in r["latency"][rr]),
            "socket_errors": sum(t["socket_errors"] for t in r["throughput"])
            + sum(l["errors"] for rr in rates for l in r["latency"][rr]),
            "latency": {
                str(rr): {
                    k: median([l[k] for l in r["latency"][rr]]) for k in ("p50_ms", "p99_ms", "p999_ms", "rps")
                }
                for rr in rates
            },
            "idle_rss_mb": [round(kb / 1024, 1) for kb in idle_rss[s.name]],
            "peak_rss_mb": [round(kb / 1024, 1) for kb in peak_rss[s.name]],
            "peak_anon_rss_mb": [round(a / 1024, 1) for a, _ in peak_split[s.name]],
            "peak_file_rss_mb": [round(f / 1024, 1) for _, f in peak_split[s.name]],
        }
    return summary


def hot_text_layout(binary: Path) -> str:
    """How much of the binary's code the hot-text layout (benches/mesh/hot-text.ld) put in front.
    A layout profiled from an older build fills less of its section as functions are renamed."""
    try:
        hot, rest = hot_text.hot_section(binary)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"unknown ({e})"
    if not hot:
        return (f"no hot-text section: all {rest / 2**20:.1f} MB of code in `.text` "
                "(not built with scripts/build-release)")
    return (f"{hot / 2**20:.1f} MB of executed code in `.text.hot`, in front of "
            f"{rest / 2**20:.1f} MB in `.text` (benches/mesh/hot-text.ld)")


def ratio(a: float, b: float) -> str:
    if not b or a != a or b != b:
        return "–"
    return f"{a / b:.2f}×"


def markdown(meta: dict, summary: dict, rates: list[int]) -> str:
    names = [n for n in ("direct", "envoy", "vakt", "vakt-base") if n in summary]
    lines = [
        f"Mesh benchmark, {meta['date']}, {meta['machine']}; Envoy {meta['envoy']}.",
        f"Load generator on cpu {meta['load_cpus']}, app + both sidecars on cpu {meta['sut_cpus']}; "
        f"{meta['rounds']} rounds, alternating; medians. {meta['connections']} keep-alive connections; "
        f"{meta['distinct_tokens']} distinct tokens in rotation; latency from each request's due time (open model).",
        f"vakt's code layout: {meta['vakt_code_layout']}.",
        "",
    ]
    head = "| metric | " + " | ".join(names) + " |"
    show_ratio = "vakt" in summary
    if show_ratio:
        head += " vakt/Envoy | vakt/direct |"
    lines += [head, "|" + "---|" * (len(names) + 1 + (2 if show_ratio else 0))]

    def row(label: str, values: dict[str, float], fmt: str) -> None:
        cells = [fmt.format(values[n]) if n in values else "–" for n in names]
        line = f"| {label} | " + " | ".join(cells) + " |"
        if show_ratio:
            line += f" {ratio(values.get('vakt', float('nan')), values.get('envoy', 0))} |"
            line += f" {ratio(values.get('vakt', float('nan')), values.get('direct', 0))} |"
        lines.append(line)

    row(f"throughput, req/s at {meta['connections']} conns", {n: summary[n]["rps"] for n in names}, "{:,.0f}")
    for rr in rates:
        for k, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
            row(f"{label} at {rr:,} req/s, ms", {n: summary[n]["latency"][str(rr)][k] for n in names}, "{:.3f}")
    proxies = [n for n in names if n != "direct"]
    row("proxy CPU, ms per 1,000 requests (both sidecars)",
        {n: summary[n]["proxy_cpu_ms_per_1k"] for n in proxies}, "{:.1f}")
    row("idle RSS, MB (max of the two sidecars)",
        {n: max(summary[n]["idle_rss_mb"]) for n in proxies}, "{:.1f}")
    row("peak RSS, MB (max of the two sidecars)",
        {n: max(summary[n]["peak_rss_mb"]) for n in proxies}, "{:.1f}")
    row("of which anonymous (heap, stacks), MB, sampled peak",
        {n: max(summary[n]["peak_anon_rss_mb"]) for n in proxies}, "{:.1f}")
    row("of which file-backed (the binary's code, shared), MB, sampled peak",
        {n: max(summary[n]["peak_file_rss_mb"]) for n in proxies}, "{:.1f}")
    row("non-2xx responses (all runs)", {n: summary[n]["non_2xx"] for n in names}, "{:.0f}")
    row("socket errors (all runs)", {n: summary[n]["socket_errors"] for n in names}, "{:.0f}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
