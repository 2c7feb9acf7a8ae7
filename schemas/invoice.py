"""An invoice summary: a small schema with an enum, a bound number, a date and a list."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Invoice", "LineItem"]


class LineItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(max_length=80, description="what was sold")
    quantity: int = Field(ge=0, le=100_000, description="how many units")
    unit_price: float = Field(ge=0, description="price of one unit")


class Invoice(BaseModel):
    """The key facts of one invoice."""

    model_config = ConfigDict(extra="forbid")

    vendor: str = Field(max_length=80, description="company that issued the invoice")
    invoice_date: dt.date | None = Field(None, description="date the invoice was issued")
    currency: Literal["EUR", "USD", "GBP"] = Field(description="currency of the amounts")
    total: float = Field(ge=0, description="total amount due")
    items: list[LineItem] = Field(default_factory=list, max_length=20, description="line items")
