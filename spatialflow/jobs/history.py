"""History and rollback of a repository's branch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spatialflow.errors import CommitConflictError, SpatialFlowError

__all__ = ["Entry", "history", "rollback"]


@dataclass(frozen=True)
class Entry:
    snapshot: str
    written_at: str
    message: str
    run_key: str | None
    tags: tuple[str, ...]


def history(repo: Any, branch: str = "main", limit: int | None = None) -> list[Entry]:
    """Commits on ``branch``, newest first, with their run keys and tags."""
    tags: dict[str, list[str]] = {}
    for t in repo.list_tags():
        tags.setdefault(repo.lookup_tag(t), []).append(t)
    out = []
    try:
        ancestry = repo.ancestry(branch=branch)
    except Exception as e:  # icechunk's own error types
        raise SpatialFlowError(f"no branch {branch!r} in this repository ({e})") from e
    for snap in ancestry:
        meta = snap.metadata or {}
        out.append(
            Entry(
                snap.id,
                snap.written_at.isoformat(timespec="seconds"),
                snap.message,
                meta.get("run_key"),
                tuple(sorted(tags.get(snap.id, []))),
            )
        )
        if limit is not None and len(out) >= limit:
            break
    return out


def rollback(repo: Any, branch: str, to: str) -> tuple[str, str]:
    """Move ``branch`` to a tag or snapshot id (compare-and-swap); (old, new) snapshot ids."""
    import icechunk

    from spatialflow.io.repository import ref_lock

    if to in set(repo.list_tags()):
        target = repo.lookup_tag(to)
    else:
        target = to
        try:
            repo.readonly_session(snapshot_id=target)
        except Exception as e:
            raise SpatialFlowError(
                f"{to!r} is neither a tag nor a snapshot of this repository ({e})"
            ) from e
    current = repo.lookup_branch(branch)
    try:
        with ref_lock(repo):
            repo.reset_branch(branch, target, from_snapshot_id=current)
    except icechunk.IcechunkError as e:
        raise CommitConflictError(
            f"branch {branch!r} moved during the rollback ({e}); nothing changed, retry"
        ) from e
    return current, target
