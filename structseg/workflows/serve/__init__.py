"""The HTTP inference server and its web page (``structseg serve``)."""
from .app import ServeSettings, create_app, serve

__all__ = ["ServeSettings", "create_app", "serve"]
