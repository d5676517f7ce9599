"""The web app: ``weakground serve`` (FastAPI + uvicorn, imported only by that command; see :mod:`.app`)."""
