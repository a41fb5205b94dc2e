"""The OpenAPI 3.1 document of the subscriptions API, and a self-contained page that shows it.

The schemas come from the pydantic models (:mod:`.models`), so the document cannot drift from
what the API validates. ``/docs`` needs no network: the page carries the document and a few
lines of JavaScript that list the paths, methods, parameters, bodies and responses.
"""

from __future__ import annotations

import copy
import html
import json
from typing import Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.json_schema import models_json_schema

from .models import Subscription

__all__ = ["ErrorBody", "ErrorDetail", "PatchOperation", "docs_page", "openapi_document"]

ALLOWED_PATCH_PATHS: Final = ("/senders", "/destinations", "/channels", "/events")


class ErrorDetail(BaseModel):
    """One problem with a field of the request."""

    model_config = ConfigDict(extra="forbid")

    path: list[str | int] = Field(description="where: property names and array indexes")
    message: str
    type: str = Field(description="machine-readable kind, e.g. extra_forbidden, id, chain_id")


class ErrorBody(BaseModel):
    """Every error answer (always application/json)."""

    model_config = ConfigDict(extra="forbid")

    error: Literal[True]
    statusCode: int
    reason: str
    details: list[ErrorDetail] | None = Field(
        default=None, description="field errors of a 400 validation error"
    )


class PatchOperation(BaseModel):
    """An RFC 6902 operation; ``path`` and ``from`` must lie under /senders, /destinations,
    /channels or /events."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    op: Literal["add", "remove", "replace", "move", "copy", "test"]
    path: str = Field(
        description="JSON pointer (RFC 6901)",
        json_schema_extra={"pattern": "^/(senders|destinations|channels|events)(/.*)?$"},
    )
    value: JsonValue = Field(default=None, description="for add, replace and test")
    from_: str | None = Field(default=None, alias="from", description="for move and copy")


def _error_responses(*statuses: int) -> dict[str, Any]:
    text = {
        400: "invalid request: bad JSON, schema errors (with details), unknown network, a limit "
        "(batch size, patch operations, nesting), a template that does not compile",
        401: "missing or wrong bearer token",
        404: "no such subscription",
        408: "the body did not arrive in time",
        409: "duplicate id, a failed JSON Patch test, or a concurrent change",
        413: "body (or the patched subscription) larger than the limit",
        415: "no content type, or not JSON",
        421: "Host header not allowed",
        429: "subscription limit reached (in all, or for this client)",
        503: "Redis unavailable",
    }
    return {
        str(status): {
            "description": text[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for status in statuses
    }


def _add_shown_schemas(schemas: dict[str, Any]) -> None:
    """``ShownSubscription``: a subscription as answers show it, each webhook channel's
    ``secret`` and ``bearer`` replaced by the ``hasSecret`` and ``hasBearer`` flags."""
    hook = copy.deepcopy(schemas["WebhookChannel"])
    properties = hook["properties"]
    for member, flag in (("secret", "hasSecret"), ("bearer", "hasBearer")):
        properties.pop(member, None)
        properties[flag] = {
            "type": "boolean",
            "const": True,
            "description": f"present when the channel has a {member}, which is never shown; "
            "sent back in a PATCH, it keeps the stored value",
        }
    hook["title"] = "ShownWebhookChannel"
    schemas["ShownWebhookChannel"] = hook
    text = json.dumps(schemas["Subscription"]).replace(
        '"#/components/schemas/WebhookChannel"', '"#/components/schemas/ShownWebhookChannel"'
    )
    shown = json.loads(text)
    shown["title"] = "ShownSubscription"
    schemas["ShownSubscription"] = shown


def openapi_document(
    *, version: str = "0.1.0", secured_writes: bool = False, secured_reads: bool = False
) -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``secured_*`` marks which routes need the bearer token."""
    _, top = models_json_schema(
        [
            (Subscription, "validation"),
            (ErrorBody, "serialization"),
            (PatchOperation, "validation"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = top["$defs"]
    _add_shown_schemas(schemas)
    sub_ref = {"$ref": "#/components/schemas/Subscription"}
    shown_ref = {"$ref": "#/components/schemas/ShownSubscription"}
    write: list[dict[str, list[str]]] = [{"bearer": []}] if secured_writes else []
    read: list[dict[str, list[str]]] = [{"bearer": []}] if secured_reads else []
    id_param = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9:.\-_]{1,100}$"},
    }
    json_body = {"application/json": {"schema": shown_ref}}
    paths: dict[str, Any] = {
        "/subs": {
            "get": {
                "summary": "List the persistent subscriptions",
                "operationId": "listSubscriptions",
                "security": read,
                "responses": {
                    "200": {
                        "description": "every stored subscription, as created (secrets hidden)",
                        "content": {
                            "application/json": {"schema": {"type": "array", "items": shown_ref}}
                        },
                    },
                    **_error_responses(401, 421, 503),
                },
            },
            "post": {
                "summary": "Create one subscription or an array of them (all or nothing)",
                "operationId": "createSubscriptions",
                "security": write,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    sub_ref,
                                    {"type": "array", "items": sub_ref, "minItems": 1},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "201": {"description": "created; empty body"},
                    **_error_responses(400, 401, 408, 409, 413, 415, 421, 429, 503),
                },
            },
        },
        "/subs/{id}": {
            "parameters": [id_param],
            "get": {
                "summary": "One subscription, as created (secrets hidden)",
                "operationId": "getSubscription",
                "security": read,
                "responses": {
                    "200": {"description": "the subscription", "content": json_body},
                    **_error_responses(401, 404, 421, 503),
                },
            },
            "patch": {
                "summary": "Change senders, destinations, channels or events (RFC 6902)",
                "operationId": "patchSubscription",
                "security": write,
                "requestBody": {
                    "required": True,
                    "content": {
                        media: {
                            "schema": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/PatchOperation"},
                            }
                        }
                        for media in ("application/json-patch+json", "application/json")
                    },
                },
                "responses": {
                    "200": {"description": "the updated subscription", "content": json_body},
                    **_error_responses(400, 401, 404, 408, 409, 413, 415, 421, 503),
                },
            },
            "delete": {
                "summary": "Delete a subscription (an unknown id is no error)",
                "operationId": "deleteSubscription",
                "security": write,
                "responses": {
                    "200": {"description": "deleted, or was not there; empty body"},
                    **_error_responses(401, 421, 503),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3.1 document"}},
            }
        },
        "/docs": {
            "get": {
                "summary": "This document as an HTML page",
                "operationId": "docs",
                "responses": {"200": {"description": "HTML"}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ocstream subscriptions API",
            "version": version,
            "description": (
                "XCM monitoring subscriptions. Every path also answers with a trailing slash. "
                "Errors are always application/json ErrorBody objects."
            ),
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; }}
h2 {{ border-bottom: 1px solid #ccc; }}
.op {{ border: 1px solid #ddd; border-radius: 4px; margin: .6em 0; padding: .4em .8em; }}
.method {{ font-weight: bold; display: inline-block; min-width: 5em; text-transform: uppercase; }}
.get {{ color: #1565c0; }} .post {{ color: #2e7d32; }} .patch {{ color: #ef6c00; }}
.delete {{ color: #c62828; }}
code, pre {{ background: #f6f6f6; }}
pre {{ padding: .6em; overflow: auto; font-size: 13px; }}
details > summary {{ cursor: pointer; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p id="description"></p>
<p>The raw document: <a href="openapi.json">openapi.json</a>.</p>
<h2>Paths</h2>
<div id="paths"></div>
<h2>Schemas</h2>
<div id="schemas"></div>
<script type="application/json" id="openapi">{document}</script>
<script>
(function () {{
  const doc = JSON.parse(document.getElementById("openapi").textContent);
  const el = (tag, props, ...children) => {{
    const node = document.createElement(tag);
    Object.assign(node, props || {{}});
    for (const child of children) node.append(child);
    return node;
  }};
  const pre = (value) => el("pre", {{ textContent: JSON.stringify(value, null, 2) }});
  document.getElementById("description").textContent = doc.info.description || "";
  const paths = document.getElementById("paths");
  for (const [path, item] of Object.entries(doc.paths)) {{
    for (const method of ["get", "post", "put", "patch", "delete"]) {{
      const op = item[method];
      if (!op) continue;
      const box = el("div", {{ className: "op" }},
        el("span", {{ className: "method " + method, textContent: method }}),
        el("code", {{ textContent: path }}), " ", op.summary || "");
      if (op.security && op.security.length) box.append(" (bearer token)");
      const params = (item.parameters || []).concat(op.parameters || []);
      if (params.length) box.append(el("details", {{}},
        el("summary", {{ textContent: "parameters" }}), pre(params)));
      if (op.requestBody) box.append(el("details", {{}},
        el("summary", {{ textContent: "request body" }}), pre(op.requestBody.content)));
      const responses = el("ul");
      for (const [status, response] of Object.entries(op.responses || {{}})) {{
        responses.append(el("li", {{ textContent: status + ": " + response.description }}));
      }}
      box.append(el("details", {{}}, el("summary", {{ textContent: "responses" }}), responses));
      paths.append(box);
    }}
  }}
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries(doc.components.schemas)) {{
    schemas.append(el("details", {{}}, el("summary", {{ textContent: name }}), pre(schema)));
  }}
}})();
</script>
</body>
</html>
"""


def docs_page(document: dict[str, Any]) -> str:
    """A standalone HTML page rendering ``document`` (no external scripts, styles or fonts)."""
    # Inside <script>, "</" could end the element early; "<\\/" is the same JSON string.
    embedded = orjson.dumps(document).decode().replace("</", "<\\/")
    title = html.escape(str(document.get("info", {}).get("title", "API")))
    return _PAGE.format(title=title, document=embedded)
