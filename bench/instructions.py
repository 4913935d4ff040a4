"""Count the instructions the 1,000-stream case costs, octoai_lite against the asyncio floor (valgrind's callgrind).

    python bench/instructions.py                  # 1,000 streams of 100 chunks over 100 connections, as the bench
    python bench/instructions.py --streams 200 --chunks 1   # per-stream costs stand out

Timings on a shared 2-core machine move by 10% from run to run; an
instruction count moves by less than 0.4% here, so a change of 1% in the
client's cost per chunk shows. Each client runs `driver.py concurrent` under
callgrind twice, with 10 streams and with 10 + `--streams`; the difference,
divided by the chunks, leaves out start-up and import. Slow: callgrind runs
Python about 50 times slower (a few minutes for the defaults). Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import run


def count(client: str, streams: int, chunks: int, base_url: str, ca: str, server_pid: int) -> int:
    """Instructions of one driver run (callgrind's total)."""
    env = {**os.environ, "BENCH_SERVER_PIDS": str(server_pid), "BENCH_CHUNKS": str(chunks),
           "BENCH_STREAM_CONNECTIONS": "100"}  # fmt: skip
    python = os.path.realpath(sys.executable)  # not a shim script: callgrind counts the process it starts
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, str(run.HERE / "driver.py"),
               client, "concurrent", base_url, ca, str(streams), str(run.ROOT)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{client} failed under callgrind:\n{done.stderr[-2000:]}")
    return int(found[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=100)
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    ca, cert, key = run.make_certificates(folder)
    server, base_url, _ = run.start_server(folder, cert, key)
    try:
        per_chunk = {}
        for client in ("floor", "octoai_lite"):
            added = count(client, 10 + args.streams, args.chunks, base_url, ca, server.pid)
            added -= count(client, 10, args.chunks, base_url, ca, server.pid)
            per_chunk[client] = added / (args.streams * args.chunks)
            print(f"{client:12} {per_chunk[client]:10,.0f} instructions a chunk "
                  f"({per_chunk[client] * args.chunks:,.0f} a stream)")  # fmt: skip
        print(f"octoai_lite / floor: {per_chunk['octoai_lite'] / per_chunk['floor']:.2f}x")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
