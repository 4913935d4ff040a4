"""Structured output: `chat.completions.parse` over loopback for Client and
AsyncClient (the `flavor` fixture), then the pure pieces of section 4h: the
schema made from a type, the validator, and the building of the dataclass.

This module's annotations are strings (the future import), as in many users'
modules: parse must resolve them with get_type_hints.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from typing import Any, Dict, List, Literal, Optional, TypedDict, Union

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import octoai_lite
from conftest import MESSAGES, completion_body, reply
from octoai_lite import (
    ChatCompletion,
    OctoAILengthError,
    OctoAIParseError,
    OctoAIRefusalError,
    OctoAIValidationError,
    ParsedChatCompletion,
    ParsedChatMessage,
)

# -- the caller's types ------------------------------------------------------------


class Size(enum.Enum):
    SMALL = "S"
    LARGE = "L"


@dataclasses.dataclass
class Item:
    name: str
    price: float
    quantity: int


@dataclasses.dataclass
class Address:
    city: str
    zip: Optional[str]


@dataclasses.dataclass
class Order:
    id: int
    status: Literal["open", "shipped"]
    items: List[Item]
    ship_to: Optional[Address]
    notes: List[str]
    stock: Dict[str, int]
    size: Size
    paid: bool = False


ITEM_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "price": {"type": "number"}, "quantity": {"type": "integer"}},
    "required": ["name", "price", "quantity"],
    "additionalProperties": False,
}
ADDRESS_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
    "required": ["city", "zip"],
    "additionalProperties": False,
}
ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "status": {"enum": ["open", "shipped"]},
        "items": {"type": "array", "items": ITEM_SCHEMA},
        "ship_to": {"anyOf": [ADDRESS_SCHEMA, {"type": "null"}]},
        "notes": {"type": "array", "items": {"type": "string"}},
        "stock": {"type": "object", "additionalProperties": {"type": "integer"}},
        "size": {"enum": ["S", "L"]},
        "paid": {"type": "boolean"},
    },
    "required": ["id", "status", "items", "ship_to", "notes", "stock", "size", "paid"],
    "additionalProperties": False,
}
ORDER_JSON = {
    "id": 7,
    "status": "shipped",
    "items": [{"name": "tea", "price": 4, "quantity": 2}, {"name": "cup", "price": 2.5, "quantity": 1}],
    "ship_to": {"city": "Seattle", "zip": None},
    "notes": ["fragile"],
    "stock": {"tea": 3},
    "size": "L",
    "paid": True,
}
ORDER = Order(
    7,
    "shipped",
    [Item("tea", 4.0, 2), Item("cup", 2.5, 1)],
    Address("Seattle", None),
    ["fragile"],
    {"tea": 3},
    Size.LARGE,
    True,
)


class Movie(TypedDict):
    title: str
    year: int
    cast: List[str]


class Review(TypedDict, total=False):
    stars: int


SIGHT_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
CITY_SCHEMA = {
    "title": "City guide",
    "type": "object",
    "properties": {"city": {"type": "string"}, "sights": {"type": "array", "items": SIGHT_SCHEMA}},
    "required": ["city", "sights"],
    "additionalProperties": False,
}


# -- over loopback, both clients ----------------------------------------------------


def answer(content, finish_reason="stop", choices=1, **message):
    """A completion whose message says `content` (each of `choices` alike, or one per item of a list)."""
    contents = content if isinstance(content, list) else [content] * choices
    body = completion_body()
    body["choices"] = [
        {"index": n, "message": {"role": "assistant", "content": text, **message}, "finish_reason": finish_reason}
        for n, text in enumerate(contents)
    ]
    action = reply(body=body)
    action.body = body
    return action


def parse(flavor, **kwargs):
    client = flavor.make()
    kwargs.setdefault("model", "m")
    kwargs.setdefault("messages", MESSAGES)
    result = client.chat.completions.parse(**kwargs)
    return flavor.run(result) if flavor.name == "async" else result


def sent_format(server):
    (request,) = server.requests
    return request.json()["response_format"]


def test_a_nested_dataclass_is_asked_for_strictly_and_built(flavor, server):
    action = answer(json.dumps(ORDER_JSON))
    server.script.append(action)
    completion = parse(flavor, response_format=Order, max_tokens=300, extra_body={"seed": 1})

    body = server.requests[0].json()
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Order", "schema": ORDER_SCHEMA, "strict": True},
    }
    assert body["max_tokens"] == 300 and body["seed"] == 1 and "stream" not in body
    assert isinstance(completion, ParsedChatCompletion) and isinstance(completion, ChatCompletion)
    message = completion.choices[0].message
    assert isinstance(message, ParsedChatMessage)
    assert message.parsed == ORDER
    assert type(message.parsed.items[0].price) is float  # JSON's 4 for a float field
    assert message.parsed.size is Size.LARGE
    # The server's JSON stays what it was: parsed is in repr, not in dict() nor ==.
    assert message.content == json.dumps(ORDER_JSON)
    assert completion.dict() == ChatCompletion.from_dict(action.body).dict()
    assert completion.json() == ChatCompletion.from_dict(action.body).json() and "parsed" not in completion.json()
    assert "parsed=Order(id=7" in repr(message)
    other = dataclasses.replace(message)
    other.__dict__["parsed"] = None
    assert message == other
    assert completion.usage.total_tokens == 721


def test_a_typeddict_is_parsed_into_a_dict(flavor, server):
    server.script.append(answer('{"title": "Vertigo", "year": 1958, "cast": ["James Stewart"]}'))
    completion = parse(flavor, response_format=Movie)
    assert sent_format(server)["json_schema"] == {
        "name": "Movie",
        "schema": {
            "type": "object",
            "properties": {"title": {"type": "string"}, "year": {"type": "integer"}, "cast": {"type": "array", "items": {"type": "string"}}},
            "required": ["title", "year", "cast"],
            "additionalProperties": False,
        },
        "strict": True,
    }
    assert completion.choices[0].message.parsed == {"title": "Vertigo", "year": 1958, "cast": ["James Stewart"]}


def test_a_json_schema_is_sent_as_given_and_checked(flavor, server):
    server.script.append(answer('{"city": "Seattle", "sights": [{"name": "Space Needle"}]}'))
    completion = parse(flavor, response_format=CITY_SCHEMA)
    assert sent_format(server) == {
        "type": "json_schema",
        "json_schema": {"name": "City_guide", "schema": CITY_SCHEMA, "strict": True},
    }
    assert completion.choices[0].message.parsed == {"city": "Seattle", "sights": [{"name": "Space Needle"}]}

    server.reset()
    server.script.append(answer('{"city": "Seattle", "sights": [{"name": 1}]}'))
    with pytest.raises(OctoAIParseError) as caught:
        parse(flavor, response_format=CITY_SCHEMA)
    assert caught.value.path == "$.sights[0].name"


def test_every_choice_is_parsed(flavor, server):
    server.script.append(answer(['{"title": "A", "year": 1, "cast": []}', '{"title": "B", "year": 2, "cast": []}']))
    completion = parse(flavor, response_format=Movie, n=2)
    assert [choice.message.parsed["title"] for choice in completion.choices] == ["A", "B"]


BAD_ORDER = json.dumps(dict(ORDER_JSON, items=[ORDER_JSON["items"][0], {"name": "cup", "price": "2.50", "quantity": 1}]))
TOOL_CALLS = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]

# case: (the answer's content, its other message fields and finish_reason, the error, its path, words in its message)
FAILURES = {
    "refusal": (None, {"refusal": "I can't help."}, OctoAIRefusalError, None, "the model refused: I can't help."),
    "length": ('{"id": 7, "status": "sh', {"finish_reason": "length"}, OctoAILengthError, None,
               "the answer was cut short (finish_reason 'length')"),
    "content filter": ("", {"finish_reason": "content_filter"}, OctoAIRefusalError, None,
                       "the server's content filter stopped the answer"),
    "invalid JSON": ('{"id": 7,}', {}, OctoAIParseError, None, "the answer is not JSON ("),  # json's words change with versions
    "prose": ("Sure! Here it is.", {}, OctoAIParseError, None, "the answer is not JSON (Expecting value"),
    "NaN": ('{"id": NaN}', {}, OctoAIParseError, None, "the answer is not JSON (NaN is not JSON)"),
    "schema violation": ('{"id": "7"}', {}, OctoAIParseError, "$", '$: missing required property "status"'),
    "wrong type for a nested field": (BAD_ORDER, {}, OctoAIParseError, "$.items[1].price",
                                      "$.items[1].price: expected number, got string"),
    "a float for an int": (json.dumps(dict(ORDER_JSON, id=7.0)), {}, OctoAIParseError, "$.id",
                           "$.id: expected integer, got number"),
    "a bool for an int": (json.dumps(dict(ORDER_JSON, id=True)), {}, OctoAIParseError, "$.id",
                          "$.id: expected integer, got boolean"),
    "not the Literal": (json.dumps(dict(ORDER_JSON, status="lost")), {}, OctoAIParseError, "$.status",
                        '$.status: expected one of ["open", "shipped"], got "lost"'),
    "an extra field": (json.dumps(dict(ORDER_JSON, ship_to={"city": "x", "zip": None, "street": "y"})), {},
                       OctoAIParseError, "$.ship_to", '$.ship_to: unexpected property "street"'),
    "an array for the object": ("[]", {}, OctoAIParseError, "$", "$: expected object, got array"),
    "no content (a tool call)": (None, {"tool_calls": TOOL_CALLS, "finish_reason": "tool_calls"}, OctoAIParseError,
                                 None, "the answer has no content (finish_reason 'tool_calls')"),
}  # fmt: skip


@pytest.mark.parametrize("case", FAILURES)
def test_each_failure_raises_its_typed_error_with_the_raw_text(flavor, server, case):
    content, fields, kind, path, words = FAILURES[case]
    fields = dict(fields)
    server.script.append(answer(content, fields.pop("finish_reason", "stop"), **fields))
    with pytest.raises(kind) as caught:
        parse(flavor, response_format=Order)
    error = caught.value
    assert type(error) is kind and isinstance(error, OctoAIParseError) and isinstance(error, OctoAIValidationError)
    assert str(error).startswith("structured output: " + words)
    assert error.text == fields.get("refusal", content)  # the raw text: the answer, or the refusal
    assert error.path == path
    assert isinstance(error.completion, ChatCompletion) and not isinstance(error.completion, ParsedChatCompletion)
    assert error.completion.choices[0].message.content == content
    if content and kind is not OctoAIRefusalError:
        assert str(error).endswith(f"; the answer: {content if len(content) <= 200 else content[:200] + '...'!r}")


def test_the_failing_choice_is_named_when_there_are_several(flavor, server):
    server.script.append(answer(['{"title": "A", "year": 1, "cast": []}', '{"title": "B", "year": "2", "cast": []}']))
    with pytest.raises(OctoAIParseError, match=r"^structured output: choice 1: \$\.year: expected integer, got string"):
        parse(flavor, response_format=Movie, n=2)


@dataclasses.dataclass
class Positive:
    value: int

    def __post_init__(self):
        if self.value <= 0:
            raise ValueError("value must be positive")


def test_the_dataclass_s_own_checks_become_a_parse_error(flavor, server):
    server.script.append(answer('{"value": -1}'))
    with pytest.raises(OctoAIParseError, match="Positive refused the answer: value must be positive") as caught:
        parse(flavor, response_format=Positive)
    assert isinstance(caught.value.__cause__, ValueError) and caught.value.text == '{"value": -1}'


@dataclasses.dataclass
class Node:
    label: str
    children: List[Node]


@dataclasses.dataclass
class Pair:
    both: tuple


@pytest.mark.parametrize(
    "response_format, words",
    [
        (int, "takes a dataclass, a TypedDict or a JSON Schema dict, not <class 'int'>"),
        (ORDER, "not Order("),  # an instance, not the class
        ({"type": "json_object"}, "not {'type': 'json_object'}"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "not {'type': 'json_schema'"),  # the schema itself, please
        (Node, "Node contains itself"),
        (Pair, "cannot express <class 'tuple'>"),
    ],
)
def test_what_json_schema_cannot_say_is_a_type_error_before_sending(flavor, server, response_format, words):
    with pytest.raises(TypeError, match=words.replace("(", r"\(").replace("[", r"\[")):
        parse(flavor, response_format=response_format)
    assert server.requests == []


def test_parse_does_not_stream(flavor, server):
    with pytest.raises(TypeError, match="does not stream"):
        parse(flavor, response_format=Order, stream=True)
    assert server.requests == []


# -- 4h, pure: the schema of a type ---------------------------------------------------


class Loose(TypedDict, total=False):
    a: int
    b: Optional[Item]


@pytest.mark.parametrize(
    "annotation, schema",
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (type(None), {"type": "null"}),
        (Any, {}),
        (Optional[int], {"type": ["integer", "null"]}),
        (Union[int, str, None], {"type": ["integer", "string", "null"]}),
        (Optional[Literal["a", 1]], {"anyOf": [{"enum": ["a", 1]}, {"type": "null"}]}),
        (List[Optional[float]], {"type": "array", "items": {"type": ["number", "null"]}}),
        (list, {"type": "array"}),
        (Dict[str, List[int]], {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}}),
        (dict, {"type": "object"}),
        (Size, {"enum": ["S", "L"]}),
        (Item, ITEM_SCHEMA),
        (Order, ORDER_SCHEMA),
        (Review, {"type": "object", "properties": {"stars": {"type": "integer"}}, "required": [], "additionalProperties": False}),
        (Loose, {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"anyOf": [ITEM_SCHEMA, {"type": "null"}]}}, "required": [], "additionalProperties": False}),
    ],
)
def test_schema_of_an_annotation(annotation, schema):
    assert octoai_lite._schema_of(annotation) == schema


@pytest.mark.parametrize("annotation", [Dict[int, str], tuple, set, complex, bytes])
def test_schema_of_what_json_cannot_carry(annotation):
    with pytest.raises(TypeError, match="cannot express"):
        octoai_lite._schema_of(annotation)


@dataclasses.dataclass
class Unknown:
    thing: NoSuchName  # noqa: F821  (a string annotation that names nothing)


def test_annotations_that_name_nothing_fail_before_sending(flavor, server):
    with pytest.raises(NameError, match="NoSuchName"):
        parse(flavor, response_format=Unknown)
    assert server.requests == []


@dataclasses.dataclass
class Counted:
    name: str
    count: int = dataclasses.field(init=False, default=0)


def test_fields_outside_init_are_not_asked_for():
    assert octoai_lite._schema_of(Counted)["properties"] == {"name": {"type": "string"}}
    assert octoai_lite._build(Counted, {"name": "x"}) == Counted("x")


@pytest.mark.skipif(sys.version_info < (3, 10), reason="X | None is 3.10+")
def test_pep_604_unions():
    annotation = eval("int | None")
    assert octoai_lite._schema_of(annotation) == {"type": ["integer", "null"]}
    assert octoai_lite._build(eval("Item | None"), {"name": "a", "price": 1, "quantity": 1}) == Item("a", 1.0, 1)


# -- 4h, pure: the validator --------------------------------------------------------


def problem(schema, value):
    return octoai_lite._schema_problem(schema, value)


@pytest.mark.parametrize(
    "schema, value, found",
    [
        ({"type": "integer"}, 1, None),
        ({"type": "integer"}, 1.0, ("$", "expected integer, got number")),
        ({"type": "integer"}, True, ("$", "expected integer, got boolean")),
        ({"type": "number"}, 1, None),
        ({"type": "number"}, False, ("$", "expected number, got boolean")),
        ({"type": "boolean"}, 0, ("$", "expected boolean, got integer")),
        ({"type": ["string", "null"]}, None, None),
        ({"type": ["string", "null"]}, 3, ("$", "expected string or null, got integer")),
        ({"type": "array", "items": {"type": "string"}}, ["a", 2], ("$[1]", "expected string, got integer")),
        ({"enum": [1, "a"]}, 1, None),
        ({"enum": [1, "a"]}, 1.0, ("$", 'expected one of [1, "a"], got 1.0')),  # compared as JSON text
        ({"enum": [1, "a"]}, True, ("$", 'expected one of [1, "a"], got true')),
        ({"enum": [[1, {"a": True}]]}, [1, {"a": True}], None),
        ({"enum": [[1, {"a": True}]]}, [1, {"a": 1}], ("$", 'expected one of [[1, {"a": true}]], got [1, {"a": 1}]')),
        ({"const": False}, 0, ("$", "expected one of [false], got 0")),
        ({"const": None}, None, None),
        ({"properties": {"a b": {"type": "string"}}}, {"a b": 1}, ('$["a b"]', "expected string, got integer")),
        ({"properties": {"a": {}}, "additionalProperties": False}, {"a": 1, "b": 2}, ("$", 'unexpected property "b"')),
        ({"additionalProperties": {"type": "integer"}}, {"x": 1, "y": "2"}, ("$.y", "expected integer, got string")),
        ({"required": ["a"]}, {}, ("$", 'missing required property "a"')),
        ({"required": ["a"]}, [], None),  # keywords for objects say nothing about other types
        ({"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"a": {"type": "string"}}}]}, {"a": 1},
         ("$.a", "expected string, got integer")),  # the option that got furthest explains best
        ({"anyOf": [{"type": "integer"}, {"enum": ["x"]}]}, "y", ("$", "expected integer, got string")),
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, "y", None),
        ({"$defs": {"a": {"type": "integer"}}, "items": {"$ref": "#/$defs/a"}}, ["2"], None),  # outside the subset:
        ({"items": [{"type": "string"}]}, [1], None),  # not checked here (the server enforces the schema)
        (True, 1, None),
        (False, 1, ("$", "no value is allowed here")),
        ({}, {"anything": [1]}, None),
    ],
)  # fmt: skip
def test_validator(schema, value, found):
    assert problem(schema, value) == found


# Schemas in the subset, and JSON values that fit them.
TYPES = ["string", "integer", "number", "boolean", "null"]
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5)
names = st.text(min_size=1, max_size=6)


def objects(children):
    def schema(properties, extra, data):
        required = data.draw(st.lists(st.sampled_from(sorted(properties)), unique=True)) if properties else []
        return {"type": "object", "properties": properties, "required": required, "additionalProperties": extra}

    return st.builds(schema, st.dictionaries(names, children, max_size=4), st.booleans() | children, st.data())


schemas = st.recursive(
    st.sampled_from([{"type": kind} for kind in TYPES])
    | st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True).map(lambda kinds: {"type": kinds})
    | st.lists(json_scalars, min_size=1, max_size=4).map(lambda options: {"enum": options})
    | json_scalars.map(lambda value: {"const": value})
    | st.just({}),
    lambda children: st.builds(lambda items: {"type": "array", "items": items}, children)
    | st.lists(children, min_size=1, max_size=3).map(lambda options: {"anyOf": options})
    | objects(children),
    max_leaves=12,
)


def values(schema):
    """A strategy for JSON values that fit `schema`."""
    if schema is True or schema == {}:
        return json_scalars
    if "anyOf" in schema:
        return st.one_of([values(option) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return st.one_of([values_of(kind, schema) for kind in kinds])


def values_of(kind, schema):
    if kind == "array":
        return st.lists(values(schema["items"]), max_size=3)
    if kind == "object":
        properties, extra = schema["properties"], schema["additionalProperties"]
        fixed = {name: values(properties[name]) for name in schema["required"]}
        optional = {name: values(sub) for name, sub in properties.items() if name not in fixed}
        known = st.fixed_dictionaries(fixed, optional=optional)
        if extra is False:
            return known
        others = st.dictionaries(names.filter(lambda name: name not in properties), values({} if extra is True else extra), max_size=2)
        return st.tuples(known, others).map(lambda pair: {**pair[1], **pair[0]})
    return {
        "string": st.text(max_size=5),
        "integer": st.integers(),
        "number": st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
        "boolean": st.booleans(),
        "null": st.none(),
    }[kind]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_values_made_from_a_schema_always_fit_it(data):
    schema = data.draw(schemas)
    value = json.loads(json.dumps(data.draw(values(schema))))  # as an answer arrives
    assert problem(schema, value) is None


json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=2) | st.dictionaries(names, children, max_size=2))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TYPES), min_size=1, max_size=4, unique=True), json_values, names)
def test_a_value_of_another_type_is_named_by_its_path(kinds, wrong, name):
    got = octoai_lite._json_type(wrong)
    assume(got not in kinds and not (got == "integer" and "number" in kinds))
    schema = {"type": "array", "items": {"type": "object", "properties": {name: {"type": kinds}}}}
    found = problem(schema, [{}, {name: wrong}])
    assert found == (octoai_lite._member("$[1]", name), f"expected {' or '.join(kinds)}, got {got}")


finite = st.floats(allow_nan=False, allow_infinity=False)
items = st.builds(Item, price=finite | st.integers().map(float))
addresses = st.builds(Address)
orders = st.builds(Order, items=st.lists(items, max_size=3), ship_to=st.none() | addresses)


@settings(max_examples=200, deadline=None)
@given(orders)
def test_a_dataclass_comes_back_from_its_json(order):
    text = json.dumps(dataclasses.asdict(order), default=lambda member: member.value)
    schema = octoai_lite._schema_of(Order)
    value = json.loads(text)
    assert problem(schema, value) is None
    assert octoai_lite._build(Order, value) == order
