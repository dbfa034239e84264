"""The model service's stable entry point: ``uvicorn ai_assets.model_service:app``.

The service itself lives in :mod:`ai_assets.service`; this module only builds its app.
"""

from ai_assets.service.app import create_app

app = create_app()
