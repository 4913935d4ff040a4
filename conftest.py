"""Test servers on 127.0.0.1: a scriptable HTTP/1.1 server, a raw-socket server
for exact bytes, a CONNECT proxy, and TLS certificates made at test time.

Nothing here patches socket, http.client or urllib: the client under test
talks to these servers over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import octoai_lite

SEED_TEXT = "Founded in 1921, Seattle is the mother city of Pacific Northwest."
WORDS = ["Hello", " from", " the", " loopback", " server", "."]


def completion_body(content=SEED_TEXT, **extra):
    body = {
        "id": "cmpl-8ea213aece0747aca6d0608b02b57196",
        "object": "chat.completion",
        "created": 5399,
        "model": "llama2-70b",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length"}],
        "usage": {"completion_tokens": 150, "prompt_tokens": 571, "total_tokens": 721},
    }
    body.update(extra)
    return body


def chunk(content=None, *, finish_reason=None, role=None, index=0, **delta_extra):
    delta = dict(delta_extra)
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
    }


def sse_event(payload, event=None):
    """One SSE event as bytes: JSON (or a str as is) in a data line, then a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    head = f"event: {event}\n" if event else ""
    return (head + f"data: {data}\n\n").encode()


def chat_events(words=WORDS):
    events = [sse_event(chunk("", role="assistant"))]
    events += [sse_event(chunk(word)) for word in words]
    events.append(sse_event(chunk(finish_reason="stop")))
    events.append(b"data: [DONE]\n\n")
    return events


# -- actions a script can queue: each is called as action(handler, request) -----


def reply(status=200, body=None, headers=None, content_type="application/json"):
    """A whole answer with Content-Length."""

    def action(handler, request):
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(completion_body() if body is None else body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        try:
            handler.wfile.write(data)
        except OSError:  # the client stopped reading (an oversized body, say)
            handler.close_connection = True

    return action


def stream(
    events=None,
    *,
    delay=0.0,
    headers=None,
    chunked=True,
    cut=False,
    status=200,
    content_type="text/event-stream",
    before_send=None,
):
    """An SSE answer, one write per event; `cut` resets the connection instead of ending."""

    def action(handler, request):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        if chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        try:
            for number, event in enumerate(chat_events() if events is None else events):
                if before_send is not None:
                    before_send(number)
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event) if chunked else event)
                if delay:
                    time.sleep(delay)
            if cut:
                reset(handler.connection)
                handler.close_connection = True
                return
            if chunked:
                handler.wfile.write(b"0\r\n\r\n")
            else:
                handler.close_connection = True
        except OSError:
            handler.close_connection = True
            handler.server.client_gone.set()

    return action


def reset(sock):
    """Close with RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def stall(seconds):
    """Accept the request, then say nothing."""

    def action(handler, request):
        time.sleep(seconds)
        handler.close_connection = True

    return action


class Request:
    def __init__(self, handler, body):
        self.method = handler.command
        self.path = handler.path
        self.headers = {name.lower(): value for name, value in handler.headers.items()}
        self.body = body
        self.port = handler.client_address[1]
        self.time = time.monotonic()

    def json(self):
        return json.loads(self.body)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body leave at once, no delayed-ACK stall

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def finish(self):
        super().finish()
        with self.server.lock:
            self.server.closed += 1

    def log_message(self, *args):
        pass

    def handle_one(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self, body)
        with self.server.lock:
            self.server.requests.append(request)
            action = self.server.script.pop(0) if self.server.script else None
        (action or default_route)(self, request)

    do_GET = do_POST = do_PUT = do_DELETE = handle_one


def default_route(handler, request):
    path = request.path.split("?")[0]
    if path.endswith("/chat/completions") and request.method == "POST":
        body = request.json()
        if body.get("stream"):
            prompt = (body.get("messages") or [{}])[-1].get("content") or ""
            if prompt.startswith("echo "):  # stream the prompt's words back: each caller its own answer
                words = [" " + word for word in prompt.split()[1:]]
                return stream([sse_event(chunk(word)) for word in words] + [b"data: [DONE]\n\n"])(handler, request)
            if (body.get("stream_options") or {}).get("include_usage"):  # as OpenAI: a last chunk with no choices
                usage = {"completion_tokens": len(WORDS), "prompt_tokens": 9, "total_tokens": len(WORDS) + 9}
                usage_chunk = dict(chunk(), choices=[], usage=usage)
                events = chat_events()
                return stream(events[:-1] + [sse_event(usage_chunk), events[-1]])(handler, request)
            return stream()(handler, request)
        return reply(body=completion_body())(handler, request)
    if path.endswith("/embeddings") and request.method == "POST":  # a vector of 3 per input
        inputs = request.json().get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs or []
        data = [{"object": "embedding", "index": i, "embedding": [0.5, -0.25, i / 8]} for i in range(len(inputs))]
        usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
        return reply(body={"object": "list", "data": data, "model": "e", "usage": usage})(handler, request)
    if path.endswith("/completions") and request.method == "POST":  # the legacy endpoint: WORDS as `text`
        legacy = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
        if request.json().get("stream"):
            events = [sse_event(dict(legacy, choices=[{"index": 0, "text": word}])) for word in WORDS]
            return stream([*events, b"data: [DONE]\n\n"])(handler, request)
        choices = [{"index": 0, "text": "".join(WORDS), "finish_reason": "stop", "logprobs": None}]
        return reply(body=dict(legacy, choices=choices))(handler, request)
    if path.endswith("/models"):
        return reply(body={"object": "list", "data": [{"id": "llama-2-70b-chat", "object": "model"}, {"id": "tiny"}]})(
            handler, request
        )
    if path.startswith("/echo"):
        return reply(body={"path": request.path, "headers": request.headers, "body": request.body.decode()})(
            handler, request
        )
    return reply(404, {"error": {"message": f"no route {path}"}})(handler, request)


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # clients open up to 100 connections at once

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.reset()

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # clients that hang up are part of the tests
            super().handle_error(request, client_address)

    def reset(self):
        self.script = []
        self.requests = []
        self.connections = 0
        self.closed = 0  # connections whose handler has ended (the client closed it, or the server did)
        self.client_gone = threading.Event()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def running(server):
    """Serve in a thread for the block; then shut down and close."""
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def http_server():
    with running(LoopbackServer()) as server:
        yield server


@pytest.fixture
def server(http_server):
    http_server.reset()
    yield http_server
    http_server.reset()


@pytest.fixture
def separate_server():
    """The loopback server in another process, so that its threads and sockets are not ours."""
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdout=subprocess.PIPE)
    port = int(process.stdout.readline())
    yield f"http://127.0.0.1:{port}/v1"
    process.kill()
    process.wait()
    process.stdout.close()


# -- raw sockets: a per-test handler writes exact bytes ------------------------------


def read_head(recv, buffer=b""):
    """What `recv()` gives up to a request's blank line, and any of the body after it; None at EOF."""
    data = bytearray(buffer)  # grows in place: linear in what arrives
    while b"\r\n\r\n" not in data:
        more = recv()
        if not more:
            return None
        data += more
    return bytes(data)


def read_request(recv, buffer=b""):
    """(head, body, rest) of one request (Content-Length body) read with `recv()`; None at EOF."""
    data = read_head(recv, buffer)
    if data is None:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(body)
    while len(body) < length:
        more = recv()
        if not more:
            return None
        body += more
    return head, bytes(body[:length]), bytes(body[length:])


class RawServer:
    """Accepts connections on 127.0.0.1 and gives each to `handler(sock, request_bytes)`."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.handler = None
        self.accepted = 0
        self.requests = []
        self._stop = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self):
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(sock, self.handler), daemon=True).start()

    def _serve(self, sock, handler):
        sock.settimeout(10)
        try:
            handler(sock, self)
        except OSError:
            pass
        finally:
            sock.close()

    def read_request(self, sock):
        """Read one request (headers and Content-Length body); record and return (head, body)."""
        request = read_request(lambda: sock.recv(65536))
        if request is None:
            return None
        self.requests.append(request[:2])
        return request[:2]

    def close(self):
        self._stop = True
        self.listener.close()


@pytest.fixture
def raw_server():
    server = RawServer()
    yield server
    server.close()


# -- a CONNECT proxy that records what passed through it ---------------------------


class Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.seen = []  # (request line, headers dict)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class ProxyHandler(socketserver.BaseRequestHandler):
    def handle(self):
        client = self.request
        client.settimeout(10)
        data = read_head(lambda: client.recv(65536))
        if data is None:
            return
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.server.seen.append((lines[0], headers))
        method, target, _ = lines[0].split(" ")
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
        else:
            from urllib.parse import urlsplit

            parts = urlsplit(target)
            host, port = parts.hostname, parts.port
        assert host in ("127.0.0.1", "localhost"), "the test proxy only reaches loopback"
        upstream = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
        if method == "CONNECT":
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
        else:
            upstream.sendall(data)
        pump = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        pump.start()
        _pipe(client, upstream)
        pump.join(10)
        upstream.close()


def _pipe(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def proxy():
    with running(Proxy()) as server:
        yield server


# -- TLS: a CA and a server certificate for 127.0.0.1, made with openssl ---------------


@pytest.fixture(scope="session")
def certificates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    # Python 3.13 verifies strictly (VERIFY_X509_STRICT): the CA needs key usage
    # and key identifiers, as a real one has.
    ca_ext = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign", "subjectKeyIdentifier=hash"]
    ca_args = [arg for ext in ca_ext for arg in ("-addext", ext)]
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=octoai-lite test CA",
        *ca_args, "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "server.ext", "-out", "server.pem")  # fmt: skip
    return {"ca": str(folder / "ca.pem"), "cert": str(folder / "server.pem"), "key": str(folder / "server.key")}


@pytest.fixture(scope="session")
def https_server(certificates):
    import ssl

    server = LoopbackServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates["cert"], certificates["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with running(server):
        yield server


@pytest.fixture
def tls_server(https_server):
    https_server.reset()
    yield https_server
    https_server.reset()


# -- every test starts from a clean environment -----------------------------------

_CLEARED = (
    "OCTOAI_TOKEN",
    "OCTOAI_BASE_URL",
    "OCTOAI_LOG",
    "OCTOAI_MODEL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUEST_METHOD",
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch, tmp_path):
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.octoai/config.yaml from the machine
    # Retries wait milliseconds, not seconds.
    monkeypatch.setattr(octoai_lite, "_BACKOFF_INITIAL_S", 0.001)
    monkeypatch.setattr(octoai_lite, "_DONE_GRACE_S", 0.5)
    yield


@pytest.fixture
def make_client(server):
    clients = []

    def make(**kwargs):
        kwargs.setdefault("base_url", server.url + "/v1")
        kwargs.setdefault("timeout", 5)
        kwargs.setdefault("max_retries", 0)
        made = octoai_lite.Client(**kwargs)
        clients.append(made)
        return made

    yield make
    for made in clients:
        made.close()


def open_fds():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None


# -- the same scenarios against Client and AsyncClient ------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


def delta_text(completion):
    return completion.choices[0].delta.content if completion.choices else None


class SyncFlavor:
    """Drives a Client; the async flavour offers the same calls."""

    name = "sync"
    client_class = octoai_lite.Client

    def __init__(self, base_url):
        self.base_url = base_url
        self.clients = []

    def make(self, **kwargs):
        kwargs.setdefault("base_url", self.base_url)
        kwargs.setdefault("timeout", 5)
        kwargs.setdefault("max_retries", 0)
        made = self.client_class(**kwargs)
        self.clients.append(made)
        return made

    def chat(self, client, **kwargs):
        return client.chat.completions.create(model="m", messages=MESSAGES, **kwargs)

    def collect(self, client, got, **kwargs):
        """Stream, appending each chunk's text to `got` as it arrives; return the folded answer."""
        with client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **kwargs) as chat_stream:
            for piece in chat_stream:
                got.append(delta_text(piece))
            return chat_stream.get_final_completion()

    def models(self, client, **kwargs):
        return client.models.list(**kwargs)

    def infer(self, client, url, inputs, **kwargs):
        return client.infer(url, inputs, **kwargs)

    def infer_stream(self, client, url, inputs, **kwargs):
        return list(client.infer_stream(url, inputs, **kwargs))

    def call(self, client, method, *args, **kwargs):
        return getattr(client, method)(*args, **kwargs)

    def close(self):
        for made in self.clients:
            made.close()


class AsyncFlavor(SyncFlavor):
    name = "async"
    client_class = octoai_lite.AsyncClient

    def __init__(self, base_url):
        super().__init__(base_url)
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def chat(self, client, **kwargs):
        return self.run(client.chat.completions.create(model="m", messages=MESSAGES, **kwargs))

    def collect(self, client, got, **kwargs):
        async def go():
            chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **kwargs)
            async with chat_stream:
                async for piece in chat_stream:
                    got.append(delta_text(piece))
                return await chat_stream.get_final_completion()

        return self.run(go())

    def models(self, client, **kwargs):
        return self.run(client.models.list(**kwargs))

    def infer(self, client, url, inputs, **kwargs):
        return self.run(client.infer(url, inputs, **kwargs))

    def infer_stream(self, client, url, inputs, **kwargs):
        async def go():
            return [item async for item in await client.infer_stream(url, inputs, **kwargs)]

        return self.run(go())

    def call(self, client, method, *args, **kwargs):
        return self.run(getattr(client, method)(*args, **kwargs))

    def close(self):
        for made in self.clients:
            self.run(made.close())
        self.run(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(params=["sync", "async"])
def flavor(request, server):
    driver = (SyncFlavor if request.param == "sync" else AsyncFlavor)(server.url + "/v1")
    yield driver
    driver.close()


if __name__ == "__main__":
    # python conftest.py: serve in this process until killed (tests that must not count server threads).
    standalone = LoopbackServer()
    print(standalone.server_address[1], flush=True)
    standalone.serve_forever()
