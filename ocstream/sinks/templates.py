"""Webhook body templates: a sandboxed interpreter for a subset of Handlebars.

A webhook channel's ``template`` (XCM.md §13) is rendered with the notification as its context.
Templates come from API users, so rendering must never reach Python objects: this module parses
the template itself and interprets the tree. It does not generate or evaluate Python code, looks
values up only as JSON object keys and array indexes (never attributes), calls only the helpers
listed below, and bounds the output size and the work done.

pybars3 (the Handlebars port on PyPI) runs on Python 3.11 but is unsuitable: it compiles each
template to Python source and ``exec``\\ s it, and a bracketed path segment is pasted into that
source unescaped, so ``{{[') or __import__('os').getpid() or (']}}`` runs code. It also has no
strict mode and falls back to ``getattr`` (``{{x.__class__}}``).

The behaviour follows handlebars.js 4.7 compiled with ``{strict: true, knownHelpersOnly: true}``
(the expected outputs in ``tests/sinks/test_webhook_templates.py`` were produced by it):

* ``{{path}}`` HTML-escapes (``& < > " ' ` =``); ``{{{path}}}`` and ``{{&path}}`` do not.
* Paths: ``a.b.c``, ``a/b``, ``this``, ``.``, ``this.a``, ``../a`` (parent context), ``[any key]``
  segments, ``items.[0]`` and ``items.length`` on arrays, ``@index``, ``@key``, ``@first``,
  ``@last``, ``@root``, ``@../index``, and block parameters (``{{#each xs as |x i|}}``).
* Strict: a missing key in a ``{{mustache}}`` or a ``{{#section}}`` raises
  :class:`TemplateRenderError`. As in handlebars.js, the *last* segment of a helper argument may
  be missing (``{{#if messageId}}`` tests an optional field); its value is then ``undefined``.
* Blocks: ``{{#if x}}``, ``{{#unless x}}`` (both take ``includeZero=true``), ``{{#each x}}``,
  ``{{#with x}}``, each with ``{{else}}`` (or ``{{^}}``) and chained ``{{else if y}}``;
  sections ``{{#x}}…{{/x}}`` and inverted sections ``{{^x}}…{{/x}}``.
* Helpers: ``lookup obj key`` and ``json value`` (compact JSON; use ``{{{json x}}}`` so quotes are
  not escaped), also as subexpressions: ``{{json (lookup a "b")}}``. Any other helper name, a
  partial (``{{> p}}``), a decorator or a raw block is a :class:`TemplateSyntaxError`.
* Comments ``{{! … }}`` / ``{{!-- … --}}``, ``\\{{`` escapes, ``~`` whitespace control and the
  standalone-line rules of handlebars.js.
* Values render as JavaScript does: ``null`` → empty, booleans ``true``/``false``, numbers in
  JavaScript's shortest form (``1.0`` → ``1``), arrays joined with ``,``, objects as
  ``[object Object]``. Integers are exact (JavaScript rounds above 2^53). Objects iterate in
  document order (JavaScript puts integer-like keys first).

Differences from handlebars.js, all in the direction of refusing: a key inherited from
``Object.prototype`` (``constructor``, ``__proto__``) is a missing key, and a block nested deeper
than 64 levels is refused. Each ``{{else if}}`` of a chain counts as one more level (the chain
is a block inside the previous block's inverse, and both the whitespace pass and the renderer
walk it that way), so a chain of more than 64 is refused too.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import OcstreamError

__all__ = [
    "HELPERS",
    "MISSING",
    "Template",
    "TemplateError",
    "TemplateRenderError",
    "TemplateSyntaxError",
    "compile_template",
    "render_template",
]

#: Largest rendered body, in characters.
DEFAULT_MAX_CHARS: Final = 1_000_000
#: Work budget of one render: statements executed plus loop iterations.
DEFAULT_MAX_STEPS: Final = 100_000
#: Deepest block (and subexpression) nesting a template may have.
MAX_NESTING: Final = 64

BLOCK_HELPERS: Final = frozenset({"if", "unless", "each", "with"})
VALUE_HELPERS: Final = frozenset({"lookup", "json"})
#: Every helper a template may call.
HELPERS: Final = BLOCK_HELPERS | VALUE_HELPERS
_ARITY: Final = {"if": 1, "unless": 1, "each": 1, "with": 1, "lookup": 2, "json": 1}


class TemplateError(OcstreamError):
    """A template that cannot be compiled or rendered. Retrying does not help."""


class TemplateSyntaxError(TemplateError):
    """The template does not parse, or uses something outside the supported subset."""


class TemplateRenderError(TemplateError):
    """Rendering failed: a missing property (strict mode), or a size or work limit."""


class _Missing:
    """JavaScript's ``undefined``: a key that is not there (distinct from ``null``)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


# --------------------------------------------------------------------------------------------
# Tree


@dataclass(slots=True)
class _Path:
    data: bool
    depth: int
    parts: tuple[str, ...]
    original: str
    scoped: bool  # starts with "this" or ".": never a helper, never a block parameter
    loc: str

    @property
    def simple_name(self) -> str | None:
        if not self.data and not self.depth and not self.scoped and len(self.parts) == 1:
            return self.parts[0]
        return None


@dataclass(slots=True)
class _Literal:
    value: Any


@dataclass(slots=True)
class _Call:
    name: str
    params: list[_Expr]
    hash: dict[str, _Expr]
    loc: str


_Expr = _Path | _Literal | _Call


@dataclass(slots=True)
class _Content:
    value: str
    original: str
    right_stripped: bool = False
    left_stripped: bool = False


@dataclass(slots=True)
class _Strip:
    open: bool = False
    close: bool = False


@dataclass(slots=True)
class _Mustache:
    value: _Path | _Call
    escaped: bool
    strip: _Strip


@dataclass(slots=True)
class _Comment:
    strip: _Strip


@dataclass(slots=True)
class _Program:
    body: list[_Node]
    chained: bool = False


@dataclass(slots=True)
class _Block:
    helper: str | None  # a block helper, or None for a section over ``path``
    path: _Path | None
    params: list[_Expr]
    hash: dict[str, _Expr]
    block_params: tuple[str, ...]
    program: _Program | None
    inverse: _Program | None
    open_strip: _Strip
    inverse_strip: _Strip
    close_strip: _Strip
    loc: str


_Node = _Content | _Mustache | _Comment | _Block


# --------------------------------------------------------------------------------------------
# Lexer

# handlebars.js's ID: anything but whitespace and !"#%&'()*+,./;<=>@[\]^`{|}~
_ID_RE: Final = re.compile(r"""[^\s!"#%&'()*+,./;<=>@\[\\\]^`{|}~]+(?=[=~}\s/.)|])""")
_NUMBER_RE: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?=[~}\s)])")
_KEYWORD_RE: Final = re.compile(r"(true|false|undefined|null)(?=[~}\s)])")
_BLOCK_PARAMS_RE: Final = re.compile(r"as\s+\|")
_STANDALONE_INVERSE_RE: Final = re.compile(r"(?:\^|\s*else)\s*(~?)}}")
_ELSE_CHAIN_RE: Final = re.compile(r"\s*else\s")
_STRING_RE: Final = {q: re.compile(rf"{q}((?:\\{q}|[^{q}])*){q}") for q in "\"'"}
_KEYWORDS: Final[dict[str, Any]] = {
    "true": True,
    "false": False,
    "undefined": MISSING,
    "null": None,
}


@dataclass(slots=True)
class _Tok:
    kind: str  # ID SEP DATA STRING NUMBER LITERAL OPEN_SEXPR CLOSE_SEXPR EQUALS OPEN_BP CLOSE_BP
    value: Any
    literal: bool  # an ID written as [segment]
    loc: str


@dataclass(slots=True)
class _Tag:
    kind: str  # mustache unescaped block inverse_block end else else_chain comment
    tokens: list[_Tok]
    strip: _Strip
    loc: str


def _location(source: str, pos: int) -> str:
    line = source.count("\n", 0, pos) + 1
    column = pos - (source.rfind("\n", 0, pos) + 1)
    return f"{line}:{column}"


class _Lexer:
    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> TemplateSyntaxError:
        where = _location(self.src, self.pos if pos is None else pos)
        return TemplateSyntaxError(f"{message} at {where}")

    def items(self) -> list[_Content | _Tag]:
        src, n = self.src, len(self.src)
        out: list[_Content | _Tag] = []
        while self.pos < n:
            start = self.pos
            at = src.find("{{", start)
            if at < 0:
                out.append(_Content(src[start:], src[start:]))
                break
            text = src[start:at]
            if text.endswith("\\\\"):  # "\\{{": a literal backslash, then a mustache
                text = text[:-1]
            elif text.endswith("\\"):  # "\{{": the mustache is literal text
                if text[:-1]:
                    out.append(_Content(text[:-1], text[:-1]))
                end = n
                for marker in ("{{", "\\{{"):
                    nxt = src.find(marker, at + 2)
                    if 0 <= nxt < end:
                        end = nxt
                out.append(_Content(src[at:end], src[at:end]))
                self.pos = end
                continue
            if text:
                out.append(_Content(text, text))
            self.pos = at
            out.append(self.tag())
        return out

    def tag(self) -> _Tag:
        src = self.src
        start = self.pos
        loc = _location(src, start)
        p = start + 2
        if src.startswith("{{", start + 2):
            raise self.error("raw blocks ({{{{ }}}}) are not supported", start)
        strip_open = src.startswith("~", p)
        if strip_open:
            p += 1
        c = src[p : p + 1]
        m = _STANDALONE_INVERSE_RE.match(src, p)
        if m:
            self.pos = m.end()
            return _Tag("else", [], _Strip(strip_open, m.group(1) == "~"), loc)
        if c == "!":
            if src.startswith("!--", p):
                end = re.compile(r"--(~?)}}").search(src, p + 3)
            else:
                end = re.compile(r"(~?)}}").search(src, p + 1)
            if end is None:
                raise self.error("unclosed comment", start)
            self.pos = end.end()
            return _Tag("comment", [], _Strip(strip_open, end.group(1) == "~"), loc)
        if c == ">" or src.startswith("#>", p):
            raise self.error("partials are not supported", start)
        if c == "*" or src.startswith("#*", p):
            raise self.error("decorators are not supported", start)
        unescaped = False
        if c == "#":
            kind, p = "block", p + 1
        elif c == "/":
            kind, p = "end", p + 1
        elif c == "^":
            kind, p = "inverse_block", p + 1
        elif c == "{":
            kind, p, unescaped = "unescaped", p + 1, True
        elif c == "&":
            kind, p = "unescaped", p + 1
        else:
            m = _ELSE_CHAIN_RE.match(src, p)
            if m:
                kind, p = "else_chain", m.end()
            else:
                kind = "mustache"
        self.pos = p
        tokens, strip_close = self.expression(unescaped, start)
        return _Tag(kind, tokens, _Strip(strip_open, strip_close), loc)

    def expression(self, unescaped: bool, start: int) -> tuple[list[_Tok], bool]:
        """Tokens up to the closing braces; returns them and the close's ``~`` flag."""
        src, n = self.src, len(self.src)
        tokens: list[_Tok] = []
        while True:
            p = self.pos
            while p < n and src[p].isspace():
                p += 1
            self.pos = p
            if p >= n:
                raise self.error("unclosed {{", start)
            if unescaped:
                for close in ("}}}", "}~}}"):
                    if src.startswith(close, p):
                        self.pos = p + len(close)
                        return tokens, close == "}~}}"
            elif src.startswith("}}}", p) or src.startswith("}~}}", p):
                raise self.error("unexpected }}}")
            else:
                for close in ("}}", "~}}"):
                    if src.startswith(close, p):
                        self.pos = p + len(close)
                        return tokens, close == "~}}"
            tokens.append(self.token())

    def token(self) -> _Tok:
        src, p = self.src, self.pos
        loc = _location(src, p)
        c = src[p]
        simple = {"(": "OPEN_SEXPR", ")": "CLOSE_SEXPR", "=": "EQUALS", "|": "CLOSE_BP"}
        if c in simple:
            self.pos = p + 1
            return _Tok(simple[c], c, False, loc)
        if src.startswith("..", p):
            self.pos = p + 2
            return _Tok("ID", "..", False, loc)
        if c == "." and p + 1 < len(src) and src[p + 1] in "=~} \t\r\n/.)|":
            self.pos = p + 1
            return _Tok("ID", ".", False, loc)
        if c in "./":
            self.pos = p + 1
            return _Tok("SEP", c, False, loc)
        if c == "@":
            self.pos = p + 1
            return _Tok("DATA", c, False, loc)
        if c in "\"'":
            m = _STRING_RE[c].match(src, p)
            if m is None:
                raise self.error("unterminated string")
            self.pos = m.end()
            return _Tok("STRING", m.group(1).replace("\\" + c, c), False, loc)
        m = _KEYWORD_RE.match(src, p)
        if m:
            self.pos = m.end()
            return _Tok("LITERAL", _KEYWORDS[m.group(1)], False, loc)
        m = _NUMBER_RE.match(src, p)
        if m:
            self.pos = m.end()
            text = m.group(0)
            return _Tok("NUMBER", float(text) if "." in text else int(text), False, loc)
        m = _BLOCK_PARAMS_RE.match(src, p)
        if m:
            self.pos = m.end()
            return _Tok("OPEN_BP", "as |", False, loc)
        m = _ID_RE.match(src, p)
        if m:
            self.pos = m.end()
            return _Tok("ID", m.group(0), False, loc)
        if c == "[":
            m = re.compile(r"\[((?:\\\]|[^\]])*)\]").match(src, p)
            if m is None:
                raise self.error("unterminated [segment]")
            self.pos = m.end()
            value = re.sub(r"\\([\\\]])", r"\1", m.group(1))
            return _Tok("ID", value, True, loc)
        raise self.error(f"unexpected {c!r}")


# --------------------------------------------------------------------------------------------
# Parser


class _ExprParser:
    """Parses the tokens of one tag: ``head param* hash? blockParams?``."""

    def __init__(self, tokens: list[_Tok], tag_loc: str) -> None:
        self.toks = tokens
        self.i = 0
        self.depth = 0
        self.loc = tag_loc

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def error(self, message: str) -> TemplateSyntaxError:
        tok = self.peek()
        return TemplateSyntaxError(f"{message} at {tok.loc if tok else self.loc}")

    def at_end(self) -> bool:
        return self.i >= len(self.toks)

    def call(
        self, *, block_params: bool
    ) -> tuple[_Path | _Literal, list[_Expr], dict[str, _Expr], tuple[str, ...]]:
        if self.at_end():
            raise self.error("expected an expression")
        head = self.helper_name()
        params: list[_Expr] = []
        hash_: dict[str, _Expr] = {}
        bparams: tuple[str, ...] = ()
        while not self.at_end():
            tok = self.toks[self.i]
            nxt = self.peek(1)
            if tok.kind == "ID" and nxt is not None and nxt.kind == "EQUALS":
                hash_ = self.hash()
                break
            if tok.kind == "OPEN_BP":
                break
            params.append(self.param())
        if not self.at_end() and self.toks[self.i].kind == "OPEN_BP":
            if not block_params:
                raise self.error("block parameters outside a block")
            self.i += 1
            names: list[str] = []
            while (bp := self.peek()) is not None and bp.kind == "ID":
                names.append(bp.value)
                self.i += 1
            if bp is None or bp.kind != "CLOSE_BP" or not names:
                raise self.error("malformed block parameters")
            self.i += 1
            bparams = tuple(names)
        if not self.at_end():
            raise self.error("unexpected token")
        return head, params, hash_, bparams

    def hash(self) -> dict[str, _Expr]:
        out: dict[str, _Expr] = {}
        while (tok := self.peek()) is not None and tok.kind == "ID":
            nxt = self.peek(1)
            if nxt is None or nxt.kind != "EQUALS":
                raise self.error("expected key=value")
            self.i += 2
            out[tok.value] = self.param()
        return out

    def param(self) -> _Expr:
        tok = self.peek()
        if tok is not None and tok.kind == "OPEN_SEXPR":
            return self.sexpr()
        return self.helper_name()

    def sexpr(self) -> _Call:
        open_tok = self.toks[self.i]
        self.i += 1
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"subexpressions nested deeper than {MAX_NESTING} levels")
        head = self.helper_name()
        params: list[_Expr] = []
        hash_: dict[str, _Expr] = {}
        while True:
            tok = self.peek()
            if tok is None:
                raise self.error("unclosed (")
            if tok.kind == "CLOSE_SEXPR":
                self.i += 1
                break
            nxt = self.peek(1)
            if tok.kind == "ID" and nxt is not None and nxt.kind == "EQUALS":
                hash_ = self.hash()
                continue
            params.append(self.param())
        name = head.simple_name if isinstance(head, _Path) else None
        if name not in VALUE_HELPERS:
            shown = name or (head.original if isinstance(head, _Path) else repr(head))
            raise TemplateSyntaxError(
                f"unknown helper {shown!r} in a subexpression at {open_tok.loc} "
                f"(known: {', '.join(sorted(VALUE_HELPERS))})"
            )
        _check_arity(name, params, open_tok.loc)
        self.depth -= 1
        return _Call(name, params, hash_, open_tok.loc)

    def helper_name(self) -> _Path | _Literal:
        tok = self.peek()
        if tok is None:
            raise self.error("expected an expression")
        if tok.kind in ("STRING", "NUMBER", "LITERAL"):
            self.i += 1
            return _Literal(tok.value)
        data = False
        if tok.kind == "DATA":
            data = True
            self.i += 1
        return self.path(data)

    def path(self, data: bool) -> _Path:
        first = self.peek()
        if first is None or first.kind != "ID":
            raise self.error("expected a path")
        segments: list[tuple[str, bool, str]] = []  # (value, bracketed, separator)
        sep = ""
        while True:
            tok = self.peek()
            if tok is None or tok.kind != "ID":
                raise self.error("expected a path segment")
            segments.append((tok.value, tok.literal, sep))
            self.i += 1
            nxt = self.peek()
            if nxt is None or nxt.kind != "SEP":
                break
            sep = nxt.value
            self.i += 1
        original = "@" if data else ""
        parts: list[str] = []
        depth = 0
        for value, bracketed, separator in segments:
            original += separator + (f"[{value}]" if bracketed else value)
            if not bracketed and value in ("..", ".", "this"):
                if parts:
                    raise TemplateSyntaxError(f"invalid path {original!r} at {first.loc}")
                if value == "..":
                    depth += 1
            else:
                parts.append(value)
        head = segments[0]
        scoped = not head[1] and (head[0] == "." or head[0] == "this")
        return _Path(data, depth, tuple(parts), original, scoped, first.loc)


def _check_arity(name: str, params: Sequence[_Expr], loc: str) -> None:
    want = _ARITY[name]
    if len(params) != want:
        plural = "argument" if want == 1 else "arguments"
        raise TemplateSyntaxError(f"{name} takes exactly {want} {plural} (at {loc})")


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items = _Lexer(source).items()
        self.i = 0

    def parse(self) -> _Program:
        program, end = self.program(0)
        if end is not None:
            raise TemplateSyntaxError(f"unexpected {{{{{_tag_text(end)}}}}} at {end.loc}")
        return program

    def program(self, nesting: int) -> tuple[_Program, _Tag | None]:
        """Statements up to an ``else``/``else …``/close tag (returned) or the end (None)."""
        body: list[_Node] = []
        while self.i < len(self.items):
            item = self.items[self.i]
            self.i += 1
            if isinstance(item, _Content):
                body.append(item)
                continue
            if item.kind in ("else", "else_chain", "end"):
                return _Program(body), item
            if item.kind == "comment":
                body.append(_Comment(item.strip))
            elif item.kind in ("mustache", "unescaped"):
                body.append(self.mustache(item))
            else:
                body.append(self.block(item, nesting + 1))
        return _Program(body), None

    def mustache(self, tag: _Tag) -> _Mustache:
        head, params, hash_, _ = _ExprParser(tag.tokens, tag.loc).call(block_params=False)
        escaped = tag.kind == "mustache"
        name = head.simple_name if isinstance(head, _Path) else None
        if name in BLOCK_HELPERS:
            raise TemplateSyntaxError(
                f"{name} is a block helper: use {{{{#{name} …}}}} ({tag.loc})"
            )
        if name in VALUE_HELPERS:
            _check_arity(name, params, tag.loc)
            return _Mustache(_Call(name, params, hash_, tag.loc), escaped, tag.strip)
        if params or hash_:
            shown = head.original if isinstance(head, _Path) else repr(head.value)
            raise TemplateSyntaxError(
                f"unknown helper {shown!r} at {tag.loc} (known: {', '.join(sorted(HELPERS))})"
            )
        if isinstance(head, _Literal):  # {{"a b"}} looks the key "a b" up, as handlebars.js does
            key = _key_string(head.value)
            head = _Path(False, 0, (key,), repr(key), False, tag.loc)
        return _Mustache(head, escaped, tag.strip)

    def block(self, tag: _Tag, nesting: int) -> _Block:
        if nesting > MAX_NESTING:
            raise TemplateSyntaxError(
                f"blocks nested deeper than {MAX_NESTING} levels at {tag.loc}"
            )
        head, params, hash_, bparams = _ExprParser(tag.tokens, tag.loc).call(block_params=True)
        helper, path = self.block_head(head, params, hash_, tag.loc)
        program: _Program | None
        program, end = self.program(nesting)
        inverse: _Program | None = None
        inverse_strip = _Strip()
        chain: list[_Block] = []
        while end is not None and end.kind in ("else", "else_chain"):
            if chain and chain[-1].inverse is not None or (not chain and inverse is not None):
                raise TemplateSyntaxError(f"unexpected {{{{else}}}} at {end.loc}")
            if end.kind == "else":
                inner, nxt = self.program(nesting)
                if chain:
                    chain[-1].inverse = inner
                    chain[-1].inverse_strip = end.strip
                else:
                    inverse, inverse_strip = inner, end.strip
                end = nxt
                continue
            # {{else if x}}: the inverse is a program holding one chained block, one level
            # deeper than the previous one
            depth = nesting + len(chain) + 1
            if depth > MAX_NESTING:
                raise TemplateSyntaxError(
                    f"blocks nested deeper than {MAX_NESTING} levels at {end.loc} "
                    "(each {{else if}} of a chain counts as a level)"
                )
            chead, cparams, chash, cbparams = _ExprParser(end.tokens, end.loc).call(
                block_params=True
            )
            chelper, cpath = self.block_head(chead, cparams, chash, end.loc)
            cprogram, nxt = self.program(depth)
            chained = _Block(
                chelper, cpath, cparams, chash, cbparams, cprogram, None,
                end.strip, _Strip(), _Strip(), end.loc,
            )  # fmt: skip
            holder = _Program([chained], chained=True)
            if chain:
                chain[-1].inverse = holder
                chain[-1].inverse_strip = end.strip
            else:
                inverse, inverse_strip = holder, end.strip
            chain.append(chained)
            end = nxt
        if end is None:
            raise TemplateSyntaxError(f"{{{{#{_head_text(head)}}}}} at {tag.loc} is never closed")
        close_head, *_ = _ExprParser(end.tokens, end.loc).call(block_params=False)
        if _head_text(close_head) != _head_text(head):
            raise TemplateSyntaxError(
                f"{{{{/{_head_text(close_head)}}}}} at {end.loc} does not close "
                f"{{{{#{_head_text(head)}}}}} ({tag.loc})"
            )
        for chained in chain:
            chained.close_strip = end.strip
        if tag.kind == "inverse_block":  # {{^x}}a{{else}}b{{/x}}: a is the inverse
            program, inverse = inverse, program
        return _Block(
            helper, path, params, hash_, bparams, program, inverse,
            tag.strip, inverse_strip, end.strip, tag.loc,
        )  # fmt: skip

    @staticmethod
    def block_head(
        head: _Path | _Literal, params: list[_Expr], hash_: dict[str, _Expr], loc: str
    ) -> tuple[str | None, _Path | None]:
        name = head.simple_name if isinstance(head, _Path) else None
        if name in BLOCK_HELPERS:
            _check_arity(name, params, loc)
            return name, None
        if name in VALUE_HELPERS:
            raise TemplateSyntaxError(f"{name} is not a block helper ({loc})")
        if params or hash_:
            raise TemplateSyntaxError(
                f"unknown block helper {_head_text(head)!r} at {loc} "
                f"(known: {', '.join(sorted(BLOCK_HELPERS))})"
            )
        if isinstance(head, _Literal):
            key = _key_string(head.value)
            return None, _Path(False, 0, (key,), repr(key), False, loc)
        return None, head


def _head_text(head: _Expr) -> str:
    if isinstance(head, _Path):
        return head.original
    if isinstance(head, _Literal):
        return repr(head.value)
    return head.name


def _tag_text(tag: _Tag) -> str:
    return {"else": "else", "else_chain": "else …", "end": "/…"}.get(tag.kind, tag.kind)


# --------------------------------------------------------------------------------------------
# Whitespace control: a port of handlebars.js's WhitespaceControl visitor


def _is_prev_whitespace(body: list[_Node], i: int | None, is_root: bool) -> bool:
    if i is None:
        i = len(body)
    prev = body[i - 1] if i - 1 >= 0 else None
    sibling = body[i - 2] if i - 2 >= 0 else None
    if prev is None:
        return is_root
    if isinstance(prev, _Content):
        pattern = r"\r?\n\s*?$" if (sibling is not None or not is_root) else r"(^|\r?\n)\s*?$"
        return re.search(pattern, prev.original) is not None
    return False


def _is_next_whitespace(body: list[_Node], i: int | None, is_root: bool) -> bool:
    if i is None:
        i = -1
    nxt = body[i + 1] if i + 1 < len(body) else None
    sibling = body[i + 2] if i + 2 < len(body) else None
    if nxt is None:
        return is_root
    if isinstance(nxt, _Content):
        pattern = r"^\s*?\r?\n" if (sibling is not None or not is_root) else r"^\s*?(\r?\n|$)"
        return re.search(pattern, nxt.original) is not None
    return False


def _omit_right(body: list[_Node], i: int | None = None, multiple: bool = False) -> None:
    j = 0 if i is None else i + 1
    current = body[j] if 0 <= j < len(body) else None
    if not isinstance(current, _Content) or (not multiple and current.right_stripped):
        return
    original = current.value
    current.value = re.sub(r"^\s+" if multiple else r"^[ \t]*\r?\n?", "", current.value, count=1)
    current.right_stripped = current.value != original


def _omit_left(body: list[_Node], i: int | None = None, multiple: bool = False) -> bool:
    j = len(body) - 1 if i is None else i - 1
    current = body[j] if 0 <= j < len(body) else None
    if not isinstance(current, _Content) or (not multiple and current.left_stripped):
        return False
    original = current.value
    current.value = re.sub(r"\s+$" if multiple else r"[ \t]+$", "", current.value, count=1)
    current.left_stripped = current.value != original
    return current.left_stripped


@dataclass(slots=True)
class _StripInfo:
    open: bool = False
    close: bool = False
    open_standalone: bool = False
    close_standalone: bool = False
    inline_standalone: bool = False


def _ws_program(program: _Program, is_root: bool = False) -> None:
    body = program.body
    for i, current in enumerate(body):
        strip = _ws_accept(current)
        if strip is None:
            continue
        prev_ws = _is_prev_whitespace(body, i, is_root)
        next_ws = _is_next_whitespace(body, i, is_root)
        open_standalone = strip.open_standalone and prev_ws
        close_standalone = strip.close_standalone and next_ws
        inline_standalone = strip.inline_standalone and prev_ws and next_ws
        if strip.close:
            _omit_right(body, i, True)
        if strip.open:
            _omit_left(body, i, True)
        if inline_standalone:
            _omit_right(body, i)
            _omit_left(body, i)
        if isinstance(current, _Block):
            if open_standalone:
                first = current.program or current.inverse
                if first is not None:
                    _omit_right(first.body)
                _omit_left(body, i)
            if close_standalone:
                _omit_right(body, i)
                last = current.inverse or current.program
                if last is not None:
                    _omit_left(last.body)


def _ws_accept(node: _Node) -> _StripInfo | None:
    if isinstance(node, _Content):
        return None
    if isinstance(node, _Mustache):
        return _StripInfo(open=node.strip.open, close=node.strip.close)
    if isinstance(node, _Comment):
        return _StripInfo(open=node.strip.open, close=node.strip.close, inline_standalone=True)
    block = node
    if block.program is not None:
        _ws_program(block.program)
    if block.inverse is not None:
        _ws_program(block.inverse)
    program = block.program or block.inverse
    inverse = block.inverse if block.program is not None else None
    first_inverse = last_inverse = inverse
    if inverse is not None and inverse.chained:
        head = inverse.body[0]
        assert isinstance(head, _Block)
        first_inverse = head.program
        while last_inverse is not None and last_inverse.chained:
            tail = last_inverse.body[-1]
            assert isinstance(tail, _Block)
            last_inverse = tail.program
    body_of = program.body if program is not None else []
    closing = first_inverse or program
    strip = _StripInfo(
        open=block.open_strip.open,
        close=block.close_strip.close,
        open_standalone=_is_next_whitespace(body_of, None, False),
        close_standalone=_is_prev_whitespace(closing.body if closing else [], None, False),
    )
    if block.open_strip.close:
        _omit_right(body_of, None, True)
    if inverse is not None:
        if block.inverse_strip.open:
            _omit_left(body_of, None, True)
        if block.inverse_strip.close and first_inverse is not None:
            _omit_right(first_inverse.body, None, True)
        if block.close_strip.open and last_inverse is not None:
            _omit_left(last_inverse.body, None, True)
        if (
            first_inverse is not None
            and _is_prev_whitespace(body_of, None, False)
            and _is_next_whitespace(first_inverse.body, None, False)
        ):
            _omit_left(body_of)
            _omit_right(first_inverse.body)
    elif block.close_strip.open:
        _omit_left(body_of, None, True)
    return strip


# --------------------------------------------------------------------------------------------
# Values


_ESCAPES: Final = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&#x27;",
    "`": "&#x60;",
    "=": "&#x3D;",
}
_ESCAPE_RE: Final = re.compile(r"[&<>\"'`=]")


def _escape(text: str) -> str:
    if _ESCAPE_RE.search(text) is None:
        return text
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text)


def _js_number(value: float) -> str:
    """``String(value)`` in JavaScript (Number::toString)."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    text = repr(abs(value))  # the shortest round-trip digits, as JavaScript picks them
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text) if exp_text else 0
    int_part, _, frac_part = mantissa.partition(".")
    all_digits = int_part + frac_part
    stripped = all_digits.lstrip("0")
    n = len(int_part) + exponent - (len(all_digits) - len(stripped))
    digits = stripped.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    exp = f"e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + (digits if k == 1 else digits[0] + "." + digits[1:]) + exp


def _to_string(value: Any) -> str:
    """``String(value)`` in JavaScript, with ``null``/``undefined`` as the empty string."""
    if isinstance(value, str):
        return value
    if value is None or value is MISSING:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _js_number(value)
    if isinstance(value, list | tuple):
        return ",".join(_to_string(item) for item in value)
    return "[object Object]"


def _key_string(value: Any) -> str:
    """A value used as a property name, as JavaScript converts it."""
    if value is None:
        return "null"
    if value is MISSING:
        return "undefined"
    return _to_string(value)


def _is_falsy(value: Any) -> bool:
    """JavaScript's ``!value`` for JSON values (``{}`` and ``[]`` are truthy)."""
    if value is None or value is MISSING or value is False:
        return True
    if isinstance(value, str):
        return value == ""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0 or value != value
    return False


def _is_empty(value: Any) -> bool:
    """handlebars.js ``Utils.isEmpty``: falsy but not 0, or an empty array."""
    if isinstance(value, list | tuple):
        return not value
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return False
    return _is_falsy(value)


def _property(value: Any, key: str) -> Any:
    """``value[key]`` for own JSON properties; ``MISSING`` otherwise. Never an attribute."""
    if isinstance(value, Mapping):
        return value.get(key, MISSING)
    if isinstance(value, list | tuple | str):
        if key == "length":
            return len(value)
        if key.isdigit() and key.isascii() and (key == "0" or key[0] != "0"):
            index = int(key)
            if index < len(value):
                return value[index]
    return MISSING


def _describe(value: Any) -> str:
    if value is MISSING:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def _json(value: Any) -> Any:
    if value is MISSING:
        return MISSING
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TemplateRenderError(f"json: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Interpreter


class _Frame:
    """The render state of one block level."""

    __slots__ = ("depths", "data", "bparams")

    def __init__(
        self, depths: tuple[Any, ...], data: dict[str, Any], bparams: tuple[dict[str, Any], ...]
    ) -> None:
        self.depths = depths  # depths[0] is the current context, then its parents
        self.data = data
        self.bparams = bparams

    def enter(
        self,
        context: Any,
        data: dict[str, Any] | None = None,
        bparams: dict[str, Any] | None = None,
    ) -> _Frame:
        top = self.depths[0]
        same = context is top or (
            not isinstance(context, Mapping | list | tuple)
            and type(context) is type(top)
            and context == top
        )
        depths = self.depths if same else (context, *self.depths)
        return _Frame(
            depths,
            self.data if data is None else data,
            (bparams, *self.bparams) if bparams else self.bparams,
        )


class _Renderer:
    def __init__(self, max_chars: int, max_steps: int) -> None:
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.max_chars = max_chars
        self.max_steps = max_steps

    def emit(self, text: str) -> None:
        if not text:
            return
        self.size += len(text)
        if self.size > self.max_chars:
            raise TemplateRenderError(f"the rendered body exceeds {self.max_chars} characters")
        self.out.append(text)

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise TemplateRenderError(f"the template needs more than {self.max_steps} steps")

    def program(self, program: _Program | None, frame: _Frame) -> None:
        if program is None:
            return
        for node in program.body:
            self.step()
            if isinstance(node, _Content):
                self.emit(node.value)
            elif isinstance(node, _Mustache):
                value = self.evaluate(node.value, frame, strict=True)
                text = _to_string(value)
                self.emit(_escape(text) if node.escaped else text)
            elif isinstance(node, _Block):
                self.block(node, frame)

    # -- expressions

    def evaluate(self, expr: _Expr, frame: _Frame, *, strict: bool) -> Any:
        if isinstance(expr, _Literal):
            return expr.value
        if isinstance(expr, _Call):
            args = [self.evaluate(p, frame, strict=False) for p in expr.params]
            if expr.name == "lookup":
                obj, key = args
                if _is_falsy(obj):
                    return obj
                return _property(obj, _key_string(key))
            return _json(args[0])
        return self.resolve(expr, frame, strict)

    def resolve(self, path: _Path, frame: _Frame, strict: bool) -> Any:
        parts = path.parts
        value: Any
        if path.data:
            data: dict[str, Any] | None = frame.data
            for _ in range(path.depth):
                data = data.get("_parent") if data is not None else None
            name = parts[0] if parts else ""
            value = data.get(name, MISSING) if data is not None and name != "_parent" else MISSING
            if value is MISSING and (strict or len(parts) > 1):
                raise TemplateRenderError(f'"@{name}" not defined ({path.original} at {path.loc})')
            rest = parts[1:]
        else:
            rest = parts
            value = MISSING
            found = False
            if not path.scoped and not path.depth and parts:
                for params in frame.bparams:
                    if parts[0] in params:
                        value, rest, found = params[parts[0]], parts[1:], True
                        break
            if not found:
                value = frame.depths[path.depth] if path.depth < len(frame.depths) else MISSING
        last = len(rest) - 1
        for i, key in enumerate(rest):
            lenient = not strict and i == last
            if not lenient and not isinstance(value, Mapping | list | tuple):
                raise TemplateRenderError(
                    f'"{key}" not defined in {_describe(value)} ({path.original} at {path.loc})'
                )
            nxt = _property(value, key)
            if nxt is MISSING and not lenient:
                raise TemplateRenderError(
                    f'"{key}" not defined in {_describe(value)} ({path.original} at {path.loc})'
                )
            value = nxt
        return value

    # -- blocks

    def block(self, block: _Block, frame: _Frame) -> None:
        fn, inverse = block.program, block.inverse
        if block.helper is None:
            assert block.path is not None
            value = self.resolve(block.path, frame, strict=True)
            self.section(value, fn, inverse, block, frame)
            return
        arg = self.evaluate(block.params[0], frame, strict=False)
        helper = block.helper
        if helper in ("if", "unless"):
            include_zero = False
            if "includeZero" in block.hash:
                include_zero = not _is_falsy(
                    self.evaluate(block.hash["includeZero"], frame, strict=False)
                )
            falsy = (not include_zero and _is_falsy(arg)) or _is_empty(arg)
            if helper == "unless":
                fn, inverse = inverse, fn
            self.program(inverse if falsy else fn, frame)
        elif helper == "with":
            if _is_empty(arg):
                self.program(inverse, frame)
            else:
                names = block.block_params
                self.program(fn, frame.enter(arg, bparams={names[0]: arg} if names else None))
        else:
            self.each(arg, fn, inverse, block.block_params, frame)

    def section(
        self,
        value: Any,
        fn: _Program | None,
        inverse: _Program | None,
        block: _Block,
        frame: _Frame,
    ) -> None:
        """handlebars.js ``blockHelperMissing``: ``{{#x}}`` over a plain value."""
        if value is True:
            self.program(fn, frame)
        elif value is False or value is None or value is MISSING:
            self.program(inverse, frame)
        elif isinstance(value, list | tuple):
            if value:
                self.each(value, fn, inverse, block.block_params, frame)
            else:
                self.program(inverse, frame)
        else:
            self.program(fn, frame.enter(value))

    def each(
        self,
        value: Any,
        fn: _Program | None,
        inverse: _Program | None,
        names: tuple[str, ...],
        frame: _Frame,
    ) -> None:
        items: Sequence[tuple[Any, Any]]
        if isinstance(value, list | tuple):
            items = list(enumerate(value))
        elif isinstance(value, Mapping):
            items = list(value.items())
        else:
            items = []
        if not items:
            self.program(inverse, frame)
            return
        data: dict[str, Any] = dict(frame.data)
        data["_parent"] = frame.data
        last = len(items) - 1
        for index, (key, item) in enumerate(items):
            self.step()
            data["key"] = key
            data["index"] = index
            data["first"] = index == 0
            data["last"] = index == last
            bparams: dict[str, Any] | None = None
            if names:
                bparams = {names[0]: item}
                if len(names) > 1:
                    bparams[names[1]] = key
            self.program(fn, frame.enter(item, data=data, bparams=bparams))


# --------------------------------------------------------------------------------------------
# API


class Template:
    """A compiled template; :meth:`render` it with the notification (a JSON-like dict)."""

    __slots__ = ("source", "_program")

    def __init__(self, source: str) -> None:
        if not isinstance(source, str):
            raise TemplateSyntaxError("a template must be a string")
        self.source = source
        try:
            program = _Parser(source).parse()
            _ws_program(program, is_root=True)
        except RecursionError:  # nesting is bounded above; this is the last line of defence
            raise TemplateSyntaxError("the template nests too deeply") from None
        self._program = program

    def render(
        self,
        context: Any,
        *,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> str:
        """Render with ``context``; raises :class:`TemplateRenderError` (strict mode, limits)."""
        renderer = _Renderer(max_chars, max_steps)
        frame = _Frame((context,), {"root": context}, ())
        try:
            renderer.program(self._program, frame)
        except RecursionError:  # pragma: no cover - nesting is bounded at compile time
            raise TemplateRenderError("the template nests too deeply") from None
        return "".join(renderer.out)

    def __repr__(self) -> str:
        return f"Template({self.source[:40]!r}{'…' if len(self.source) > 40 else ''})"


@functools.lru_cache(maxsize=256)
def compile_template(source: str) -> Template:
    """The compiled template for ``source`` (cached); raises :class:`TemplateSyntaxError`."""
    return Template(source)


def render_template(source: str, context: Any, **limits: int) -> str:
    """``compile_template(source).render(context)``."""
    return compile_template(source).render(context, **limits)
