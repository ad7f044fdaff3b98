#!/usr/bin/env python3
"""Side-by-side benchmark of the clawdeploy edge against nginx, HAProxy and Caddy.

Run through benches/run.sh, which installs the tools and builds the binaries. Everything listens on
127.0.0.1 only. See benches/README.md for the method.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time

BENCHES = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

PORTS = {
    "upstream": 18081,
    "ws": 18082,
    "clawdeploy": 18100,
    "nginx": 18101,
    "haproxy": 18102,
    "caddy": 18103,
    "clawdeploy-before": 18104,  # --baseline BIN: an earlier build, for before/after runs
}
# HTTPS listeners of the same targets (ECDSA P-256 certificates for every proxy).
TLS_PORTS = {name: port + 10 for name, port in PORTS.items() if name not in ("upstream", "ws")}
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
APP_HOST = "app.edge.test"
HTTP_HOST = "a.bench.test"
WS_HOST = "ws.bench.test"
PROXIES = ["clawdeploy", "nginx", "haproxy", "caddy"]
TARGETS = ["direct"] + PROXIES


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- processes


def proc_tree(pid):
    """pid and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d))
        except OSError:
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


def status_kib(pids, key):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def reset_peak(pids):
    for p in pids:
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def http_get(port, host, path="/20b.txt", tls=False):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = None
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s, server_hostname=host)
        der = s.getpeercert(binary_form=True)
        text = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-text"], input=der,
                              capture_output=True).stdout.decode()
        key = "ECDSA P-256" if "prime256v1" in text or "P-256" in text else "other"
        key += f", {s.version()}"
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if tls:
        return int(head.split()[1]), body, key
    return int(head.split()[1]), body


class Service:
    def __init__(self, name, argv, run, env=None):
        self.name, self.argv, self.run, self.env = name, argv, run, env
        self.proc = None

    def start(self):
        env = dict(os.environ)
        env.update(self.env or {})
        out = open(os.path.join(self.run, f"{self.name}.log"), "ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out, env=env, start_new_session=True)
        port = PORTS["upstream" if self.name == "upstream" else self.name]
        if not wait_port(port):
            raise SystemExit(f"{self.name} did not start: see {self.run}/{self.name}.log")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            # nginx and caddy exit on SIGTERM/SIGQUIT; clawdeploy exits at once on SIGINT.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        time.sleep(0.3)
        self.start()

    def pids(self):
        return proc_tree(self.proc.pid) if self.proc else []


def render(template, run, out_name):
    with open(os.path.join(BENCHES, "configs", template)) as f:
        text = f.read()
    name = out_name.split(".")[0]
    subst = {
        "@RUN@": run,
        "@PORT@": str(PORTS.get(name, PORTS["upstream"])),
        "@UPSTREAM_PORT@": str(PORTS["upstream"]),
        "@WS_PORT@": str(PORTS["ws"]),
        "@TLS_PORT@": str(TLS_PORTS.get(name, 0)),
        "@ADMIN_TOKEN@": ADMIN_TOKEN,
    }
    for k, v in subst.items():
        text = text.replace(k, v)
    path = os.path.join(run, out_name)
    with open(path, "w") as f:
        f.write(text)
    return path


def make_tls_material(run):
    """One self-signed ECDSA P-256 certificate for *.bench.test, used by nginx, HAProxy and Caddy
    (clawdeploy's local CA issues its own ECDSA P-256 certificates), and the wrk script for TLS runs:
    the URL names the routed host, so SNI and Host carry it, while wrk connects to loopback."""
    tls = os.path.join(run, "tls")
    os.makedirs(tls, exist_ok=True)
    cert, key = os.path.join(tls, "cert.pem"), os.path.join(tls, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=bench.test",
         "-addext", "subjectAltName=DNS:*.bench.test,DNS:bench.test"],
        check=True, capture_output=True,
    )
    with open(os.path.join(tls, "combined.pem"), "w") as out:
        for part in (cert, key):
            with open(part) as f:
                out.write(f.read())
    with open(os.path.join(BENCHES, "wrk", "stats.lua")) as f:
        stats = f.read()
    with open(os.path.join(run, "tls.lua"), "w") as f:
        f.write('function wrk.resolve(host, service)\n  wrk.addrs = wrk.lookup("127.0.0.1", service)\nend\n' + stats)


def make_services(run, clawdeploy_bin, benchtool_bin, baseline_bin=None):
    make_tls_material(run)
    www = os.path.join(run, "www")
    os.makedirs(www, exist_ok=True)
    for name, size in (("20b.txt", 20), ("1k.txt", 1024), ("64k.txt", 65536)):
        with open(os.path.join(www, name), "wb") as f:
            f.write((b"0123456789abcdefghijklmnopqrstuvwxyz" * 2000)[: size - 1] + b"\n")
    os.chmod(run, 0o755)
    for d in ("upstream-body", "nginx-body"):
        os.makedirs(os.path.join(run, d), exist_ok=True)
    up = render("upstream-nginx.conf", run, "upstream.conf")
    ng = render("nginx.conf", run, "nginx.conf")
    ha = render("haproxy.cfg", run, "haproxy.cfg")
    ca = render("Caddyfile", run, "caddy.Caddyfile")
    cd = render("clawdeploy.toml", run, "clawdeploy.toml")
    go_env = {"GOMAXPROCS": "1", "HOME": run, "XDG_DATA_HOME": run, "XDG_CONFIG_HOME": run}
    extra = {}
    if baseline_bin:
        cb = render("clawdeploy.toml", run, "clawdeploy-before.toml")
        with open(cb) as f:
            text = f.read().replace("clawdeploy-data", "clawdeploy-before-data")
        with open(cb, "w") as f:
            f.write(text)
        extra["clawdeploy-before"] = Service(
            "clawdeploy-before", [baseline_bin, "serve", "--config", cb], run, {"RUST_LOG": "warn"}
        )
    return extra | {
        "upstream": Service("upstream", ["nginx", "-p", run, "-c", up], run),
        "ws": Service("ws", [benchtool_bin, "echo-server", f"127.0.0.1:{PORTS['ws']}"], run),
        "clawdeploy": Service(
            "clawdeploy", [clawdeploy_bin, "serve", "--config", cd], run, {"RUST_LOG": "warn"}
        ),
        "nginx": Service("nginx", ["nginx", "-p", run, "-c", ng], run),
        "haproxy": Service("haproxy", ["haproxy", "-db", "-f", ha], run),
        "caddy": Service("caddy", ["caddy", "run", "--adapter", "caddyfile", "--config", ca], run, go_env),
    }


# ---------------------------------------------------------------- measuring


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def target_port(target):
    return PORTS["upstream"] if target == "direct" else PORTS[target]


def target_service(services, target):
    return services["upstream"] if target == "direct" else services[target]


def run_wrk(port, path, secs, conns, host=HTTP_HOST, extra=None, script="stats.lua", env=None, tls_run=None):
    if tls_run:
        # https://<host>:<port>: SNI and Host name the routed host; tls.lua connects to loopback.
        script_path, url = os.path.join(tls_run, "tls.lua"), f"https://{host}:{port}{path}"
    else:
        script_path, url = os.path.join(BENCHES, "wrk", script), f"http://127.0.0.1:{port}{path}"
    argv = [
        "wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "5s",
        "-s", script_path,
        "-H", f"Host: {host}",
    ] + (extra or []) + [url]
    e = dict(os.environ)
    e.update(env or {})
    out = subprocess.run(argv, capture_output=True, text=True, env=e, timeout=secs + 60).stdout
    for line in out.splitlines():
        if line.startswith("JSON "):
            r = json.loads(line[5:])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
            return r
    raise RuntimeError(f"wrk printed no result:\n{out}")


def measured(service, fn):
    """Runs fn() while measuring the service's CPU seconds and peak RSS."""
    pids = service.pids()
    reset_peak(pids)
    cpu0 = cpu_seconds(pids)
    result = fn()
    result["cpu_s"] = cpu_seconds(pids) - cpu0
    result["peak_rss_kib"] = status_kib(pids, "VmHWM")
    return result


HTTP_SCENARIOS = {
    "http-keepalive": dict(title="HTTP/1.1 keep-alive, 20-byte body", path="/20b.txt", extra=[]),
    "http-close": dict(
        title="New connection per request (Connection: close), 20-byte body",
        path="/20b.txt",
        extra=["-H", "Connection: close"],
    ),
    "http-1k": dict(title="HTTP/1.1 keep-alive, 1 KB body", path="/1k.txt", extra=[]),
    "http-64k": dict(title="HTTP/1.1 keep-alive, 64 KB body", path="/64k.txt", extra=[]),
    "tls-keepalive": dict(title="HTTPS (TLS 1.3, ECDSA P-256) keep-alive, 20-byte body", path="/20b.txt",
                          extra=[], tls=True),
    "tls-handshake": dict(
        title="HTTPS full handshake per request (TLS 1.3, ECDSA P-256, no resumption), 20-byte body",
        path="/20b.txt",
        extra=["-H", "Connection: close"],
        tls=True,
    ),
}


def rotate(items, k):
    k %= len(items)
    return items[k:] + items[:k]


def scenario_http(name, services, targets, reps, warm, secs, conns, run):
    sc = HTTP_SCENARIOS[name]
    tls_run = run if sc.get("tls") else None
    if tls_run:
        targets = [t for t in targets if t != "direct"]  # the upstream itself speaks plain HTTP
    runs = {t: [] for t in targets}
    for rep in range(reps):
        for t in rotate(targets, rep):
            svc = target_service(services, t)
            port = TLS_PORTS[t] if tls_run else target_port(t)
            la = loadavg()
            run_wrk(port, sc["path"], warm, conns, extra=sc["extra"], tls_run=tls_run)  # warm-up
            r = measured(svc, lambda: run_wrk(port, sc["path"], secs, conns, extra=sc["extra"], tls_run=tls_run))
            r["load"] = la
            runs[t].append(r)
            log(f"{name} rep {rep + 1} {t}: {r['rps']:.0f} req/s p99 {r['p99'] / 1000:.2f} ms "
                f"cpu {r['cpu_s']:.2f}s errors {r['errors']} (load {la})")
    return {"title": sc["title"], "runs": runs, "conns": conns, "secs": secs}


def scenario_ws_idle(services, targets, reps, n, hold):
    """N idle WebSockets through each proxy: RSS growth of the proxy per connection."""
    runs = {t: [] for t in targets}
    tool = services["ws"].argv[0]
    for rep in range(reps):
        for t in rotate(targets, rep):
            svc = target_service(services, t)
            if t == "direct":
                svc = services["ws"]
            svc.restart()
            time.sleep(1)
            pids = svc.pids()
            la = loadavg()
            rss0 = status_kib(pids, "VmRSS")
            cpu0 = cpu_seconds(pids)
            port = PORTS["ws"] if t == "direct" else PORTS[t]
            p = subprocess.Popen(
                [tool, "ws-idle", f"127.0.0.1:{port}", WS_HOST, str(n), str(hold)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            line = p.stdout.readline()
            r = json.loads(line) if line.startswith("{") else {"open": 0, "failed": n, "first_error": line}
            time.sleep(2)  # let the proxy settle
            pids = svc.pids()
            rss1 = status_kib(pids, "VmRSS")
            r.update(
                rss_before_kib=rss0,
                rss_after_kib=rss1,
                per_conn_kib=(rss1 - rss0) / max(r["open"], 1),
                cpu_s=cpu_seconds(pids) - cpu0,
                peak_rss_kib=status_kib(pids, "VmHWM"),
                load=la,
            )
            p.stdin.close()
            p.wait(60)
            runs[t].append(r)
            log(f"ws-idle rep {rep + 1} {t}: {r['open']} open ({r['failed']} failed), "
                f"RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB = {r['per_conn_kib']:.1f} KiB/conn")
            if t == "direct":
                svc.restart()
            time.sleep(1)
    return {"title": f"{n} idle WebSockets (one echo each, then idle)", "runs": runs, "n": n}


def scenario_ws_echo(services, targets, reps, warm, secs, conns, size):
    runs = {t: [] for t in targets}
    tool = services["ws"].argv[0]

    def once(port, s):
        out = subprocess.run(
            [tool, "ws-echo", f"127.0.0.1:{port}", WS_HOST, str(conns), str(s), str(size)],
            capture_output=True, text=True, timeout=s + 60,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        r.update(rps=r["rate"], p50=r["p50_us"], p99=r["p99_us"], p999=r["p999_us"])
        return r

    for rep in range(reps):
        for t in rotate(targets, rep):
            svc = services["ws"] if t == "direct" else services[t]
            port = PORTS["ws"] if t == "direct" else PORTS[t]
            la = loadavg()
            once(port, warm)
            r = measured(svc, lambda: once(port, secs))
            r["load"] = la
            runs[t].append(r)
            log(f"ws-echo rep {rep + 1} {t}: {r['rps']:.0f} msg/s p99 {r['p99'] / 1000:.2f} ms")
    return {"title": f"WebSocket echo, {conns} connections in ping-pong, {size}-byte messages",
            "runs": runs, "conns": conns, "secs": secs}


def put_routes(tool, count, conns, domain="routes.test", secs=None):
    argv = [tool, "put-routes", f"127.0.0.1:{PORTS['clawdeploy']}", APP_HOST, ADMIN_TOKEN, domain,
            str(count), str(conns), f"127.0.0.1:{PORTS['upstream']}"]
    if secs:
        argv.append(str(secs))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=(secs or 600) + 60).stdout
    return json.loads(out.strip().splitlines()[-1])


def scenario_routes(services, reps, warm, secs, conns, n_routes):
    """clawdeploy only: a 100,000-host route table (lookup cost, memory) and updates under load."""
    svc = services["clawdeploy"]
    tool = services["ws"].argv[0]
    svc.restart()
    time.sleep(1)
    out = {"n": n_routes, "reps": []}
    pids = svc.pids()
    rss0 = status_kib(pids, "VmRSS")
    # Few routes: random host out of 1 (same Lua script, so the client's cost is the same).
    env1 = {"BENCH_HOSTS": "1", "BENCH_DOMAIN": "routes.test"}
    put_routes(tool, 1, 1)
    load = put_routes(tool, n_routes, 4)
    rss1 = status_kib(svc.pids(), "VmRSS")
    out["load_routes"] = load
    out["rss_before_kib"], out["rss_after_kib"] = rss0, rss1
    log(f"routes: loaded {load['ok']} routes in {load['secs']:.1f}s ({load['rate']:.0f}/s); "
        f"RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB")
    envn = {"BENCH_HOSTS": str(n_routes), "BENCH_DOMAIN": "routes.test"}
    for rep in range(reps):
        row = {"load": loadavg()}
        for label, env in rotate([("one_host", env1), ("random_host", envn)], rep):
            run_wrk(PORTS["clawdeploy"], "/20b.txt", warm, conns, script="random_hosts.lua", env=env)
            row[label] = measured(svc, lambda: run_wrk(PORTS["clawdeploy"], "/20b.txt", secs, conns,
                                                       script="random_hosts.lua", env=env))
        # Updates per second while wrk drives random-host traffic.
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "-s", os.path.join(BENCHES, "wrk", "random_hosts.lua"),
             f"http://127.0.0.1:{PORTS['clawdeploy']}/20b.txt"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, **envn},
        )
        time.sleep(0.5)
        row["updates_under_load"] = put_routes(tool, n_routes, 2, secs=max(secs - 1, 1))
        wout = wrk.communicate()[0]
        for line in wout.splitlines():
            if line.startswith("JSON "):
                r = json.loads(line[5:])
                r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
                row["traffic_during_updates"] = r
        row["updates_idle"] = put_routes(tool, n_routes, 2, secs=max(secs - 1, 1))
        out["reps"].append(row)
        log(f"routes rep {rep + 1}: 1 host {row['one_host']['rps']:.0f} req/s, "
            f"{n_routes} random {row['random_host']['rps']:.0f} req/s, updates idle "
            f"{row['updates_idle']['rate']:.0f}/s, under load {row['updates_under_load']['rate']:.0f}/s "
            f"(traffic {row.get('traffic_during_updates', {}).get('rps', 0):.0f} req/s)")
    out["rss_end_kib"] = status_kib(svc.pids(), "VmRSS")
    svc.restart()  # back to the small table for other scenarios
    return out


# ---------------------------------------------------------------- reporting


def joined(rs, key, fmt):
    return ", ".join(fmt.format(r[key]) for r in rs)


def cpu_per_req(r):
    n = r.get("requests") or r.get("messages") or 0
    return r["cpu_s"] * 1e6 / n if n else 0


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_ms(us):
    return "–" if us is None else f"{us / 1000:.2f}"


def ratio(v, base):
    return "–" if not v or not base else f"{v / base:.2f}×"


def machine_info():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    lscpu = sh("lscpu | grep -E '^(Model name|CPU\\(s\\)|Thread|Core|Socket|Hypervisor|L2|L3)'")
    versions = "\n".join([
        sh("nginx -v 2>&1"), sh("haproxy -v | head -1"), "caddy " + sh("caddy version"),
        sh("wrk -v 2>&1 | head -1"), sh("rustc --version"),
    ])
    return (f"- kernel: `{platform.release()}`, nproc: {os.cpu_count()}\n"
            f"- memory: {sh('free -m | sed -n 2p')}\n"
            f"```\n{lscpu}\n```\n```\n{versions}\n```\n")


def http_table(res, header_unit="req/s"):
    runs = res["runs"]
    base = med([r["rps"] for r in runs.get("nginx", [])])
    base_p99 = med([r["p99"] for r in runs.get("nginx", [])])
    lines = [
        f"| target | {header_unit} (median) | all runs | p50 ms | p99 ms | p99.9 ms | CPU s | CPU µs per request | peak RSS MiB | errors | ratio to nginx ({header_unit}) | p99 vs nginx |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, rs in runs.items():
        if not rs:
            continue
        rps = med([r["rps"] for r in rs])
        p99 = med([r["p99"] for r in rs])
        lines.append(
            f"| {t} | {rps:,.0f} | {joined(rs, 'rps', '{:,.0f}')} | {fmt_ms(med([r['p50'] for r in rs]))} | "
            f"{fmt_ms(p99)} | {fmt_ms(med([r['p999'] for r in rs]))} | {med([r['cpu_s'] for r in rs]):.2f} | "
            f"{med([cpu_per_req(r) for r in rs]):.1f} | "
            f"{med([r['peak_rss_kib'] for r in rs]) / 1024:.1f} | {sum(r.get('errors', 0) for r in rs)} | "
            f"{ratio(rps, base)} | {ratio(p99, base_p99)} |"
        )
    loads = "; ".join(f"{t}: {', '.join(r.get('load', '?').split()[0] for r in rs)}" for t, rs in runs.items() if rs)
    return "\n".join(lines) + f"\n\n1-minute load average before each run: {loads}.\n"


def write_result(outdir, date, tag, scenario, title, body, meta):
    suffix = f"-{tag}" if tag else ""
    path = os.path.join(outdir, f"{date}-{scenario}{suffix}.md")
    with open(path, "w") as f:
        f.write(f"# {title}\n\n{meta}\n{body}\n")
    log(f"wrote {path}")
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs (still 3 repetitions)")
    ap.add_argument("--clawdeploy", required=True)
    ap.add_argument("--benchtool", required=True)
    ap.add_argument("--scenarios", default="http-keepalive,http-close,http-1k,http-64k,tls-keepalive,tls-handshake,ws-idle,ws-echo,routes")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--baseline", help="an earlier clawdeploy binary, run as target clawdeploy-before")
    ap.add_argument("--tag", default="", help="suffix of the result files, e.g. 'after'")
    ap.add_argument("--ws-conns", type=int, default=8000)
    ap.add_argument("--routes", type=int, default=100000)
    ap.add_argument("--out", default=os.path.join(BENCHES, "results"))
    args = ap.parse_args()

    warm, secs = (2, 4) if args.quick else (3, 8)
    conns = 50
    targets = args.targets.split(",")
    scenarios = args.scenarios.split(",")
    run = f"/tmp/clawbench-{os.getpid()}"
    os.makedirs(run, exist_ok=True)
    date = datetime.date.today().isoformat()
    services = make_services(run, args.clawdeploy, args.benchtool, args.baseline)
    raw = {"date": date, "quick": args.quick, "loadavg_start": loadavg(), "scenarios": {}}
    started = time.time()
    try:
        for name in ["upstream", "ws"] + [t for t in PROXIES + ["clawdeploy-before"] if t in targets]:
            services[name].start()
        for t in targets:
            status, body = http_get(target_port(t), HTTP_HOST)
            assert status == 200 and len(body) == 20, (t, status, body)
            if t != "direct":
                status, _ = http_get(target_port(t), "nobody.example")
                assert status == 404, (t, "unknown host", status)
        if any(HTTP_SCENARIOS.get(sc, {}).get("tls") for sc in scenarios):
            for t in targets:
                if t != "direct":
                    status, body, key = http_get(TLS_PORTS[t], HTTP_HOST, tls=True)
                    assert status == 200 and len(body) == 20, (t, "https", status, body)
                    assert key.startswith("ECDSA P-256"), (t, "certificate", key)
                    log(f"{t} answers over HTTPS ({key})")
        log(f"all targets answer; run dir {run}; load {loadavg()}")

        meta_common = (
            f"Run {date} by `benches/run.sh{' --quick' if args.quick else ''}`: wrk `-t1 -c{conns}`, "
            f"{warm} s warm-up then {secs} s measured per run, {args.reps} repetitions alternating the "
            f"order of targets, medians reported. One worker per proxy (nginx `worker_processes 1`, "
            f"HAProxy `nbthread 1`, Caddy `GOMAXPROCS=1`, clawdeploy `threads = 1`, `access_log = false`); "
            f"the upstream is one nginx worker; wrk, upstream and proxy share the machine's 2 cores on "
            f"loopback. CPU s and peak RSS are the proxy's (all its processes) during the measured run; "
            f"for `direct` they are the upstream's.\n\n"
        )
        for sc in scenarios:
            la = loadavg()
            if sc in HTTP_SCENARIOS:
                res = scenario_http(sc, services, targets, args.reps, warm, secs, conns, run)
                raw["scenarios"][sc] = res
                write_result(args.out, date, args.tag, sc, res["title"], http_table(res),
                             meta_common + f"Load average before the scenario: {la}.\n\n" + machine_info())
            elif sc == "ws-idle":
                res = scenario_ws_idle(services, targets, args.reps, args.ws_conns, 600)
                raw["scenarios"][sc] = res
                nginx_pc = med([r["per_conn_kib"] for r in res["runs"].get("nginx", [])])
                lines = ["| target | connections open (median) | RSS before MiB | RSS after MiB | KiB per connection (median) | all runs KiB | ratio to nginx |",
                         "|---|---|---|---|---|---|---|"]
                for t, rs in res["runs"].items():
                    pc = med([r["per_conn_kib"] for r in rs])
                    lines.append(
                        f"| {t if t != 'direct' else 'echo server alone'} | {med([r['open'] for r in rs]):.0f} | {med([r['rss_before_kib'] for r in rs]) / 1024:.1f} | "
                        f"{med([r['rss_after_kib'] for r in rs]) / 1024:.1f} | {pc:.1f} | {joined(rs, 'per_conn_kib', '{:.1f}')} | {ratio(pc, nginx_pc)} |")
                errs = {t: r.get("first_error") for t, rs in res["runs"].items() for r in rs if r.get("first_error")}
                body = "\n".join(lines) + (f"\n\nFirst errors: {errs}\n" if errs else "\n")
                write_result(args.out, date, args.tag, sc, res["title"], body,
                             f"Run {date}. Each proxy is restarted before each repetition; the client "
                             f"opens {args.ws_conns} WebSockets through it in batches of 100, echoes one "
                             f"message on each, waits 2 s, and the proxy's resident memory (all its "
                             f"processes, VmRSS) is read before and after. The number is bounded by the "
                             f"file-descriptor limit (`ulimit -n` = {os.sysconf('SC_OPEN_MAX')}): a proxy "
                             f"holds two descriptors per WebSocket. Lower is better; a ratio under 1 means "
                             f"less memory than nginx. Load average before: {la}.\n\n" + machine_info())
            elif sc == "ws-echo":
                res = scenario_ws_echo(services, targets, args.reps, warm, secs, conns, 128)
                raw["scenarios"][sc] = res
                for rs in res["runs"].values():
                    for r in rs:
                        r.setdefault("errors", 0)
                write_result(args.out, date, args.tag, sc, res["title"], http_table(res, "messages/s"),
                             meta_common.replace(f"wrk `-t1 -c{conns}`", f"`benchtool ws-echo` (one thread, {conns} connections)") + f"Load average before: {la}.\n\n" + machine_info())
            elif sc.startswith("profile"):
                # profile[:TARGET]: perf record of one proxy under the keep-alive load (not a result table).
                t = sc.partition(":")[2] or "clawdeploy"
                svc = services[t]
                run_wrk(PORTS[t], "/20b.txt", warm, conns)
                pid = svc.pids()[-1] if t == "nginx" else svc.proc.pid
                data = os.path.join(args.out, f"perf-{t}.data")
                stat = subprocess.Popen(["perf", "stat", "-e", "task-clock,context-switches,cpu-migrations,"
                                         "instructions,cycles", "-p", str(pid), "-o",
                                         os.path.join(args.out, f"perf-stat-{t}.txt"), "--", "sleep", str(secs)])
                rec = subprocess.Popen(["perf", "record", "-F", "499", "--call-graph", "dwarf,32768", "-p", str(pid), "-o", data,
                                        "--", "sleep", str(secs)], stderr=subprocess.DEVNULL)
                r = run_wrk(PORTS[t], "/20b.txt", secs, conns)
                stat.wait()
                rec.wait()
                log(f"profile {t}: {r['rps']:.0f} req/s ({r['requests']} requests); perf data in {data}")
            elif sc == "routes":
                res = scenario_routes(services, args.reps, warm, secs, conns, args.routes)
                raw["scenarios"][sc] = res
                reps = res["reps"]
                one = med([r["one_host"]["rps"] for r in reps])
                rnd = med([r["random_host"]["rps"] for r in reps])
                body = (
                    f"| measure | median | all runs |\n|---|---|---|\n"
                    f"| routes loaded through `PUT /admin/routes/{{host}}` (4 keep-alive clients) | {res['load_routes']['ok']:,} in {res['load_routes']['secs']:.1f} s = {res['load_routes']['rate']:,.0f}/s | |\n"
                    f"| RSS before → after loading | {res['rss_before_kib'] / 1024:.1f} → {res['rss_after_kib'] / 1024:.1f} MiB = {(res['rss_after_kib'] - res['rss_before_kib']) * 1024 / max(res['load_routes']['ok'], 1):.0f} bytes per route | |\n"
                    f"| req/s, random host out of 1 route | {one:,.0f} | {joined([r['one_host'] for r in reps], 'rps', '{:,.0f}')} |\n"
                    f"| req/s, random host out of {res['n']:,} routes | {rnd:,.0f} ({rnd / one:.2f}× of 1 route) | {joined([r['random_host'] for r in reps], 'rps', '{:,.0f}')} |\n"
                    f"| p99 ms, 1 route → {res['n']:,} routes | {fmt_ms(med([r['one_host']['p99'] for r in reps]))} → {fmt_ms(med([r['random_host']['p99'] for r in reps]))} | |\n"
                    f"| route updates/s, no other traffic (2 keep-alive clients) | {med([r['updates_idle']['rate'] for r in reps]):,.0f} | {joined([r['updates_idle'] for r in reps], 'rate', '{:,.0f}')} |\n"
                    f"| route updates/s under random-host load | {med([r['updates_under_load']['rate'] for r in reps]):,.0f} | {joined([r['updates_under_load'] for r in reps], 'rate', '{:,.0f}')} |\n"
                    f"| update p99 ms under load | {fmt_ms(med([r['updates_under_load']['p99_us'] for r in reps]))} | |\n"
                    f"| traffic req/s while updating | {med([r.get('traffic_during_updates', {}).get('rps') for r in reps]):,.0f} | |\n"
                )
                write_result(args.out, date, args.tag, "routes-100k", f"clawdeploy with a {res['n']:,}-host route table", body,
                             f"Run {date}, clawdeploy only (the other proxies' configs are static files). "
                             f"Routes are operator routes `h<i>.routes.test` written through the admin API, "
                             f"which the edge itself proxies to its control API. wrk `-t1 -c{conns}` with "
                             f"`benches/wrk/random_hosts.lua` picks a random host per request; the '1 route' "
                             f"row runs the same script with one host, so the client's cost is equal. "
                             f"{warm} s warm-up, {secs} s measured, {args.reps} repetitions. Updates replace "
                             f"existing routes (200). Load average before: {la}.\n\n" + machine_info())
        raw["elapsed_s"] = time.time() - started
        suffix = f"-{args.tag}" if args.tag else ""
        with open(os.path.join(args.out, f"{date}-raw{suffix}.json"), "w") as f:
            json.dump(raw, f, indent=1)
        summary(raw, args.out, date, suffix)
    finally:
        for s in services.values():
            s.stop()
        if sys.exc_info()[0] is None:
            shutil.rmtree(run, ignore_errors=True)
        else:
            log(f"logs kept in {run}")


def summary(raw, outdir, date, suffix):
    rows = ["| scenario | clawdeploy | nginx | HAProxy | Caddy | direct (no proxy) |", "|---|---|---|---|---|---|"]
    for sc, res in raw["scenarios"].items():
        if sc in HTTP_SCENARIOS or sc == "ws-echo":
            runs = res["runs"]
            base = med([r["rps"] for r in runs.get("nginx", [])])
            cells = []
            for t in ["clawdeploy", "nginx", "haproxy", "caddy", "direct"]:
                rs = runs.get(t)
                if not rs:
                    cells.append("–")
                    continue
                rps = med([r["rps"] for r in rs])
                cells.append(f"{rps:,.0f} ({ratio(rps, base)}), p99 {fmt_ms(med([r['p99'] for r in rs]))} ms, "
                             f"{med([cpu_per_req(r) for r in rs]):.0f} µs CPU/req")
            unit = "msg/s" if sc == "ws-echo" else "req/s"
            rows.append(f"| {res['title']} ({unit}) | " + " | ".join(cells) + " |")
        elif sc == "ws-idle":
            runs = res["runs"]
            base = med([r["per_conn_kib"] for r in runs.get("nginx", [])])
            cells = []
            for t in ["clawdeploy", "nginx", "haproxy", "caddy", "direct"]:
                rs = runs.get(t)
                if not rs:
                    cells.append("–")
                    continue
                pc = med([r["per_conn_kib"] for r in rs])
                cells.append(f"{pc:.1f} KiB ({ratio(pc, base)}), {med([r['open'] for r in rs]):.0f} open")
            rows.append(f"| idle WebSocket memory per connection | " + " | ".join(cells) + " |")
        elif sc == "routes":
            reps = res["reps"]
            one = med([r["one_host"]["rps"] for r in reps])
            rnd = med([r["random_host"]["rps"] for r in reps])
            rows.append(
                f"| {res['n']:,} routes: random-host req/s (vs 1 route); updates/s under load | "
                f"{rnd:,.0f} ({rnd / one:.2f}×); {med([r['updates_under_load']['rate'] for r in reps]):,.0f}/s | – | – | – | – |")
    text = (f"# Summary, {date}\n\nMedians of {len(next(iter(raw['scenarios'].values()), {}).get('runs', {}).get('nginx', [])) or 3} runs; "
            f"(ratio to nginx). Load average at start: {raw['loadavg_start']}.\n\n" + "\n".join(rows) + "\n")
    path = os.path.join(outdir, f"{date}-summary{suffix}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
