"""What today's servers send and today's users ask for, over loopback: reasoning under both names,
Groq's usage, `text_stream`, response metadata (headers, request id, rate limits), embeddings, and
the legacy /completions endpoint; both clients. And folding stays linear in what arrives.
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import inspect
import json
import struct
import time

import pytest

import octoai_lite
from conftest import MESSAGES, WORDS, chunk, completion_body, reply, sse_event
from conftest import stream as serve_stream
from octoai_lite import (
    ChatCompletion,
    ChatMessage,
    Completion,
    CompletionStream,
    CreateEmbeddingResponse,
    NotFoundError,
    OctoAIServerError,
    OctoAIValidationError,
    RateLimits,
)

DONE = b"data: [DONE]\n\n"


def run(flavor, value):
    """The value of a call: awaited for the async flavour."""
    return flavor.run(value) if flavor.name == "async" else value


def drain(flavor, created, texts=False):
    """(chunks or text_stream's pieces, get_final_completion()) of a stream (or the awaitable of one)."""
    if flavor.name == "sync":
        with created as answer:
            return list(answer.text_stream if texts else answer), answer.get_final_completion()

    async def go():
        answer = await created if inspect.isawaitable(created) else created
        async with answer:
            items = [item async for item in (answer.text_stream if texts else answer)]
            return items, await answer.get_final_completion()

    return flavor.run(go())


def chat_stream(client, **kwargs):
    return client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **kwargs)


# -- 1. reasoning, under both names, and Groq's usage ----------------------------------


def test_reasoning_under_both_names_folds_from_many_fragments_per_choice(server, flavor):
    pieces = ["Let ", "me ", "think", " about", " it."]
    events = [sse_event(chunk("", role="assistant")), sse_event(chunk("", role="assistant", index=1))]
    for piece in pieces:
        events.append(sse_event(chunk(reasoning=piece)))  # vLLM >= 0.17, OpenRouter, Groq
        events.append(sse_event(chunk(index=1, reasoning_content=piece.upper())))  # DeepSeek
    events += [sse_event(chunk("Yes.")), sse_event(chunk("No.", index=1)), sse_event(chunk(finish_reason="stop")), DONE]
    server.script.append(serve_stream(events))
    chunks, final = drain(flavor, chat_stream(flavor.make()))
    first, second = final.choices[0].message, final.choices[1].message
    assert (first.reasoning, first.reasoning_content, first.content) == ("Let me think about it.", None, "Yes.")
    assert (second.reasoning, second.reasoning_content) == (None, "LET ME THINK ABOUT IT.")
    assert first.reasoning_text == "Let me think about it." and second.reasoning_text == "LET ME THINK ABOUT IT."
    assert chunks[2].choices[0].delta.reasoning == "Let " and chunks[3].choices[0].delta.reasoning_content == "LET "
    assert ChatCompletion.from_chunks(chunks) == final == ChatCompletion.from_chunks([c.dict() for c in chunks])

    # Sent back, as a dict or as the object, each message keeps the name its server used.
    server.script.append(reply())
    run(flavor, flavor.make().chat.completions.create(model="m", messages=[*MESSAGES, first.dict(), second]))
    sent = server.requests[-1].json()["messages"]
    assert sent[1]["reasoning"] == "Let me think about it." and "reasoning_content" not in sent[1]
    assert sent[2]["reasoning_content"] == "LET ME THINK ABOUT IT." and "reasoning" not in sent[2]


def test_reasoning_on_a_plain_completion_and_a_message_made_by_hand(server, flavor):
    body = completion_body("42")
    body["choices"][0]["message"]["reasoning"] = "Six times seven."
    server.script.append(reply(body=body))
    message = flavor.chat(flavor.make()).choices[0].message
    assert message.reasoning == message.reasoning_text == "Six times seven." and message.reasoning_content is None
    made = ChatMessage(role="assistant", content="42", reasoning_content="hmm")
    assert made.reasoning_text == "hmm" and made.dict()["reasoning_content"] == "hmm" and "reasoning" not in made.dict()
    assert ChatMessage(content="x").reasoning_text is None


def test_usage_in_x_groq_is_folded_when_the_top_level_one_is_absent(server, flavor):
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    last = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "x_groq": {"id": "req_1", "usage": usage}}
    events = [sse_event(dict(chunk("Hi"), x_groq={"id": "req_1"})), sse_event(chunk(finish_reason="stop"))]
    server.script.append(serve_stream([*events, sse_event(last), DONE]))
    chunks, final = drain(flavor, chat_stream(flavor.make()))
    assert final.usage is not None and final.usage.total_tokens == 7 and final.usage.prompt_tokens == 5
    assert chunks[-1].usage == final.usage  # the chunk itself says so too
    assert final.choices[0].message.content == "Hi" and final.choices[0].finish_reason == "stop"

    groq = completion_body()
    groq["x_groq"] = {"id": "req_2", "usage": usage}
    del groq["usage"]
    server.script.append(reply(body=groq))
    answer = flavor.chat(flavor.make())
    assert answer.usage is not None and answer.usage.completion_tokens == 2
    assert answer.dict()["x_groq"] == {"id": "req_2", "usage": usage}


# -- 2. text_stream ---------------------------------------------------------------------


def test_text_stream_gives_only_the_text_of_choice_0_and_the_stream_still_folds(server, flavor):
    usage = {"completion_tokens": 6, "prompt_tokens": 9, "total_tokens": 15}
    events = [
        sse_event(chunk("", role="assistant")),  # role only
        sse_event(chunk(None)),  # no content at all
        sse_event(chunk("")),
        *[sse_event(chunk(word)) for word in WORDS[:3]],
        sse_event(chunk("other", index=1)),  # another choice's text
        *[sse_event(chunk(word)) for word in WORDS[3:]],
        sse_event(chunk(finish_reason="stop")),
        sse_event(dict(chunk(), choices=[], usage=usage)),  # include_usage: no choices
        DONE,
    ]
    server.script.append(serve_stream(events))
    texts, final = drain(flavor, chat_stream(flavor.make(), stream_options={"include_usage": True}), texts=True)
    assert texts == WORDS
    assert final.choices[0].message.content == "".join(WORDS) and final.choices[1].message.content == "other"
    assert final.usage is not None and final.usage.total_tokens == 15 and final.choices[0].finish_reason == "stop"


def test_text_stream_raises_the_servers_error(server, flavor):
    error = sse_event({"error": {"message": "overloaded", "code": 503}})
    server.script.append(serve_stream([sse_event(chunk("Hi")), error]))
    with pytest.raises(OctoAIServerError, match="overloaded"):
        drain(flavor, chat_stream(flavor.make()), texts=True)


# -- 3. response metadata ---------------------------------------------------------------

RATE_HEADERS = {
    "x-request-id": "req-42",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-limit-tokens": "200000",
    "x-ratelimit-remaining-tokens": "199000",
    "x-ratelimit-reset-requests": "6m0s",
    "x-ratelimit-reset-tokens": "20ms",
}
EXPECTED_LIMITS = RateLimits(9999, 10000, 199000, 200000, 360.0, 0.02)


def check_metadata(result):
    assert result.headers["x-ratelimit-limit-tokens"] == "200000" and result.request_id == "req-42"
    assert result.rate_limits == EXPECTED_LIMITS
    for text in (repr(result), json.dumps(result.dict()), json.dumps(dataclasses.asdict(result))):
        assert "req-42" not in text and "ratelimit" not in text
    assert result == type(result).from_dict(result.dict())  # no part of ==


def test_headers_request_id_and_rate_limits_on_a_plain_completion(server, flavor):
    server.script.append(reply(headers=RATE_HEADERS))
    completion = flavor.chat(flavor.make())
    check_metadata(completion)
    assert completion.choices[0].message.content  # the answer as ever
    assert ChatCompletion().headers == {} and ChatCompletion().request_id is None
    assert ChatCompletion().rate_limits == RateLimits()


def test_streams_have_rate_limits_too(server, flavor):
    server.script.append(serve_stream(headers=RATE_HEADERS))
    answer = run(flavor, chat_stream(flavor.make()))
    assert answer.rate_limits == EXPECTED_LIMITS and answer.request_id == "req-42"
    assert answer.headers is answer.response_headers
    drain(flavor, answer)  # read to its end, which frees the connection


@pytest.mark.parametrize(
    "text, seconds",
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("0.5", 0.5), ("1h2m3.5s", 3723.5), ("7", 7.0), ("150us", 0.00015),
     (" 2s ", 2.0), ("", None), ("soon", None), ("1s2", None), ("2s-", None), ("-1s", None), ("1.5.5s", None)],
)  # fmt: skip
def test_rate_limit_resets_are_read_as_seconds(text, seconds):
    limits = RateLimits.from_headers({"x-ratelimit-reset-tokens": text, "x-ratelimit-remaining-tokens": "٣"})
    assert limits.reset_tokens_s == (None if seconds is None else pytest.approx(seconds))
    assert limits.remaining_tokens is None and limits.reset_requests_s is None  # a non-ASCII digit is no count


# -- 4. embeddings ----------------------------------------------------------------------


def embeddings_body(vectors, encode=False):
    data = [
        {"object": "embedding", "index": i, "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
         if encode else v}
        for i, v in enumerate(vectors)
    ]  # fmt: skip
    return {"object": "list", "data": data, "model": "e5", "usage": {"prompt_tokens": 4, "total_tokens": 4}}


def test_embeddings_of_floats(server, flavor):
    server.script.append(reply(body=embeddings_body([[0.25, -1.0, 3], [0.5, 0.0, 1e-3]]), headers=RATE_HEADERS))
    client = flavor.make()
    answer = run(flavor, client.embeddings.create(model="e5", input=["a", "b"], dimensions=3, user="u1"))
    request = server.requests[-1]
    assert request.path == "/v1/embeddings" and request.method == "POST"
    assert request.json() == {"model": "e5", "input": ["a", "b"], "dimensions": 3, "encoding_format": "float", "user": "u1"}
    assert isinstance(answer, CreateEmbeddingResponse)
    assert [item.embedding for item in answer.data] == [[0.25, -1.0, 3], [0.5, 0.0, 1e-3]]
    assert [item.index for item in answer.data] == [0, 1] and answer.model == "e5"
    assert answer.usage is not None and answer.usage.prompt_tokens == 4
    assert answer.dict()["data"][1]["embedding"] == [0.5, 0.0, 1e-3]
    check_metadata(answer)


def test_embeddings_in_base64_are_decoded_to_floats(server, flavor):
    vector = [0.125, -2.5, 1024.0, 3.0e-5]
    server.script.append(reply(body=embeddings_body([vector], encode=True)))
    answer = run(flavor, flavor.make().embeddings.create(model="e5", input="one text", encoding_format="base64"))
    assert server.requests[-1].json()["encoding_format"] == "base64" and server.requests[-1].json()["input"] == "one text"
    assert answer.data[0].embedding == [struct.unpack("<f", struct.pack("<f", x))[0] for x in vector]
    assert all(type(x) is float for x in answer.data[0].embedding)
    assert answer.dict()["data"][0]["embedding"] == answer.data[0].embedding  # floats in dict() too


def test_embeddings_failures_are_typed(server, flavor):
    client = flavor.make()
    server.script.append(reply(body={"object": "list", "data": [{"embedding": "not base64!", "index": 0}]}))
    with pytest.raises(OctoAIValidationError, match="not base64"):
        run(flavor, client.embeddings.create(model="e5", input="x"))
    server.script.append(reply(body={"object": "list", "model": "e5"}))
    with pytest.raises(OctoAIValidationError, match="'data' list"):
        run(flavor, client.embeddings.create(model="e5", input="x"))
    server.script.append(reply(404, {"error": {"message": "no embeddings here"}}))
    with pytest.raises(NotFoundError, match="no embeddings here"):
        run(flavor, client.embeddings.create(model="e5", input="x"))
    with pytest.raises(TypeError, match="does not stream"):
        run(flavor, client.embeddings.create(model="e5", input="x", stream=True))


# -- 5. legacy completions ----------------------------------------------------------------


def legacy_body(*texts, **extra):
    choices = [{"index": i, "text": t, "finish_reason": "length", "logprobs": None} for i, t in enumerate(texts)]
    body = {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m", "choices": choices}
    body.update(usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}, **extra)
    return body


def legacy_chunk(text=None, index=0, finish_reason=None, **extra):
    choice = {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
    return dict({"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m", "choices": [choice]}, **extra)


def test_legacy_completion_plain(server, flavor):
    server.script.append(reply(body=legacy_body("Once upon", " a time"), headers=RATE_HEADERS))
    client = flavor.make()
    answer = run(flavor, client.completions.create(model="m", prompt="Tell", max_tokens=5, temperature=None, echo=True))
    request = server.requests[-1]
    assert request.path == "/v1/completions" and request.json() == {"model": "m", "prompt": "Tell", "max_tokens": 5, "echo": True}
    assert request.headers["accept"] == "application/json"
    assert isinstance(answer, Completion) and [c.text for c in answer.choices] == ["Once upon", " a time"]
    assert answer.choices[1].index == 1 and answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.total_tokens == 8 and answer.object == "text_completion"
    assert answer.dict() == legacy_body("Once upon", " a time", system_fingerprint=None)
    check_metadata(answer)


def test_legacy_completion_streamed_and_folded(server, flavor):
    events = [sse_event(legacy_chunk(""))]
    for word in WORDS:
        events += [sse_event(legacy_chunk(word)), sse_event(legacy_chunk(word.upper(), index=1))]
    events += [sse_event(legacy_chunk("", finish_reason="stop")), sse_event(legacy_chunk(None, 1, "length"))]
    usage = {"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15}
    events += [sse_event(dict(legacy_chunk(), choices=[], usage=usage)), DONE]
    server.script.append(serve_stream(events))
    client = flavor.make()
    chunks, final = drain(flavor, client.completions.create(model="m", prompt=["Hi"], stream=True, max_tokens=9))
    request = server.requests[-1].json()
    assert request == {"model": "m", "prompt": ["Hi"], "stream": True, "max_tokens": 9}
    assert server.requests[-1].headers["accept"] == "text/event-stream"
    assert all(isinstance(c, Completion) for c in chunks) and chunks[1].choices[0].text == WORDS[0]
    assert isinstance(final, Completion) and final.object == "text_completion"
    assert [c.text for c in final.choices] == ["".join(WORDS), "".join(WORDS).upper()]
    assert [c.finish_reason for c in final.choices] == ["stop", "length"]
    assert final.usage is not None and final.usage.total_tokens == 15
    assert Completion.from_chunks(chunks) == final == Completion.from_chunks([c.dict() for c in chunks])
    assert "message" not in final.dict()["choices"][0]

    server.script.append(serve_stream(events))
    texts, again = drain(flavor, client.completions.create(model="m", prompt="Hi", stream=True), texts=True)
    assert texts == WORDS and again == final


def test_legacy_completion_follows_the_rules_of_chat(server, flavor):
    """Retries, typed errors, an error event, JSON answering a stream: the machinery chat uses."""
    client = flavor.make(max_retries=1)
    server.script += [reply(503, {"error": {"message": "busy"}}), reply(body=legacy_body("ok"))]
    assert run(flavor, client.completions.create(model="m", prompt="x")).choices[0].text == "ok"
    assert len(server.requests) == 2
    server.script.append(serve_stream([sse_event(legacy_chunk("a")), sse_event({"error": {"message": "boom"}})]))
    with pytest.raises(OctoAIServerError, match="boom"):
        drain(flavor, client.completions.create(model="m", prompt="x", stream=True))
    server.script.append(reply(body=legacy_body("plain")))
    with pytest.raises(OctoAIValidationError, match="one JSON body"):
        drain(flavor, client.completions.create(model="m", prompt="x", stream=True))
    server.script.append(reply(body={"id": "x", "choices": []}))
    with pytest.raises(OctoAIValidationError, match="the completion has no choices"):
        run(flavor, client.completions.create(model="m", prompt="x"))


def test_a_completion_stream_is_its_own_type(server):
    server.script.append(serve_stream([sse_event(legacy_chunk("a")), DONE]))
    with octoai_lite.Client(base_url=server.url + "/v1", max_retries=0) as client:
        with client.completions.create(model="m", prompt="x", stream=True) as answer:
            assert isinstance(answer, CompletionStream) and not isinstance(answer, octoai_lite.Stream)
            assert answer.get_final_completion().choices[0].text == "a"


# -- folding is linear (issue 18, defect 12) ----------------------------------------------


def index_less_tool_fragments(count):
    """`count` fragments of tool calls without `index`: a new call every 10, an id sometimes repeated."""
    chunks = []
    for number in range(count):
        call = number // 10
        if number % 10 == 0:
            fragment = {"id": f"call_{call}", "type": "function", "function": {"name": "f", "arguments": ""}}
        elif number % 2:
            fragment = {"id": f"call_{call}", "function": {"arguments": '"abcdefghijklmn'}}
        else:
            fragment = {"function": {"arguments": 'nopqrstuvwxyz"'}}
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [fragment]}}]})
    return chunks


def argument_fragments(count):
    """One call whose arguments come in `count` pieces of 16 characters."""
    first = {"index": 0, "id": "call_0", "type": "function", "function": {"name": "f", "arguments": ""}}
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": [first]}}]}]
    piece = {"index": 0, "function": {"arguments": "0123456789abcdef"}}
    return chunks + [{"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]} for _ in range(count - 1)]


def fold_seconds(chunks):
    gc.collect()
    started = time.process_time()
    folded = ChatCompletion.from_chunks(chunks)
    return time.process_time() - started, folded


@pytest.mark.parametrize("make", [index_less_tool_fragments, argument_fragments])
def test_folding_is_linear(make):
    small, large = make(10_000), make(100_000)
    small_s = min(fold_seconds(small)[0] for _ in range(3))
    large_s, folded = fold_seconds(large)
    calls = folded.choices[0].message.tool_calls or []
    if make is argument_fragments:
        assert len(calls) == 1 and calls[0].function.arguments == "0123456789abcdef" * 99_999
    else:
        assert len(calls) == 10_000 and [call.id for call in calls[:2]] == ["call_0", "call_1"]
        assert calls[-1].function.arguments == '"abcdefghijklmnnopqrstuvwxyz"' * 4 + '"abcdefghijklmn'
    # Ten times the fragments: ten times the time, give or take; quadratic growth would be a hundred.
    assert large_s < 0.9, f"100k fragments took {large_s:.2f} s"
    assert large_s < 30 * max(small_s, 0.002), f"10k: {small_s:.3f} s, 100k: {large_s:.3f} s"
