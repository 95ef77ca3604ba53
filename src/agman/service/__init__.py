"""HTTP service: FastAPI app and the web page."""
