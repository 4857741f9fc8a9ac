"""Encoding at process boundaries: msgspec msgpack with a type tag in front.

In process, messages are passed as objects and never encoded. Where one crosses a process
(NATS, Kafka), a :class:`Codec` built once for that boundary turns it into bytes and back:

    codec = Codec([Remember, Recall])
    payload = codec.encode(Remember(key="k", content="..."))
    message = codec.decode(payload)          # a Remember again

Frame: ``[n][tag: n bytes, UTF-8][msgpack body]``. ``n == 0`` marks a plain builtin value
(dict, list, str, bytes, int, float, bool, None), decoded without a schema. The tag is what
lets the receiving side build the right Struct with a typed decoder (msgspec validates while
it decodes, so a malformed message fails here, with the path of the bad field, not deep
inside an actor). The tag is the Struct's own msgspec tag when it has one (``tag=True`` gives
the class name), else its class name, so both sides agree without sharing Python paths.

Encoder and decoders are built once and reused: building a msgspec decoder costs far more
than using one. Schema evolution follows msgspec's rules: new fields get defaults, existing
field types never change, tags never change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from ._exceptions import CodecError

__all__ = ["Codec"]

_BUILTIN = b"\x00"
_MAX_TAG = 255


class Codec:
    """Registered ``msgspec.Struct`` types <-> tagged msgpack bytes, for one boundary."""

    __slots__ = ("_builtin_decoder", "_decoders", "_encoder", "_prefixes")

    def __init__(self, types: Iterable[type[msgspec.Struct]] = ()) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._builtin_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()
        self._prefixes: dict[type, bytes] = {}
        self._decoders: dict[bytes, tuple[type, msgspec.msgpack.Decoder[Any]]] = {}
        for cls in types:
            self.register(cls)

    def register(self, cls: type[msgspec.Struct], tag: str | None = None) -> None:
        """Make ``cls`` encodable and decodable under ``tag`` (default: see module doc).

        Registering the same class twice is a no-op; two classes under one tag is an error,
        because the receiving side could not tell them apart.
        """
        if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
            raise CodecError(f"only msgspec.Struct types can be registered, not {cls!r}")
        name = tag if tag is not None else _default_tag(cls)
        key = name.encode()
        if not 0 < len(key) <= _MAX_TAG:
            raise CodecError(f"type tag {name!r} must be 1 to {_MAX_TAG} bytes of UTF-8")
        known = self._decoders.get(key)
        if known is not None:
            if known[0] is cls:
                return
            raise CodecError(f"type tag {name!r} is already used by {known[0].__qualname__}")
        if cls in self._prefixes:
            raise CodecError(f"{cls.__qualname__} is already registered under another tag")
        self._prefixes[cls] = bytes((len(key),)) + key
        self._decoders[key] = (cls, msgspec.msgpack.Decoder(cls))

    @property
    def types(self) -> dict[str, type]:
        """Registered types by tag."""
        return {key.decode(): cls for key, (cls, _) in self._decoders.items()}

    def encode(self, obj: Any) -> bytes:
        """Bytes for ``obj``: a registered Struct, or a plain builtin value."""
        prefix = self._prefixes.get(type(obj))
        if prefix is None:
            if isinstance(obj, msgspec.Struct):
                raise CodecError(f"{type(obj).__qualname__} is not registered with this codec")
            prefix = _BUILTIN
        try:
            return prefix + self._encoder.encode(obj)
        except (TypeError, ValueError, OverflowError) as exc:  # msgspec.EncodeError too
            raise CodecError(f"cannot encode {type(obj).__qualname__}: {exc}") from exc

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        """The object ``data`` encodes; raises :class:`CodecError` naming what is wrong."""
        view = memoryview(data)
        if not view:
            raise CodecError("cannot decode an empty payload")
        length = view[0]
        if length == 0:
            decoder = self._builtin_decoder
        else:
            key = bytes(view[1 : 1 + length])
            entry = self._decoders.get(key)
            if entry is None:
                raise CodecError(f"unknown type tag {key.decode(errors='replace')!r}")
            decoder = entry[1]
        try:
            return decoder.decode(view[1 + length :])
        except msgspec.ValidationError as exc:
            raise CodecError(f"invalid {_name(decoder)}: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise CodecError(f"malformed {_name(decoder)} payload: {exc}") from exc


def _default_tag(cls: type[msgspec.Struct]) -> str:
    tag = cls.__struct_config__.tag
    return str(tag) if tag is not None else cls.__name__


def _name(decoder: msgspec.msgpack.Decoder[Any]) -> str:
    target = decoder.type
    return getattr(target, "__qualname__", "message")
