"""A fast loopback Chat Completions server for the benchmarks (HTTP and HTTPS).

python bench/server.py PORT_FILE [CERT KEY]  writes "http_port https_port" to PORT_FILE.

Listens on 127.0.0.1 only. POST /v1/chat/completions answers JSON, or with
"stream": true sends `max_tokens` chunks (chunked SSE) then [DONE].
Keep-alive throughout; a request that arrives while a long stream is being
written waits its turn (no pipelining out of order).

A streaming request whose "user" field is a short tag of letters, digits,
"-" and "_" gets its own text: chunk i carries " TAG:i", so a client running
many streams at once can check that each got its full, unmixed answer
(`expected_text(tag, max_tokens)` gives it). Such a stream is paced like a
model's: 10 chunks, a pause of 1 ms, the next 10..., so that a client's
streams are open at the same time and their chunks interleave (with 100
connections that bounds the server at some 10,000 streams of 100 chunks a
second, far above what a Python client reaches).

It is an asyncio.Protocol server (no StreamReader/StreamWriter objects, one
small object per connection), so that a thousand open connections and tens
of thousands of requests a second cost it little: the bench measures the
server's CPU alongside each throughput figure to show it is not the bound.
"""

import asyncio
import json
import re
import ssl
import sys

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there, this is a benchmark answer."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19},
    }
).encode()


def sse(payload):
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def chunk(content, finish=None):
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        }
    ).encode()


CHUNK = sse(chunk(" tok"))
FIRST = sse(chunk("Hello"))
LAST = sse(chunk("", "stop")) + sse(b"[DONE]") + b"0\r\n\r\n"
MODELS = json.dumps({"object": "list", "data": [{"id": "bench-model", "object": "model"}]}).encode()
# A tagged chunk is the same JSON as CHUNK with other content: split it around the text.
TAG_HEAD, TAG_TAIL = (b"data: " + chunk("\x00") + b"\n\n").split(b"\\u0000")
TAG_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
BATCH = 512  # chunks written at once before waiting for the socket to drain
PACE_CHUNKS, PACE_S = 10, 0.001  # a tagged stream: 10 chunks, then 1 ms, then the next 10...
MAX_HEAD = 64 * 1024


def expected_text(tag, count):
    """The text a stream tagged `tag` with `count` chunks carries (the finish chunk adds none)."""
    return "".join(" %s:%d" % (tag, i) for i in range(count))


def tagged(tag, start, stop):
    parts = []
    for i in range(start, stop):
        event = TAG_HEAD + b" %s:%d" % (tag, i) + TAG_TAIL
        parts.append(b"%x\r\n%s\r\n" % (len(event), event))
    return b"".join(parts)


def head(status, content_type, length=None):
    framing = b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked"
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\n%s\r\n\r\n" % (status, content_type, framing)


class Connection(asyncio.Protocol):
    """One client connection: parse requests from the bytes that arrive, answer in order."""

    def __init__(self):
        self.transport = None
        self.buffer = b""
        self.busy = False  # a long stream is being written: later requests wait
        self.drained = None  # a future while the transport asked us to pause writing

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self):
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    def data_received(self, data):
        self.buffer = self.buffer + data if self.buffer else data
        if not self.busy:
            self.serve()

    def serve(self):
        """Answer every whole request in the buffer, or start a long stream and stop."""
        while self.transport is not None and not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.close()
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == "content-length:":
                    length = int(line[15:])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.answer(method, path, body)

    def answer(self, method, path, body):
        write = self.transport.write
        if path.endswith("/chat/completions") and method == "POST":
            request = json.loads(body)
            if not request.get("stream"):
                write(head(b"200 OK", b"application/json", len(COMPLETION)) + COMPLETION)
                return
            count = max(1, int(request.get("max_tokens") or 16))
            tag = request.get("user")
            tag = tag.encode() if isinstance(tag, str) and TAG_RE.fullmatch(tag) else None
            if tag:  # paced, so that many streams are open at once and interleave
                self.busy = True
                asyncio.ensure_future(self.long_stream(count, tag, PACE_CHUNKS, PACE_S))
            elif count <= BATCH:  # the whole answer at once: no task, no waiting
                write(head(b"200 OK", b"text/event-stream") + FIRST + CHUNK * (count - 1) + LAST)
            else:
                self.busy = True
                asyncio.ensure_future(self.long_stream(count, None, BATCH, 0))
        elif path.endswith("/models"):
            write(head(b"200 OK", b"application/json", len(MODELS)) + MODELS)
        else:
            write(head(b"404 Not Found", b"text/plain", 0))

    async def long_stream(self, count, tag, piece, pause):
        """Write `count` chunks, `piece` at a time, waiting `pause` s between pieces and for the socket to drain."""
        try:
            self.transport.write(head(b"200 OK", b"text/event-stream"))
            sent = 0
            while sent < count and self.transport is not None:
                if sent and pause:
                    await asyncio.sleep(pause)
                    if self.transport is None:
                        break
                batch = min(piece, count - sent)
                if tag:
                    self.transport.write(tagged(tag, sent, sent + batch))
                elif sent == 0:
                    self.transport.write(FIRST + CHUNK * (batch - 1))
                else:
                    self.transport.write(CHUNK * batch)
                sent += batch
                if self.drained is not None:
                    await self.drained
            if self.transport is not None:
                self.transport.write(LAST)
        finally:
            self.busy = False
        if self.transport is not None and self.buffer:
            self.serve()


async def main():
    port_file = sys.argv[1]
    loop = asyncio.get_running_loop()
    plain = await loop.create_server(Connection, "127.0.0.1", 0, backlog=4096)
    ports = [plain.sockets[0].getsockname()[1]]
    servers = [plain]
    if len(sys.argv) > 3:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
        secure = await loop.create_server(Connection, "127.0.0.1", 0, ssl=context, backlog=4096)
        ports.append(secure.sockets[0].getsockname()[1])
        servers.append(secure)
    with open(port_file, "w") as file:
        file.write(" ".join(map(str, ports)))
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main())
