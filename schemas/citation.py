"""A bibliographic reference, with the fields the anystyle gold corpus labels."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Citation"]


class Citation(BaseModel):
    """One reference from a bibliography, each part copied as written."""

    # Span-copy: every part is a piece of the reference as written (benchmarks/ablation.py).
    model_config = ConfigDict(extra="forbid", json_schema_extra={"copy_from_input": True})

    author: str | None = Field(None, max_length=300, description="the authors' names as written")
    title: str | None = Field(None, max_length=300, description="title of the work")
    journal: str | None = Field(None, max_length=200, description="journal the article appeared in")
    container_title: str | None = Field(None, max_length=200, description="book or proceedings containing the work")
    editor: str | None = Field(None, max_length=200, description="editors, if any")
    publisher: str | None = Field(None, max_length=120, description="publisher")
    location: str | None = Field(None, max_length=80, description="place of publication")
    date: str | None = Field(None, max_length=40, description="year or date of publication")
    volume: str | None = Field(None, max_length=20, description="volume")
    pages: str | None = Field(None, max_length=30, description="page or page range")
