"""A US postal address split into the parts the usaddress corpus labels.

Field names are the corpus's own labels, so a benchmark compares them with the gold spans
without a mapping table. Every part is optional: most addresses have only some of them.
Descriptions carry no sample values on purpose: the 135M model copies a value quoted in a
description into every answer (measured: '1005' as the house number of 9 addresses in 10).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Address"]


class Address(BaseModel):
    """The parts of one US postal address, each copied from the text as written."""

    # Span-copy: every part is a piece of the address as written (benchmarks/ablation.py).
    model_config = ConfigDict(extra="forbid", json_schema_extra={"copy_from_input": True})

    AddressNumber: str | None = Field(None, max_length=16, description="house or building number")
    StreetNamePreDirectional: str | None = Field(
        None, max_length=16, description="compass direction before the street name"
    )
    StreetNamePreType: str | None = Field(None, max_length=24, description="street type written before the street name")
    StreetName: str | None = Field(None, max_length=64, description="the street's name without its type")
    StreetNamePostType: str | None = Field(
        None, max_length=24, description="street type after the name (street, avenue, road...)"
    )
    StreetNamePostDirectional: str | None = Field(
        None, max_length=16, description="compass direction after the street type"
    )
    OccupancyType: str | None = Field(None, max_length=24, description="unit type (suite, apartment, room...)")
    OccupancyIdentifier: str | None = Field(None, max_length=24, description="unit number")
    USPSBoxType: str | None = Field(None, max_length=24, description="post office box type")
    USPSBoxID: str | None = Field(None, max_length=24, description="post office box number")
    PlaceName: str | None = Field(None, max_length=48, description="city or town")
    StateName: str | None = Field(None, max_length=24, description="state")
    ZipCode: str | None = Field(None, max_length=10, description="ZIP code")
