"""Value shapes read from a field's name and description, for span-copy to filter by.

A user who writes ``zip: str | None`` does not add a pattern, yet the name says a ZIP code
holds a digit and a city does not consist of digits alone. Span-copy already filters a
field's candidate spans by its pattern; for a field without one, ``shape_of`` infers a coarse
shape from the words of its name (the head noun first: ``street_name`` is a name,
``house_number`` a number) and, failing that, of its description:

- ``code``: one word holding a digit (ZIP and postal codes, ISBN, DOI, phone numbers);
- ``number``: a digit or a number word somewhere (house, volume, page and year numbers,
  counts: "four" is a party size);
- ``words``: at least one letter (names of people, places, works, streets);
- ``email``: one word with an ``@`` and a dotted domain; ``url``: one word with a dot.

Only a few coarse shapes, from a small vocabulary of common English field-name words, so
that a wrong guess costs little: a shape removes candidates that cannot be right, never
picks one. Fields with their own pattern, enum, const or format keep them, a field whose
input has no span of its shape keeps every span, and the ``infer_shapes`` setting turns the
inference off.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SHAPES", "shape_of", "words_of"]

_NUMBER_WORDS = ("one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|"
                 "fifty|hundred|thousand|first|second|third|fourth|fifth")
SHAPES: dict[str, str] = {
    "code": r"^[^\s]*\d[^\s]*$",
    "number": rf"\d|\b(?:{_NUMBER_WORDS})\b",
    "words": r"[^\W\d_]",
    "email": r"^[^\s@]+@[^\s@]+\.[^\s@]+$",
    "url": r"^\S+\.\S+$",
}

# Field-name words and the shape they name. Ambiguous words ("code": a country code is
# letters; "date"/"time": "tomorrow" is a date; "size", "amount", "price") name none.
_VOCABULARY: dict[str, str] = {
    **dict.fromkeys(("email", "mail"), "email"),
    **dict.fromkeys(("url", "uri", "website", "homepage"), "url"),
    **dict.fromkeys(("zip", "zipcode", "postcode", "postal", "isbn", "issn", "doi", "phone", "telephone",
                     "fax", "mobile"), "code"),
    **dict.fromkeys(("number", "num", "no", "nr", "year", "yr", "volume", "vol", "page", "pages", "age",
                     "count", "quantity", "qty"), "number"),
    **dict.fromkeys(("name", "names", "city", "town", "village", "state", "country", "nation", "region",
                     "province", "county", "title", "author", "authors", "artist", "artists", "singer",
                     "band", "publisher", "journal", "magazine", "newspaper", "street", "road", "person",
                     "people", "company", "organization", "organisation", "editor", "editors", "owner"),
                    "words"),
}

_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def words_of(name: str) -> list[str]:
    """The lower-case words of an identifier or a sentence (snake, camel, kebab or prose)."""
    return [w.lower() for w in _WORD.findall(name)]


def shape_of(name: str, node: dict[str, Any]) -> str | None:
    """The shape (a key of ``SHAPES``) a field's name or description names; None when neither does.

    The name is read from its last word back (an English compound ends in its head noun);
    only a name that names nothing lets the description speak, read from its first word.
    """
    for word in reversed(words_of(name)):
        if word in _VOCABULARY:
            return _VOCABULARY[word]
    description = node.get("description")
    if isinstance(description, str):
        for word in words_of(description):
            if word in _VOCABULARY:
                return _VOCABULARY[word]
    return None
