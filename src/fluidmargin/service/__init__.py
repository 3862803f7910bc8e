"""The HTTP service: FastAPI over one engine worker that owns the durable log.

``create_app(ServiceSettings(...))`` builds the app; ``fluidmargin serve`` runs it under uvicorn.
"""

from fluidmargin.service.app import ServiceSettings, create_app

__all__ = ["ServiceSettings", "create_app"]
