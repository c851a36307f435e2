"""Stream a big top-level json object: its large arrays come out one element at a time.

LVIS v1 train is about 1.1 GB of json, mostly polygon coordinates. `json.load` would build a Python float
for every coordinate (5+ GB of objects) before we could throw them away; here each array element is decoded
by the standard library's C scanner from a bounded text buffer, handed to a callback and dropped, so memory
stays at a few chunks of text plus what the callback keeps.
"""

from __future__ import annotations

import gzip
import json
import json.scanner
import re
from collections.abc import Callable
from typing import Any

from efldet.errors import UserInputError

_WS = re.compile(r"[ \t\n\r]*")
# What may follow a complete value; "2." or "1e" at a chunk's end scan as a number too, but are followed by
# "." or "e", so a value followed by anything else is read again with more text.
_AFTER_VALUE = frozenset(",]}: \t\n\r")
_CHUNK_CHARS = 1 << 24  # 16 Mi characters of text read at a time


def _number_lists(key: str) -> re.Pattern[str]:
    """`"key": [[numbers], [numbers], ...]` (a polygon segmentation), brackets and all."""
    inner = r'\[[^\[\]{}"]*\]'
    return re.compile(rf'"{re.escape(key)}"\s*:\s*\[\s*{inner}(?:\s*,\s*{inner})*\s*\]')


class _Reader:
    """A growable window over the file's text with a read position; `value()` decodes one json value."""

    def __init__(self, path: str, drop_keys: tuple[str, ...] = ()) -> None:
        self.path = path
        # `"key": [[numbers], ...]` -> `"key": null` in the raw text, before the scanner makes a float of
        # every number. Only a value complete inside one chunk matches; one cut by a chunk border is decoded.
        self._drop = [(_number_lists(key), f'"{key}": null') for key in drop_keys]
        opener = gzip.open if str(path).endswith(".gz") else open
        try:
            self.file = opener(path, "rt", encoding="utf-8")
        except OSError as err:
            raise UserInputError(f"cannot open annotation file {path}: {err.strerror or err}") from err
        self.buf = ""
        self.pos = 0  # read position in buf
        self.base = 0  # characters of the file dropped before buf[0] (for error positions)
        self.eof = False
        # The standard library's C scanner: scan(text, index) -> (value, end); StopIteration if no value.
        self._scan = json.scanner.make_scanner(json.JSONDecoder())

    def close(self) -> None:
        self.file.close()

    def _more(self, at_least: int = 0) -> bool:
        """Drop the consumed text and append at least `at_least` characters; False at end of file."""
        if self.eof:
            return False
        try:
            data = self.file.read(max(at_least, _CHUNK_CHARS))
        except (UnicodeDecodeError, OSError, EOFError) as err:
            raise UserInputError(f"cannot read annotation file {self.path}: {err}") from err
        if not data:
            self.eof = True
            return False
        for pattern, replacement in self._drop:
            data = pattern.sub(replacement, data)
        self.base += self.pos
        self.buf = self.buf[self.pos :] + data
        self.pos = 0
        return True

    def error(self, what: str, pos: int | None = None) -> UserInputError:
        at = self.base + (self.pos if pos is None else pos)
        return UserInputError(f"{self.path}: not a valid json annotation file: {what} at character {at}")

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file), without consuming it."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.error(f"expected {char!r}")
        self.pos += 1

    def value(self) -> Any:
        """Decode the json value at the read position. A value is complete only when text follows it (any
        valid file has a closing bracket after every value), so a number cut at the buffer's end is read
        again with more text."""
        try:  # fast path: a whole value right here
            obj, end = self._scan(self.buf, self.pos)
            if end < len(self.buf) and self.buf[end] in _AFTER_VALUE:
                self.pos = end
                return obj
        except (StopIteration, json.JSONDecodeError):
            pass
        self.peek()
        while True:
            try:
                obj, end = self._scan(self.buf, self.pos)
                if (end < len(self.buf) and self.buf[end] in _AFTER_VALUE) or self.eof:
                    self.pos = end
                    return obj
            except StopIteration as err:
                if self.eof:
                    raise self.error("expected a value", err.value) from None
            except json.JSONDecodeError as err:
                if self.eof:
                    raise self.error(err.msg, err.pos) from None
            # Incomplete in this window: read more (doubling, so a big value costs O(size) overall).
            if not self._more(at_least=len(self.buf) - self.pos):
                self.eof = True

    def array(self, callback: Callable[[Any], None]) -> None:
        """Feed the elements of the json array at the read position to `callback`, one at a time."""
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        scan, ws = self._scan, " \t\n\r"
        while True:
            # Fast path (the common case, inlined): a complete element, then ',' or ']' right after it.
            buf, pos = self.buf, self.pos
            try:
                obj, end = scan(buf, pos)
            except (StopIteration, json.JSONDecodeError):
                end = len(buf)
            if end < len(buf) and buf[end] in _AFTER_VALUE:
                self.pos = end
            else:
                obj = self.value()
                buf, end = self.buf, self.pos
            callback(obj)
            char = buf[end] if end < len(buf) else ""
            if char == "" or char in ws:
                char = self.peek()
                buf, end = self.buf, self.pos
            if char == "]":
                self.pos = end + 1
                return
            if char != ",":
                raise self.error("expected ',' or ']' in an array")
            end += 1
            if end < len(buf) and buf[end] in ws:
                end = _WS.match(buf, end).end()
            self.pos = end


def read_json_object(
    path: str, streamed: dict[str, Callable[[Any], None]], drop_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Read the top-level json object in `path`. For each key in `streamed` whose value is an array, its
    elements go to that callback one by one (and the key maps to None in the result); every other key is
    decoded whole and returned. Values that are lists of number lists under a key in `drop_keys` (polygon
    segmentations) may come out as None instead: a speed-up for keys the caller does not read."""
    reader = _Reader(path, drop_keys)
    try:
        result: dict[str, Any] = {}
        if reader.peek() != "{":
            raise reader.error("expected a json object ('{') at the top level")
        reader.pos += 1
        if reader.peek() == "}":
            reader.pos += 1
            return result
        while True:
            if reader.peek() != '"':
                raise reader.error("expected a key string")
            key = reader.value()
            reader.expect(":")
            if key in streamed and reader.peek() == "[":
                reader.array(streamed[key])
                result[key] = None
            else:
                result[key] = reader.value()
            char = reader.peek()
            reader.pos += 1
            if char == "}":
                break
            if char != ",":
                reader.pos -= 1
                raise reader.error("expected ',' or '}' after a value of the top-level object")
        if reader.peek() != "":
            raise reader.error("extra text after the top-level object")
        return result
    finally:
        reader.close()
