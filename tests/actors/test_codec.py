"""The boundary codec: tagged msgspec msgpack, Structs and plain builtins."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from somabrain.actors import CodecError
from somabrain.actors.codec import Codec


class Remember(msgspec.Struct, frozen=True, tag=True):
    key: str
    content: str
    tags: list[str] = []


class Recall(msgspec.Struct, frozen=True, tag="recall.v1"):
    query: str
    top_k: int = 5


class Link(msgspec.Struct, frozen=True):
    source: str
    target: str
    weight: float = 1.0


class Envelope(msgspec.Struct, frozen=True):
    tenant: str
    body: Remember | Recall  # a tagged union inside a registered Struct


class Unregistered(msgspec.Struct):
    x: int


@pytest.fixture
def codec() -> Codec:
    return Codec([Remember, Recall, Link, Envelope])


@pytest.mark.parametrize(
    "message",
    [
        Remember("k1", "hello", ["a", "b"]),
        Recall("what did I say", top_k=3),
        Link("a", "b", 0.5),
        Envelope("t1", Recall("q")),
        Envelope("t1", Remember("k", "c")),
    ],
)
def test_registered_structs_round_trip(codec: Codec, message: Any) -> None:
    decoded = codec.decode(codec.encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


def test_the_tag_names_the_type(codec: Codec) -> None:
    assert codec.encode(Recall("q")).startswith(b"\x09recall.v1")
    assert codec.encode(Link("a", "b")).startswith(b"\x04Link")
    assert codec.types["Remember"] is Remember
    assert codec.encode({"a": 1})[0] == 0  # builtins carry the empty tag


def test_decoding_on_another_codec_with_the_same_types() -> None:
    sender, receiver = Codec([Remember]), Codec([Remember])
    assert receiver.decode(sender.encode(Remember("k", "c"))) == Remember("k", "c")


def test_unregistered_struct_is_refused(codec: Codec) -> None:
    with pytest.raises(CodecError, match="Unregistered is not registered"):
        codec.encode(Unregistered(1))


def test_unencodable_value_is_a_codec_error(codec: Codec) -> None:
    with pytest.raises(CodecError, match="cannot encode"):
        codec.encode(object())


def test_unknown_tag_is_refused(codec: Codec) -> None:
    payload = Codec([Unregistered]).encode(Unregistered(1))
    with pytest.raises(CodecError, match="unknown type tag 'Unregistered'"):
        codec.decode(payload)


def test_validation_errors_name_the_field(codec: Codec) -> None:
    payload = b"\x04Link" + msgspec.msgpack.encode({"source": "a", "target": 3})
    expected = r"invalid Link: Expected `str`, got `int` - at `\$.target`"
    with pytest.raises(CodecError, match=expected):
        codec.decode(payload)


@pytest.mark.parametrize("payload", [b"", b"\x00\xc1", b"\x04Lin", b"\x04Link\x92\x01"])
def test_malformed_payloads_are_codec_errors(codec: Codec, payload: bytes) -> None:
    with pytest.raises(CodecError):
        codec.decode(payload)


def test_registration_conflicts() -> None:
    codec = Codec([Link])
    codec.register(Link)  # same class again: fine

    class Other(msgspec.Struct):
        pass

    with pytest.raises(CodecError, match="already used by Link"):
        codec.register(Other, tag="Link")
    with pytest.raises(CodecError, match="under another tag"):
        codec.register(Link, tag="link2")
    with pytest.raises(CodecError, match=r"only msgspec\.Struct"):
        codec.register(dict)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="1 to 255 bytes"):
        codec.register(Other, tag="x" * 256)


def test_decode_accepts_buffers(codec: Codec) -> None:
    payload = codec.encode(Recall("q"))
    assert codec.decode(bytearray(payload)) == Recall("q")
    assert codec.decode(memoryview(payload)) == Recall("q")


builtins = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(builtins)
def test_builtins_round_trip(value: Any) -> None:
    codec = Codec()
    assert codec.decode(codec.encode(value)) == value


@given(st.text(), st.text(), st.lists(st.text(), max_size=3))
def test_structs_round_trip(key: str, content: str, tags: list[str]) -> None:
    codec = Codec([Remember])
    message = Remember(key, content, tags)
    assert codec.decode(codec.encode(message)) == message
