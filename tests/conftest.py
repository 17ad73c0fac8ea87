"""Shared test setup: no network, a fresh feature cache per session, artifacts kept for people to look at."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url():
    """The real app, served once per test session on a free loopback port (browser and API tests share it)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import app as vlmviz_app

    port = _free_port()
    vlmviz_app.demo.queue(default_concurrency_limit=2).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
        css=vlmviz_app.CSS, theme=vlmviz_app.THEME, show_error=True)
    yield f"http://127.0.0.1:{port}/"
    vlmviz_app.demo.close()
