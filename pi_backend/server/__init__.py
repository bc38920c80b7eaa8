"""pi-server: an OpenAI-compatible HTTP server (llama_cpp.server's routes) with continuous
batching on the pi_backend engine. app.py: routes; engine.py: the scheduler thread;
request.py: one request's Llama; types.py: request bodies; errors.py: error shapes;
metrics.py: Prometheus; settings.py: settings and command line; __main__.py: pi-server."""
from .settings import ServerSettings, parse_args

__all__ = ["ServerSettings", "parse_args", "create_app", "main"]


def create_app(settings: ServerSettings, **kwargs):
    from .app import create_app as _create
    return _create(settings, **kwargs)


def main(argv=None) -> None:
    from .__main__ import main as _main
    _main(argv)
