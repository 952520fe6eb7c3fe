"""API keys for any rayrank FastAPI app: `Authorization: Bearer KEY`, compared in constant time.

`protect(app, AuthConfig(...), on_reject)` adds an ASGI middleware (so `/openapi.json` and `/docs`
are covered too, not only the routes that ask for a dependency) and declares the bearer scheme in
the app's OpenAPI document. Keys come from an environment variable (a Kubernetes Secret in the
RayService), comma-separated so a key can be rotated without downtime; unset or empty means open.
A key is never logged: the middleware logs how many keys it holds, not what they are.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Collection

from fastapi import FastAPI
from starlette.responses import JSONResponse

from rayrank.ray_app.config import AuthConfig
from rayrank.ray_app.schemas import ErrorResponse

logger = logging.getLogger(__name__)

# Open without a key: the liveness check, which Kubernetes probes without credentials.
OPEN_PATHS = frozenset({"/healthz"})
UNAUTHORIZED = {"description": "No API key, or a wrong one (`Authorization: Bearer KEY`)",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}}


def key_matches(presented: str, keys: Collection[str]) -> bool:
    """Whether `presented` is one of `keys`; every key is compared, each in constant time.

    Example:
        >>> key_matches("s3cret", ["other", "s3cret"]), key_matches("s3cre", ["s3cret"])
        (True, False)
    """
    given = presented.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


class ApiKeyMiddleware:
    """Refuses HTTP requests without a valid bearer key: 401, `WWW-Authenticate`, a JSON error."""

    def __init__(self, app, keys: Collection[str], on_reject: Callable[[str], None],
                 open_paths: Collection[str] = OPEN_PATHS) -> None:
        self.app, self.keys, self.on_reject, self.open_paths = app, tuple(keys), on_reject, frozenset(open_paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token and key_matches(token.strip(), self.keys):
            return await self.app(scope, receive, send)
        problem = "missing" if not header else "invalid"
        self.on_reject("unauthorized")
        challenge = 'Bearer realm="rayrank"' + ('' if problem == "missing" else ', error="invalid_token"')
        body = {"error": {"type": "unauthorized", "field": "Authorization",
                          "message": f"Authorization: {problem} API key; send `Authorization: Bearer KEY`"}}
        await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})(scope, receive, send)


def protect(app: FastAPI, config: AuthConfig, on_reject: Callable[[str], None]) -> bool:
    """Require a key on every route but `OPEN_PATHS` when `config`'s variable holds any; True if it does.

    Call it after the routes are added: it also marks them in the OpenAPI document (bearer scheme,
    a 401 response).
    """
    keys = config.keys()
    if not keys:
        logger.warning("%s is not set: the API is open to anyone who can reach its port", config.api_keys_env)
        return False
    logger.info("API keys required (%d key(s) from %s)", len(keys), config.api_keys_env)
    app.add_middleware(ApiKeyMiddleware, keys=keys, on_reject=on_reject)
    build_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build_openapi()
            components = schema.setdefault("components", {})
            components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
            error = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            components.setdefault("schemas", {}).update(error.pop("$defs", {}))
            components["schemas"].setdefault("ErrorResponse", error)
            for path, operations in schema.get("paths", {}).items():
                if path in OPEN_PATHS:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"apiKey": []}]
                    operation.setdefault("responses", {})["401"] = {
                        **UNAUTHORIZED, "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/ErrorResponse"}}}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return True
