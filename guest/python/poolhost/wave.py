"""WAVE, the text form of component values that `poolhost run --invoke` and the `pool` interface
speak, for the types Python tasks use.

A type is one of the strings ``"s64"``, ``"f64"``, ``"bool"``, ``"string"`` and ``"bytes"``
(WIT ``list<u8>``, as Python ``bytes``), or a tuple: ``("list", T)``, ``("option", T)`` or
``("tuple", T1, T2, ...)``. ``poolhost_build`` writes these from a function's annotations; the
encoder writes what wasm-wave reads, and the decoder reads what wasm-wave writes (``some(x)`` and
``none``, with the flat ``x`` form of ``some`` accepted too). Pure Python: nothing here touches the
host.
"""

import math
import re

__all__ = ["decode", "encode"]

# What a string or char must escape: wasm-wave's writer escapes these, and `\u{...}` for the
# control characters.
_ESCAPE = {c: f"\\u{{{c:x}}}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPE.update(
    {ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
)
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'"}

_INTEGER = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|nan|inf|-inf")
_BOOL = re.compile("true|false")
_WORD = re.compile(r"[-+.\w]+")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPE_SEQUENCE = re.compile(r"\\(u\{[0-9a-fA-F]{1,6}\}|.)", re.DOTALL)
_SPACE = re.compile(r"\s*")


def encode(value, type):
    """The WAVE text of `value` as a value of `type`; TypeError if it is not one."""
    match type:
        case "s64":
            if isinstance(value, int):
                return str(int(value))
        case "f64":
            if isinstance(value, (int, float)):
                value = float(value)
                if math.isnan(value):
                    return "nan"
                if math.isinf(value):
                    return "inf" if value > 0 else "-inf"
                return repr(value)
        case "bool":
            if isinstance(value, bool):
                return "true" if value else "false"
        case "string":
            if isinstance(value, str):
                return '"' + value.translate(_ESCAPE) + '"'
        case "bytes":
            if isinstance(value, (bytes, bytearray, memoryview)):
                return "[" + ", ".join(map(str, bytes(value))) + "]"
        case ("list", item):
            if not isinstance(value, (str, bytes)):
                try:
                    items = iter(value)
                except TypeError:
                    pass
                else:
                    return "[" + ", ".join(encode(v, item) for v in items) + "]"
        case ("option", item):
            return "none" if value is None else f"some({encode(value, item)})"
        case ("tuple", *items):
            if isinstance(value, (tuple, list)) and len(value) == len(items):
                return "(" + ", ".join(map(encode, value, items)) + ")"
    raise TypeError(f"expected {_spelling(type)}, got {value!r}")


def decode(text, type):
    """The Python value of WAVE `text` of `type`; ValueError if it is not WAVE of that type."""
    reader = _Reader(text)
    value = reader.value(type)
    reader.skip_space()
    if reader.pos < len(text):
        raise reader.error("the end of the value")
    return value


def _spelling(type):
    """`type` as a Python annotation: `list[Optional[int]]`."""
    match type:
        case ("list", item):
            return f"list[{_spelling(item)}]"
        case ("option", item):
            return f"Optional[{_spelling(item)}]"
        case ("tuple", *items):
            return f"tuple[{', '.join(map(_spelling, items))}]"
    return {"s64": "int", "f64": "float", "bool": "bool", "string": "str", "bytes": "bytes"}[type]


class _Reader:
    """A position in WAVE text, read one value at a time by the type expected there."""

    def __init__(self, text):
        self.text = text
        self.pos = 0

    def error(self, expected):
        return ValueError(f"expected {expected} at column {self.pos + 1} of WAVE `{self.text}`")

    def skip_space(self):
        self.pos = _SPACE.match(self.text, self.pos).end()

    def eat(self, token):
        """Consumes `token`, after spaces, if it comes next."""
        self.skip_space()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def expect(self, token):
        if not self.eat(token):
            raise self.error(f"`{token}`")

    def value(self, type):
        match type:
            case "s64":
                return int(self.word(_INTEGER, "an integer"))
            case "f64":
                return float(self.word(_FLOAT, "a float"))
            case "bool":
                return self.word(_BOOL, "`true` or `false`") == "true"
            case "string":
                self.skip_space()
                found = _STRING.match(self.text, self.pos)
                if not found:
                    raise self.error("a string")
                self.pos = found.end()
                return _ESCAPE_SEQUENCE.sub(self.unescape, found[1])
            case "bytes":
                items = self.list("s64")
                try:
                    return bytes(items)
                except ValueError:
                    raise self.error("bytes from 0 to 255") from None
            case ("list", item):
                return self.list(item)
            case ("tuple", *items):
                self.expect("(")
                values = []
                for i, item in enumerate(items):
                    if i:
                        self.expect(",")
                    values.append(self.value(item))
                self.eat(",")
                self.expect(")")
                return tuple(values)
            case ("option", item):
                self.skip_space()
                word = _WORD.match(self.text, self.pos)
                if word and word[0] in ("none", "some"):
                    self.pos = word.end()
                    if word[0] == "none":
                        return None
                    self.expect("(")
                    value = self.value(item)
                    self.expect(")")
                    return value
                return self.value(item)
        raise TypeError(f"not a poolhost type: {type!r}")

    def word(self, pattern, expected):
        """The next run of number or keyword characters, checked against `pattern`."""
        self.skip_space()
        found = _WORD.match(self.text, self.pos)
        if not found or not pattern.fullmatch(found[0]):
            raise self.error(expected)
        self.pos = found.end()
        return found[0]

    def list(self, item):
        """A list of values of type `item`, a trailing comma allowed."""
        self.expect("[")
        values = []
        while not self.eat("]"):
            values.append(self.value(item))
            if not self.eat(","):
                self.expect("]")
                break
        return values

    def unescape(self, escape):
        code = escape[1]
        if code.startswith("u{"):
            point = int(code[2:-1], 16)
            if point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF:
                return chr(point)
        elif code in _UNESCAPE:
            return _UNESCAPE[code]
        raise ValueError(f"bad escape `\\{code}` in WAVE `{self.text}`")
