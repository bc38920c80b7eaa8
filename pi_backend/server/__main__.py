"""pi-server / python -m pi_backend.server: serve a GGUF model over HTTP (uvicorn)."""
from __future__ import annotations

import sys
from typing import List, Optional

from .settings import parse_args


def main(argv: Optional[List[str]] = None) -> None:
    settings = parse_args(argv)
    import uvicorn

    from .app import create_app
    app = create_app(settings)
    print(f"pi-server: listening on http://{settings.host}:{settings.port} (the model loads "
          "in the background; /health says when it is ready)", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port,
                log_level="info" if settings.verbose else "warning")


if __name__ == "__main__":
    main()
