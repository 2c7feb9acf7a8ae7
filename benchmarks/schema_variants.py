"""Schemas as users write them, for measuring zero-shot accuracy on schemas we did not tune.

Each dataset (usaddress, two SNIPS intents, citations) has four variants, written the way
different users would write them: terse names with no descriptions; descriptive names with a
one-line description each; nested or grouped fields; and names unlike the dataset's labels.
None carries a pattern, a length bound, an example or any of extract's flags
(``copy_from_input``, ``copy_in_order``): a user who just wrote a schema has none of those.

The mapping to the gold labels lives here, beside each variant, and only the benchmark reads
it: the product never sees a label name. A mapping value is a gold label, a tuple of labels
(their spans joined with one space, as they stand in the text: "Apt" + "5" is "Apt 5"), or a
list of such alternatives (either counts as right).

``role`` says how a variant may be used: "dev" variants are the ones levers are tuned on;
"heldout" variants were written with the others but are only run for the final report
(``benchmarks/zero_shot.py --role heldout``), so their figure says what a user's schema gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["VARIANTS", "GoldSpec", "Variant", "gold_for"]

GoldSpec = str | tuple[str, ...] | list[str | tuple[str, ...]]


@dataclass(frozen=True)
class Variant:
    name: str
    dataset: str  # usaddress | snips | citations
    intent: str | None  # SNIPS intent, else None
    role: str  # "dev" | "heldout"
    schema: dict[str, Any]
    gold: dict[str, GoldSpec]  # dotted path in the variant -> gold label(s)


def _obj(title: str, props: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"title": title, "type": "object", "properties": props}
    if description:
        schema["description"] = description
    return schema


def _s(description: str | None = None) -> dict[str, Any]:
    """An optional string field (nullable, as Pydantic writes ``str | None = None``)."""
    node: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    if description:
        node["description"] = description
    return node


_UNIT: GoldSpec = [("OccupancyType", "OccupancyIdentifier"), "OccupancyIdentifier"]

VARIANTS: list[Variant] = [
    # --- usaddress -------------------------------------------------------------------------
    Variant("addr-terse", "usaddress", None, "dev",
            _obj("Addr", {k: _s() for k in ("num", "street", "type", "unit", "city", "state", "zip")}),
            {"num": "AddressNumber", "street": "StreetName", "type": "StreetNamePostType", "unit": _UNIT,
             "city": "PlaceName", "state": "StateName", "zip": "ZipCode"}),
    Variant("addr-described", "usaddress", None, "dev",
            _obj("PostalAddress", {
                "house_number": _s("The number of the building on its street."),
                "street_name": _s("The name of the street, without its type or direction."),
                "street_type": _s("The kind of street, such as Street, Avenue or Road, as written."),
                "unit": _s("The apartment, suite or unit, if any."),
                "city": _s("The city or town."),
                "state": _s("The state, as written."),
                "zip_code": _s("The postal ZIP code."),
            }, "A mailing address in the United States."),
            {"house_number": "AddressNumber", "street_name": "StreetName", "street_type": "StreetNamePostType",
             "unit": _UNIT, "city": "PlaceName", "state": "StateName", "zip_code": "ZipCode"}),
    Variant("addr-nested", "usaddress", None, "dev",
            _obj("Location", {
                "street": {"type": "object", "properties": {
                    "number": _s("House number"), "name": _s("Street name"), "suffix": _s("Street suffix")}},
                "unit": _s("Apartment or suite"),
                "locality": {"type": "object", "properties": {
                    "city": _s(), "state": _s(), "postal_code": _s()}},
            }),
            {"street.number": "AddressNumber", "street.name": "StreetName", "street.suffix": "StreetNamePostType",
             "unit": _UNIT, "locality.city": "PlaceName", "locality.state": "StateName",
             "locality.postal_code": "ZipCode"}),
    Variant("addr-unlike", "usaddress", None, "heldout",
            _obj("DeliveryPoint", {
                "building_no": _s("Street number of the building"),
                "road": _s("Road or street name only"),
                "road_kind": _s("Designator like St, Ave, Blvd"),
                "apartment": _s(),
                "town": _s(),
                "region": _s("State or territory"),
                "postcode": _s(),
            }),
            {"building_no": "AddressNumber", "road": "StreetName", "road_kind": "StreetNamePostType",
             "apartment": _UNIT, "town": "PlaceName", "region": "StateName", "postcode": "ZipCode"}),
    # --- SNIPS AddToPlaylist ---------------------------------------------------------------
    Variant("playlist-terse", "snips", "AddToPlaylist", "dev",
            _obj("AddToPlaylist", {k: _s() for k in ("artist", "item", "kind", "playlist", "owner")}),
            {"artist": "artist", "item": "entity_name", "kind": "music_item", "playlist": "playlist",
             "owner": "playlist_owner"}),
    Variant("playlist-described", "snips", "AddToPlaylist", "dev",
            _obj("PlaylistAddition", {
                "artist_name": _s("The musician or band mentioned."),
                "song_name": _s("The name of the song or other item to add."),
                "item_type": _s("What kind of thing is added: a song, track, album, tune..."),
                "playlist_name": _s("The name of the playlist."),
                "playlist_owner": _s("Whose playlist it is, e.g. a possessive word."),
            }, "A request to add music to a playlist."),
            {"artist_name": "artist", "song_name": "entity_name", "item_type": "music_item",
             "playlist_name": "playlist", "playlist_owner": "playlist_owner"}),
    Variant("playlist-nested", "snips", "AddToPlaylist", "dev",
            _obj("Request", {
                "what": {"type": "object", "properties": {"kind": _s(), "title": _s(), "by": _s()}},
                "playlist": {"type": "object", "properties": {"name": _s(), "owner": _s()}},
            }),
            {"what.kind": "music_item", "what.title": "entity_name", "what.by": "artist",
             "playlist.name": "playlist", "playlist.owner": "playlist_owner"}),
    Variant("playlist-unlike", "snips", "AddToPlaylist", "heldout",
            _obj("QueueCommand", {
                "performer": _s("Who performs the music"),
                "piece": _s("Title of the piece to add"),
                "media": _s("Song, track, album and so on"),
                "collection": _s("Destination list title"),
                "collection_of": _s("Owner of the destination list"),
            }),
            {"performer": "artist", "piece": "entity_name", "media": "music_item", "collection": "playlist",
             "collection_of": "playlist_owner"}),
    # --- SNIPS GetWeather ------------------------------------------------------------------
    Variant("weather-terse", "snips", "GetWeather", "dev",
            _obj("Weather", {k: _s() for k in ("city", "state", "country", "place", "when", "condition",
                                                "temp", "near", "here")}),
            {"city": "city", "state": "state", "country": "country", "place": "geographic_poi",
             "when": "timeRange", "condition": "condition_description", "temp": "condition_temperature",
             "near": "spatial_relation", "here": "current_location"}),
    Variant("weather-described", "snips", "GetWeather", "dev",
            _obj("ForecastQuery", {
                "city": _s("The city the forecast is for."),
                "state": _s("The state or province."),
                "country": _s("The country."),
                "landmark": _s("A named place that is not a city, such as a park or a mountain."),
                "time": _s("When: a date, a day, a time or a period."),
                "weather_condition": _s("A weather condition asked about, such as rain or snow."),
                "temperature_word": _s("A temperature word asked about, such as hot or cold."),
                "proximity": _s("A word for nearness, such as near or close to."),
                "current_place": _s("A phrase for where the user is now, such as here."),
            }, "A question about the weather."),
            {"city": "city", "state": "state", "country": "country", "landmark": "geographic_poi",
             "time": "timeRange", "weather_condition": "condition_description",
             "temperature_word": "condition_temperature", "proximity": "spatial_relation",
             "current_place": "current_location"}),
    Variant("weather-nested", "snips", "GetWeather", "dev",
            _obj("WeatherAsk", {
                "where": {"type": "object", "properties": {
                    "city": _s(), "state": _s(), "country": _s(), "poi": _s(), "relation": _s(), "current": _s()}},
                "when": _s(),
                "conditions": {"type": "object", "properties": {"description": _s(), "temperature": _s()}},
            }),
            {"where.city": "city", "where.state": "state", "where.country": "country",
             "where.poi": "geographic_poi", "where.relation": "spatial_relation",
             "where.current": "current_location", "when": "timeRange",
             "conditions.description": "condition_description", "conditions.temperature": "condition_temperature"}),
    Variant("weather-unlike", "snips", "GetWeather", "heldout",
            _obj("ClimateLookup", {
                "municipality": _s(),
                "province": _s(),
                "nation": _s(),
                "spot": _s("A named natural place or site"),
                "period": _s("Date or time span"),
                "phenomenon": _s("Rain, snow, fog and the like"),
                "feel": _s("Hot, cold, chilly and the like"),
                "vicinity": _s("Near, close by, in the area"),
                "my_location": _s("Words meaning where I am"),
            }),
            {"municipality": "city", "province": "state", "nation": "country", "spot": "geographic_poi",
             "period": "timeRange", "phenomenon": "condition_description", "feel": "condition_temperature",
             "vicinity": "spatial_relation", "my_location": "current_location"}),
    # --- citations -------------------------------------------------------------------------
    Variant("cite-terse", "citations", None, "dev",
            _obj("Ref", {k: _s() for k in ("authors", "title", "year", "journal", "volume", "pages",
                                            "publisher", "city")}),
            {"authors": "author", "title": "title", "year": "date", "journal": "journal", "volume": "volume",
             "pages": "pages", "publisher": "publisher", "city": "location"}),
    Variant("cite-described", "citations", None, "dev",
            _obj("BibliographicReference", {
                "authors": _s("The authors' names, as written."),
                "title": _s("The title of the work."),
                "year": _s("The year of publication."),
                "journal": _s("The journal or periodical the work appeared in."),
                "volume": _s("The volume number."),
                "pages": _s("The page range."),
                "publisher": _s("The publisher of a book."),
                "place": _s("The city where the publisher is."),
            }, "One entry of a bibliography."),
            {"authors": "author", "title": "title", "year": "date", "journal": "journal", "volume": "volume",
             "pages": "pages", "publisher": "publisher", "place": "location"}),
    Variant("cite-nested", "citations", None, "dev",
            _obj("Citation", {
                "authors": _s(),
                "title": _s(),
                "published": {"type": "object", "properties": {
                    "year": _s(), "in": _s("Journal name"), "volume": _s(), "pages": _s()}},
                "publisher": {"type": "object", "properties": {"name": _s(), "location": _s()}},
            }),
            {"authors": "author", "title": "title", "published.year": "date", "published.in": "journal",
             "published.volume": "volume", "published.pages": "pages", "publisher.name": "publisher",
             "publisher.location": "location"}),
    Variant("cite-unlike", "citations", None, "heldout",
            _obj("LiteratureItem", {
                "creators": _s("Who wrote it"),
                "work_title": _s(),
                "issued": _s("When it came out"),
                "periodical": _s(),
                "vol": _s(),
                "page_span": _s(),
                "press": _s("Publishing house"),
                "press_city": _s(),
            }),
            {"creators": "author", "work_title": "title", "issued": "date", "periodical": "journal",
             "vol": "volume", "page_span": "pages", "press": "publisher", "press_city": "location"}),
]


def _spans(gold: dict[str, Any], labels: tuple[str, ...]) -> str | None:
    parts = []
    for label in labels:
        value = gold.get(label)
        if value is None:
            return None
        parts.append(value[0] if isinstance(value, list) else value)
    return " ".join(str(p) for p in parts)


def gold_for(variant: Variant, labels: dict[str, Any]) -> dict[str, Any]:
    """The gold answer in the variant's own shape (dotted paths nested), from a row's labels.

    A field whose labels the row does not have is absent: the right answer there is null.
    """
    out: dict[str, Any] = {}
    for path, spec in variant.gold.items():
        options = spec if isinstance(spec, list) else [spec]
        values = []
        for option in options:
            labels_of = (option,) if isinstance(option, str) else option
            value = _spans(labels, labels_of)
            if value is not None and value not in values:
                values.append(value)
        if not values:
            continue
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = values[0] if len(values) == 1 else values
    return out
