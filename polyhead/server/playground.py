"""The web playground: GET / is one page (polyhead/server/web/, plain ES modules shipped as package
data, no build step, no CDN) that talks to the same /v1 endpoints any client does, plus
GET /web/config.json, what the page cannot learn from /v1/models and /v1/tasks: the sampling
defaults the server applies and whether it wants an API key.

Every URL the page fetches is relative to the page, so it works unchanged behind a path prefix
(`--root-path`)."""

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from polyhead.server.protocol import SamplingFields

WEB_FOLDER = Path(__file__).parent / "web"
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                   "repetition_penalty")
PUBLIC_PREFIX = "/web/"  # the page's assets and config: public, so the page can load before a key is typed

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(WEB_FOLDER / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/web/config.json", include_in_schema=False)
async def config(request: Request):
    state = request.app.state.server
    defaults = {name: SamplingFields.model_fields[name].default for name in SAMPLING_FIELDS}
    defaults["max_tokens"] = state.settings.default_max_tokens
    return {"api_key_required": bool(state.settings.api_key), "default_model": state.settings.model_names[0],
            "sampling_defaults": defaults,
            "backbones": {name: {"generative": backbone.is_generative, "tasks": backbone.tasks}
                          for name, backbone in state.registry.backbones.items()},
            "task_sampling": {name: task.spec.sampling for name, task in state.registry.tasks.items()
                              if task.kind == "generate" and task.spec.sampling}}


def install_playground(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/web", StaticFiles(directory=WEB_FOLDER), name="web")
