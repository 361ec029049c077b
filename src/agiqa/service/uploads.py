"""A POST /score body read without holding up the event loop (issue #30): `body_chunks` gathers the chunks as they
arrive (the loop only awaits the socket; `BodySizeLimit` still counts them); in a worker thread, `parse_form` splits
the multipart/form-data body with python-multipart (the parser starlette would run on the loop; its limits and 400
messages are starlette's) and `score_fields` takes the form's fields (its 422s are worded as FastAPI's)."""
from __future__ import annotations

import codecs
from collections import deque
from dataclasses import dataclass

from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

try:
    from python_multipart import MultipartParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header
except ModuleNotFoundError:  # python-multipart < 0.0.13 names its package `multipart`
    from multipart import MultipartParser
    from multipart.exceptions import FormParserError
    from multipart.multipart import parse_options_header

MAX_FILES = 1000  # file parts per body (starlette's default)
MAX_FIELDS = 1000  # text parts per body (starlette's default)
MAX_FIELD_BYTES = 2**20  # one text part (starlette's max_part_size)
_BOOLEAN = TypeAdapter(bool)  # pydantic's reading of a form's true/false (1, yes, on...), as FastAPI's


class FormError(ValueError):
    """A body that is not a well-formed multipart form (the service answers 400 with this message)."""


@dataclass
class Part:
    """One part of a form: a file (`filename` not None; its bytes in `data`) or a text field (its text in `text`)."""

    name: str
    filename: str | None = None
    content_type: str | None = None
    data: bytes = b""
    text: str = ""

    @property
    def is_file(self) -> bool:
        return self.filename is not None


async def body_chunks(request) -> deque[bytes]:
    """The body of `request` as it arrived, chunk by chunk (awaiting them costs the event loop nothing)."""
    return deque([chunk async for chunk in request.stream() if chunk])


def parse_form(content_type: str, chunks: deque[bytes]) -> list[Part]:
    """The parts of a multipart/form-data body, in order. `chunks` is emptied as it is parsed (each chunk is freed
    once its bytes are in a part). CPU work: call it in a worker thread."""
    _, params = parse_options_header(content_type)
    if b"boundary" not in params:
        raise FormError("Missing boundary in multipart.")
    reader = _PartReader(_charset(params.get(b"charset", b"utf-8")))
    try:
        parser = MultipartParser(params[b"boundary"], reader.callbacks())
        while chunks:
            parser.write(chunks.popleft())
        parser.finalize()
    except FormParserError:
        raise FormError("Invalid multipart data.") from None
    return reader.parts


def score_fields(parts: list[Part]) -> tuple[list[Part], list[str] | None, bool]:
    """(images, prompts, explain) of a /score form: `images` files (required), `prompts` text fields (None when
    there are none) and `explain` (its last value; empty or absent: false). A field of the wrong kind is a 422."""
    errors: list[dict] = []
    images = [part for part in parts if part.name == "images"]
    if not images:
        errors.append({"type": "missing", "loc": ("body", "images"), "msg": "Field required", "input": None})
    errors += [{"type": "value_error", "loc": ("body", "images", i),
                "msg": "Value error, Expected UploadFile, received: <class 'str'>", "input": part.text}
               for i, part in enumerate(images) if not part.is_file]
    prompts = [part for part in parts if part.name == "prompts"]
    errors += [{"type": "string_type", "loc": ("body", "prompts", i), "msg": "Input should be a valid string",
                "input": part.filename} for i, part in enumerate(prompts) if part.is_file]
    explain = _flag([part for part in parts if part.name == "explain"], errors)
    if errors:
        raise RequestValidationError(errors)
    return images, [part.text for part in prompts] or None, explain


def _flag(parts: list[Part], errors: list[dict]) -> bool:
    """The last of a boolean field's values (false when absent or empty); a value pydantic cannot read is an error."""
    if not parts:
        return False
    last = parts[-1]
    if last.is_file:
        errors.append({"type": "bool_type", "loc": ("body", last.name), "msg": "Input should be a valid boolean",
                       "input": last.filename})
        return False
    if not last.text:
        return False
    try:
        return _BOOLEAN.validate_python(last.text)
    except ValidationError as err:
        errors += [{**error, "loc": ("body", last.name)} for error in err.errors(include_url=False)]
        return False


def _charset(name: bytes) -> str:
    """The codec of the body's text fields and file names (latin-1 for a name Python does not know)."""
    try:
        return codecs.lookup(name.decode("latin-1")).name
    except LookupError:
        return "latin-1"


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset)
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _PartReader:
    """python-multipart callbacks that collect the parts of one body."""

    def __init__(self, charset: str):
        self.charset = charset
        self.parts: list[Part] = []
        self.files = self.fields = 0
        self._headers: dict[bytes, bytes] = {}
        self._header_name, self._header_value = bytearray(), bytearray()
        self._part = Part("")
        self._pieces: list[bytes] = []
        self._size = 0

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self._headers, self._pieces, self._size = {}, [], 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if b"name" not in options:
            raise FormError('The Content-Disposition header field "name" must be provided.')
        part = Part(_decode(options[b"name"], self.charset))
        if b"filename" in options:
            self.files += 1
            if self.files > MAX_FILES:
                raise FormError(f"Too many files. Maximum number of files is {MAX_FILES}.")
            part.filename = _decode(options[b"filename"], self.charset)
            content_type = self._headers.get(b"content-type")
            part.content_type = None if content_type is None else content_type.decode("latin-1")
        else:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise FormError(f"Too many fields. Maximum number of fields is {MAX_FIELDS}.")
        self._part = part

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if not self._part.is_file and self._size > MAX_FIELD_BYTES:
            raise FormError(f"Part exceeded maximum size of {MAX_FIELD_BYTES // 1024}KB.")
        self._pieces.append(data[start:end])

    def on_part_end(self) -> None:
        part, data = self._part, b"".join(self._pieces)
        self._pieces = []
        if part.is_file:
            part.data = data
        else:
            part.text = _decode(data, self.charset)
        self.parts.append(part)  # only a part that ended: one cut off by the end of the body is dropped
