"""Integration: the client against a real OpenAI-compatible server, llama-cpp-python's.

    python -m pytest integration

The first run installs `llama-cpp-python[server]`, `tokenizers`, `gguf` and
`numpy` into a venv under ~/.cache/octoai_lite/llama (OCTOAI_LITE_CACHE moves
it); pip compiles llama.cpp, several minutes on 2 cores, cached afterwards.
A tiny random-weight Llama model is built offline (build_tiny_model.py),
the server is started on 127.0.0.1 with a small context and stopped by PID
at the end. Requests ask for few tokens: a random model can stall the
server's detokenizer on long outputs.

Each test names the way the real server differs from OpenAI's documents
that it exercises.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import octoai_lite
from octoai_lite import AsyncClient, BadRequestError, Client, OctoAIServerError, OctoAIValidationError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("OCTOAI_LITE_CACHE", Path.home() / ".cache" / "octoai_lite")) / "llama"
PACKAGES = ["llama-cpp-python[server]", "tokenizers", "gguf", "numpy"]
N_CTX = 256
MESSAGES = [{"role": "user", "content": "Write a blog about Seattle"}]


def llama_python():
    venv = CACHE / "venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import llama_cpp.server, tokenizers, gguf, numpy"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES]
    subprocess.run(install, check=True, env=env, timeout=3600)
    return str(python)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    python = llama_python()
    model = tmp_path_factory.mktemp("model") / "tiny.gguf"
    subprocess.run([python, str(HERE / "build_tiny_model.py"), str(model)], check=True, timeout=300)
    port = free_port()
    log_path = model.parent / "server.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            [python, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
             "--n_ctx", str(N_CTX), "--n_threads", "1", "--chat_format", "chatml", "--model_alias", "tiny"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        give_up_at = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base_url + "/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > give_up_at:
                    raise RuntimeError(
                        "llama-cpp-python's server did not start:\n" + log_path.read_text()[-3000:]
                    ) from None
                time.sleep(0.3)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def client(llama_server):
    with Client(base_url=llama_server, timeout=60, max_retries=0) as made:
        yield made


def ask(client, **kwargs):
    kwargs.setdefault("max_tokens", 12)
    return client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, seed=7, **kwargs)


def test_plain_completion(client):
    completion = ask(client)
    assert completion.object == "chat.completion"
    assert isinstance(completion.choices[0].message.content, str)
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 0
    printed = completion.dict()
    assert {"id", "choices", "created", "model", "object", "system_fingerprint", "usage"} <= set(printed)


def test_streamed_answer_folds_to_the_plain_one(client):
    """Difference: llama.cpp sends many empty `content: ""` deltas and a role-only first chunk."""
    plain = ask(client)
    with ask(client, stream=True) as stream:
        chunks = list(stream)
        folded = stream.get_final_completion()
    assert folded.choices[0].message.content == plain.choices[0].message.content
    assert folded.choices[0].finish_reason == plain.choices[0].finish_reason
    assert octoai_lite.ChatCompletion.from_chunks(chunks).choices[0].message.content == plain.choices[0].message.content


def test_model_name_is_ignored(client):
    """Difference: the server answers whatever `model` names (it has one)."""
    completion = client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4, temperature=0)
    assert completion.choices


def test_include_usage_is_ignored_and_folding_copes(client):
    """Difference: no usage chunk for stream_options.include_usage; the fold then has no usage."""
    stream = ask(client, stream=True, stream_options={"include_usage": True})
    folded = stream.get_final_completion()
    assert folded.choices[0].message.content is not None
    assert folded.usage is None or folded.usage.total_tokens > 0


def test_models_list(client):
    assert "tiny" in client.models.list()


def test_prompt_longer_than_the_context(client):
    """Difference: streamed, the same prompt gets a 200 and then no event at all: an error, not an empty stream."""
    long_messages = [{"role": "user", "content": "Seattle rain ferry coffee " * 400}]
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=long_messages, max_tokens=4)
    assert "context" in str(info.value).lower()
    with pytest.raises(OctoAIValidationError, match="before any event"):
        list(client.chat.completions.create(model="tiny", messages=long_messages, max_tokens=4, stream=True))


def test_malformed_request_is_a_500_listing_validation_errors(client):
    """Difference: a request the server cannot validate is a 500 (OpenAI: 400) whose text lists pydantic's errors.

    A 500 is retried by default; with max_retries=0 here, one try shows the message.
    """
    with pytest.raises(OctoAIServerError) as info:
        client.chat.completions.create(model="tiny", messages="not a list", max_tokens=4)
    assert info.value.status_code == 500
    assert "validation error" in str(info.value) and "messages" in str(info.value)


def test_idle_keep_alive_closed_by_the_server_is_not_an_error(client):
    """Difference: uvicorn closes idle keep-alive connections after 5 s without notice."""
    ask(client, max_tokens=2)
    time.sleep(6)
    assert ask(client, max_tokens=2).choices


def test_cli_streams_an_answer(llama_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTOAI_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "octoai_lite.py"), "--base-url", llama_server, "-m", "tiny",
         "--max-tokens", "8", "--temperature", "0", "Hello"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")


def test_async_client_streams_several_at_once(llama_server):
    """Difference: a new request ends the running stream early (interrupt_requests): `data: [DONE]` at once.

    The server said [DONE], so no stream raises; an interrupted answer is the
    one whose finish_reason stayed None (OpenAI always sends one).
    """

    async def one(client, number):
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Hello {number}"}], max_tokens=10, stream=True
        )
        async with stream:
            return await stream.get_final_completion()

    async def main():
        async with AsyncClient(base_url=llama_server, timeout=60, max_retries=0) as client:
            return await asyncio.gather(*(one(client, n) for n in range(3)))

    answers = asyncio.run(main())
    assert len(answers) == 3
    finished = [answer for answer in answers if answer.choices[0].finish_reason is not None]
    assert finished and all(answer.choices[0].message.content for answer in finished)


def test_non_ascii_arrives_whole(client):
    """Difference: non-ASCII in stream JSON is escaped, astral characters as surrogate pairs."""
    raw = json.dumps({"content": "\U0001f600 caf\u00e9"})  # what the server writes: \\ud83d\\ude00 caf\\u00e9
    assert "\\ud83d\\ude00" in raw
    event = octoai_lite.SSEDecoder().feed(b"data: " + raw.encode() + b"\n\n")[0]
    assert event.json()["content"] == "\U0001f600 caf\u00e9"
    with ask(client, stream=True, max_tokens=16) as stream:
        text = stream.get_final_completion().choices[0].message.content
    text.encode("utf-8")  # no lone surrogates
