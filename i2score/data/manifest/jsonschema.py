"""The JSON Schema of one manifest row, built from the op catalog (``manifests/schema.json`` is
its output for :data:`i2score.runs.ops.CATALOG`; a test checks that the two agree)."""

from __future__ import annotations

from typing import Any

from i2score.data.manifest.schema import SAFE_ID_RE, SUPPORTED_SCHEMES, OpCatalog, Param


def row_json_schema(catalog: OpCatalog) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one manifest row, built from ``catalog``.

    It states the schema checks that a JSON validator can express (ids, op, which of mask/ref
    each op needs, params); relative-path resolution, duplicates, cross-row ids and file checks
    are :func:`validate_manifest`'s.
    """
    url_schema = {"type": "string", "minLength": 1,
                  "pattern": r"^(?![A-Za-z][A-Za-z0-9+.-]+:)|^(" + "|".join(s for s in SUPPORTED_SCHEMES if s) + ")://",
                  "description": "local path (relative to the manifest's folder) or URL"}

    def param_schema(p: Param) -> dict[str, Any]:
        s: dict[str, Any] = {"int": {"type": "integer"}, "float": {"type": "number"},
                             "str": {"type": "string"},
                             "id": {"type": "string", "pattern": f"^{SAFE_ID_RE.pattern}$"}}[p.type]
        s = dict(s)
        if p.minimum is not None:
            s["minimum"] = p.minimum
        if p.maximum is not None:
            s["maximum"] = p.maximum
        if p.choices is not None:
            s["enum"] = list(p.choices)
        if p.default is not None:
            s["default"] = p.default
        if p.doc:
            s["description"] = p.doc
        return s

    per_op = []
    for op in catalog.ops.values():
        then: dict[str, Any] = {"properties": {}}
        required = [name for name, use in (("mask", op.mask), ("ref", op.ref)) if use == "required"]
        if required:
            then["required"] = required
        for name, use in (("mask", op.mask), ("ref", op.ref)):
            if use == "unused":
                then["properties"][name] = {"type": ["string", "null"], "maxLength": 0}
        params: dict[str, Any] = {
            "type": "object",
            "properties": {k: param_schema(p) for k, p in op.params.items()},
            "additionalProperties": False,
        }
        req_params = [k for k, p in op.params.items() if p.required]
        if req_params:
            params["required"] = req_params
        then["properties"]["params"] = {"anyOf": [params, {"type": "string"}, {"type": "null"}]}
        per_op.append({"if": {"properties": {"op": {"const": op.name}}, "required": ["op"]},
                       "then": then})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "i2score manifest row",
        "description": "One row of a CSV / Parquet / JSONL manifest (see manifests/README.md). "
                       "In CSV every value is a string and params is a JSON string.",
        "type": "object",
        "required": ["id", "image"],
        "properties": {
            "id": {"type": ["string", "integer"], "pattern": f"^{SAFE_ID_RE.pattern}$",
                   "description": "safe id: [A-Za-z0-9._-], not starting with '.', at most 128"},
            "image": url_schema,
            "mask": {**url_schema, "type": ["string", "null"],
                     "description": "binary mask, white = the region the user names"},
            "ref": {**url_schema, "type": ["string", "null"], "description": "second image"},
            "op": {"enum": list(catalog.ops), "description": "required in edit manifests"},
            "params": {"type": ["object", "string", "null"],
                       "description": "JSON object of the op's parameters"},
        },
        "additionalProperties": True,
        "allOf": per_op,
    }
