"""Names from the model in generated C: identifiers, comments and string literals.

NOTE [ Names in generated C ]
    Module and parameter names come from the user's model (`nn.Module.add_module` accepts any
    string without a dot, `nn.ModuleDict` any key) and are untrusted text. They reach the
    generated program in exactly three ways, each through one function of this module, in
    both renderers (fp32 `_render.py` / `_lower.py`, int8 `_int8_render.py` /
    `_int8_kernels.py`); nothing else pastes a name into C:
    - identifiers (`Identifiers.get`): ASCII letters, digits and `_` only, never starting with
      a digit, never a C keyword or a name the fixed sources use, at most 63 characters (C99's
      portable limit; a longer one keeps 54 and appends 8 hex digits of its SHA-256). Two
      different names that sanitise to the same identifier (`x.y` and `x_y`) get `_2`, `_3`,
      ... in the order they are first asked for (the graph's order: deterministic), so one
      name is always one array and two names are never one.
    - comments (`c_comment`): percent-encoding (`%2A` for `*`) of every character outside a
      safe set that holds no `*`, `/`, `\\`, `?`, quote, control or non-ASCII character, so a
      name can neither close the comment nor open another nor splice lines.
    - the name a program prints for a parameter (`c_string(wire_name(name))`): percent-encoded
      (no space, so one output line stays one record; `_run._parse` decodes it with
      `unquote`), then written as a C string literal with `\\`, `"`, `?` (trigraphs) and every
      character outside printable ASCII escaped as 3-digit octal.
    Ordinary names (`features.3.0.weight`) produce the same C as before this module existed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

__all__ = [
    "C_KEYWORDS",
    "Identifiers",
    "c_comment",
    "c_identifier",
    "c_string",
    "identifiers_in",
    "wire_name",
    "wire_name_decode",
]

C_KEYWORDS = frozenset(
    # C99 and C11 keywords, and the GNU spellings gcc accepts in -std=c99
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while _Alignas _Alignof _Atomic _Bool _Complex _Generic "
    "_Imaginary _Noreturn _Static_assert _Thread_local asm typeof bool true false "
    "NULL main".split()
)

MAX_IDENTIFIER_CHARS = 63  # C99 5.2.4.1: significant initial characters of an identifier

_COMMENT_SAFE = " _.-:+,()[]#=<>@!$&;{}|^~'"  # plus letters and digits (quote's default)
_WIRE_SAFE = "_.-~"


def _shorten(s: str, text: str, limit: int) -> str:
    if len(s) <= limit:
        return s
    return (
        s[: limit - 9] + "_" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    )


def c_identifier(text: str) -> str:
    """`text` as a C identifier: `[A-Za-z0-9_]`, not starting with a digit, not a keyword, not
    starting with `_` (reserved at file scope), at most 63 characters. Not injective: `Identifiers`
    resolves collisions."""
    s = "".join(c if (c.isascii() and c.isalnum()) or c == "_" else "_" for c in text)
    if not s or s[0].isdigit():
        s = "n_" + s
    if s[0] == "_":  # `_x` is reserved at file scope, `__x` and `_X` everywhere
        s = "n" + s
    if s in C_KEYWORDS:
        s += "_"
    return _shorten(s, text, MAX_IDENTIFIER_CHARS)


class Identifiers:
    """One program's identifiers: each key (a role and a source name) gets one identifier,
    and no two keys get the same one (NOTE [ Names in generated C ])."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._of: dict[tuple[str, str], str] = {}
        self._taken: set[str] = set(reserved) | C_KEYWORDS

    def get(self, key: tuple[str, str], readable: str, suffixes: tuple[str, ...] = ("",)) -> str:
        """The identifier of `key`, made from `readable` on first use. With `suffixes`, the
        identifier is a prefix and every `prefix + suffix` is reserved for this key too."""
        if key in self._of:
            return self._of[key]
        room = MAX_IDENTIFIER_CHARS - max(len(s) for s in suffixes) - 5  # for `_N` and a suffix
        base = _shorten(c_identifier(readable), readable, room)
        cand, k = base, 2
        while any(cand + s in self._taken for s in suffixes):
            cand, k = f"{base}_{k}", k + 1
        self._taken.update(cand + s for s in suffixes)
        self._of[key] = cand
        return cand


def c_comment(text: str) -> str:
    """`text` for the inside of a `/* ... */` comment: percent-encoded outside a safe set of
    printable ASCII (no `*`, `/`, backslash, `?`, quotes, newline or non-ASCII)."""
    return quote(text, safe=_COMMENT_SAFE, errors="surrogatepass")


def wire_name(text: str) -> str:
    """How the program prints a name: percent-encoded, no space or control character."""
    return quote(text, safe=_WIRE_SAFE, errors="surrogatepass")


def wire_name_decode(text: str) -> str:
    """The name `wire_name` encoded."""
    return unquote(text, errors="surrogatepass")


_STRING_ESCAPES = {"\\": "\\\\", '"': '\\"', "?": "\\?"}


def c_string(text: str) -> str:
    """A C string literal holding the UTF-8 bytes of `text` exactly: printable ASCII as
    itself, backslash, quote and `?` (trigraphs) escaped, every other byte as 3-digit octal
    (an octal escape ends after 3 digits; a hex one would swallow following hex digits)."""
    out = []
    for byte in text.encode("utf-8", "surrogatepass"):
        c = chr(byte)
        if c in _STRING_ESCAPES:
            out.append(_STRING_ESCAPES[c])
        elif 0x20 <= byte < 0x7F:
            out.append(c)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def identifiers_in(*texts: str) -> frozenset[str]:
    """Every identifier-like word of `texts` (C sources): names a generated one must avoid."""
    return frozenset(w for t in texts for w in re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", t))
