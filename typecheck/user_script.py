"""A user's script that touches every public API of octoai_lite, for `mypy --strict`.

It is type-checked, never run (test_types.py). Each `reveal_type(...)` line
ends with `# expect: TYPE`, the type mypy must reveal there, exactly, in the
spelling of mypy 1 (`builtins.str | None`); mypy 2's shorter one (`str | None`)
and `Union[...]`/`Optional[...]` compare equal to it. Values whose exact
type is the module's own business are checked by an annotated assignment
instead: mypy then only asks that they fit.
"""

import asyncio
import dataclasses
import json
from typing import Any, Dict, Iterator, List, Literal, Optional, TypedDict

import octoai_lite
import octoai_lite as octoai
from octoai_lite import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    AsyncClient,
    AsyncCompletionStream,
    AsyncStream,
    AuthenticationError,
    BadRequestError,
    ChatCompletion,
    ChatMessage,
    Choice,
    ChoiceDelta,
    Client,
    Completion,
    CompletionChoice,
    CompletionStream,
    CompletionUsage,
    CreateEmbeddingResponse,
    Embedding,
    FunctionCall,
    InferenceFuture,
    NotFoundError,
    OctoAIClientError,
    OctoAIConnectionError,
    OctoAIError,
    OctoAILengthError,
    OctoAIParseError,
    OctoAIRefusalError,
    OctoAIServerError,
    OctoAITimeoutError,
    OctoAIValidationError,
    ParsedChatCompletion,
    ParsedChatMessage,
    ParsedChoice,
    PermissionDeniedError,
    RateLimitError,
    RateLimits,
    ServerSentEvent,
    SSEDecoder,
    Stream,
    TextModel,
    ToolCall,
    UnprocessableEntityError,
    get_model_list,
    main,
)

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Write a blog about Seattle"},
]
INFER_URL = "http://127.0.0.1:8080/infer"


def migrated_from_octoai_sdk() -> None:
    # The guide's import, changed to this module; the SDK's layout still works.
    names: List[str] = octoai.chat.get_model_list()
    model: TextModel = octoai.chat.TextModel.LLAMA2_70B
    with octoai.client.Client() as client:
        client.chat.completions.create(model=model, messages=MESSAGES)
    print(names, DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT)


def sync_chat(flag: bool) -> None:
    client = Client(
        None,
        None,
        60.0,
        True,
        False,
        base_url="http://127.0.0.1:8080/v1",
        max_retries=1,
        default_headers={"X-Team": "docs", "User-Agent": None},
        deadline=120.0,
        max_connections=10,
        max_idle_connections=4,
    )
    reveal_type(client)  # expect: octoai_lite.Client
    reveal_type(client.with_options(timeout=5.0, max_retries=0, default_headers={"X-A": "1"}, deadline=30.0))  # expect: octoai_lite.Client

    completion = client.chat.completions.create(
        model=TextModel.LLAMA_2_70B_CHAT,
        messages=MESSAGES,
        max_tokens=150,
        temperature=0.7,
        top_p=0.9,
        stop=["\n\n"],
        frequency_penalty=0.0,
        presence_penalty=0.0,
        response_format={"type": "text"},
        extra_headers={"X-Trace": "1"},
        extra_query={"api-version": "1"},
        extra_body={"seed": 7},
        timeout=30.0,
        max_retries=0,
        deadline=60.0,
        seed=7,  # any other keyword passes through
    )
    reveal_type(completion)  # expect: octoai_lite.ChatCompletion
    reveal_type(client.chat.completions.create(model="m", messages=MESSAGES, stream=False))  # expect: octoai_lite.ChatCompletion
    reveal_type(client.chat.completions.create(model="m", messages=MESSAGES, stream=flag))  # expect: octoai_lite.ChatCompletion | octoai_lite.Stream

    # The response types: fields, all typed.
    reveal_type(completion.id)  # expect: builtins.str | None
    reveal_type(completion.choices)  # expect: builtins.list[octoai_lite.Choice]
    reveal_type(completion.created)  # expect: builtins.int | None
    reveal_type(completion.model)  # expect: builtins.str | None
    reveal_type(completion.object)  # expect: builtins.str | None
    reveal_type(completion.system_fingerprint)  # expect: builtins.str | None
    reveal_type(completion.usage)  # expect: octoai_lite.CompletionUsage | None
    choice = completion.choices[0]
    reveal_type(choice.index)  # expect: builtins.int
    reveal_type(choice.message)  # expect: octoai_lite.ChatMessage
    reveal_type(choice.delta)  # expect: octoai_lite.ChoiceDelta
    reveal_type(choice.finish_reason)  # expect: builtins.str | None
    reveal_type(choice.logprobs)  # expect: builtins.dict[builtins.str, Any] | None
    message = choice.message
    reveal_type(message.role)  # expect: builtins.str | None
    reveal_type(completion.choices[0].message.content)  # expect: builtins.str | None
    reveal_type(message.function_call)  # expect: octoai_lite.FunctionCall | None
    reveal_type(message.tool_calls)  # expect: builtins.list[octoai_lite.ToolCall] | None
    reveal_type(message.reasoning_content)  # expect: builtins.str | None
    reveal_type(message.refusal)  # expect: builtins.str | None
    for tool_call in message.tool_calls or []:
        reveal_type(tool_call.id)  # expect: builtins.str | None
        reveal_type(tool_call.type)  # expect: builtins.str | None
        reveal_type(tool_call.index)  # expect: builtins.int | None
        reveal_type(tool_call.function)  # expect: octoai_lite.FunctionCall
        reveal_type(tool_call.function.name)  # expect: builtins.str | None
        reveal_type(tool_call.function.arguments)  # expect: builtins.str | None
        arguments: Any = json.loads(tool_call.function.arguments or "{}")
        print(arguments)
    if completion.usage is not None:
        reveal_type(completion.usage.completion_tokens)  # expect: builtins.int | None
        reveal_type(completion.usage.prompt_tokens)  # expect: builtins.int | None
        reveal_type(completion.usage.total_tokens)  # expect: builtins.int | None

    # Serialising, and the dataclass machinery.
    reveal_type(completion.dict())  # expect: builtins.dict[builtins.str, Any]
    reveal_type(completion.to_dict())  # expect: builtins.dict[builtins.str, Any]
    reveal_type(completion.model_dump())  # expect: builtins.dict[builtins.str, Any]
    reveal_type(completion.json())  # expect: builtins.str
    print(json.dumps(completion.dict(), indent=2))
    reveal_type(ChatCompletion.from_dict(completion.dict()))  # expect: octoai_lite.ChatCompletion
    reveal_type(ChatMessage.from_dict({"role": "user", "content": "Hi"}))  # expect: octoai_lite.ChatMessage
    reveal_type(ChoiceDelta.from_dict({"content": "Hi"}))  # expect: octoai_lite.ChoiceDelta
    reveal_type(dataclasses.replace(completion, id="cmpl-2"))  # expect: octoai_lite.ChatCompletion
    reveal_type(dataclasses.replace(message, content="Edited"))  # expect: octoai_lite.ChatMessage
    assert dataclasses.is_dataclass(completion)
    everything: Dict[str, Any] = dataclasses.asdict(completion)
    names = [field.name for field in dataclasses.fields(Choice)]
    parts = (Choice, ChoiceDelta, CompletionUsage, ToolCall, FunctionCall)
    print(everything, names, [dataclasses.fields(part) for part in parts])
    # A message the model sent can be sent back.
    client.chat.completions.create(model="m", messages=[*MESSAGES, message.dict()], max_tokens=10)

    # Streaming: the guide's loop; a usage-only chunk has no choices.
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    reveal_type(stream)  # expect: octoai_lite.Stream
    chunks: List[ChatCompletion] = []
    for chunk in stream:
        reveal_type(chunk)  # expect: octoai_lite.ChatCompletion
        if chunk.choices:
            reveal_type(chunk.choices[0].delta.content)  # expect: builtins.str
            print(chunk.choices[0].delta.content, end="", flush=True)
            print(len(chunk.choices[0].delta.content))  # a str, no None check needed
        chunks.append(chunk)
    stream.close()
    reveal_type(ChatCompletion.from_chunks(chunks))  # expect: octoai_lite.ChatCompletion
    reveal_type(ChatCompletion.from_chunks([chunk.dict() for chunk in chunks]))  # expect: octoai_lite.ChatCompletion
    with client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as stream:
        reveal_type(stream)  # expect: octoai_lite.Stream
        iterator: Iterator[ChatCompletion] = iter(stream)
        print(next(iterator))
        reveal_type(stream.get_final_completion())  # expect: octoai_lite.ChatCompletion

    reveal_type(client.models.list())  # expect: builtins.list[builtins.str]
    reveal_type(get_model_list())  # expect: builtins.list[builtins.str]
    client.close()


def newer_endpoints(flag: bool) -> None:
    # Embeddings, the legacy /completions, text_stream, reasoning and response metadata.
    client = Client(base_url="http://127.0.0.1:8080/v1")
    embeddings = client.embeddings.create(model="e5", input=["a", "b"], dimensions=256, encoding_format="base64")
    reveal_type(embeddings)  # expect: octoai_lite.CreateEmbeddingResponse
    reveal_type(embeddings.data[0].embedding)  # expect: builtins.list[builtins.float]
    reveal_type(embeddings.data[0].index)  # expect: builtins.int
    reveal_type(client.embeddings.create(model="e5", input="a").usage)  # expect: octoai_lite.CompletionUsage | None
    first: Embedding = embeddings.data[0]
    reveal_type(client.completions.create(model="m", prompt="Once", max_tokens=5))  # expect: octoai_lite.Completion
    legacy = client.completions.create(model="m", prompt=["Once"], stream=True, stop=["\n"], timeout=5.0)
    reveal_type(legacy)  # expect: octoai_lite.CompletionStream
    reveal_type(client.completions.create(model="m", prompt="x", stream=flag))  # expect: octoai_lite.Completion | octoai_lite.CompletionStream
    for piece in legacy:
        reveal_type(piece.choices[0].text)  # expect: builtins.str
    reveal_type(legacy.text_stream)  # expect: typing.Iterator[builtins.str]
    reveal_type(legacy.get_final_completion())  # expect: octoai_lite.Completion
    choice: CompletionChoice = Completion.from_chunks([]).choices[0]
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    for text in stream.text_stream:
        reveal_type(text)  # expect: builtins.str
    message = stream.get_final_completion().choices[0].message
    reveal_type(message.reasoning)  # expect: builtins.str | None
    reveal_type(message.reasoning_text)  # expect: builtins.str | None
    completion = client.chat.completions.create(model="m", messages=MESSAGES)
    reveal_type(completion.headers)  # expect: builtins.dict[builtins.str, builtins.str]
    reveal_type(completion.request_id)  # expect: builtins.str | None
    limits: RateLimits = completion.rate_limits
    reveal_type(limits.remaining_tokens)  # expect: builtins.int | None
    reveal_type(limits.reset_tokens_s)  # expect: builtins.float | None
    reveal_type(stream.rate_limits)  # expect: octoai_lite.RateLimits
    reveal_type(embeddings.rate_limits.remaining_requests)  # expect: builtins.int | None
    print(first, choice, CreateEmbeddingResponse.from_dict({}).data)


async def newer_endpoints_async() -> None:
    async with AsyncClient() as client:
        embeddings = await client.embeddings.create(model="e5", input="a")
        reveal_type(embeddings.data[0].embedding)  # expect: builtins.list[builtins.float]
        reveal_type(await client.completions.create(model="m", prompt="x"))  # expect: octoai_lite.Completion
        legacy = await client.completions.create(model="m", prompt="x", stream=True)
        reveal_type(legacy)  # expect: octoai_lite.AsyncCompletionStream
        async for text in legacy.text_stream:
            reveal_type(text)  # expect: builtins.str
        reveal_type(await legacy.get_final_completion())  # expect: octoai_lite.Completion
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        reveal_type(stream.text_stream)  # expect: typing.AsyncIterator[builtins.str]
        reveal_type(stream.request_id)  # expect: builtins.str | None


def sync_inference() -> None:
    with Client(token="sk-test") as client:
        reveal_type(client)  # expect: octoai_lite.Client
        answer: Any = client.infer(INFER_URL, {"prompt": "Hi"})
        for event in client.infer_stream(INFER_URL, {"prompt": "Hi"}):
            print(event)
        with client.infer_stream(INFER_URL, {"prompt": "Hi"}, map_fn=lambda event: event["text"]) as texts:
            for text in texts:
                print(text)
        future: InferenceFuture = client.infer_async(INFER_URL, {"prompt": "Hi"})
        response_id: str = future.response_id
        poll_url: str = future.poll_url
        reveal_type(client.is_future_ready(future))  # expect: builtins.bool
        result: Optional[Any] = client.get_future_result(future)
        reveal_type(client.health_check(INFER_URL, timeout=30.0))  # expect: builtins.int
        print(answer, response_id, poll_url, result, InferenceFuture("id", "url"))


def errors() -> None:
    client = Client(secure_link=True, config_path="~/.octoai/config.yaml")
    try:
        client.chat.completions.create(model=TextModel.MIXTRAL_8X7B_INSTRUCT, messages=MESSAGES)
    except RateLimitError as exc:
        wait: Optional[float] = exc.retry_after
        print("wait", wait)
    except (BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError, UnprocessableEntityError):
        pass
    except OctoAIClientError as exc:
        status: Optional[int] = exc.status_code
        print(status)
    except (OctoAIServerError, OctoAIValidationError, OctoAITimeoutError):
        pass
    except OctoAIConnectionError as exc:
        sent: bool = exc.request_sent
        print(sent)
    except OctoAIError as exc:
        request_id: Optional[str] = exc.request_id
        headers: Dict[str, str] = exc.headers
        print(request_id, headers, exc.body)
    finally:
        client.close()


@dataclasses.dataclass
class Point:
    x: float
    y: float
    label: Optional[str]
    kind: Literal["start", "end"]


@dataclasses.dataclass
class Path:
    points: List[Point]


class Movie(TypedDict):
    title: str
    year: int


def structured_output() -> None:
    # parse: `parsed` has the type asked for, dataclass or TypedDict; a JSON Schema dict gives a dict.
    with Client() as client:
        completion = client.chat.completions.parse(model="m", messages=MESSAGES, response_format=Path, max_tokens=200)
        reveal_type(completion)  # expect: octoai_lite.ParsedChatCompletion[user_script.Path]
        reveal_type(completion.choices[0])  # expect: octoai_lite.ParsedChoice[user_script.Path]
        reveal_type(completion.choices[0].message)  # expect: octoai_lite.ParsedChatMessage[user_script.Path]
        reveal_type(completion.choices[0].message.parsed)  # expect: user_script.Path
        reveal_type(completion.choices[0].message.parsed.points[0].label)  # expect: builtins.str | None
        reveal_type(completion.choices[0].message.content)  # expect: builtins.str | None
        reveal_type(completion.usage)  # expect: octoai_lite.CompletionUsage | None
        plain: ChatCompletion = completion
        movie = client.chat.completions.parse(model="m", messages=MESSAGES, response_format=Movie)
        reveal_type(movie.choices[0].message.parsed["year"])  # expect: builtins.int
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        reveal_type(client.chat.completions.parse(model="m", messages=MESSAGES, response_format=schema).choices[0].message.parsed)  # expect: builtins.dict[builtins.str, Any]
        parts: List[Any] = [ParsedChatCompletion, ParsedChoice, ParsedChatMessage, plain]
        try:
            client.chat.completions.parse(model="m", messages=MESSAGES, response_format=Point)
        except (OctoAIRefusalError, OctoAILengthError) as exc:
            reveal_type(exc.text)  # expect: builtins.str | None
        except OctoAIParseError as exc:
            reveal_type(exc.path)  # expect: builtins.str | None
            reveal_type(exc.completion)  # expect: octoai_lite.ChatCompletion | None
        print(parts)


async def async_structured_output() -> None:
    async with AsyncClient() as client:
        completion = await client.chat.completions.parse(model="m", messages=MESSAGES, response_format=Path)
        reveal_type(completion)  # expect: octoai_lite.ParsedChatCompletion[user_script.Path]
        reveal_type(completion.choices[0].message.parsed)  # expect: user_script.Path
        movie = await client.chat.completions.parse(model="m", messages=MESSAGES, response_format=Movie)
        reveal_type(movie.choices[0].message.parsed["title"])  # expect: builtins.str
        typed: Movie = movie.choices[0].message.parsed  # the TypedDict itself (mypy 1 and 2 spell it apart)
        print(typed)


def server_sent_events() -> None:
    decoder = SSEDecoder()
    events: List[ServerSentEvent] = decoder.feed(b"data: 1\n\n")
    print(events)
    for event in decoder.feed(b'event: update\ndata: {"a": 1}\nid: 7\nretry: 10\n\n'):
        print(event.event, event.data, event.id, event.retry, event.json())
    last: Optional[ServerSentEvent] = decoder.close()
    decoder.decode_line("data: 2")
    print(last)


def command_line() -> None:
    reveal_type(main(["--version"]))  # expect: builtins.int
    print(octoai_lite.__version__, str(TextModel.LLAMA_2_70B_CHAT))


async def async_chat(flag: bool) -> None:
    async with AsyncClient(
        None, None, 60.0, True, False, base_url="http://127.0.0.1:8080/v1", max_retries=1, deadline=120.0
    ) as client:
        reveal_type(client)  # expect: octoai_lite.AsyncClient
        reveal_type(client.with_options(timeout=5.0))  # expect: octoai_lite.AsyncClient
        completion = await client.chat.completions.create(
            model=TextModel.LLAMA_2_70B_CHAT,
            messages=MESSAGES,
            max_tokens=150,
            temperature=0.7,
            top_p=0.9,
            stop="\n\n",
            frequency_penalty=0.0,
            presence_penalty=0.0,
            response_format={"type": "json_object"},
            extra_headers={"X-Trace": "1"},
            extra_query={"api-version": "1"},
            extra_body={"seed": 7},
            timeout=30.0,
            max_retries=0,
            deadline=60.0,
            tools=[],  # any other keyword passes through
        )
        reveal_type(completion)  # expect: octoai_lite.ChatCompletion
        reveal_type(completion.choices[0].message.content)  # expect: builtins.str | None
        either = await client.chat.completions.create(model="m", messages=MESSAGES, stream=flag)
        reveal_type(either)  # expect: octoai_lite.ChatCompletion | octoai_lite.AsyncStream

        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        reveal_type(stream)  # expect: octoai_lite.AsyncStream
        async with stream:
            async for chunk in stream:
                reveal_type(chunk)  # expect: octoai_lite.ChatCompletion
                if chunk.choices:
                    reveal_type(chunk.choices[0].delta.content)  # expect: builtins.str
            reveal_type(await stream.get_final_completion())  # expect: octoai_lite.ChatCompletion
        other: AsyncStream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join([chunk.choices[0].delta.content async for chunk in other if chunk.choices])
        await other.aclose()
        await other.close()

        reveal_type(await client.models.list())  # expect: builtins.list[builtins.str]
        answer: Any = await client.infer(INFER_URL, {"prompt": "Hi"})
        async for event in await client.infer_stream(INFER_URL, {"prompt": "Hi"}, map_fn=lambda event: event):
            print(event)
        future: InferenceFuture = await client.infer_async(INFER_URL, {"prompt": "Hi"})
        reveal_type(await client.is_future_ready(future))  # expect: builtins.bool
        result: Optional[Any] = await client.get_future_result(future)
        reveal_type(await client.health_check(INFER_URL))  # expect: builtins.int
        print(text, answer, result)
    made = AsyncClient(token="sk-test")
    await made.close()


def run_everything() -> None:
    migrated_from_octoai_sdk()
    sync_chat(True)
    newer_endpoints(True)
    asyncio.run(newer_endpoints_async())
    sync_inference()
    errors()
    structured_output()
    asyncio.run(async_structured_output())
    server_sent_events()
    command_line()
    asyncio.run(async_chat(False))
    stream_types = (Stream, AsyncStream, CompletionStream, AsyncCompletionStream)
    print(stream_types)
