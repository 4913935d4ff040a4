"""Benchmark octoai_lite against openai-python, octoai-sdk 0.10.1 and a stdlib "floor".

    python bench/run.py --soak 1000000 --write-readme   # README's figures: a full run and a million-chunk stream
    python bench/run.py                  # full run, 10 to 15 minutes on 2 cores
    python bench/run.py --quick          # a few minutes
    python bench/run.py --smoke          # a few requests, to show the bench still works (CI)
    python bench/run.py --chart bench/results/latest.json   # draw the chart again from saved results

Peers are installed into their own venvs under ~/.cache/octoai_lite/bench
(OCTOAI_LITE_CACHE overrides the folder); the project's runtime stays
dependency-free. A loopback server runs in a separate process; every
measurement runs in a fresh process, clients interleaved round by round, and
the medians are printed with the ratios to each peer and to the floor, then
the checks (texts, threads, sockets, server load), the targets, and the
steady-state figures. Results go to bench/results/latest.json and the chart
to bench/results/chart.svg; --write-readme also puts the whole report in
bench/README.md, a few headline rows in README.md, and the chart in
bench/chart.svg.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import py_compile
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("OCTOAI_LITE_CACHE", Path.home() / ".cache" / "octoai_lite")) / "bench"
PEERS = {"openai": ["openai"], "octoai": ["octoai-sdk==0.10.1"]}
CLIENTS = ["octoai_lite", "openai", "octoai", "floor"]
NAMES = {"octoai_lite": "octoai_lite", "openai": "openai-python", "octoai": "octoai-sdk", "floor": "floor"}
TASKS = ("import", "import_source", "cold", "plain", "stream", "ttfc", "threads32", "threads64", "concurrent")
# Sizes per mode: N for each task (requests, chunks, samples or streams), rounds, and the rest.
MODES = {
    "smoke": {
        "rounds": 1,
        "sizes": dict(zip(TASKS, (0, 0, 0, 20, 200, 3, 64, 128, 20))),
        "chunks": 30,  # per stream in `concurrent` and `steady`: three paced pieces
        "connections": 4,  # the async clients' limit in `concurrent`: 20 streams queue for 4
        "steady": 400,
    },
    "quick": {
        "rounds": 3,
        "sizes": dict(zip(TASKS, (0, 0, 0, 500, 10000, 20, 1600, 1600, 1000))),
        "chunks": 50,
        "connections": 100,
        "steady": 5000,
    },
    "full": {
        "rounds": 7,
        "sizes": dict(zip(TASKS, (0, 0, 0, 3000, 50000, 50, 6400, 6400, 1000))),
        "chunks": 100,
        "connections": 100,
        "steady": 20000,
    },
}
README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"  # in README.md and bench/README.md
# README's headline rows (the table's row, or its end for the concurrent streams, whose name says how many)
HEADLINE = [
    "import time",
    "CPU per request (keep-alive)",
    "CPU per streamed chunk",
    "time to first chunk",
    "(asyncio)",
    "64 threads, one client",
]


def metrics(sizes):
    """(name, task, result key, unit scale, unit label, higher is better) for the table's rows."""
    streams = f"{sizes['concurrent']:,} concurrent streams"
    return [
        ("import time", "import", "import_s", 1e3, "ms", False),
        ("import with no .pyc (source compiled)", "import_source", "import_s", 1e3, "ms", False),
        ("RSS after import", "import", "import_rss_kib", 1 / 1024, "MiB", False),
        ("RSS after one call", "cold", "rss_after_call_kib", 1 / 1024, "MiB", False),
        ("cold start to 1st HTTPS completion", "cold", "wall_s", 1e3, "ms", False),
        ("CPU per request (keep-alive)", "plain", "cpu_per_request_s", 1e6, "µs", False),
        ("CPU per streamed chunk", "stream", "cpu_per_chunk_s", 1e6, "µs", False),
        ("time to first chunk", "ttfc", "ttfc_s", 1e3, "ms", False),
        ("32 threads, one client", "threads32", "requests_per_s", 1, "req/s", True),
        ("64 threads, one client", "threads64", "requests_per_s", 1, "req/s", True),
        (f"{streams} (asyncio)", "concurrent", "streams_per_s", 1, "streams/s", True),
        (f"CPU per chunk, {streams}", "concurrent", "cpu_per_chunk_s", 1e6, "µs", False),
        (f"peak memory per stream, {streams}", "concurrent", "rss_per_stream_kib", 1, "KiB", False),
    ]


# The chart's panels: (the table's row, the panel's title)
CHART = [
    ("import time", "import time"),
    ("cold start to 1st HTTPS completion", "cold start to the first HTTPS completion"),
    ("CPU per request (keep-alive)", "client CPU per request (keep-alive)"),
    ("CPU per streamed chunk", "client CPU per streamed chunk"),
    ("32 threads, one client", "32 threads sharing one client"),
    ("64 threads, one client", "64 threads sharing one client"),
    ("(asyncio)", None),  # "1,000 concurrent streams (asyncio)": the title says how many
]


def log(message):
    print(message, file=sys.stderr, flush=True)


def venv_python(peer):
    venv = CACHE / f"venv-{peer}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        log(f"installing {' '.join(PEERS[peer])} into {venv} ...")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEERS[peer]],
                       check=True)  # fmt: skip
        marker.write_text("ok")
    return str(python)


def python_for(client):
    return venv_python(client) if client in PEERS else sys.executable


def make_certificates(folder):
    def run(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ca_ext = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign", "subjectKeyIdentifier=hash"]
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench CA",
        *[a for e in ca_ext for a in ("-addext", e)], "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    Path(folder, "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "server.ext", "-out", "server.pem")  # fmt: skip
    return [str(Path(folder, name)) for name in ("ca.pem", "server.pem", "server.key")]


def start_server(folder, cert, key):
    port_file = Path(folder, "ports")
    process = subprocess.Popen([sys.executable, str(HERE / "server.py"), str(port_file), cert, key])
    for _ in range(200):
        if port_file.exists() and port_file.read_text().strip():
            http_port, https_port = port_file.read_text().split()
            return process, f"http://127.0.0.1:{http_port}/v1", f"https://127.0.0.1:{https_port}/v1"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("the bench server did not start")


def measure(client, task, base_url, ca, n, env=None):
    command = [python_for(client), str(HERE / "driver.py"), client, task, base_url, ca, str(n), str(ROOT)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OCTOAI_", "OPENAI_", "BENCH_"))}
    started = time.perf_counter()
    env = {**clean, **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{client} {task} failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["wall_s"] = wall
    return result


def footprint(client):
    """(installed bytes, distributions) beyond a bare venv."""
    if client == "octoai_lite":
        return (ROOT / "octoai_lite.py").stat().st_size, 1
    if client == "floor":
        return 0, 0
    python = python_for(client)
    code = (
        "import sysconfig, os, importlib.metadata as m\n"
        "site = sysconfig.get_paths()['purelib']\n"
        "base = {'pip', 'setuptools', 'wheel'}\n"
        "dists = [d for d in m.distributions() if d.metadata['Name'].lower() not in base]\n"
        "size = 0\n"
        "for d in dists:\n"
        "    for f in d.files or ():\n"
        "        p = d.locate_file(f)\n"
        "        size += os.path.getsize(p) if os.path.isfile(p) else 0\n"
        "print(size, len(dists))\n"
    )
    size, count = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(size), int(count)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    mode.add_argument("--chart", metavar="RESULTS_JSON", help="only draw the chart again from saved results")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--soak", type=int, default=0, help="also stream this many chunks per client (memory, CPU)")
    parser.add_argument(
        "--write-readme",
        action="store_true",
        help="put the whole report in bench/README.md, headline rows in README.md and the chart in bench/chart.svg",
    )
    args = parser.parse_args()
    if args.write_readme and args.smoke:
        parser.error("--write-readme takes the figures of a real run, not of --smoke")
    if args.chart:
        saved = json.loads(Path(args.chart).read_text())
        out = HERE / "results" / "chart.svg"
        out.parent.mkdir(exist_ok=True)
        out.write_text(chart_svg(saved))
        print(out)
        return 0
    clients = args.clients.split(",")
    settings = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    rounds, sizes = settings["rounds"], settings["sizes"]
    command = " ".join(["python", "bench/run.py", *(a for a in sys.argv[1:] if a != "--write-readme")])

    # pip compiles what it installs; do the same for the module, so that every
    # client is imported from bytecode (PYTHONDONTWRITEBYTECODE may be set).
    py_compile.compile(str(ROOT / "octoai_lite.py"), doraise=True)
    with tempfile.TemporaryDirectory() as folder:
        ca, cert, key = make_certificates(folder)
        server, http_url, https_url = start_server(folder, cert, key)
        env = {
            "BENCH_SERVER_PIDS": str(server.pid),
            "BENCH_CHUNKS": str(settings["chunks"]),
            "BENCH_STREAM_CONNECTIONS": str(settings["connections"]),
        }
        try:
            samples = {client: {} for client in clients}
            peer_failures = []
            for round_number in range(rounds):
                log(f"round {round_number + 1} of {rounds}")
                for task in TASKS:
                    for client in clients:  # interleaved, so drift hits every client alike
                        url = https_url if task == "cold" else http_url
                        try:
                            result = measure(client, task, url, ca, sizes[task], env)
                        except RuntimeError as exc:
                            if client == "octoai_lite":
                                raise
                            # A peer that fails under load (octoai-sdk's httpx at 64 threads, say) is
                            # left out of that round's figures, and the failure is reported.
                            log(f"{client} {task} failed in round {round_number + 1}: {str(exc).splitlines()[-1]}")
                            peer_failures.append(f"{client} {task} (round {round_number + 1})")
                            continue
                        for key, value in result.items():
                            samples[client].setdefault(f"{task}.{key}", []).append(value)
            extra = {}
            # Can the server serve that many streams at once? The floor opens one connection per stream.
            streams = sizes["concurrent"]
            log(f"server check: the floor runs {streams} streams over {streams} connections")
            extra["server_check"] = measure(
                "floor", "concurrent", http_url, ca, streams, {**env, "BENCH_STREAM_CONNECTIONS": str(streams)}
            )
            if "octoai_lite" in clients:
                log(f"steady state: {settings['steady']} requests and {settings['steady'] // 10} streams")
                extra["steady"] = measure("octoai_lite", "steady", http_url, ca, settings["steady"], env)
            soak = {}
            for client in clients if args.soak else ():
                log(f"soak: {client} streams {args.soak} chunks")
                soak[client] = measure(client, "soak", http_url, ca, args.soak)
        finally:
            server.kill()
            server.wait()

    table = {}
    for name, task, key, scale, unit, higher in metrics(sizes):
        values = {}
        for c in clients:
            found = samples[c].get(f"{task}.{key}")
            values[c] = statistics.median(found) * scale if found else None  # None: the client has no such thing
        table[name] = {"unit": unit, "values": values, "higher_is_better": higher}
    table["installed size"] = {"unit": "MiB", "values": {}, "higher_is_better": False}
    table["distributions installed"] = {"unit": "", "values": {}, "higher_is_better": False}
    for client in clients:
        size, count = footprint(client)
        table["installed size"]["values"][client] = size / 1024 / 1024
        table["distributions installed"]["values"][client] = count

    saved = {
        "machine": machine(),
        "command": command,
        "rounds": rounds,
        "sizes": sizes,
        "settings": settings,
        "clients": clients,
        "table": table,
        "samples": samples,
        "soak": soak,
        "peer_failures": peer_failures,
        **extra,
    }
    text = report(saved)
    if peer_failures:
        text += "\n\nPeer runs that failed and were left out of their medians: " + "; ".join(peer_failures) + ".\n"
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(saved, indent=2))
    (out / "chart.svg").write_text(chart_svg(saved))
    log(f"wrote {out / 'latest.json'} and {out / 'chart.svg'}")
    if args.write_readme:
        shutil.copyfile(out / "chart.svg", HERE / "chart.svg")
        write_between_markers(HERE / "README.md", text)
        write_between_markers(ROOT / "README.md", headline(saved))
        log("wrote bench/README.md's full report, README.md's headline rows and bench/chart.svg")
    return 0


def write_between_markers(path, text):
    """Replace what lies between the lines README_BEGIN and README_END in `path` with `text`.

    Only a marker alone on its line counts: prose may quote them."""
    old = path.read_text(encoding="utf-8")
    start = old.index(f"\n{README_BEGIN}\n") + len(README_BEGIN) + 1
    end = old.index(f"\n{README_END}\n", start) + 1
    path.write_text(old[:start] + "\n" + text + "\n" + old[end:], encoding="utf-8")


def machine():
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"
    )


def fmt(value):
    """A figure to about three significant digits, thousands separated, never in e-notation."""
    if value is None:
        return "n/a"
    size = abs(value)
    if size >= 1000 or value == int(value):
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ratio(row, peer):
    """How octoai_lite compares with `peer` on one row: '4.5× more', '18.3× less', '0.91×' (the floor)."""
    lite, other = row["values"].get("octoai_lite"), row["values"].get(peer)
    if not lite or not other or peer == "octoai_lite":
        return ""
    if peer == "floor":
        return f"{lite / other:.2f}×"
    times = lite / other if row["higher_is_better"] else other / lite
    return f"{times:.1f}× {'more' if row['higher_is_better'] else 'less'}"


def rounds(saved):
    return "1 round" if saved["rounds"] == 1 else f"{saved['rounds']} interleaved rounds"


def worst(saved, client, key, pick=max):
    found = saved["samples"].get(client, {}).get(key)
    return pick(found) if found else None


def headline(saved):
    """A few rows of the table, the chart and a link to the rest, as Markdown: README's Benchmarks block."""
    clients, table = saved["clients"], saved["table"]
    lines = [
        f"Made by `{saved['command']}` on {saved['machine']}: medians of {rounds(saved)}.",
        "",
        "| measure | " + " | ".join(NAMES[c] for c in clients) + " | lite / floor |",
        "|" + "---|" * (len(clients) + 2),
    ]
    for key in HEADLINE:
        name = next((n for n in table if n == key or key == "(asyncio)" and n.endswith(key)), None)
        if name is None:
            continue
        row = table[name]
        cells = [
            f"{fmt(row['values'].get(c))} {row['unit']}".strip() if row["values"].get(c) is not None else "n/a"
            for c in clients
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio(row, 'floor')} |")
    lines += [
        "",
        "![octoai_lite against openai-python, octoai-sdk and the stdlib floor: import time, cold start, "
        "CPU per request and per chunk, threads and concurrent streams](bench/chart.svg)",
        "",
        "Every measure (memory, cold start, installed size...), the checks, the targets, the steady state "
        "and the soak: [bench/README.md](bench/README.md#latest-full-run).",
    ]
    return "\n".join(lines)


def report(saved):
    """The whole report as Markdown: what bench/README.md's "Latest full run" block holds."""
    clients, table, sizes, settings = saved["clients"], saved["table"], saved["sizes"], saved["settings"]
    streams, chunks = sizes["concurrent"], settings["chunks"]
    lines = [
        f"Made by `{saved['command']}` on {saved['machine']}: medians of {rounds(saved)}.",
        "",
        "| measure | "
        + " | ".join(NAMES[c] for c in clients)
        + " | lite vs openai | lite vs octoai-sdk | lite / floor |",
        "|" + "---|" * (len(clients) + 4),
    ]
    for name, row in table.items():
        cells = [
            f"{fmt(row['values'].get(c))} {row['unit']}".strip() if row["values"].get(c) is not None else "n/a"
            for c in clients
        ]
        footprint_row = name.startswith(("installed", "distributions"))
        ratios = [
            ratio(row, peer) if not (footprint_row and peer == "floor") else ""
            for peer in ("openai", "octoai", "floor")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

    lines += ["", f"Checks, {streams:,} concurrent streams of {chunks} chunks each (the worst round shown):", ""]
    lines.append(
        "| client | texts verified | threads before / peak / after | OS threads (/proc/self/task) | "
        "client sockets at peak (limit) | sockets after close | responses open at once | client CPU | server CPU |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for client in clients:
        got = saved["samples"].get(client, {})
        if not got.get("concurrent.streams_per_s"):
            continue
        before, peak, after = (got[f"concurrent.{moment}"] for moment in ("before", "peak", "after"))
        threads = "{} / {} / {}".format(
            max(b["threads"] for b in before), max(p["threads"] for p in peak), max(a["threads"] for a in after)
        )
        tasks = "{} / {} / {}".format(
            max(b["tasks"] for b in before), max(p["tasks"] for p in peak), max(a["tasks"] for a in after)
        )
        lines.append(
            f"| {NAMES[client]} | {sum(got['concurrent.texts_verified']):,} of {streams * len(before):,} "
            f"| {threads} | {tasks} "
            f"| {max(got['concurrent.client_sockets_peak'])} ({got['concurrent.max_connections'][0]}) "
            f"| {max(got['concurrent.client_sockets_closed'])} | {max(got['concurrent.open_responses_peak'])} "
            f"| {statistics.median(got['concurrent.client_cpu_cores']):.2f} core "
            f"| {max(got['concurrent.server_busy']):.2f} core |"
        )
    check = saved.get("server_check")
    if check:
        loads = [
            worst(saved, c, f"{task}.server_busy") for c in clients for task in ("threads32", "threads64", "concurrent")
        ]
        busiest = max((load for load in loads if load is not None), default=0)
        verdict = (
            "The server was not the bound"
            if busiest < 0.9
            else "**The server may have been the bound** (a run kept its one core 90% busy)"
        )
        lines += [
            "",
            f"{verdict}: it served the floor's {streams:,} streams over {streams:,} connections at "
            f"once at {fmt(check['streams_per_s'])} streams/s (its CPU {check['server_busy']:.2f} core, "
            f"{check['client_sockets_peak']:,} client sockets at peak, every text verified), and while the clients "
            "ran it used at most these fractions of its one core (CPU time read in clock ticks, 10 ms on Linux):",
            "",
            "| run | " + " | ".join(NAMES[c] for c in clients) + " |",
            "|" + "---|" * (len(clients) + 1),
        ]
        for task, label in (
            ("threads32", "32 threads"),
            ("threads64", "64 threads"),
            ("concurrent", f"{streams:,} streams"),
        ):
            cells = [
                f"{busy:.2f}" if (busy := worst(saved, c, f"{task}.server_busy")) is not None else "n/a"
                for c in clients
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lines += ["", "Targets:", "", "| target | figure | met |", "|---|---|---|"]
    for target, figure, met in targets(saved):
        lines.append(f"| {target} | {figure} | {'yes' if met else '**no**'} |")

    steady = saved.get("steady")
    if steady:
        lines += [
            "",
            f"Steady state: {steady['requests']:,} sequential requests, then {steady['streams']:,} streams of "
            f"{steady['chunks_per_stream']} chunks, on one `Client` and on one `AsyncClient` (RSS against its "
            f"level after the first {steady['baseline_after']:,} requests):",
            "",
            f"| client | RSS after {steady['baseline_after']:,} | RSS at the end | growth | peak "
            "| open files: start / after the first requests / end / after close() |",
            "|---|---|---|---|---|---|",
        ]
        for kind, label in (("sync", "Client"), ("async", "AsyncClient")):
            got = steady[kind]
            growth = (got["rss_end_kib"] - got["rss_base_kib"]) / 1024
            lines.append(
                f"| {label} | {got['rss_base_kib'] / 1024:.1f} MiB | {got['rss_end_kib'] / 1024:.1f} MiB "
                f"| {growth:+.2f} MiB | {got['rss_peak_kib'] / 1024:.1f} MiB "
                f"| {got['files_start']} / {got['files_base']} / {got['files_end']} / {got['files_closed']} |"
            )
    if saved["soak"]:
        some = next(iter(saved["soak"].values()))
        lines += [
            "",
            f"A stream of {some['chunks']:,} chunks (`--soak`):",
            "",
            "| client | CPU per chunk | RSS at start | RSS peak |",
            "|---|---|---|---|",
        ]
        for client, got in saved["soak"].items():
            lines.append(
                f"| {NAMES[client]} | {fmt(got['cpu_per_chunk_s'] * 1e6)} µs | {got['rss_start_kib'] / 1024:.1f} MiB "
                f"| {got['rss_peak_kib'] / 1024:.1f} MiB |"
            )
    return "\n".join(lines)


def targets(saved):
    """(what, the figure, met) for issue 14's and 21's goals, from the medians and the worst rounds."""
    table, sizes = saved["table"], saved["sizes"]
    streams = f"{sizes['concurrent']:,} streams"
    row = {name: spec["values"] for name, spec in table.items()}
    out = []

    def compare(label, name, peer, at_least):
        lite, other = row[name].get("octoai_lite"), row[name].get(peer)
        if lite and other:
            out.append(
                (f"{label}: octoai_lite ≥ {at_least}× {NAMES[peer]}", f"{lite / other:.2f}×", lite / other >= at_least)
            )

    def at_most(label, name, peer, ratio):
        lite, other = row[name].get("octoai_lite"), row[name].get(peer)
        if lite and other:
            figure = f"{lite / other:.2f}×"
            out.append((f"{label}: octoai_lite ≤ {ratio}× {NAMES[peer]}", figure, lite / other <= ratio))

    at_most("CPU per streamed chunk", "CPU per streamed chunk", "floor", 1.2)
    lite, other = row["CPU per streamed chunk"].get("octoai_lite"), row["CPU per streamed chunk"].get("openai")
    if lite and other:
        out.append(("CPU per streamed chunk: ≥ 7× less than openai-python", f"{other / lite:.1f}×", other / lite >= 7))
    for threads in (32, 64):
        name = f"{threads} threads, one client"
        compare(f"{threads} threads", name, "floor", 0.85)
        compare(f"{threads} threads", name, "openai", 4)
    concurrent = next(name for name in table if name.endswith("(asyncio)"))
    compare(streams, concurrent, "openai", 5)
    compare(streams, concurrent, "floor", 0.75)
    many = next(name for name in table if name.startswith("CPU per chunk,"))
    at_most(f"{streams}: CPU per chunk", many, "floor", 1.5)
    memory = next(name for name in table if name.startswith("peak memory per stream"))
    lite, other = row[memory].get("octoai_lite"), row[memory].get("openai")
    if lite is not None and other is not None:
        out.append(
            (f"{streams}: less memory per stream than openai-python", f"{fmt(lite)} vs {fmt(other)} KiB", lite < other)
        )
    lite, single = row[many].get("octoai_lite"), row["CPU per streamed chunk"].get("octoai_lite")
    if lite and single:
        figure = f"{lite / single:.2f}×"
        floor, floor_single = row[many].get("floor"), row["CPU per streamed chunk"].get("floor")
        if floor and floor_single:
            figure += f" (the floor's: {floor / floor_single:.2f}×)"
        out.append((f"{streams}: CPU per chunk ≤ 1.5× one stream's", figure, lite / single <= 1.5))
    got = saved["samples"].get("octoai_lite", {})
    if got.get("concurrent.peak"):
        grew = max(p["tasks"] - b["tasks"] for p, b in zip(got["concurrent.peak"], got["concurrent.before"]))
        more = max(p["threads"] - b["threads"] for p, b in zip(got["concurrent.peak"], got["concurrent.before"]))
        out.append((f"{streams}: no thread started", f"+{more} threads, +{grew} OS threads", grew == 0 and more == 0))
        over = max(got["concurrent.client_sockets_peak"])
        limit = got["concurrent.max_connections"][0]
        out.append((f"{streams}: sockets ≤ max_connections", f"{over} ≤ {limit}", over <= limit))
    steady = saved.get("steady")
    if steady:
        for kind, label in (("sync", "Client"), ("async", "AsyncClient")):
            got = steady[kind]
            growth = (got["rss_end_kib"] - got["rss_base_kib"]) / 1024
            out.append((f"steady state, {label}: RSS within 2 MiB", f"{growth:+.2f} MiB", abs(growth) <= 2))
            out.append(
                (
                    f"steady state, {label}: open files back where they started",
                    f"{got['files_start']} → {got['files_closed']}",
                    got["files_closed"] == got["files_start"],
                )
            )
    return out


# --- the chart: an SVG written with the standard library only --------------------------

COLOURS = {"octoai_lite": "#1f6feb", "openai": "#d1495b", "octoai": "#e09f3e", "floor": "#6b7280"}
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


def _escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def chart_svg(saved):
    """Grouped horizontal bars, one panel per headline metric, each peer's bar labelled with the ratio."""
    clients, table = saved["clients"], saved["table"]
    width, left, bar_max = 940, 170, 380
    row_h, bar_h = 24, 17
    parts = []
    y = 34
    parts.append(
        f'<text x="20" y="{y}" font-size="20" font-weight="bold">octoai_lite against openai-python, '
        "octoai-sdk and the stdlib floor</text>"
    )
    y += 22
    subtitle = saved.get("subtitle") or (f"{saved['machine']}; medians of {rounds(saved)}; made by {saved['command']}")
    for line in _wrap(subtitle, 130):
        parts.append(f'<text x="20" y="{y}" font-size="12" fill="#444">{_escape(line)}</text>')
        y += 16
    y += 8
    x = 20
    for client in clients:  # the legend
        parts.append(f'<rect x="{x}" y="{y - 11}" width="14" height="14" fill="{COLOURS.get(client, "#999")}"/>')
        parts.append(f'<text x="{x + 20}" y="{y + 1}" font-size="13">{_escape(NAMES.get(client, client))}</text>')
        x += 40 + 8 * len(NAMES.get(client, client))
    parts.append(
        f'<text x="{x + 10}" y="{y + 1}" font-size="12" fill="#444">'
        "(floor: the least a stdlib client can do, json in and out)</text>"
    )
    y += 22
    for key, title in CHART:
        name = next((n for n in table if n == key or key == "(asyncio)" and n.endswith(key)), None)
        if name is None:
            continue
        row = table[name]
        values = {c: row["values"].get(c) for c in clients}
        better = "higher is better" if row["higher_is_better"] else "lower is better"
        title = title or name.replace(" (asyncio)", "") + " from one asyncio client"
        y += 18
        parts.append(
            f'<text x="20" y="{y}" font-size="15" font-weight="bold">{_escape(title)}'
            f'<tspan dx="8" font-weight="normal" fill="#444">{_escape(row["unit"])}, {better}</tspan></text>'
        )
        y += 8
        top = max((v for v in values.values() if v), default=0)
        for client in clients:
            value = values[client]
            label = NAMES.get(client, client)
            bold = ' font-weight="bold"' if client == "octoai_lite" else ""
            parts.append(
                f'<text x="{left - 10}" y="{y + 13}" font-size="13" text-anchor="end"{bold}>{_escape(label)}</text>'
            )
            if value is None:
                parts.append(f'<text x="{left}" y="{y + 13}" font-size="12" fill="#777">n/a</text>')
                y += row_h
                continue
            length = max(1.5, bar_max * value / top) if top else 1.5
            parts.append(
                f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar_h}" fill="{COLOURS.get(client, "#999")}"/>'
            )
            text = f"{fmt(value)} {row['unit']}"
            note = ratio(row, client)
            if note:
                note = f"octoai_lite: {note} the floor's" if client == "floor" else f"octoai_lite: {note}"
            parts.append(
                f'<text x="{left + length + 8:.1f}" y="{y + 13}" font-size="13"{bold}>{_escape(text)}'
                + (
                    f'<tspan dx="12" font-weight="normal" fill="#444" font-size="12">{_escape(note)}</tspan>'
                    if note
                    else ""
                )
                + "</text>"
            )
            y += row_h
        y += 6
    height = y + 16
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="{FONT}" fill="#111">\n'
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>\n' + "\n".join(parts) + "\n</svg>\n"
    )


def _wrap(text, width):
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


if __name__ == "__main__":
    sys.exit(main())
