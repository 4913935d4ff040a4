"""Benchmark octoai_lite against openai-python, octoai-sdk 0.10.1 and a stdlib "floor".

    python bench/run.py            # full run, a few minutes
    python bench/run.py --quick    # about a minute
    python bench/run.py --smoke    # a few requests, to show the bench still works (CI)

Peers are installed into their own venvs under ~/.cache/octoai_lite/bench
(OCTOAI_LITE_CACHE overrides the folder); the project's runtime stays
dependency-free. A loopback server runs in a separate process; every
measurement runs in a fresh process, clients interleaved round by round, and
the medians are printed with the ratios to each peer and to the floor.
Results are also written to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import py_compile
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

# name, task, the result key, unit scale, unit label, lower is better
METRICS = [
    ("import time", "import", "import_s", 1e3, "ms"),
    ("import with no .pyc (source compiled)", "import_source", "import_s", 1e3, "ms"),
    ("RSS after import", "import", "import_rss_kib", 1 / 1024, "MiB"),
    ("RSS after one call", "cold", "rss_after_call_kib", 1 / 1024, "MiB"),
    ("cold start to 1st HTTPS completion", "cold", "wall_s", 1e3, "ms"),
    ("CPU per request (keep-alive)", "plain", "cpu_per_request_s", 1e6, "µs"),
    ("CPU per streamed chunk", "stream", "cpu_per_chunk_s", 1e6, "µs"),
    ("time to first chunk", "ttfc", "ttfc_s", 1e3, "ms"),
    ("32 threads, one client", "threads", "requests_per_s", 1, "req/s"),
    ("200 concurrent streams (asyncio)", "concurrent", "streams_per_s", 1, "streams/s"),
]
HIGHER_IS_BETTER = ("32 threads", "200 concurrent")


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


def measure(client, task, base_url, ca, n):
    command = [python_for(client), str(HERE / "driver.py"), client, task, base_url, ca, str(n), str(ROOT)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCTOAI_", "OPENAI_"))}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
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
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--soak", type=int, default=0, help="also stream this many chunks per client (memory, CPU)")
    args = parser.parse_args()
    clients = args.clients.split(",")
    tasks = ("import", "import_source", "cold", "plain", "stream", "ttfc", "threads", "concurrent")
    if args.smoke:
        rounds, counts = 1, (0, 0, 0, 20, 200, 3, 64, 20)
    elif args.quick:
        rounds, counts = 3, (0, 0, 0, 500, 10000, 20, 1600, 200)
    else:
        rounds, counts = 7, (0, 0, 0, 3000, 50000, 50, 6400, 200)
    sizes = dict(zip(tasks, counts))

    # pip compiles what it installs; do the same for the module, so that every
    # client is imported from bytecode (PYTHONDONTWRITEBYTECODE may be set).
    py_compile.compile(str(ROOT / "octoai_lite.py"), doraise=True)
    with tempfile.TemporaryDirectory() as folder:
        ca, cert, key = make_certificates(folder)
        server, http_url, https_url = start_server(folder, cert, key)
        try:
            samples = {client: {} for client in clients}
            tasks = list(dict.fromkeys(task for _, task, *_ in METRICS))
            for round_number in range(rounds):
                log(f"round {round_number + 1} of {rounds}")
                for task in tasks:
                    for client in clients:  # interleaved, so drift hits every client alike
                        url = https_url if task == "cold" else http_url
                        result = measure(client, task, url, ca, sizes[task])
                        for key, value in result.items():
                            samples[client].setdefault(f"{task}.{key}", []).append(value)
            soak = {}
            for client in clients if args.soak else ():
                log(f"soak: {client} streams {args.soak} chunks")
                soak[client] = measure(client, "soak", http_url, ca, args.soak)
        finally:
            server.kill()
            server.wait()

    table = {}
    for name, task, key, scale, unit in METRICS:
        values = {}
        for c in clients:
            found = samples[c].get(f"{task}.{key}")
            values[c] = statistics.median(found) * scale if found else None  # None: the client has no such thing
        table[name] = {"unit": unit, "values": values}
    table["installed size"] = {"unit": "MiB", "values": {}}
    table["distributions installed"] = {"unit": "", "values": {}}
    for client in clients:
        size, count = footprint(client)
        table["installed size"]["values"][client] = size / 1024 / 1024
        table["distributions installed"]["values"][client] = count

    report(table, clients, rounds, soak)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(
        json.dumps({"machine": machine(), "rounds": rounds, "sizes": sizes, "table": table, "soak": soak}, indent=2)
    )
    return 0


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


def report(table, clients, rounds, soak):
    print(f"\n{machine()}; medians of {rounds} interleaved rounds\n")
    header = "| measure | " + " | ".join(clients) + " | lite vs openai | lite vs octoai-sdk | lite / floor |"
    print(header)
    print("|" + "---|" * (len(clients) + 4))
    for name, row in table.items():
        values = row["values"]
        cells = [f"{values[c]:.3g} {row['unit']}".strip() if values[c] is not None else "n/a" for c in clients]
        ratios = []
        for peer in ("openai", "octoai", "floor"):
            lite, other = values.get("octoai_lite"), values.get(peer)
            if not lite or not other or name.startswith(("installed", "distributions")) and peer == "floor":
                ratios.append("")
            elif peer == "floor":
                ratios.append(f"{lite / other:.2f}×")
            elif name.startswith(HIGHER_IS_BETTER):
                ratios.append(f"{lite / other:.1f}× more")
            else:
                ratios.append(f"{other / lite:.1f}× less")
        print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    for client, result in soak.items():
        print(
            f"\nsoak {client}: {result['chunks']} chunks, {result['cpu_per_chunk_s'] * 1e6:.1f} µs CPU per chunk, "
            f"RSS {result['rss_start_kib'] / 1024:.1f} MiB at start, {result['rss_peak_kib'] / 1024:.1f} MiB peak"
        )


if __name__ == "__main__":
    sys.exit(main())
