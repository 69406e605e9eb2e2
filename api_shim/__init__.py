"""The HTTP shim (FastAPI): validate, authorise, enqueue; reads for status."""
