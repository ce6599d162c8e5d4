"""REST handlers that read live state run on the event loop, never in Starlette's thread
pool (where they would race the loop that writes that state): a plain ``def`` endpoint
is run in the pool, so every one that takes the hub must be ``async def``. File reading
is handed to threads inside them (``asyncio.to_thread``, streamed bodies)."""

from __future__ import annotations

import inspect

from fastapi.routing import APIRoute

from earshot.server.http.rest import api, hub_of, ops


def _takes_the_hub(route: APIRoute) -> bool:
    return any(d.call is hub_of for d in route.dependant.dependencies)


def test_every_endpoint_that_takes_the_hub_runs_on_the_loop() -> None:
    routes = [r for r in (*api.routes, *ops.routes)
              if isinstance(r, APIRoute) and _takes_the_hub(r)]
    paths = {r.path for r in routes}
    # the ones that used to run in the pool, among the rest
    assert {"/api/sources/{name}/audio", "/api/streams/{stream_id}/segments",
            "/api/streams/{stream_id}/segments/{n}/audio",
            "/api/streams/{stream_id}/transcript", "/api/streams"} <= paths
    in_pool = sorted(r.path for r in routes if not inspect.iscoroutinefunction(r.endpoint))
    assert in_pool == []
