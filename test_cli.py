"""The command line, run for real as a subprocess against the loopback server."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


from conftest import WORDS, chunk, reply, sse_event, stream

ROOT = Path(__file__).resolve().parent
TOKEN = "sk-cli-secret-4242"


def cli_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCTOAI_", "HTTP", "http", "NO_PROXY", "no_proxy"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run(server, *args, stdin=None, env=None, command=None, cwd=None):
    command = command or [sys.executable, str(ROOT / "octoai_lite.py")]
    return subprocess.run(
        [*command, "--base-url", server.url + "/v1", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env or cli_env(OCTOAI_TOKEN=TOKEN),
        cwd=cwd,
        check=False,
    )


def test_streams_the_answer_with_a_final_newline(server):
    result = run(server, "Say", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(WORDS) + "\n" and result.stderr == ""
    request = server.requests[-1]
    assert request.json()["messages"] == [{"role": "user", "content": "Say hi"}]
    assert request.json()["stream"] is True and request.headers["authorization"] == f"Bearer {TOKEN}"


def test_python_dash_m_and_every_option(server):
    command = [sys.executable, "-m", "octoai_lite"]
    args = ["-m", "tiny", "-s", "Be brief", "--max-tokens", "9", "--temperature", "0.5", "--top-p", "0.9"]
    args += ["--stop", "END", "--stop", "STOP", "--timeout", "5", "--max-retries", "0", "Hello"]
    result = run(server, *args, command=command)
    assert result.returncode == 0, result.stderr
    assert server.requests[-1].json() == {
        "model": "tiny",
        "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}],
        "max_tokens": 9,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END", "STOP"],
        "stream": True,
    }


def test_model_default_from_environment(server):
    run(server, "hi", env=cli_env(OCTOAI_MODEL="env-model"))
    assert server.requests[-1].json()["model"] == "env-model"
    run(server, "hi")
    assert server.requests[-1].json()["model"] == "llama-2-70b-chat"


def test_prompt_from_stdin(server):
    result = run(server, "-s", "Summarise", stdin="a long text\n")
    assert result.returncode == 0, result.stderr
    assert server.requests[-1].json()["messages"][1] == {"role": "user", "content": "a long text\n"}
    run(server, "-", stdin="dash text")
    assert server.requests[-1].json()["messages"][0]["content"] == "dash text"


def test_no_stream_and_json(server):
    result = run(server, "--no-stream", "hi")
    assert result.stdout.startswith("Founded in 1921") and result.stdout.endswith("\n")
    assert "stream" not in server.requests[-1].json()
    result = run(server, "--no-stream", "--json", "hi")
    assert json.loads(result.stdout)["usage"]["total_tokens"] == 721
    result = run(server, "--json", "hi")
    lines = result.stdout.splitlines()
    assert len(lines) == len(WORDS) + 2 and all(json.loads(line)["object"] == "chat.completion.chunk" for line in lines)


def test_list_models_and_a_server_that_cannot(server):
    result = run(server, "--list-models")
    assert result.stdout.split() == ["llama-2-70b-chat", "tiny"]
    server.script.append(reply(404, {"error": {"message": "no models here"}}))
    result = run(server, "--list-models")
    assert result.returncode == 1 and result.stdout == ""  # not OctoAI's retired names as if the server had them
    assert "no models here" in result.stderr


def test_list_models_against_a_dead_base_url_exits_1(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    result = subprocess.run(
        [sys.executable, str(ROOT / "octoai_lite.py"), "--base-url", f"http://127.0.0.1:{port}/v1", "--list-models", "--max-retries", "0"],
        capture_output=True, text=True, timeout=60, env=cli_env(), check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (1, "")
    assert "octoai-lite: error:" in result.stderr and "127.0.0.1" in result.stderr


@pytest.mark.parametrize(
    "option", [["--timeout", "0"], ["--timeout", "nan"], ["--max-retries", "-1"], ["--temperature", "nan"]]
)
def test_bad_option_values_are_usage_errors(server, option):
    result = run(server, *option, "hi")
    assert result.returncode == 2, result.stderr
    assert f"argument {option[0]}:" in result.stderr and "Traceback" not in result.stderr
    assert server.requests == []


def test_blank_stdin_is_no_prompt(server):
    result = run(server, "-", stdin="  \n")
    assert result.returncode == 2 and "give a prompt" in result.stderr
    assert server.requests == []


@pytest.mark.parametrize(
    "url", ["not a url", "ftp://127.0.0.1/v1", "http://127.0.0.1:99999/v1", "http://127.0.0.1/v1#x"]
)
def test_malformed_base_url_is_a_usage_error(server, url):
    result = subprocess.run(
        [sys.executable, str(ROOT / "octoai_lite.py"), "--base-url", url, "hi"],
        capture_output=True, text=True, timeout=60, env=cli_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--base-url" in result.stderr and "Traceback" not in result.stderr


def test_api_error_is_one_line_and_exit_1(server):
    server.script.append(reply(400, {"error": {"message": "prompt too long"}}))
    result = run(server, "hi")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["octoai-lite: error: 400 Bad Request: prompt too long"]
    server.script.append(reply(400, {"error": {"message": "prompt too long"}}))
    verbose = run(server, "-v", "hi")
    assert "Traceback" in verbose.stderr and "POST http://127.0.0.1" in verbose.stderr
    assert TOKEN not in verbose.stderr


def test_network_error_exit_1():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(ROOT / "octoai_lite.py"), "--base-url", f"http://127.0.0.1:{port}/v1", "--max-retries", "0", "hi"],
        capture_output=True, text=True, timeout=60, env=cli_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "connecting to 127.0.0.1" in result.stderr and "Traceback" not in result.stderr


def test_usage_errors_exit_2(server):
    assert run(server, "--max-tokens", "many", "hi").returncode == 2
    no_prompt = subprocess.run(
        [sys.executable, str(ROOT / "octoai_lite.py")], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, env=cli_env(), check=False,
    )  # fmt: skip
    assert no_prompt.returncode == 2 and "give a prompt" in no_prompt.stderr


def test_token_is_not_an_argument_and_help_says_so(server):
    assert run(server, "--token", "x", "hi").returncode == 2
    result = subprocess.run(
        [sys.executable, str(ROOT / "octoai_lite.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "OCTOAI_TOKEN" in result.stdout and "examples:" in result.stdout
    version = subprocess.run(
        [sys.executable, str(ROOT / "octoai_lite.py"), "--version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("octoai-lite 0.")


def slow_stream(count=100, delay=0.05):
    return stream([sse_event(chunk(f"w{i} ")) for i in range(count)] + [b"data: [DONE]\n\n"], delay=delay)


def test_ctrl_c_mid_stream_closes_prints_newline_and_exits_130(server):
    server.script.append(slow_stream())
    # As a terminal's foreground job gets Ctrl-C: a suite run in the background (`cmd &` in a script) has SIGINT
    # ignored, and a child inherits that; a handler, unlike SIG_IGN, is reset to the default at exec.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "octoai_lite.py"), "--base-url", server.url + "/v1", "hi"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert process.stdout.read(3) == b"w0 "
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 130, err
    assert out.endswith(b"\n") and b"Traceback" not in err
    assert server.client_gone.wait(5)  # the stream's connection was closed


def test_closed_stdout_pipe_ends_quietly(server):
    server.script.append(slow_stream(delay=0.01))
    process = subprocess.Popen(
        f'"{sys.executable}" "{ROOT / "octoai_lite.py"}" --base-url {server.url}/v1 hi | head -c 10',
        shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    out, err = process.communicate(timeout=30)
    assert out == b"w0 w1 w2 w"
    assert err == b""


def installed_distributions():
    return sorted((dist.metadata["Name"], dist.version) for dist in importlib.metadata.distributions())


def test_installed_console_script(server, tmp_path):
    """pip-installs the repo into a folder of its own (--target), never into the running environment.

    (--prefix would not do: pip first uninstalls a copy already installed
    in the environment, and its octoai-lite script with it.)
    """
    target = tmp_path / "target"
    before = installed_distributions()
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(ROOT)]
    if importlib.util.find_spec("hatchling") is not None:  # the test extra: build offline with it
        command.insert(-1, "--no-build-isolation")
    install = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert install.returncode == 0, install.stderr
    assert installed_distributions() == before  # nothing installed or removed here
    package = target / "octoai_lite"
    assert sorted(path.name for path in package.iterdir() if path.name != "__pycache__") == [
        "__init__.py",
        "__main__.py",
        "py.typed",
    ]
    assert (package / "__init__.py").read_bytes() == (ROOT / "octoai_lite.py").read_bytes()
    env = cli_env()
    env["PYTHONPATH"] = str(target)
    started = time.monotonic()
    result = run(server, "hi", env=env, command=[str(target / "bin" / "octoai-lite")])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(WORDS) + "\n"
    assert time.monotonic() - started < 30
    # The package's __main__, run where no octoai_lite.py lies in the current folder.
    result = run(server, "hi", env=env, command=[sys.executable, "-m", "octoai_lite"], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(WORDS) + "\n"
