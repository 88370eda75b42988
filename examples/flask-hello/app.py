"""A Flask app served by gunicorn: proves that requirements.txt really gets installed."""

import os

from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    release = os.environ.get("PAAS_RELEASE", "?")
    return f"Hello from flask-hello (release {release})\n", 200, {"Content-Type": "text/plain"}


@app.get("/health")
def health():
    return "ok\n"
