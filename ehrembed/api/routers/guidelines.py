"""Guideline search over the knowledge base (BM25 + dense, fused)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ehrembed.api.deps import ReadKey, StateDep
from ehrembed.api.errors import ApiError
from ehrembed.api.schemas import GuidelineSearchOut, PassageOut, QueryInt

router = APIRouter(prefix="/v1/guidelines", tags=["guidelines"])


@router.get("/search", response_model=GuidelineSearchOut)
def search(
    state: StateDep,
    _key: ReadKey,
    q: Annotated[str, Query(min_length=1, max_length=2000, description="A clinical question")],
    k: Annotated[QueryInt, Query(ge=1, le=50)] = 5,
) -> GuidelineSearchOut:
    """The k best guideline passages for a question."""
    if state.kb is None:
        raise ApiError(409, "no guideline knowledge base is loaded; build one with `ehrembed guidelines build`")
    hits = state.kb.search(q, k=k)
    return GuidelineSearchOut(query=q, results=[PassageOut(**h.as_dict()) for h in hits])
