"""``GET /episodes/{episode_id}.ipynb``: an episode as a Jupyter notebook, live or journaled."""

from __future__ import annotations

import json
import pathlib
from typing import Annotated
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Path
from fastapi.responses import Response
from nbformat import NotebookNode

from ..episodes.episode import check_episode_id
from ..episodes.journal import Journal, read_journal
from ..errors import UnknownEpisodeError
from .deps import Config, Sessions

router = APIRouter(tags=["episodes"])

NOTEBOOK_MEDIA_TYPE = "application/x-ipynb+json"


@router.get(
    "/episodes/{episode_id}.ipynb",
    summary="An episode as a Jupyter notebook",
    response_class=Response,
    responses={
        200: {"content": {NOTEBOOK_MEDIA_TYPE: {}}, "description": "An nbformat 4.5 notebook"}
    },
)
async def episode_notebook(
    sessions: Sessions,
    config: Config,
    episode_id: Annotated[str, Path(description="The episode, as returned by /reset.")],
) -> Response:
    """The notebook of a live episode, or of an ended one that the server's journal kept.

    Each step is a code cell with its outputs as Jupyter stores them; rewards, statuses and
    timings are in cell metadata (see ``kernelenv.episodes.export``).
    """
    check_episode_id(episode_id)  # a clear 422 before any file is looked up
    session = sessions.find(episode_id)
    if session is not None and session.env.episode is not None:
        with sessions.using(session):
            notebook = await session.env.export_notebook()
    else:
        notebook = await anyio.to_thread.run_sync(
            _journaled_notebook, config.journal_path(), episode_id
        )
    return Response(
        content=json.dumps(notebook, indent=1, ensure_ascii=False),
        media_type=NOTEBOOK_MEDIA_TYPE,
        headers={"Content-Disposition": content_disposition(f"{episode_id}.ipynb")},
    )


def _journaled_notebook(journal_dir: pathlib.Path | None, episode_id: str) -> NotebookNode:
    if journal_dir is not None:
        path = Journal(journal_dir).path_of(episode_id)
        if path.is_file():
            return read_journal(path).notebook()
    raise UnknownEpisodeError(
        f"no live or journaled episode has id {episode_id!r}; ids come from /reset"
    )


def content_disposition(file_name: str) -> str:
    """A ``Content-Disposition: attachment`` value for any file name (RFC 6266).

    HTTP headers are Latin-1: the plain ``filename`` gets an ASCII stand-in, and
    ``filename*`` (RFC 5987) carries the real name in UTF-8.
    """
    fallback = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in file_name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"
