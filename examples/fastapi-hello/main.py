"""A FastAPI app served by uvicorn, declared the way many projects are: pyproject.toml only.

There is no /health route and no paas.toml: the default check (GET / with the app's Host,
any answer below 500) is enough. `release:` shows how a non-web line is reported, not run.
"""

import os

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
def index() -> dict[str, str]:
    return {"app": "fastapi-hello", "release": os.environ.get("PAAS_RELEASE", "?")}
