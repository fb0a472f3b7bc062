"""A FastAPI app that hosts an agent for as long as it runs, and asks agents from endpoints.

Run it against a running bus (`corral up`, or `corral controller`) on the same data directory::

    uvicorn fastapi_app:app            # from examples/agents/
    curl localhost:8000/observe/M31    # {"image": "M31.fits", "observed": 1}
    corral ask telescope observe --data '"M42"'

The lifespan starts the agent before the first request and stops it (running its
``shutdown()``) after the last one. Endpoints talk to agents through one async
:class:`corral.Sender` that the app opens at start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import corral
from corral import Agent, Message, on

log = logging.getLogger(__name__)


class Telescope(Agent):
    name = "telescope"

    def __init__(self) -> None:
        super().__init__()
        self.observed = 0
        self.parked = False

    @on("observe")
    async def observe(self, msg: Message) -> dict[str, object]:
        self.observed += 1
        return {"image": f"{msg.data}.fits", "observed": self.observed}

    def shutdown(self) -> None:
        self.parked = True
        log.info("telescope: parked after %d observation(s)", self.observed)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    telescope = Telescope()
    # The agent runs on the app's own event loop; serving() returns once it serves (or raises
    # DuplicateName, AuthError, ...), so a failure stops the app from starting.
    running = asyncio.create_task(telescope.run())
    await telescope.serving()
    sender = await corral.Sender.connect()
    app.state.telescope, app.state.sender = telescope, sender
    try:
        yield
    finally:
        await sender.close()
        telescope.stop()
        await running  # shutdown() has run


app = FastAPI(lifespan=lifespan)


@app.get("/observe/{target}")
async def observe(target: str, request: Request) -> object:
    sender: corral.Sender = request.app.state.sender
    return await sender.ask("telescope", "observe", target, timeout=5)


@app.exception_handler(corral.CorralError)
async def agent_unavailable(request: Request, exc: corral.CorralError) -> JSONResponse:
    # NoSuchAgent, Timeout, Overloaded, AgentError ...: the agent, not this request, failed.
    return JSONResponse({"error": str(exc)}, status_code=503)
