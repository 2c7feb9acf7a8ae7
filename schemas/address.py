"""A US postal address split into the parts the usaddress corpus labels.

Field names are the corpus's own labels, so a benchmark compares them with the gold spans
without a mapping table. Every part is optional: most addresses have only some of them.
Descriptions carry no sample values on purpose: the 135M model copies a value quoted in a
description into every answer (measured: '1005' as the house number of 9 addresses in 10).

The closed vocabularies are patterns taken from USPS Publication 28 (street suffixes,
Appendix C1; secondary unit designators, C2; state abbreviations, B), in any letter case and
with an optional abbreviation point, as people write them. With span-copy they do most of
the work for a small model: a field's candidates are the input's spans its pattern admits,
so a ZIP code is one of the address's five-digit numbers and a street type one of its
street-type words (benchmarks/ablation.py measures what they buy).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Address"]


def _any_case(words: str) -> str:
    """An anchored, case-insensitive alternation of ``words`` (``|``-separated), each with an
    optional trailing point. Character classes, not ``(?i)``: every JSON Schema regex
    dialect (llguidance, llama.cpp's server, Pydantic) reads them alike."""
    alts = []
    for word in words.split("|"):
        parts = []
        for ch in word.strip():
            if ch.isalpha():
                parts.append(f"[{ch.upper()}{ch.lower()}]")
            elif ch == " ":
                parts.append(r"\s?" if len(word) <= 4 else " ")
            else:
                parts.append(re.escape(ch))
        alts.append("".join(parts))
    return "^(?:" + "|".join(alts) + r")\.?$"


_SUFFIXES = (
    "alley|aly|avenue|ave|av|bayou|beach|bch|bend|bluff|blf|boulevard|blvd|branch|bridge|brg|brook|"
    "bypass|byp|canyon|cyn|causeway|cswy|center|ctr|circle|cir|cliff|club|common|corner|course|court|"
    "ct|cove|cv|creek|crk|crescent|cres|crossing|xing|dale|drive|dr|estates|expressway|expy|extension|"
    "ext|falls|ferry|field|fld|flats|ford|forest|fork|freeway|fwy|garden|gardens|gdns|gateway|gtwy|"
    "glen|green|grove|grv|harbor|hbr|haven|heights|hts|highway|hwy|hill|hills|hollow|island|isle|"
    "junction|jct|key|knoll|lake|lakes|landing|lndg|lane|ln|loop|mall|manor|meadow|meadows|mews|mill|"
    "mount|mountain|orchard|oval|overpass|park|parkway|pkwy|pass|path|pike|place|pl|plaza|plz|point|pt|"
    "port|ridge|rdg|river|road|rd|route|rte|row|rue|run|shore|spring|springs|spur|square|sq|station|"
    "sta|street|st|summit|terrace|ter|trace|trail|trl|turnpike|tpke|valley|vly|view|village|vista|"
    "walk|way|wy"
)
_DIRECTIONS = (
    "n|s|e|w|ne|nw|se|sw|n e|n w|s e|s w|n. e|n. w|s. e|s. w|n.e|n.w|s.e|s.w|north|south|east|west|"
    "northeast|northwest|southeast|southwest|no|so"
)
_PRE_TYPES = (
    "highway|hwy|route|rte|rt|road|rd|avenue|ave|loop|spur|interstate|county road|county rd|"
    "county route|state route|state rt|state road|state rd|state highway|state hwy|us highway|"
    "us hwy|u.s. highway|u.s. hwy|farm to market|farm road|fm|cr|sr|us|u.s|business|camino|calle"
)
_UNIT_TYPES = (
    "apartment|apt|basement|bsmt|building|bldg|department|dept|floor|fl|flr|front|hangar|key|lobby|"
    "lot|lower|office|ofc|penthouse|ph|pier|rear|room|rm|side|slip|space|spc|stop|suite|ste|trailer|"
    "trlr|unit|upper|flat"
)
_BOX_TYPES = (
    "box|po box|p.o. box|p. o. box|p.o.box|p o box|p.o box|post office box|pob|lockbox|lock box|"
    "rr box|route box|cmr box|drawer"
)
_STATES = (
    "al|ak|az|ar|ca|co|ct|de|dc|d.c|fl|ga|hi|id|il|in|ia|ks|ky|la|me|md|ma|mi|mn|ms|mo|mt|ne|nv|nh|"
    "nj|nm|ny|nc|nd|oh|ok|or|pa|ri|sc|sd|tn|tx|ut|vt|va|wa|wv|wi|wy|pr|vi|gu|as|mp|alabama|alaska|"
    "arizona|arkansas|california|colorado|connecticut|delaware|district of columbia|florida|georgia|"
    "hawaii|idaho|illinois|indiana|iowa|kansas|kentucky|louisiana|maine|maryland|massachusetts|"
    "michigan|minnesota|mississippi|missouri|montana|nebraska|nevada|new hampshire|new jersey|"
    "new mexico|new york|north carolina|north dakota|ohio|oklahoma|oregon|pennsylvania|"
    "rhode island|south carolina|south dakota|tennessee|texas|utah|vermont|virginia|washington|"
    "west virginia|wisconsin|wyoming|puerto rico|guam|calif|fla|ill|mass|mich|minn|penn|tenn|tex|wash"
)
_NUMBER = r"^(?:\d[0-9A-Za-z/-]*|[Oo]ne|ONE)$"
# A unit or box identifier is a number ("# 201", "4th", "23A"), a letter ("D"), or a letter
# and a number ("C-2", "A1"): not a word, which would let a city name pass as one.
_UNIT_ID = r"^(?:#\s?)?(?:\d[0-9A-Za-z/-]*|[A-Za-z]|[A-Za-z]-?\d[0-9A-Za-z-]*)$"


class Address(BaseModel):
    """The parts of one US postal address, each copied from the text as written."""

    # Span-copy: every part is a piece of the address as written (benchmarks/ablation.py).
    # Not "copy_in_order": measured, the order constraint lowered field F1 here (the greedy
    # decoder jumps ahead in the text and strands the later fields), see extract.spec.span_order.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"copy_from_input": True})

    AddressNumber: str | None = Field(
        None, max_length=16, pattern=_NUMBER, description="house or building number, before the street")
    StreetNamePreDirectional: str | None = Field(
        None, max_length=16, pattern=_any_case(_DIRECTIONS), description="compass direction before the street name"
    )
    StreetNamePreType: str | None = Field(
        None, max_length=24, pattern=_any_case(_PRE_TYPES),
        description="street type written before the street name (highway, route)")
    StreetName: str | None = Field(None, max_length=64, description="the street's name without its type")
    StreetNamePostType: str | None = Field(
        None, max_length=24, pattern=_any_case(_SUFFIXES),
        description="street type after the name (street, avenue, road...)")
    StreetNamePostDirectional: str | None = Field(
        None, max_length=16, pattern=_any_case(_DIRECTIONS), description="compass direction after the street type"
    )
    OccupancyType: str | None = Field(
        None, max_length=24, pattern=_any_case(_UNIT_TYPES), description="unit type (suite, apartment, room...)")
    OccupancyIdentifier: str | None = Field(None, max_length=24, pattern=_UNIT_ID, description="unit number")
    USPSBoxType: str | None = Field(
        None, max_length=24, pattern=_any_case(_BOX_TYPES), description="post office box type")
    USPSBoxID: str | None = Field(None, max_length=24, pattern=_UNIT_ID, description="post office box number")
    PlaceName: str | None = Field(None, max_length=48, description="city or town")
    StateName: str | None = Field(None, max_length=24, pattern=_any_case(_STATES), description="state")
    ZipCode: str | None = Field(None, max_length=10, pattern=r"^\d{5}(?:-?\d{4})?$", description="ZIP code")
