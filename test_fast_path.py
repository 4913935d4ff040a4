"""The fast path for plain chat chunks gives exactly what the lenient path gives.

`_plain_chat_chunk` builds the common chunk shape without the lenient
readers. Hypothesis feeds it chunks well-formed and wrong-shaped alike and
compares it with `ChatCompletion.from_dict` after `_check_completion`: equal
objects, equal `repr`, equal `dict()`, equal folding, and equal errors when
the payload is not a chunk at all. Over a real socket, every streaming test
goes through it; the last test here checks a stream's chunks against the
lenient build of the bytes the server sent.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import octoai_lite
from conftest import MESSAGES, chunk, sse_event, stream
from octoai_lite import ChatCompletion, OctoAIError

# Values of every JSON type, and the types each field should have, so that
# generated chunks are mostly plain (the fast path) and often not.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, width=32), st.text(max_size=4)
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)
text = st.one_of(st.text(max_size=6), st.none())
wrong_or = lambda right: st.one_of(right, right, right, anything)  # noqa: E731

delta_keys = ["role", "content", "reasoning_content", "refusal", "reasoning", "tool_calls", "function_call", "x"]
deltas = st.dictionaries(st.sampled_from(delta_keys), wrong_or(text), max_size=4)
choices = st.fixed_dictionaries(
    {},
    optional={
        "index": wrong_or(st.one_of(st.integers(0, 3), st.none())),
        "delta": wrong_or(deltas),
        "finish_reason": wrong_or(st.one_of(st.none(), st.sampled_from(["stop", "length"]))),
        "logprobs": st.one_of(st.none(), st.none(), anything),
        "message": st.just({"content": "m"}),
        "text": st.text(max_size=3),
    },
)
chunks = st.fixed_dictionaries(
    {"choices": wrong_or(st.lists(wrong_or(choices), max_size=3))},
    optional={
        "id": wrong_or(text),
        "object": wrong_or(st.just("chat.completion.chunk")),
        "created": wrong_or(st.one_of(st.integers(0, 2**40), st.none())),
        "model": wrong_or(text),
        "system_fingerprint": wrong_or(text),
        "usage": st.one_of(st.none(), st.none(), st.just({"total_tokens": 3}), anything),
        "x_groq": st.just({"usage": {"total_tokens": 5}}),
        "error": st.one_of(st.none(), st.just({"message": "bad"})),
        "service_tier": text,
    },
)
# The plain shape itself, every optional key and value a right one: most of what servers send.
plain_choices = st.fixed_dictionaries(
    {},
    optional={
        "index": st.one_of(st.integers(0, 3), st.none()),
        "delta": st.dictionaries(st.sampled_from(delta_keys[:5]), text, max_size=3),
        "finish_reason": st.one_of(st.none(), st.sampled_from(["stop", "length"])),
        "logprobs": st.none(),
    },
)
plain_chunks = st.fixed_dictionaries(
    {"choices": st.lists(plain_choices, max_size=3)},
    optional={
        "id": text,
        "object": st.just("chat.completion.chunk"),
        "created": st.one_of(st.integers(0, 2**40), st.none()),
        "model": text,
        "system_fingerprint": text,
        "usage": st.none(),
    },
)
# The plain keys with a value of another type here and there: where the two paths could part.
near_plain_choices = st.fixed_dictionaries(
    {},
    optional={
        "index": wrong_or(st.one_of(st.integers(0, 3), st.none())),
        "delta": wrong_or(st.dictionaries(st.sampled_from(delta_keys[:5]), wrong_or(text), max_size=3)),
        "finish_reason": wrong_or(st.one_of(st.none(), st.sampled_from(["stop", "length"]))),
        "logprobs": st.one_of(st.none(), st.none(), anything),
    },
)
near_plain_chunks = st.fixed_dictionaries(
    {"choices": wrong_or(st.lists(wrong_or(near_plain_choices), max_size=3))},
    optional={
        "id": wrong_or(text),
        "created": wrong_or(st.one_of(st.integers(0, 2**40), st.none())),
        "model": wrong_or(text),
        "system_fingerprint": wrong_or(text),
        "usage": st.one_of(st.none(), anything),
    },
)


@st.composite
def one_wrong_value(draw):
    """A plain chunk with one value, anywhere in it, replaced by any JSON value, or one more key added."""
    payload = draw(plain_chunks)
    choice = {"index": 0, "delta": {"content": "x"}, "finish_reason": None}
    payload["choices"].append(choice)
    where = draw(st.sampled_from([payload, payload, choice, choice, choice["delta"]]))
    keys = {
        id(payload): _PLAIN_TOP + ["x_groq", "error", "service_tier"],
        id(choice): _PLAIN_CHOICE + ["message", "text", "x"],
        id(choice["delta"]): delta_keys,
    }
    where[draw(st.sampled_from(keys[id(where)]))] = draw(anything)
    return payload


_PLAIN_TOP = ["id", "object", "created", "model", "system_fingerprint", "usage", "choices"]
_PLAIN_CHOICE = ["index", "delta", "finish_reason", "logprobs"]
payloads = st.one_of(plain_chunks, one_wrong_value(), one_wrong_value(), near_plain_chunks, chunks, anything)


FAST_PATH_TAKEN = []


def lenient(payload):
    """The lenient path: check, then build; an error as (type, message)."""
    try:
        return ChatCompletion.from_dict(octoai_lite._check_completion(payload, {}, None, chunk=True))
    except OctoAIError as exc:
        return (type(exc), str(exc))


def converted(payload, folder):
    """What a Stream hands out for `payload` (the fast path where it applies); an error as (type, message)."""
    try:
        return octoai_lite._chunks(ChatCompletion, folder, {}, None)(payload)
    except OctoAIError as exc:
        return (type(exc), str(exc))


def assert_same(fast, slow):
    assert type(fast) is type(slow)
    assert fast == slow
    if isinstance(slow, ChatCompletion):
        assert repr(fast) == repr(slow)
        assert fast.dict() == slow.dict()
        assert fast.json() == slow.json()
        assert [choice.delta.content for choice in fast.choices] == [choice.delta.content for choice in slow.choices]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads)
def test_the_fast_path_builds_what_the_lenient_path_builds(payload):
    built = octoai_lite._plain_chat_chunk(payload) if type(payload) is dict else None
    if built is not None:
        FAST_PATH_TAKEN.append(1)  # then the lenient path accepts the payload too, and builds the same
        assert_same(built, lenient(payload))
    assert_same(converted(payload, octoai_lite._ChunkFolder()), lenient(payload))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(one_wrong_value())
def test_one_value_of_another_type_anywhere_in_a_plain_chunk(payload):
    test_the_fast_path_builds_what_the_lenient_path_builds.hypothesis.inner_test(payload)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(plain_chunks, one_wrong_value(), near_plain_chunks, chunks), min_size=1, max_size=5))
@example(  # a choice first seen in a later plain chunk
    [{"id": "a", "choices": [{"index": 0, "delta": {"content": "x"}}]}]
    + [{"id": "a", "choices": [{"index": 0, "delta": {"content": "y"}}, {"index": 1, "delta": {"role": "assistant"}}]}]
)
def test_a_sequence_folds_the_same_whichever_path_each_chunk_took(sequence):
    folder, reference = octoai_lite._ChunkFolder(), octoai_lite._ChunkFolder()
    for payload in sequence:
        converted(payload, folder)
        if not isinstance(lenient(payload), tuple):
            reference.add(payload)
    assert folder.result() == reference.result()


def test_the_property_tests_took_the_fast_path_often():
    """Runs after the property test (file order): the strategies reach the fast path, not only the fallback."""
    assert len(FAST_PATH_TAKEN) > 40


def test_the_plain_shapes_take_the_fast_path():
    """The shapes servers send most (text, role, reasoning, finish, usage: null) are the fast path's; others not."""
    plain = [
        chunk("Hi"),
        chunk("", role="assistant"),
        {"id": "x", "choices": [{"index": 0, "delta": {"reasoning": "hm"}, "finish_reason": None}], "usage": None},
        {"id": "x", "choices": [{"index": 1, "delta": {"content": None}, "finish_reason": "stop", "logprobs": None}]},
        {"choices": []},
    ]
    for payload in plain:
        assert octoai_lite._plain_chat_chunk(payload) is not None, payload
    other = [
        {"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]},
        {"choices": [], "usage": {"total_tokens": 3}},
        {"choices": [{"delta": {"content": "x"}, "logprobs": {"content": []}}]},
        {"choices": [{"index": True, "delta": {}}]},
        {"choices": [{"delta": {"content": ["part"]}}]},
        {"choices": [], "created": 1.5},
    ]
    for payload in other:
        assert octoai_lite._plain_chat_chunk(payload) is None, payload


def test_a_fast_path_choice_makes_its_empty_message_when_asked():
    """The fast path leaves a chunk's empty `message` out until it is read: then each choice has its own (as the
    lenient path's), made once, and copies and replacements see one too."""
    first, second = (octoai_lite._plain_chat_chunk(chunk(text)) for text in ("a", "b"))
    assert "message" not in vars(first.choices[0])
    assert first.choices[0].message == octoai_lite.ChatMessage() == lenient(chunk("a")).choices[0].message
    first.choices[0].message.content = "changed"
    assert first.choices[0].message.content == "changed"
    assert second.choices[0].message.content is None
    assert copy.deepcopy(second) == second and pickle.loads(pickle.dumps(second)) == second
    assert dataclasses.replace(second.choices[0], index=3).message == octoai_lite.ChatMessage()
    with pytest.raises(AttributeError, match="no attribute 'messages'"):
        getattr(second.choices[0], "messages")  # noqa: B009


def test_a_stream_over_a_socket_hands_out_what_the_lenient_path_builds(server, flavor):
    """Over loopback: plain chunks, a tool call and a usage chunk, each equal to the lenient build of its JSON."""
    sent = [
        chunk("", role="assistant"),
        chunk("Hello"),
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t", "function": {}}]}}]},
        chunk(" world", finish_reason="stop"),
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    ]
    server.script.append(stream([sse_event(item) for item in sent] + [b"data: [DONE]\n\n"]))
    got = drain(flavor, flavor.make(timeout=3))
    assert got == [ChatCompletion.from_dict(item) for item in sent]
    assert [item.dict() for item in got] == [ChatCompletion.from_dict(item).dict() for item in sent]


def drain(flavor, client):
    if flavor.name == "sync":
        with client.chat.completions.create(model="m", messages=MESSAGES, stream=True) as chat_stream:
            return list(chat_stream)

    async def go():
        chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        async with chat_stream:
            return [piece async for piece in chat_stream]

    return flavor.run(go())


json_texts = st.one_of(
    st.text(max_size=12),
    anything.map(json.dumps),
    st.tuples(
        st.sampled_from(["", " ", "\n", "\t", "x", "]", "{}"]),
        anything.map(json.dumps),
        st.sampled_from(["", " ", "\r\n", "x", "1"]),
    ).map("".join),
    st.just("[" * 5000),  # deeper than the recursion limit
)


@settings(max_examples=400, deadline=None)
@given(json_texts)
def test_an_events_json_is_read_as_json_loads_reads_it(text):
    """The scanner used for event data gives json.loads' value, or says the ValueError `_loads` gives."""
    try:
        expected = ("value", octoai_lite._loads(text))
    except ValueError as exc:
        expected = ("error", f"an event's data is not JSON ({exc}): ")
    event = octoai_lite.ServerSentEvent("message", text, None, None)
    try:
        got = ("value", octoai_lite._payload_from_event(event, {}, None))
    except octoai_lite.OctoAIValidationError as exc:
        got = ("error", str(exc)[: len(expected[1])])
    assert got == expected
