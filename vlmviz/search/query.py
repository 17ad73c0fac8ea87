"""Query expressions: text, images, and weighted sums of both.

    a red car                          plain words: one text query
    ./photos/ref.jpg                   an image file: find similar
    "red car" - "night" + 0.5 * ./ref.jpg

Terms are quoted text or an image path, each with an optional `weight *`, joined by `+` or `-`. An unquoted term
is an image when it names an existing file or ends in an image suffix, text otherwise. The query vector is the
weighted sum of the terms' unit vectors, normalised again (the arithmetic of CLIP-style retrieval demos).
"""
from __future__ import annotations

import re
from pathlib import Path

_TOKEN = re.compile(r'\s*(?:"(?P<dq>[^"]*)"|\'(?P<sq>[^\']*)\'|(?P<op>[+\-*])(?=\s|$|["\'\d.])|(?P<word>[^\s"\']+))')
_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def _is_image(word: str) -> bool:
    return word.lower().endswith(_SUFFIXES) or Path(word).expanduser().is_file()


def parse_query(query: str) -> list[tuple[float, str, str]]:
    """[(weight, 'text' | 'image', value), ...]; a ValueError says what a query looks like."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("empty query: expected words, a quoted phrase or an image path, e.g. \"a red car\"")
    text = query.strip()
    if not re.search(r'["\']|\s[+\-]\s|\*', text) and not _is_image(text):
        return [(1.0, "text", text)]  # plain words, hyphens and all
    terms, sign, weight, words = [], 1.0, None, []

    def close():
        nonlocal weight, words, sign
        if words:
            joined = " ".join(words)
            kind = "image" if len(words) == 1 and _is_image(joined) else "text"
            terms.append((sign * (1.0 if weight is None else weight), kind, joined))
        words, weight, sign = [], None, (sign if not words else 1.0)

    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        if m.group("op") in ("+", "-"):
            close()
            sign = 1.0 if m.group("op") == "+" else -1.0
        elif m.group("op") == "*":
            if len(words) != 1:
                raise ValueError(f"in {query!r}: '*' must follow a number, as in 0.5 * \"a cat\"")
            try:
                weight = float(words[0])
            except ValueError:
                raise ValueError(f"in {query!r}: expected a number before '*', got {words[0]!r}") from None
            words = []
        elif m.group("dq") is not None or m.group("sq") is not None:
            phrase = (m.group("dq") if m.group("dq") is not None else m.group("sq")).strip()
            if not phrase:
                raise ValueError(f"in {query!r}: an empty quoted phrase")
            words.append(phrase)
            if len(words) == 1:
                terms_before = len(terms)
                close()
                terms[terms_before] = (terms[terms_before][0], "text", phrase)  # quoted is always text
        else:
            words.append(m.group("word"))
    close()
    if not terms:
        raise ValueError(f"query {query!r} has no terms: expected words, a quoted phrase or an image path")
    return terms
