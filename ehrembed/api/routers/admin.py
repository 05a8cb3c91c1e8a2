"""Admin: swap in a rebuilt index without stopping the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from ehrembed.api.deps import AdminKey, StateDep
from ehrembed.api.schemas import ReloadOut

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/datasets/{dataset}/reload-index", response_model=ReloadOut)
def reload_index(
    dataset: Annotated[str, Path(min_length=1, max_length=200)], state: StateDep, _key: AdminKey
) -> ReloadOut:
    """Load the newest index recorded for the dataset (e.g. after `ehrembed index`) and swap it in."""
    return ReloadOut(**state.reload_index(dataset))
