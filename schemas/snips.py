"""Slots of a voice-assistant request, one model per SNIPS intent (built from slots.json).

The slot lists are fixed by the SNIPS 2017 benchmark; they are written out here so the
schemas import without the data folder.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, create_model

__all__ = ["INTENT_MODELS", "SLOTS", "model_for_intent"]

SLOTS: dict[str, list[str]] = {
    "AddToPlaylist": ["artist", "entity_name", "music_item", "playlist", "playlist_owner"],
    "BookRestaurant": [
        "city",
        "country",
        "cuisine",
        "facility",
        "party_size_description",
        "party_size_number",
        "poi",
        "restaurant_name",
        "restaurant_type",
        "served_dish",
        "sort",
        "spatial_relation",
        "state",
        "timeRange",
    ],
    "GetWeather": [
        "city",
        "condition_description",
        "condition_temperature",
        "country",
        "current_location",
        "geographic_poi",
        "spatial_relation",
        "state",
        "timeRange",
    ],
    "PlayMusic": ["album", "artist", "genre", "music_item", "playlist", "service", "sort", "track", "year"],
    "RateBook": [
        "best_rating",
        "object_name",
        "object_part_of_series_type",
        "object_select",
        "object_type",
        "rating_unit",
        "rating_value",
    ],
    "SearchCreativeWork": ["object_name", "object_type"],
    "SearchScreeningEvent": [
        "location_name",
        "movie_name",
        "movie_type",
        "object_location_type",
        "object_type",
        "spatial_relation",
        "timeRange",
    ],
}


def model_for_intent(intent: str) -> type[BaseModel]:
    """A model whose fields are the intent's slots, each an optional span of the request."""
    fields: dict[str, object] = {
        slot: (
            str | None,
            Field(None, max_length=80, description=f"the {slot.replace('_', ' ')} mentioned, copied as written"),
        )
        for slot in SLOTS[intent]
    }
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        intent, __config__=ConfigDict(extra="forbid", json_schema_extra={"copy_from_input": True}), **fields
    )
    model.__doc__ = f"Slots of a SNIPS {intent} request."
    return model


INTENT_MODELS: dict[str, type[BaseModel]] = {intent: model_for_intent(intent) for intent in SLOTS}
AddToPlaylist = INTENT_MODELS["AddToPlaylist"]
BookRestaurant = INTENT_MODELS["BookRestaurant"]
GetWeather = INTENT_MODELS["GetWeather"]
PlayMusic = INTENT_MODELS["PlayMusic"]
RateBook = INTENT_MODELS["RateBook"]
SearchCreativeWork = INTENT_MODELS["SearchCreativeWork"]
SearchScreeningEvent = INTENT_MODELS["SearchScreeningEvent"]
