from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from aggregator import lineage, provenance
from aggregator.api.deps import Db
from aggregator.api.schemas import ProvenanceGraph

router = APIRouter(tags=["provenance"])


@router.get(
    "/api/provenance/{artifact_id:path}",
    response_model=ProvenanceGraph,
    summary="The lineage graph of an artifact (event:12, notification:3, plot:<sha256>, ...); "
    "content-addressed ids may be shortened to a unique prefix (model:eee43d6844)",
    responses={
        404: {"description": "no such artifact, or no artifact starts with this prefix"},
        409: {"description": "the prefix is ambiguous; the detail lists the candidates"},
        422: {"description": "bad artifact id"},
    },
)
def get_provenance(
    conn: Db,
    artifact_id: str,
    direction: Annotated[str, Query(pattern="^(upstream|downstream)$")] = "upstream",
) -> ProvenanceGraph:
    try:
        graph = lineage.graph(conn, artifact_id, direction=direction)
    except lineage.ArtifactNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except lineage.AmbiguousArtifact as exc:
        raise HTTPException(409, {"message": str(exc), "candidates": exc.candidates}) from exc
    except provenance.ProvenanceError as exc:
        raise HTTPException(422, str(exc)) from exc
    return ProvenanceGraph(**graph.as_dict())
