"""HTTP API: FastAPI app factory, routers, schemas and auth (issue 6)."""
