"""Route modules, one per resource; `api_shim.app` mounts them under /api/v1."""
