"""Subscription filters: which events a subscription receives.

Contract
--------
A subscription receives an event when its source is among the subscription's ``sources`` (none = every
source), its type matches one of the ``event_types`` globs (none = every type) and, if a trigger condition is
set, the condition evaluates to ``true`` on the event's JSON. :class:`Filter` combines the three; building one
from a request validates everything and raises :class:`~switchboard.errors.InvalidRequest` with a stable
``reason`` and ``metadata={"field": ...}``; matching never raises.

Event type globs (:class:`EventTypes`)
    ``fnmatch``-style with ``*`` (any run of characters, dots included: ``invoice.*`` matches
    ``invoice.payment.failed``) and ``?`` (one character) only; matching is case-sensitive. A glob is 1 to
    :data:`MAX_GLOB_LENGTH` visible ASCII characters other than ``[``, ``]`` and ``\\``; at most
    :data:`MAX_GLOBS` globs (duplicates dropped). Checked against a catalogue of known event types: a glob
    that matches none of them is refused (``EVENT_TYPE_UNKNOWN``, message naming the glob); an empty
    catalogue accepts any syntactically valid glob. Bad syntax or too many globs: ``EVENT_TYPE_INVALID``.
    Field: ``event_types``.

Trigger conditions (:func:`compile_condition`, :class:`Condition`)
    A CEL expression over the single variable ``event`` (the event's JSON object), compiled with
    ``common-expression-language`` (module ``cel``). Refused with ``TRIGGER_CONDITION_INVALID`` (field
    ``trigger_conditions``):

    * longer than :data:`MAX_CONDITION_LENGTH` characters, or empty;
    * a compile error: the message carries the compiler's text (line:column and a caret);
    * a reference to any free variable other than ``event``. ``Program.variables()`` lists the names bound
      by comprehension macros too (the ``x`` of ``items.exists(x, x > 1)``), so the expression's tokens are
      scanned: a name is accepted only if it is declared by a macro (``.all/.exists/.exists_one/.existsOne(
      name, ...)``) and every use of it lies inside the parentheses of a macro that binds it. Limitation:
      the scan works on tokens, not on cel's syntax tree; it errs on the side of refusing, and a name it
      wrongly accepted would still only fail at evaluation ("does not match");
    * the ``map`` and ``filter`` macros: in cel 0.10 they copy the accumulated list at every step (measured
      here: 2.8 s for a 10,000-element list, quadratic), so one condition over a large event would stall a
      worker. ``exists``, ``all``, ``exists_one`` and ``size`` are linear and cover boolean filtering;
    * a comprehension nested in another whose range is not rooted at the variable of the comprehension it is
      in (``items.exists(i, i.tags.exists(t, ...))`` is accepted; ``a.exists(x, a.exists(y, ...))`` and
      ``[event.a].exists(l, l.exists(x, l.exists(y, ...)))``, whose cost is the list's size to the power of
      the depth, are refused). Conditions stored before this rule (any enclosing comprehension's variable
      was enough) are still loaded (``strict=False``), so that no subscription stops matching.

    cel has no cost limit of its own; with these rules the cost of an evaluation is roughly the
    expression's length times the event's size, except for operators inside a comprehension that scan
    event data themselves (``x in event.list``): the delivery service should bound the size of the events
    it evaluates conditions on.

    :meth:`Condition.evaluate` returns an :class:`Evaluation`; only a ``bool`` ``true`` matches. A missing
    field (``KeyError``) is ``MISSING_FIELD``, a type mismatch (``TypeError``, "No such overload") is
    ``TYPE_MISMATCH``, a non-bool result is ``NOT_BOOL``, any other error (overflow, division by zero,
    undefined function, a bad regex, even a panic in the extension) is ``EVALUATION_ERROR``, an event cel
    cannot convert is ``EVENT_UNCONVERTIBLE``: all of them mean "does not match", are counted in
    :attr:`Condition.outcomes` and never raise. ``has(event.a.b)`` tests for a field without an error.

    Speed (measured on this 2-core machine kind, best of 9 runs; the condition
    ``event.type == "invoice.paid" && event.data.object.amount_due > 1000``): cel converts its whole input
    from Python on every ``execute``, so only the fields the expression can read are handed to it (the
    ``.field`` chains after ``event``, found by the same token scan; ``event`` used whole, ``event[...]``
    or a macro binding ``event`` hand over the whole event). With that, about 95,000 evaluations/s for an
    808-byte and for a 4.3 KB Stripe-like event alike; handing cel the whole event gives 13,400/s and
    1,950/s. A condition that reads a list (``event.data.object.lines.data.exists(...)``, 50 items) pays
    for converting that list: about 2,000/s. Compiling: about 19,000 conditions/s.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import cel

from switchboard.errors import InvalidRequest

__all__ = [
    "MAX_CONDITION_LENGTH",
    "MAX_GLOBS",
    "MAX_GLOB_LENGTH",
    "Condition",
    "Evaluation",
    "EventTypes",
    "Filter",
    "check_event_types",
    "check_sources",
    "compile_condition",
]

MAX_GLOBS: Final = 64
MAX_GLOB_LENGTH: Final = 128
MAX_CONDITION_LENGTH: Final = 1024
# Stored conditions loaded under the older nesting rule (compile_condition's strict=False): how many macros
# deep one that does not range over its innermost variable may sit.
MAX_LENIENT_DEPTH: Final = 3
MAX_SOURCES: Final = 64
MAX_SOURCE_LENGTH: Final = 128
_MAX_ERROR_TEXT = 1500

# Outcomes of one evaluation (Evaluation.reason, the keys of Condition.outcomes).
MATCHED: Final = "MATCHED"
NOT_MATCHED: Final = "NOT_MATCHED"
MISSING_FIELD: Final = "MISSING_FIELD"
TYPE_MISMATCH: Final = "TYPE_MISMATCH"
NOT_BOOL: Final = "NOT_BOOL"
EVALUATION_ERROR: Final = "EVALUATION_ERROR"
EVENT_UNCONVERTIBLE: Final = "EVENT_UNCONVERTIBLE"

_VARIABLE = "event"
_GLOB = re.compile(r"[!-Z^-~]+")  # visible ASCII without '[', '\\', ']'
_BINDING_MACROS = frozenset({"all", "exists", "exists_one", "existsOne"})
_REFUSED_MACROS = frozenset({"map", "filter"})


# --------------------------------------------------------------------------------------------------
# Event types
# --------------------------------------------------------------------------------------------------


def _types_error(message: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"event_types: {message}", reason=reason, metadata={"field": "event_types"})


def _glob_regex(glob: str) -> str:
    """``fnmatch.translate``: since Python 3.11 it folds runs of ``*`` and matches each ``*`` before a fixed
    part in an atomic group, so no glob backtracks. Turning each ``*`` into ``.*`` did: ``**********#``
    took 45 s to fail against one 36-character type, on the processor's event loop."""
    return fnmatch.translate(glob)


def check_event_types(globs: Iterable[str], catalogue: Collection[str] = ()) -> tuple[str, ...]:
    """The validated globs, duplicates dropped, order kept (rules in the module docstring)."""
    if isinstance(globs, str):
        raise _types_error("must be a list of globs, not one string", "EVENT_TYPE_INVALID")
    seen: dict[str, None] = {}
    for glob in globs:
        if not isinstance(glob, str) or not glob:
            raise _types_error("a glob is empty or not a string", "EVENT_TYPE_INVALID")
        if len(glob) > MAX_GLOB_LENGTH:
            raise _types_error(
                f"glob {glob[:40]!r}... is longer than {MAX_GLOB_LENGTH} characters", "EVENT_TYPE_INVALID"
            )
        if not _GLOB.fullmatch(glob):
            raise _types_error(
                f"glob {glob!r} may hold visible ASCII characters with '*' and '?' as wildcards only "
                "(no spaces, '[', ']' or '\\')",
                "EVENT_TYPE_INVALID",
            )
        seen[glob] = None
        if len(seen) > MAX_GLOBS:
            raise _types_error(f"at most {MAX_GLOBS} globs", "EVENT_TYPE_INVALID")
    result = tuple(seen)
    if catalogue:
        for glob in result:
            matcher = re.compile(_glob_regex(glob), re.DOTALL)
            if not any(matcher.fullmatch(known) for known in catalogue):
                raise _types_error(f"{glob!r} matches no known event type", "EVENT_TYPE_UNKNOWN")
    return result


class EventTypes:
    """A validated set of event type globs; no globs means every type."""

    __slots__ = ("_exact", "_pattern", "globs")

    def __init__(self, globs: Iterable[str] = (), *, catalogue: Collection[str] = ()) -> None:
        self.globs = check_event_types(globs, catalogue)
        self._exact = frozenset(g for g in self.globs if "*" not in g and "?" not in g)
        wild = [g for g in self.globs if g not in self._exact]
        if not self.globs or "*" in wild:
            self._pattern: re.Pattern[str] | None = re.compile(".*", re.DOTALL)
        elif wild:
            self._pattern = re.compile("|".join(f"(?:{_glob_regex(g)})" for g in wild), re.DOTALL)
        else:
            self._pattern = None

    def matches(self, event_type: str) -> bool:
        if event_type in self._exact:
            return True
        return self._pattern is not None and self._pattern.fullmatch(event_type) is not None

    def __repr__(self) -> str:
        return f"EventTypes({list(self.globs)!r})"


# --------------------------------------------------------------------------------------------------
# Trigger conditions
# --------------------------------------------------------------------------------------------------


def _condition_error(message: str) -> InvalidRequest:
    return InvalidRequest(
        f"trigger_conditions: {message}", reason="TRIGGER_CONDITION_INVALID", metadata={"field": "trigger_conditions"}
    )


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*)
  | (?P<string>(?:[rR][bB]?|[bB][rR])(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"[^"\n]*"|'[^'\n]*')
             |[bB]?(?:\"\"\"(?:\\[\s\S]|[^\\])*?\"\"\"|'''(?:\\[\s\S]|[^\\])*?'''
                     |"(?:\\[\s\S]|[^"\\\n])*"|'(?:\\[\s\S]|[^'\\\n])*'))
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?|\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?|\d+[uU]?)
  | (?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)
  | (?P<punct>[\s\S])
    """,
    re.VERBOSE,
)
_CLOSERS = {"(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str


def _tokens(source: str) -> list[_Token] | None:
    out: list[_Token] = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None or m.end() == pos:  # pragma: no cover - the last alternative matches any character
            return None
        kind = m.lastgroup or "punct"
        if kind not in ("ws", "comment"):
            out.append(_Token(kind, m.group()))
        pos = m.end()
    return out


def _is(tokens: list[_Token], i: int, text: str) -> bool:
    return 0 <= i < len(tokens) and tokens[i].kind == "punct" and tokens[i].text == text


def _receiver_start(tokens: list[_Token], dot: int) -> int | None:
    """Where the member chain ending just before ``tokens[dot]`` (a '.') starts: the index of the identifier it
    starts from, or None when it starts from anything else (a literal, a parenthesised expression, a global
    function call)."""
    k = dot - 1
    while k >= 0:
        token = tokens[k]
        if token.kind == "punct" and token.text in (")", "]"):
            opener = "(" if token.text == ")" else "["
            depth = 0
            while k >= 0:
                if _is(tokens, k, token.text):
                    depth += 1
                elif _is(tokens, k, opener):
                    depth -= 1
                    if depth == 0:
                        break
                k -= 1
            if k < 1:
                return None
            previous = tokens[k - 1]
            if previous.kind == "ident" or _is(tokens, k - 1, ")") or _is(tokens, k - 1, "]"):
                k -= 1  # a call's arguments or an index: the chain goes on to the left
                continue
            return None  # a list literal or a parenthesised expression
        if token.kind == "ident":
            if _is(tokens, k - 1, "."):
                k -= 2
                continue
            if _is(tokens, k + 1, "("):
                return None  # a global function call
            return k
        return None
    return None


def _check_names(source: str, variables: Collection[str], *, strict: bool = True) -> tuple[tuple[str, ...], ...] | None:
    """Refuse free variables other than ``event``, the quadratic macros, and nested comprehensions that do
    not range over an enclosing comprehension's variable (see the module docstring).

    Returns the field paths through which the expression reads ``event`` (``event.data.object.amount_due``
    gives ``("data", "object", "amount_due")``; a method call ends a path, ``event.type.startsWith(..)``
    gives ``("type",)``), or None when it may read the event whole (``event`` alone, ``event[...]``,
    ``event`` bound by a macro).
    """
    tokens = _tokens(source)
    if tokens is None:  # pragma: no cover - compiled sources always tokenize
        others = sorted(set(variables) - {_VARIABLE})
        if others:
            raise _condition_error(f"only the variable 'event' may be used, not {others[0]!r}")
        return None
    paths: list[tuple[str, ...]] = []
    whole = False
    frames: list[tuple[str, str | None]] = []  # (closing bracket, name bound by a macro call or None)
    declared: set[str] = set()
    declarations: set[int] = set()
    ranged: list[str] = []  # what the enclosing macros range over, as written (innermost last)
    free: list[str] = []
    balanced = True
    for i, token in enumerate(tokens):
        if token.kind == "punct" and token.text in _CLOSERS:
            bound: str | None = None
            if (
                token.text == "("
                and i >= 2
                and _is(tokens, i - 2, ".")
                and tokens[i - 1].kind == "ident"
                and i + 2 < len(tokens)
                and tokens[i + 1].kind == "ident"
                and _is(tokens, i + 2, ",")
            ):
                macro = tokens[i - 1].text
                if macro in _REFUSED_MACROS:
                    raise _condition_error(
                        f"the {macro}() macro is not allowed (its cost grows with the square of the list's "
                        "size); use exists(), all(), exists_one() or size()"
                    )
                if macro in _BINDING_MACROS:
                    bound = tokens[i + 1].text
                    bound_names = [name for _, name in frames if name is not None]
                    start = _receiver_start(tokens, i - 2)
                    root = tokens[start].text if start is not None else None
                    receiver = "".join(t.text for t in tokens[start : i - 2]) if start is not None else ""
                    innermost = bool(bound_names) and root == bound_names[-1]
                    if (
                        bound_names
                        and not innermost
                        and (
                            strict
                            or root not in bound_names
                            or receiver in ranged
                            or len(bound_names) >= MAX_LENIENT_DEPTH
                        )
                    ):
                        # Ranging over an outer macro's variable again (l.exists(x, l.exists(y, ...))) costs
                        # the list's size to the power of the depth: 10 s for 200 integers at depth 4. Stored
                        # conditions (strict=False) may range over any enclosing variable, not over a list an
                        # enclosing macro already ranges over as written, and, since the same list can be
                        # written many ways, at most MAX_LENIENT_DEPTH deep: the cost stays polynomial.
                        raise _condition_error(
                            f"a nested {macro}() must range over the variable of the macro it is in "
                            "(e.g. event.items.exists(i, i.tags.exists(t, t == 'x')))"
                        )
                    declared.add(bound)
                    declarations.add(i + 1)
                    ranged.append(receiver)
            frames.append((_CLOSERS[token.text], bound))
        elif token.kind == "punct" and token.text in (")", "]", "}"):
            if not frames or frames[-1][0] != token.text:
                balanced = False
                break
            if frames.pop()[1] is not None:
                ranged.pop()
        elif token.kind == "ident" and i not in declarations:
            if _is(tokens, i - 1, ".") or _is(tokens, i + 1, "("):
                continue  # a field, a method or a function
            if not any(name == token.text for _, name in frames):
                free.append(token.text)
                if token.text == _VARIABLE:
                    path = _field_path(tokens, i)
                    whole = whole or not path
                    paths.append(path)
    for name in sorted(variables):
        if name == _VARIABLE:
            continue
        if not balanced or name in free or name not in declared:
            raise _condition_error(f"only the variable 'event' may be used, not {name!r}")
    if whole or not balanced or _VARIABLE in declared or _VARIABLE not in variables:
        return None
    return tuple(paths)


def _field_path(tokens: list[_Token], i: int) -> tuple[str, ...]:
    """The ``.field`` chain after ``tokens[i]``; a method call (``.name(``) ends it."""
    path: list[str] = []
    j = i + 1
    while _is(tokens, j, ".") and j + 1 < len(tokens) and tokens[j + 1].kind == "ident" and not _is(tokens, j + 2, "("):
        path.append(tokens[j + 1].text)
        j += 2
    return tuple(path)


_Trie: TypeAlias = dict[str, "_Trie | None"]  # None: keep the whole value below this key


def _trie(paths: Iterable[tuple[str, ...]]) -> _Trie:
    root: _Trie = {}
    for path in sorted(paths, key=len):
        node = root
        for depth, key in enumerate(path):
            if key in node and node[key] is None:
                break  # a shorter path already keeps everything below
            if depth == len(path) - 1:
                node[key] = None
            else:
                child = node.get(key)
                if child is None:
                    child = node[key] = {}
                node = child
    return root


def _select(value: Any, trie: _Trie) -> Any:
    """The part of ``value`` the paths in ``trie`` can reach (a non-object is kept whole)."""
    if not isinstance(value, Mapping):
        return value
    out: dict[Any, Any] = {}
    for key, below in trie.items():
        if key in value:
            child = value[key]
            out[key] = child if below is None else _select(child, below)
    return out


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The outcome of one evaluation: ``matched`` only for a bool ``true``; ``reason`` is one of
    ``MATCHED``, ``NOT_MATCHED``, ``MISSING_FIELD``, ``TYPE_MISMATCH``, ``NOT_BOOL``, ``EVALUATION_ERROR``,
    ``EVENT_UNCONVERTIBLE``; ``detail`` is the error text (empty when there was no error)."""

    matched: bool
    reason: str
    detail: str = ""


def _is_fatal(exc: BaseException) -> bool:
    # pyo3 turns a Rust panic into pyo3_runtime.PanicException, a BaseException: treat it as an error of
    # this evaluation, but let interpreter-level exceptions (KeyboardInterrupt, SystemExit, cancellation,
    # GeneratorExit) through.
    return not isinstance(exc, Exception) and type(exc).__name__ != "PanicException"


class Condition:
    """A compiled trigger condition (build it with :func:`compile_condition`).

    Only the parts of the event the expression can read are handed to cel (see ``_check_names``): cel
    converts its whole input on every evaluation, so this keeps the cost independent of the event's size.
    ``outcomes`` counts the reasons of every evaluation (keyed by :class:`Evaluation` reasons).
    """

    __slots__ = ("_program", "_trie", "outcomes", "source")

    def __init__(self, source: str, program: cel.Program, paths: Iterable[tuple[str, ...]] | None = None) -> None:
        self.source = source
        self._program = program
        self._trie = None if paths is None else _trie(paths)
        self.outcomes: Counter[str] = Counter()

    def evaluate(self, event_json: Mapping[str, Any]) -> Evaluation:
        """Evaluate on an event's JSON object; never raises."""
        try:
            event = event_json if self._trie is None else _select(event_json, self._trie)
            result = self._program.execute({_VARIABLE: event})
        except KeyError as exc:
            return self._count(Evaluation(False, MISSING_FIELD, f"no such field: {exc}"))
        except TypeError as exc:
            return self._count(Evaluation(False, TYPE_MISMATCH, str(exc)[:_MAX_ERROR_TEXT]))
        except BaseException as exc:
            if _is_fatal(exc):
                raise
            text = str(exc)
            reason = EVENT_UNCONVERTIBLE if text.startswith("Conversion Error") else EVALUATION_ERROR
            return self._count(Evaluation(False, reason, f"{type(exc).__name__}: {text}"[:_MAX_ERROR_TEXT]))
        if result is True:
            return self._count(Evaluation(True, MATCHED))
        if result is False:
            return self._count(Evaluation(False, NOT_MATCHED))
        return self._count(Evaluation(False, NOT_BOOL, f"the condition returned {type(result).__name__}, not bool"))

    def matches(self, event_json: Mapping[str, Any]) -> bool:
        """True only if the condition evaluates to ``true``; errors count as no match."""
        return self.evaluate(event_json).matched

    def _count(self, evaluation: Evaluation) -> Evaluation:
        self.outcomes[evaluation.reason] += 1
        return evaluation

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def compile_condition(expression: str, *, strict: bool = True) -> Condition:
    """Compile and vet a trigger condition (rules in the module docstring). ``strict=False`` is for conditions
    already stored: a nested macro may range over any enclosing macro's variable, as before 2026-12-07, so a
    subscription accepted then keeps matching (``o.lines.exists(l, o.tags.exists(t, t == l.tag))``); new ones
    are held to the linear rule."""
    if not isinstance(expression, str):
        raise _condition_error("must be a string")
    if not expression.strip():
        raise _condition_error("is empty")
    if len(expression) > MAX_CONDITION_LENGTH:
        raise _condition_error(f"is longer than {MAX_CONDITION_LENGTH} characters")
    try:
        program = cel.compile(expression)
        variables = program.variables()
    except BaseException as exc:
        if _is_fatal(exc):
            raise
        text = str(exc)
        # "Failed to parse expression '<the whole expression>': ERROR: <input>:1:15: ...": keep from ERROR.
        marker = text.find("ERROR: ")
        if text.startswith("Failed to parse expression") and marker >= 0:
            text = text[marker:]
        raise _condition_error(f"does not compile: {text[:_MAX_ERROR_TEXT]}") from None
    paths = _check_names(expression, variables, strict=strict)
    return Condition(expression, program, paths)


# --------------------------------------------------------------------------------------------------
# The whole filter
# --------------------------------------------------------------------------------------------------


def check_sources(sources: Iterable[str]) -> frozenset[str]:
    """The validated source names (a subscription's list: empty means every source)."""
    if isinstance(sources, str):
        raise InvalidRequest("sources: must be a list", reason="SOURCES_INVALID", metadata={"field": "sources"})
    result = frozenset(sources)
    if len(result) > MAX_SOURCES or any(not isinstance(s, str) or not s or len(s) > MAX_SOURCE_LENGTH for s in result):
        raise InvalidRequest(
            f"sources: at most {MAX_SOURCES} non-empty names of at most {MAX_SOURCE_LENGTH} characters",
            reason="SOURCES_INVALID",
            metadata={"field": "sources"},
        )
    return result


@dataclass(frozen=True, slots=True, init=False)
class Filter:
    """Sources (empty = all), event type globs (empty = all) and an optional trigger condition."""

    sources: frozenset[str]
    event_types: EventTypes
    condition: Condition | None

    def __init__(
        self,
        sources: Iterable[str] = (),
        event_types: EventTypes | Iterable[str] = (),
        condition: Condition | str | None = None,
        *,
        catalogue: Collection[str] = (),
        strict: bool = True,
    ) -> None:
        """``event_types`` given as strings are validated against ``catalogue``; ``condition`` given as a
        string is compiled (``strict``: see :func:`compile_condition`). Raises
        :class:`~switchboard.errors.InvalidRequest` for any bad part."""
        types = event_types if isinstance(event_types, EventTypes) else EventTypes(event_types, catalogue=catalogue)
        compiled = compile_condition(condition, strict=strict) if isinstance(condition, str) else condition
        object.__setattr__(self, "sources", check_sources(sources))
        object.__setattr__(self, "event_types", types)
        object.__setattr__(self, "condition", compiled)

    def matches_meta(self, source: str, event_type: str) -> bool:
        """Whether the source and the event type match (the condition aside: no need to parse the body)."""
        return (not self.sources or source in self.sources) and self.event_types.matches(event_type)

    def matches(self, source: str, event_type: str, event_json: Mapping[str, Any]) -> bool:
        """Whether the event goes to this subscription; never raises."""
        if not self.matches_meta(source, event_type):
            return False
        return self.condition is None or self.condition.matches(event_json)

    def matches_body(self, source: str, event_type: str, body: bytes) -> bool:
        """``matches`` for an event's raw body, parsed only if a condition needs it (a body that is not a JSON
        object matches no condition); never raises."""
        if not self.matches_meta(source, event_type):
            return False
        if self.condition is None:
            return True
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return False
        return isinstance(document, dict) and self.condition.matches(document)
