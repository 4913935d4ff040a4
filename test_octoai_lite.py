"""Tests in the module's section order: pure protocol first, then the client
over a real loopback HTTP server (see conftest.py). Transport faults live in
test_transport.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import octoai_lite
from conftest import (
    SEED_TEXT,
    WORDS,
    chunk,
    completion_body,
    reply,
    sse_event,
    stream,
)
from octoai_lite import (
    AuthenticationError,
    BadRequestError,
    ChatCompletion,
    Client,
    NotFoundError,
    OctoAIClientError,
    OctoAIConnectionError,
    OctoAIServerError,
    OctoAIValidationError,
    PermissionDeniedError,
    RateLimitError,
    ServerSentEvent,
    SSEDecoder,
    TextModel,
    UnprocessableEntityError,
)

ROOT = Path(__file__).resolve().parent
TOKEN = "sk-secret-token-12345"


# =============================================================================
# 4a. SSE decoder (pure)
# =============================================================================


def feed_whole(data):
    decoder = SSEDecoder()
    events = decoder.feed(data)
    return events, decoder.close()


def feed_bytewise(data):
    decoder = SSEDecoder()
    events = []
    for i in range(len(data)):
        events += decoder.feed(data[i : i + 1])
    return events, decoder.close()


def feed_split(data, at):
    decoder = SSEDecoder()
    events = decoder.feed(data[:at]) + decoder.feed(data[at:])
    return events, decoder.close()


def decode_all_ways(data):
    """The events of `data` fed whole; asserts byte by byte and every split agree (h11's tr())."""
    expected = feed_whole(data)
    assert feed_bytewise(data) == expected
    for at in range(len(data) + 1):
        assert feed_split(data, at) == expected, at
    return expected[0]


def ev(data, event="message", id=None, retry=None):
    return ServerSentEvent(event=event, data=data, id=id, retry=retry)


@pytest.mark.parametrize(
    "stream_bytes, events",
    [
        # WHATWG example: a stream with three lines of data makes one event.
        (b"data: YHOO\ndata: +2\ndata: 10\n\n", [ev("YHOO\n+2\n10")]),
        # WHATWG example: comment, then ids; the last event id carries over.
        (
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
            [ev("first event", id="1"), ev("second event", id=""), ev(" third event", id="")],
        ),
        # WHATWG example: empty data dispatches "" twice; the final unterminated line does not.
        (b"data\n\ndata\ndata\n\ndata:", [ev(""), ev("\n")]),
        # WHATWG example: a space after the colon is optional.
        (b"data:test\n\ndata: test\n\n", [ev("test"), ev("test")]),
    ],
    ids=["three-data-lines", "ids-and-comments", "empty-data", "optional-space"],
)
def test_whatwg_examples(stream_bytes, events):
    assert decode_all_ways(stream_bytes) == events


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_each_line_ending(eol):
    data = b"event: add" + eol + b"data: 1" + eol + b"data: 2" + eol + eol + b"data: x" + eol + eol
    assert decode_all_ways(data) == [ev("1\n2", event="add"), ev("x")]


def test_cr_at_end_of_one_feed_and_lf_at_start_of_next_is_one_line_end():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []  # the LF only completes the CRLF: no blank line
    assert decoder.feed(b"\r\n") == [ev("a")]


def test_bom_is_stripped_once_even_when_split():
    data = b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n"
    events = decode_all_ways(data)
    # A second BOM is not at the stream start: it is part of a field name.
    assert events == [ev("a")]


def test_field_without_colon_and_exactly_one_space_removed():
    assert decode_all_ways(b"data\ndata:  two spaces\n\n") == [ev("\n two spaces")]


def test_comments_and_unknown_fields_are_ignored():
    assert decode_all_ways(b": ping\nfoo: bar\ndata: x\n: ping - 2024\n\n") == [ev("x")]


def test_events_without_data_are_not_dispatched_and_event_type_resets():
    data = b"event: lonely\nid: 7\n\ndata: after\n\nevent: typed\ndata: t\n\ndata: plain\n\n"
    assert decode_all_ways(data) == [ev("after", id="7"), ev("t", event="typed", id="7"), ev("plain", id="7")]


def test_id_with_nul_is_ignored():
    assert decode_all_ways(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n") == [ev("a", id="1"), ev("b", id="1")]


@pytest.mark.parametrize("value", [b" 5", b"+5", b"1_000", b"5s", b"", b"\xd9\xa3"])
def test_retry_with_non_digits_is_ignored(value):
    assert decode_all_ways(b"retry: 100\ndata: a\n\nretry: " + value + b"\ndata: b\n\n") == [
        ev("a", retry=100),
        ev("b", retry=100),
    ]


def test_retry_digits_are_taken():
    assert decode_all_ways(b"retry: 2500\ndata: a\n\n") == [ev("a", retry=2500)]


def test_unterminated_event_is_not_dispatched_but_returned_by_close():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.close() == ev("[DONE]")
    assert decoder.close() is None


def test_invalid_utf8_is_replaced_and_split_characters_survive():
    snowman = "\N{SNOWMAN}".encode()
    assert decode_all_ways(b"data: " + snowman + b"\xff\n\n") == [ev("\N{SNOWMAN}\ufffd")]


def test_unicode_line_separator_inside_data_is_not_a_line_end():
    data = 'data: {"t": "a\u2028b\u0085c"}\n\n'.encode()
    assert decode_all_ways(data) == [ev('{"t": "a\u2028b\u0085c"}')]


def test_oversized_line_raises_and_does_not_grow():
    decoder = SSEDecoder(max_line_bytes=1000)
    with pytest.raises(OctoAIValidationError, match="longer than 1000"):
        for _ in range(20):
            decoder.feed(b"x" * 100)


def test_oversized_event_raises():
    decoder = SSEDecoder(max_event_bytes=50)
    with pytest.raises(OctoAIValidationError, match="event is longer"):
        decoder.feed(b"data: " + b"y" * 30 + b"\ndata: " + b"y" * 30 + b"\n")


def test_decode_line_for_callers_with_lines():
    decoder = SSEDecoder()
    assert decoder.decode_line("data: hi") is None
    assert decoder.decode_line("") == ev("hi")


sse_lines = st.lists(
    st.one_of(
        st.sampled_from(["data: x", "data:", "data", ": ping", "event: e", "id: 9", "retry: 10", "", "foo: bar"]),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=8).map(
            lambda s: "data: " + s
        ),
    ),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(lines=sse_lines, eol=st.sampled_from(["\n", "\r", "\r\n"]), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_any_split_gives_the_same_events(lines, eol, cuts):
    data = ("\ufeff" + eol.join(lines) + eol).encode()
    whole = feed_whole(data)
    decoder = SSEDecoder()
    events = []
    previous = 0
    for cut in sorted(set(c for c in cuts if c <= len(data))) + [len(data)]:
        events += decoder.feed(data[previous:cut])
        previous = cut
    assert (events, decoder.close()) == whole


# =============================================================================
# 4b. Request building (pure)
# =============================================================================


def test_chat_body_omits_none_and_passes_extras_through():
    body = octoai_lite._build_chat_body(
        TextModel.LLAMA_2_70B_CHAT,
        [{"role": "user", "content": "hi"}],
        {"max_tokens": 5, "temperature": None, "tools": [{"type": "function"}], "seed": 1, "repetition_penalty": 1.1},
    )
    assert body == {
        "model": "llama-2-70b-chat",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "tools": [{"type": "function"}],
        "seed": 1,
        "repetition_penalty": 1.1,
    }


def test_headers_merge_case_insensitively_and_none_removes():
    headers = octoai_lite._build_headers(TOKEN, {"x-a": "1", "user-agent": None}, {"AUTHORIZATION": "Bearer other"})
    assert headers["AUTHORIZATION"] == "Bearer other"
    assert "Authorization" not in headers and "User-Agent" not in headers
    assert octoai_lite._build_headers(None, None)["Accept"] == "application/json"
    assert "Authorization" not in octoai_lite._build_headers(None, None)


@pytest.mark.parametrize(
    "text, token",
    [
        ("token: abc123\n", "abc123"),
        ("# comment\ntoken: 'quoted # not a comment'\n", "quoted # not a comment"),
        ('token: "dq"  # trailing\n', "dq"),
        ("token: plain # comment\n", "plain"),
        ("other:\n  token: nested\n", None),
        ("#token: commented\n", None),
        ("token:\n", None),
    ],
)
def test_config_token_parsing(text, token):
    assert octoai_lite._parse_config_token(text) == token


# =============================================================================
# 4c. Errors and response parsing (pure)
# =============================================================================


@pytest.mark.parametrize(
    "status, cls",
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, OctoAIClientError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, OctoAIServerError),
        (503, OctoAIServerError),
    ],
)
def test_status_maps_to_class(status, cls):
    error = octoai_lite._error_from_response(status, {"x-request-id": "req-9"}, b'{"error": {"message": "nope"}}')
    assert type(error) is cls
    assert error.status_code == status and error.request_id == "req-9"
    assert "nope" in str(error) and "req-9" in str(error)


@pytest.mark.parametrize(
    "body, text",
    [
        (b'{"error": {"message": "bad model", "code": "x"}}', "bad model"),
        (b'{"error": "plain string"}', "plain string"),
        (b'{"detail": "Not authenticated"}', "Not authenticated"),
        (b'{"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}', "body.messages: field required"),
        (b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", "502 Bad Gateway nginx"),
        (b"Internal Server Error", "Internal Server Error"),
    ],
)
def test_error_message_shapes(body, text):
    assert text in str(octoai_lite._error_from_response(500, {}, body))


def test_error_text_is_cut_and_token_redacted():
    body = json.dumps({"error": {"message": f"bad key {TOKEN} " + "x" * 5000}}).encode()
    error = octoai_lite._error_from_response(401, {}, body, secrets=TOKEN)
    assert TOKEN not in str(error) and TOKEN not in repr(error.body) and "***" in str(error)
    assert len(str(error)) < 700


def test_check_completion_names_what_is_wrong():
    with pytest.raises(OctoAIValidationError, match="'choices' list.*keys: foo"):
        octoai_lite._check_completion({"foo": 1}, {}, None)
    with pytest.raises(OctoAIValidationError, match="got list"):
        octoai_lite._check_completion([1], {}, None)
    with pytest.raises(BadRequestError, match="too long") as info:
        octoai_lite._check_completion({"error": {"message": f"too long {TOKEN}", "code": 400}}, {}, TOKEN)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value.body)


# =============================================================================
# 4d. Retry policy (pure, with injected clock and randomness)
# =============================================================================


def delay(attempt, **kwargs):
    kwargs.setdefault("now", 1_000_000.0)
    kwargs.setdefault("rand", 0.0)
    kwargs.setdefault("initial_s", 0.5)
    return octoai_lite._retry_delay(attempt, **kwargs)


def test_backoff_doubles_to_the_cap_with_jitter_down_to_75_percent():
    assert [delay(a) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert delay(1, rand=0.999999) == pytest.approx(0.75, abs=1e-5)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses(status):
    assert delay(0, status=status) == 0.5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 501])
def test_never_retried_statuses(status):
    assert delay(0, status=status) is None


def test_retry_after_forms():
    now = 1_000_000.0
    assert delay(0, status=503, headers={"retry-after": "3"}) == 3.0
    assert delay(0, status=503, headers={"retry-after": "1.5"}) == 1.5
    assert delay(0, status=503, headers={"retry-after-ms": "250"}) == 0.25
    import email.utils

    date = email.utils.formatdate(now + 7, usegmt=True)
    assert delay(0, status=503, headers={"retry-after": date}, now=now) == pytest.approx(7, abs=1)
    assert delay(0, status=503, headers={"retry-after": "junk"}) == 0.5  # junk: plain backoff
    assert delay(0, status=503, headers={"retry-after": "-4"}) == 0.0


def test_retry_after_beyond_the_cap_is_not_waited():
    assert delay(0, status=429, headers={"retry-after": "3600"}) is None


def test_should_retry_header_wins_and_quota_is_final():
    assert delay(0, status=400, headers={"x-should-retry": "true"}) == 0.5
    assert delay(0, status=503, headers={"x-should-retry": "false"}) is None
    assert delay(0, status=429, error_code="insufficient_quota") is None


# =============================================================================
# 4f. Folding chunks (pure)
# =============================================================================


def test_fold_content_role_finish_reason_usage_and_every_choice():
    chunks = [
        chunk("", role="assistant"),
        chunk("Hel"),
        chunk("A", index=1, role="assistant"),
        chunk("lo"),
        chunk(finish_reason="stop"),
        chunk(finish_reason="length", index=1),
        {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
    ]
    folded = ChatCompletion.from_chunks(chunks)
    assert [c.message.content for c in folded.choices] == ["Hello", "A"]
    assert [c.finish_reason for c in folded.choices] == ["stop", "length"]
    assert folded.usage.total_tokens == 5 and folded.object == "chat.completion" and folded.id == "chatcmpl-1"


def test_fold_tool_call_fragments_by_index_and_without_index():
    with_index = [
        chunk(
            tool_calls=[{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]
        ),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]),
        chunk(tool_calls=[{"index": 1, "id": "call_2", "function": {"name": "g", "arguments": "{}"}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": " 1}"}}]),
    ]
    calls = ChatCompletion.from_chunks(with_index).choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_1", "f", '{"a": 1}'),
        ("call_2", "g", "{}"),
    ]
    without_index = [
        chunk(tool_calls=[{"id": "a", "function": {"name": "f", "arguments": '{"x"'}}]),
        chunk(tool_calls=[{"function": {"arguments": ": 2}"}}]),
        chunk(tool_calls=[{"id": "b", "function": {"name": "g", "arguments": "{}"}}]),
    ]
    calls = ChatCompletion.from_chunks(without_index).choices[0].message.tool_calls
    assert [(c.id, c.function.arguments) for c in calls] == [("a", '{"x": 2}'), ("b", "{}")]


def test_fold_many_pieces_keeps_every_character():
    words = [f"w{i} " for i in range(3000)]  # past the 1024 pieces that make a block
    folded = ChatCompletion.from_chunks([chunk(word) for word in words] + [chunk("", finish_reason="stop")])
    assert folded.choices[0].message.content == "".join(words)
    assert ChatCompletion.from_chunks([chunk(""), chunk(finish_reason="stop")]).choices[0].message.content == ""


def test_fold_reasoning_content():
    folded = ChatCompletion.from_chunks(
        [chunk(reasoning_content="think "), chunk(reasoning_content="more"), chunk("A")]
    )
    message = folded.choices[0].message
    assert message.reasoning_content == "think more" and message.content == "A"


# =============================================================================
# 4g. One HTTP/1.1 exchange (pure)
# =============================================================================


def run_exchange(pieces, method="POST", eof=False):
    """Feed pieces to an _Exchange; return (events, body, status, headers, reusable)."""
    exchange = octoai_lite._Exchange(method, b"", "h:1")
    exchange.sent = True
    events, body = [], b""
    for piece in [piece for piece in pieces if piece] + ([b""] if eof else []):
        exchange.feed(piece)
        if "head" not in events:
            if exchange.head() is None:
                continue
            events.append("head")
        while "end" not in events:
            data = exchange.body_piece()
            if data is None:
                break
            if data == b"":
                events.append("end")
            body += data
    return events, body, exchange.status, exchange.headers, exchange.reusable


def exchange_all_ways(data, method="POST", eof=False):
    """Events of `data` fed whole; asserts byte-by-byte and every split give the same (h11's tr())."""
    expected = run_exchange([data], method, eof)
    assert run_exchange([data[i : i + 1] for i in range(len(data))], method, eof) == expected
    for at in range(len(data) + 1):
        assert run_exchange([data[:at], data[at:]], method, eof) == expected, at
    return expected


def test_exchange_content_length():
    events, body, status, headers, reusable = exchange_all_ways(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Request-ID: r1\r\n\r\nhello"
    )
    assert (events, body, status, reusable) == (["head", "end"], b"hello", 200, True)
    assert headers["x-request-id"] == "r1"


def test_exchange_chunked_with_extensions_and_trailers():
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\n"
    assert exchange_all_ways(data)[:2] == (["head", "end"], b"hello!")


def test_exchange_read_to_close_and_interim_answers():
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n"
    events, body, status, headers, reusable = exchange_all_ways(data, eof=True)
    assert (events, body, status, reusable) == (["head", "end"], b"data: x\n\n", 200, False)
    assert "link" not in headers  # the interim answer's headers are not the answer's


def test_exchange_bare_lf_lines():
    data = b"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 2\n\n{}"
    assert exchange_all_ways(data)[:3] == (["head", "end"], b"{}", 200)


@pytest.mark.parametrize(
    "data, method, status",
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", "POST", 204),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "HEAD", 200),
        (b"HTTP/1.1 200 Connection established\r\n\r\n", "CONNECT", 200),
    ],
)
def test_exchange_answers_without_a_body(data, method, status):
    events, body, got_status, _, _ = exchange_all_ways(data, method=method)
    assert (events, body, got_status) == (["head", "end"], b"", status)


def test_exchange_connection_close_header_and_stray_bytes_forbid_reuse():
    assert exchange_all_ways(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")[4] is False
    assert run_exchange([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1"])[4] is False


@pytest.mark.parametrize(
    "data, error",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", OctoAIConnectionError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", OctoAIConnectionError),
        (b"", OctoAIConnectionError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", OctoAIValidationError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", OctoAIValidationError),
        (b"SSH-2.0-OpenSSH\r\n\r\n", OctoAIValidationError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", OctoAIValidationError),
        ("HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\n".encode("latin-1"), OctoAIValidationError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", OctoAIValidationError),
        (b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n", OctoAIValidationError),
    ],
)
def test_exchange_rejects_bad_or_short_input(data, error):
    with pytest.raises(error):
        run_exchange([data], "GET", eof=True)


def test_exchange_bounds_the_head_and_the_interim_answers():
    with pytest.raises(OctoAIValidationError, match="longer than"):
        run_exchange([b"HTTP/1.1 200 OK\r\n"] + [b"X-Filler: " + b"a" * 1000 + b"\r\n"] * 100)
    with pytest.raises(OctoAIValidationError, match="interim"):
        run_exchange([b"HTTP/1.1 100 Continue\r\n\r\n" * 20])


def test_request_bytes():
    data = octoai_lite._build_request("POST", "/v1/x", "h:1", {"A": "b"}, b"abc")
    assert (
        data == b"POST /v1/x HTTP/1.1\r\nHost: h:1\r\nA: b\r\nContent-Length: 3\r\n\r\nabc"
    )


def test_header_injection_is_refused():
    with pytest.raises(ValueError):
        octoai_lite._check_headers({"A": "b\r\nEvil: 1"})
    with pytest.raises(ValueError):
        octoai_lite._check_headers({"X-A: forged": "v"})


# =============================================================================
# 3. Data types
# =============================================================================


def test_text_model_has_the_original_models_and_the_guides_alias():
    assert TextModel.LLAMA2_70B is TextModel.LLAMA_2_70B_CHAT
    assert octoai_lite.get_model_list() == [
        "llama-2-13b-chat",
        "llama-2-70b-chat",
        "codellama-7b-instruct",
        "codellama-13b-instruct",
        "codellama-34b-instruct",
        "codellama-70b-instruct",
        "mistral-7b-instruct",
        "mixtral-8x7b-instruct",
    ]
    assert str(TextModel.MISTRAL_7B_INSTRUCT) == "mistral-7b-instruct"


def test_dict_keeps_every_field_and_adds_the_seeds():
    raw = completion_body()
    raw["choices"][0]["logprobs"] = {"content": [{"token": "F", "logprob": -0.1}]}
    raw["choices"][0]["message"]["reasoning_content"] = "hmm"
    raw["choices"][0]["message"]["tool_calls"] = [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}, "extra": 1}
    ]
    raw["prompt_logprobs"] = None
    completion = ChatCompletion.from_dict(raw)
    out = completion.dict()
    assert out["system_fingerprint"] is None and out["choices"][0]["delta"] is None
    assert out["choices"][0]["message"]["function_call"] is None
    assert out["choices"][0]["logprobs"] == raw["choices"][0]["logprobs"]
    assert out["choices"][0]["message"]["tool_calls"][0]["extra"] == 1
    assert "prompt_logprobs" in out
    assert completion.choices[0].message.reasoning_content == "hmm"
    assert completion.choices[0].logprobs["content"][0]["token"] == "F"
    assert completion.model_dump() == completion.to_dict() == json.loads(completion.json())
    with pytest.raises(AttributeError):
        completion.no_such_field  # noqa: B018


# =============================================================================
# 6. Client over a real loopback server
# =============================================================================


SEED_PLAIN = """
import json

{import_line}

client = Client()
completion = client.chat.completions.create(
    model=TextModel.LLAMA_2_70B_CHAT,
    messages=[
        {{
            "role": "system",
            "content": "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        }},
        {{"role": "user", "content": "Write a blog about Seattle"}},
    ],
    max_tokens=150,
)

print(json.dumps(completion.dict(), indent=2))
"""

SEED_STREAM = """
{import_line}

client = Client()
for completion in client.chat.completions.create(
    model=TextModel.LLAMA_2_70B_CHAT,
    messages=[
        {{
            "role": "system",
            "content": "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        }},
        {{"role": "user", "content": "Write a blog about Seattle"}},
    ],
    max_tokens=150,
    stream=True,
):
  print(completion.choices[0].delta.content, end='', flush=True)
"""


def run_snippet(code, server, **env):
    environ = {"OCTOAI_BASE_URL": server.url + "/v1", "OCTOAI_TOKEN": TOKEN, "PYTHONPATH": str(ROOT), **env}
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OCTOAI_", "HTTP", "http"))}
    full_env.update(environ)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=full_env, check=False
    )


@pytest.mark.parametrize(
    "import_line",
    [
        "from octoai_lite import TextModel, Client",
        "import octoai_lite as octoai\nTextModel = octoai.chat.TextModel\nClient = octoai.client.Client",
    ],
)
def test_seed_plain_snippet_prints_the_seed_shape(server, import_line):
    result = run_snippet(SEED_PLAIN.format(import_line=import_line), server)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert list(printed) == ["id", "choices", "created", "model", "object", "system_fingerprint", "usage"]
    assert list(printed["choices"][0]) == ["index", "message", "delta", "finish_reason"]
    assert list(printed["choices"][0]["message"]) == ["role", "content", "function_call"]
    assert list(printed["usage"]) == ["completion_tokens", "prompt_tokens", "total_tokens"]
    assert printed["choices"][0]["message"]["content"] == SEED_TEXT
    request = server.requests[-1]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.json() == {
        "model": "llama-2-70b-chat",
        "messages": request.json()["messages"],
        "max_tokens": 150,
    }


def test_seed_stream_snippet_prints_text_piece_by_piece(server):
    words = ["Seattle", " is", " a", " city", "."]
    events = [sse_event(chunk(w)) for w in words] + [b"data: [DONE]\n\n"]
    server.script.append(stream(events))
    result = run_snippet(SEED_STREAM.format(import_line="from octoai_lite import TextModel, Client"), server)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Seattle is a city."
    assert server.requests[-1].json()["stream"] is True


def test_seed_model_list_snippet(server):
    result = run_snippet("import octoai_lite as octoai\nprint(octoai.chat.get_model_list())", server)
    assert result.returncode == 0 and "llama-2-70b-chat" in result.stdout


def test_token_sources_argument_env_config(server, make_client, monkeypatch, tmp_path):
    config = tmp_path / ".octoai" / "config.yaml"
    config.parent.mkdir()
    config.write_text("# my config\ntoken: 'from-config-file'\n")
    make_client().models.list()
    assert server.requests[-1].headers["authorization"] == "Bearer from-config-file"
    other = tmp_path / "other.yaml"
    other.write_text("token: from-config-path\n")
    make_client(config_path=str(other)).models.list()
    assert server.requests[-1].headers["authorization"] == "Bearer from-config-path"
    monkeypatch.setenv("OCTOAI_TOKEN", "from-env")
    make_client().models.list()
    assert server.requests[-1].headers["authorization"] == "Bearer from-env"
    make_client(token="from-arg").models.list()
    assert server.requests[-1].headers["authorization"] == "Bearer from-arg"
    make_client(api_key="from-api-key").models.list()
    assert server.requests[-1].headers["authorization"] == "Bearer from-api-key"
    with pytest.raises(ValueError):
        Client(token="a", api_key="b")


def test_no_token_sends_no_authorization_and_401_says_how_to_set_it(server, make_client):
    server.script.append(reply(401, {"error": {"message": "missing key"}}))
    with pytest.raises(AuthenticationError, match="missing key.*OCTOAI_TOKEN") as info:
        make_client().chat.completions.create(model="m", messages=[])
    assert "authorization" not in server.requests[-1].headers
    assert info.value.status_code == 401


def test_base_url_sources(server, monkeypatch):
    assert Client().base_url == "https://text.octoai.run/v1"
    assert Client(secure_link=True).base_url == "https://text.securelink.octo.ai/v1"
    monkeypatch.setenv("OCTOAI_BASE_URL", server.url + "/v1/")
    assert Client().base_url == server.url + "/v1"
    assert Client(base_url="http://127.0.0.9:1/v1").base_url == "http://127.0.0.9:1/v1"


def test_create_sends_only_what_was_set_and_passes_everything_else(server, make_client):
    client = make_client()
    client.chat.completions.create(
        model="my-model",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0,
        stop=["\n"],
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="auto",
        seed=7,
        n=1,
        logprobs=True,
        repetition_penalty=1.2,
        top_p=None,
    )
    assert server.requests[-1].json() == {
        "model": "my-model",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "stop": ["\n"],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "seed": 7,
        "n": 1,
        "logprobs": True,
        "repetition_penalty": 1.2,
    }
    assert server.requests[-1].path == "/v1/chat/completions"


def test_response_objects_round_trip_and_messages_can_be_sent_back(server, make_client):
    client = make_client()
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == SEED_TEXT
    assert completion.usage.prompt_tokens == 571
    client.chat.completions.create(model="m", messages=[completion.choices[0].message])
    assert server.requests[-1].json()["messages"][0]["content"] == SEED_TEXT


def test_not_a_chat_completion_raises_validation_error(server, flavor):
    server.script.append(reply(200, {"result": "hello"}))
    with pytest.raises(OctoAIValidationError, match="keys: result"):
        flavor.chat(flavor.make())
    server.script.append(reply(200, b"<html>hi</html>", content_type="text/html"))
    with pytest.raises(OctoAIValidationError, match="not JSON"):
        flavor.chat(flavor.make())


def test_error_object_with_status_200_raises_typed_error(server, flavor):
    server.script.append(reply(200, {"error": {"message": "context too long", "code": 400}}))
    with pytest.raises(BadRequestError, match="context too long"):
        flavor.chat(flavor.make())


def test_models_list(server, flavor):
    assert flavor.models(flavor.make()) == ["llama-2-70b-chat", "tiny"]
    assert server.requests[-1].method == "GET" and server.requests[-1].path == "/v1/models"


def test_404_without_version_segment_hints_at_v1(server, flavor):
    server.script.append(reply(404, "Not Found", content_type="text/plain"))
    with pytest.raises(NotFoundError, match="lack '/v1'"):
        flavor.models(flavor.make(base_url=server.url + "/api"))
    server.script.append(reply(404, {"error": {"message": "model not found"}}))
    with pytest.raises(NotFoundError) as info:
        flavor.models(flavor.make())
    assert "/v1" not in str(info.value).split("not found")[-1]


def test_html_502_error_is_readable(server, flavor):
    page = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
    server.script.append(reply(502, page, content_type="text/html", headers={"X-User-Request-ID": "u-1"}))
    with pytest.raises(OctoAIServerError, match=r"502 Bad Gateway: 502 Bad Gateway nginx \[request id: u-1\]") as info:
        flavor.models(flavor.make())
    assert info.value.request_id == "u-1" and info.value.status_code == 502


def test_connection_refused_is_a_connection_error():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Client(base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=2)
    with pytest.raises(OctoAIConnectionError, match="connecting to 127.0.0.1"):
        client.models.list()


# -- streaming over the socket ---------------------------------------------------------


def test_stream_yields_chunks_and_folds(server, flavor):
    pieces = []
    final = flavor.collect(flavor.make(), pieces)
    assert "".join(p for p in pieces if p) == "".join(WORDS)
    assert final.choices[0].message.content == "".join(WORDS)
    assert final.choices[0].finish_reason == "stop"
    assert server.requests[-1].headers["accept"] == "text/event-stream"


def test_each_chunk_arrives_before_the_next_is_sent(server, make_client):
    sent = []
    gate = threading.Event()
    words = ["a", "b", "c"]
    events = [sse_event(chunk(w)) for w in words] + [b"data: [DONE]\n\n"]

    def before_send(number):
        if number:
            assert gate.wait(2)  # event k+1 waits until the client has event k
            gate.clear()
        sent.append(number)

    server.script.append(stream(events, before_send=before_send))
    received = []
    for c in make_client().chat.completions.create(model="m", messages=[], stream=True):
        received.append((c.choices[0].delta.content, list(sent)))
        gate.set()
    assert received == [("a", [0]), ("b", [0, 1]), ("c", [0, 1, 2])]


@pytest.mark.parametrize(
    "events",
    [
        # vLLM: role chunk, content, finish chunk with empty content, usage chunk with no choices.
        [
            sse_event(chunk("", role="assistant")),
            sse_event(chunk("hi")),
            sse_event(chunk("", finish_reason="stop")),
            sse_event({"id": "x", "choices": [], "usage": {"total_tokens": 3}}),
            b"data: [DONE]\n\n",
        ],
        # llama.cpp: pings, then [DONE] with no blank line after it.
        [b": ping - 2024-01-01\n\n", sse_event(chunk("hi")), sse_event(chunk(finish_reason="stop")), b"data: [DONE]\n"],
        # Ollama: CRLF framing... and no [DONE] at all before a clean end.
        [
            sse_event(chunk("hi")).replace(b"\n", b"\r\n"),
            sse_event(chunk(finish_reason="stop")).replace(b"\n", b"\r\n"),
        ],
        # event: lines naming ordinary events.
        [sse_event(chunk("hi"), event="message"), b"data: [DONE]\n\n"],
    ],
    ids=["vllm", "llama.cpp", "ollama-crlf-no-done", "event-lines"],
)
def test_real_server_framings(server, flavor, events):
    server.script.append(stream(events))
    final = flavor.collect(flavor.make(), [])
    assert final.choices[0].message.content == "hi"


def test_error_event_mid_stream_raises_typed_error(server, flavor):
    events = [sse_event(chunk("a")), sse_event({"error": {"message": "overloaded", "code": 503}}, event="error")]
    server.script.append(stream(events))
    got = []
    with pytest.raises(OctoAIServerError, match="overloaded"):
        flavor.collect(flavor.make(), got)
    assert got == ["a"]
    server.script.append(stream([b"event: error\ndata: model overloaded, try later\n\n"]))
    with pytest.raises(OctoAIServerError, match="model overloaded, try later"):
        flavor.collect(flavor.make(), [])
    server.script.append(stream([sse_event({"error": {"message": "bad prompt", "code": 400}})]))
    with pytest.raises(BadRequestError, match="bad prompt"):
        flavor.collect(flavor.make(), [])


def test_http_error_before_stream_raises_on_create(server, flavor):
    server.script.append(reply(400, {"error": {"message": "max_tokens too large"}}))
    with pytest.raises(BadRequestError, match="max_tokens too large"):
        flavor.chat(flavor.make(), stream=True)


def test_plain_json_answer_to_a_stream_request_is_a_clear_error(server, flavor):
    server.script.append(reply(200, completion_body()))
    with pytest.raises(OctoAIValidationError, match="one JSON body instead of an event stream"):
        flavor.collect(flavor.make(), [])
    server.script.append(reply(200, {"error": {"message": "no streaming here"}}))
    with pytest.raises(OctoAIServerError, match="no streaming here"):
        flavor.collect(flavor.make(), [])


def test_stream_that_ends_before_any_chunk_is_an_error(server, flavor):
    server.script.append(stream([]))
    with pytest.raises(OctoAIValidationError, match="before any event"):
        flavor.collect(flavor.make(), [])


def test_stream_truncated_chunked_body_is_a_connection_error(server, flavor):
    server.script.append(stream([sse_event(chunk("a")), sse_event(chunk("b"))], cut=True))
    got = []
    with pytest.raises(OctoAIConnectionError):
        flavor.collect(flavor.make(), got)
    assert got == ["a", "b"]


def test_cut_after_done_raises_nothing(server, flavor):
    server.script.append(stream([sse_event(chunk("a")), b"data: [DONE]\n\n"], cut=True))
    client = flavor.make()
    final = flavor.collect(client, [])
    assert final.choices[0].message.content == "a"
    flavor.models(client)  # the cut connection was not reused
    assert server.requests[-1].port != server.requests[-2].port


def test_closing_a_stream_early_ends_the_response(server, make_client):
    events = [sse_event(chunk(str(i))) for i in range(200)]
    server.script.append(stream(events, delay=0.01))
    client = make_client()
    with client.chat.completions.create(model="m", messages=[], stream=True) as chat_stream:
        assert next(chat_stream).choices[0].delta.content == "0"
    assert server.client_gone.wait(5), "the server should see the connection closed"
    client.models.list()
    assert server.requests[-1].port != server.requests[-2].port  # not reused


def test_get_final_completion_reads_the_rest_after_partial_iteration(server, make_client):
    chat_stream = make_client().chat.completions.create(model="m", messages=[], stream=True)
    next(chat_stream)
    next(chat_stream)
    assert chat_stream.get_final_completion().choices[0].message.content == "".join(WORDS)
    assert chat_stream.request_id is None and chat_stream.response_headers["content-type"] == "text/event-stream"


def test_infer_stream_uses_the_same_reader(server, flavor):
    server.script.append(stream([b": ping\n\n", sse_event({"n": 1}), sse_event({"n": 2}), b"data: [DONE]\n\n"]))
    client = flavor.make()
    assert flavor.infer_stream(client, server.url + "/gen", {"p": 1}, map_fn=lambda d: d["n"] * 10) == [10, 20]
    assert server.requests[-1].headers["accept"] == "text/event-stream"
    server.script.append(stream([sse_event({"n": 1})], cut=True))
    with pytest.raises(OctoAIConnectionError):
        flavor.infer_stream(client, server.url + "/gen", {})


def test_oversized_line_over_the_socket_raises_with_bounded_memory(server, flavor):
    import tracemalloc

    big = [b"data: " + b"x" * (1024 * 1024) for _ in range(20)]  # 20 MiB with no line end
    server.script.append(stream(big))
    tracemalloc.start()
    try:
        with pytest.raises(OctoAIValidationError, match="longer than"):
            flavor.collect(flavor.make(), [])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 1024 * 1024, peak


# -- generic inference API ---------------------------------------------------------


def test_infer_posts_json_and_returns_json(server, flavor):
    assert flavor.infer(flavor.make(), server.url + "/echo", {"prompt": "hi"})["body"] == '{"prompt": "hi"}'


def test_async_inference_futures(server, flavor):
    base = server.url
    server.script += [
        reply(202, {"response_id": "r1", "poll_url": base + "/poll/r1"}),
        reply(200, {"status": "pending"}),
        reply(200, {"status": "pending"}),
        reply(200, {"status": "completed", "response_url": base + "/result/r1"}),
        reply(200, {"status": "completed", "response_url": base + "/result/r1"}),
        reply(200, {"answer": 42}),
    ]
    client = flavor.make()
    future = flavor.call(client, "infer_async", base + "/infer", {"x": 1})
    assert future.response_id == "r1" and server.requests[0].headers["x-octoai-async"] == "1"
    assert flavor.call(client, "is_future_ready", future) is False
    assert flavor.call(client, "get_future_result", future) is None
    assert flavor.call(client, "is_future_ready", future) is True
    assert flavor.call(client, "get_future_result", future) == {"answer": 42}
    assert [r.path for r in server.requests[1:]] == ["/poll/r1"] * 4 + ["/result/r1"]


def test_health_check(server, flavor):
    server.script += [reply(503, "starting"), reply(502, "starting"), reply(200, "ok")]
    assert flavor.call(flavor.make(), "health_check", server.url + "/health", timeout=5, interval=0.01) == 200
    assert len(server.requests) == 3
    server.script += [reply(403, {"detail": "forbidden"})]
    with pytest.raises(PermissionDeniedError):
        flavor.call(flavor.make(), "health_check", server.url + "/health", timeout=5, interval=0.01)
    server.script += [reply(503, "starting")] * 50
    assert flavor.call(flavor.make(), "health_check", server.url + "/health", timeout=0.2, interval=0.05) == 503


# =============================================================================
# 7. Command line
# =============================================================================


def test_cli_streams_the_answer(server):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTOAI_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "octoai_lite.py"), "--base-url", server.url + "/v1", "Say", "hi"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(WORDS) + "\n"
    assert server.requests[-1].json()["messages"] == [{"role": "user", "content": "Say hi"}]


# =============================================================================
# Contract and hygiene
# =============================================================================


def test_all_is_exactly_the_public_surface():
    import ast

    assert octoai_lite.__all__ == sorted(octoai_lite.__all__)
    for name in octoai_lite.__all__:
        assert hasattr(octoai_lite, name), name
    defined = set()
    for node in ast.parse((ROOT / "octoai_lite.py").read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(target.id for target in node.targets if isinstance(target, ast.Name))
    public = {name for name in defined if not name.startswith("_")}
    # The original SDK's namespaces are public but not star-exported; TYPE_CHECKING is the typing idiom.
    assert public - {"chat", "client", "TYPE_CHECKING"} == set(octoai_lite.__all__)
    assert octoai_lite.log.name == "octoai_lite"


def test_import_has_no_side_effects(tmp_path):
    code = textwrap.dedent(
        """
        import os, sys, threading
        before = set(os.listdir('.'))
        import octoai_lite
        assert threading.active_count() == 1, threading.enumerate()
        assert set(os.listdir('.')) == before
        for heavy in ('asyncio', 'argparse', 'logging', 'typing', 'http.client', 'urllib.request', 'email.parser'):
            assert heavy not in sys.modules, heavy
        print('ok')
        """
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],  # -S: no site hooks that import modules of their own
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_help_of_client_names_the_chat_and_models_api():
    import pydoc

    text = pydoc.render_doc(octoai_lite.Client)
    assert "client.chat.completions.create(" in text and "client.models.list()" in text


def test_a_name_that_does_not_resolve_says_to_set_base_url():
    import socket

    error = octoai_lite._translate_error(socket.gaierror(-2, "Name or service not known"), "connect", "text.octoai.run:443")
    assert isinstance(error, octoai_lite.OctoAIConnectionError) and error.request_sent is False
    assert "base_url" in str(error) and "OCTOAI_BASE_URL" in str(error)


def test_token_never_in_repr_errors_or_logs(server, flavor, caplog):
    caplog.set_level(logging.DEBUG, logger="octoai_lite")
    client = flavor.make(token=TOKEN, max_retries=1)
    assert TOKEN not in repr(client)
    server.script += [
        reply(503, {"error": {"message": f"upstream rejected {TOKEN}"}}, headers={"Retry-After": "0"}),
        reply(401, {"error": {"message": f"invalid key {TOKEN}"}}),
    ]
    with pytest.raises(AuthenticationError) as info:
        flavor.chat(client, extra_query={"k": TOKEN})
    text = str(info.value) + repr(info.value) + repr(info.value.body) + caplog.text
    assert "retrying POST" in caplog.text and " -> 503 in " in caplog.text
    assert TOKEN not in text


def test_octoai_log_env_turns_on_request_logging(server):
    code = "import octoai_lite as o; o.Client(base_url='%s/v1', token='%s').models.list()" % (server.url, TOKEN)
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTOAI_")}
    env.update({"OCTOAI_LOG": "debug", "PYTHONPATH": str(ROOT)})
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "GET http://127.0.0.1" in result.stderr and "-> 200" in result.stderr
    assert TOKEN not in result.stderr


def test_stream_dropped_without_closing_leaks_no_socket(server, make_client):
    import gc
    import warnings

    client = make_client()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        chat_stream = client.chat.completions.create(model="m", messages=[], stream=True)
        next(chat_stream)
        del chat_stream
        gc.collect()
        unstarted = client.chat.completions.create(model="m", messages=[], stream=True)
        del unstarted
        gc.collect()
    assert client._transport.pool.open_count() == 0


def test_module_has_no_forbidden_imports():
    tree = __import__("ast").parse((ROOT / "octoai_lite.py").read_text())
    import ast

    for node in ast.walk(tree):  # what only type checkers read is not imported at run time
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    stdlib = getattr(sys, "stdlib_module_names", None)
    if stdlib:
        assert names - set(stdlib) - {"__future__"} == set()
