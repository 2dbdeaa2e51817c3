from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from aggregator import lineage, provenance
from aggregator.api.access import AUTH_RESPONSES, VIEWER
from aggregator.api.deps import MAX_ID, Db, Settings
from aggregator.api.schemas import ProvenanceGraph

router = APIRouter(tags=["provenance"], dependencies=[VIEWER], responses=AUTH_RESPONSES)
MAX_OFFSET = 100_000_000
"""The deepest page asked for (a walk stops after the page it serves)."""


@router.get(
    "/api/provenance/{artifact_id:path}",
    response_model=ProvenanceGraph,
    summary="The lineage graph of an artifact (event:12, notification:3, plot:<sha256>, ...), "
    "a page at a time (?limit=, ?offset=; truncated and next_offset say what follows); "
    "content-addressed ids may be shortened to a unique prefix (model:eee43d6844)",
    responses={
        404: {
            "description": "no such artifact (or not an artifact id), or no artifact starts "
            "with this prefix"
        },
        409: {"description": "the prefix is ambiguous; the detail lists the candidates"},
    },
)
def get_provenance(
    conn: Db,
    settings: Settings,
    artifact_id: str,
    direction: Annotated[str, Query(pattern="^(upstream|downstream)$")] = "upstream",
    limit: Annotated[
        int, Query(ge=1, le=MAX_ID, description="artifacts per page (at most api.graph_nodes_max)")
    ] = 200,
    offset: Annotated[
        int, Query(ge=0, le=MAX_OFFSET, description="skip this many artifacts (walk order)")
    ] = 0,
) -> ProvenanceGraph:
    limit = min(limit, settings.api.graph_nodes_max)
    try:
        graph = lineage.graph(conn, artifact_id, direction=direction, offset=offset, limit=limit)
    except lineage.ArtifactNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except lineage.AmbiguousArtifact as exc:
        raise HTTPException(409, {"message": str(exc), "candidates": exc.candidates}) from exc
    except provenance.ProvenanceError as exc:  # not an artifact id: no artifact has it
        raise HTTPException(404, str(exc)) from exc
    return ProvenanceGraph(**graph.as_dict())
