"""A stand-in for kube-apiserver in tests: kmock 0.8's emulator with its gaps filled, plus CRD validation.

No kube-apiserver (nor kind, k3s, minikube, kwok) is installable here, so this is what kubectl and kopf talk to. It is
NOT the real API server: the CRD's OpenAPI schema is checked with jsonschema and its `x-kubernetes-validations` with
cel-python, which approximates but does not reproduce the API server's CEL (no cost budget, no CRD admission checks,
other error wording in places). Real API-server CEL behaviour is not tested.

What it adds to kmock's `KubernetesEmulator` (private API, hence the version pin below):
- create/patch/replace/delete/watch are served here: name from generateName, uid, creationTimestamp, generation (bumped
  when spec changes), a growing resourceVersion; JSON patch (with `test`), merge patch; status subresource semantics;
  `dryRun` answered without storing; finalizers and deletionTimestamp; watches as JSON lines that resume from
  `resourceVersion` instead of replaying every object, honour `timeoutSeconds`, `fieldSelector` (any field path)
  and `labelSelector`;
- lists carry apiVersion/kind/resourceVersion; `as=Table` requests get the CRD's printer columns (what
  `kubectl get rcai` shows); `/api/v1` reports `groupVersion: v1`; `/api/v1/namespaces[/<name>]` is answered;
- `watches_stalled = True` keeps watch streams open but silent (the dead watch of kopf #1276), for health tests;
- CRDs from `crds/*.yaml` are registered for discovery (`kubectl get rcai`), their defaults applied on create and their
  schema + CEL rules enforced on create and update. Invalid objects get 422 `Status` bodies worded like the API
  server's, so kubectl prints the schema/CEL message. Unknown fields are always rejected with the message the API
  server gives under `fieldValidation=Strict` (kubectl's default); the real server prunes them silently when asked
  `fieldValidation=Ignore` (`kubectl --validate=false`). `/openapi/v3` serves what kubectl's validation looks for (the
  CRDs' schemas and PATCH taking `fieldValidation`), so `kubectl apply` works without `--validate=false`.

Start it with `KubeStandin()` (a context manager that runs it on 127.0.0.1:<free port> in a thread and writes a
kubeconfig), or `python -m offline.bench.standins.kube_standin --kubeconfig PATH` for a separate process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime as dt
import hashlib
import importlib.metadata
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import celpy
import jsonschema
import kmock
import yaml
from celpy import celtypes
from kmock._internal import enums, k8s, references, rendering

KMOCK_VERSION = "0.8"
if importlib.metadata.version("kmock") != KMOCK_VERSION or kmock.__version__ != KMOCK_VERSION:
    raise ImportError(f"offline/bench/standins/kube_standin.py patches kmock {KMOCK_VERSION} internals; "
                      f"found {kmock.__version__}")

CRD_DIR = Path(__file__).resolve().parents[3] / "crds"
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # month 13 etc. raise ValueError
    return True


def field_selector(text: str) -> Any:
    """A predicate for a `fieldSelector` (`a.b=v`, `a.b==v`, `a.b!=v`, comma = and), on any dotted field path; the
    API server supports a few fields per kind (events: involvedObject.*, which `kubectl describe` uses), a missing
    field reads as "". Any other syntax is refused, as the API server does."""
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        match = re.fullmatch(r"([A-Za-z0-9_.]+)(!=|==|=)(.*)", term)
        if not match:
            raise ValueError(f"invalid field selector term {term!r}")
        terms.append((match[1].split("."), match[2] != "!=", match[3]))

    def value(obj: Any, path: list[str]) -> str:
        for key in path:
            obj = obj.get(key, "") if isinstance(obj, dict) else ""
        return "" if isinstance(obj, dict) else str(obj)

    return lambda obj: all((value(obj, path) == want) == equal for path, equal, want in terms)


def label_selector(text: str) -> Any:
    """A predicate for a `labelSelector` (`kubectl get -l`): `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
    `k notin (a,b)`, comma = and. Any other syntax is refused, as the API server does."""
    checks = []
    for term in filter(None, (t.strip() for t in re.split(r",(?![^()]*\))", text))):
        if match := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            values = {v.strip() for v in match[3].split(",")}
            inside = match[2] == "in"
            checks.append(lambda labels, k=match[1], vs=values, want=inside: (labels.get(k) in vs) == want)
        elif match := re.fullmatch(r"([\w./-]+)\s*(!=|==|=)\s*([\w./-]*)", term):
            checks.append(lambda labels, k=match[1], v=match[3], equal=match[2] != "!=":
                          (labels.get(k) == v) == equal)
        elif match := re.fullmatch(r"(!?)([\w./-]+)", term):
            checks.append(lambda labels, k=match[2], absent=bool(match[1]): (k in labels) != absent)
        else:
            raise ValueError(f"invalid label selector term {term!r}")
    return lambda obj: all(check(obj.get("metadata", {}).get("labels") or {}) for check in checks)


def openapi_documents(crds: list[CRD]) -> dict[str, tuple[str, dict[str, Any]]]:
    """`apis/<group>/<version>` -> (hash, OpenAPI v3 document) for the CRDs: their schemas, and for each kind the
    object paths with the verbs kubectl looks for, PATCH taking `fieldValidation` (the API server's since 1.27)."""
    grouped: dict[str, list[CRD]] = {}
    for crd in crds:
        grouped.setdefault(f"apis/{crd.group}/{crd.version}", []).append(crd)
    out = {}
    for gv, members in grouped.items():
        paths, schemas = {}, {}
        for crd in members:
            gvk = {"group": crd.group, "version": crd.version, "kind": crd.kind}
            scope = "namespaces/{namespace}/" if crd.namespaced else ""
            params = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}]
            ref = {"$ref": f"#/components/schemas/{crd.group}.{crd.version}.{crd.kind}"}
            body = {"content": {"application/json": {"schema": ref}}}
            paths[f"/{gv}/{scope}{crd.plural}/{{name}}"] = {
                verb: {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": verb, "parameters": params,
                       "responses": {"200": {"description": "OK", **body}}}
                for verb in ("get", "put", "patch")}
            schemas[f"{crd.group}.{crd.version}.{crd.kind}"] = {**crd.schema,
                                                                 "x-kubernetes-group-version-kind": [gvk]}
        doc = {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
               "components": {"schemas": schemas}}
        out[gv] = (hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper(), doc)
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _j(value: Any) -> str:
    return json.dumps(value)


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class Invalid(Exception):
    """A 422 with field causes, or another API error with a plain message."""

    def __init__(self, causes: list[tuple[str, str, str]], code: int = 422, reason: str = "Invalid",
                 message: str | None = None, name: str = "") -> None:
        super().__init__(message or "; ".join(c[2] for c in causes))
        self.causes, self.code, self.reason, self.message, self.name = causes, code, reason, message, name


@attrs.frozen
class CRD:
    """What the stand-in needs from one CustomResourceDefinition version."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    schema: dict[str, Any]
    columns: list[dict[str, Any]]
    status_subresource: bool

    @property
    def resource(self) -> references.resource:
        return references.resource(group=self.group, version=self.version, plural=self.plural)


def load_crds(directory: Path = CRD_DIR) -> list[tuple[CRD, dict[str, Any]]]:
    """Every served version of every CustomResourceDefinition in `directory/*.yaml`, with its names."""
    out = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for ver in spec["versions"]:
                if ver.get("served", True):
                    crd = CRD(spec["group"], ver["name"], spec["names"]["plural"], spec["names"]["kind"],
                              spec["scope"] == "Namespaced", ver["schema"]["openAPIV3Schema"],
                              ver.get("additionalPrinterColumns", []), "status" in ver.get("subresources", {}))
                    out.append((crd, spec["names"]))
    return out


# -- schema and CEL -------------------------------------------------------------------------------------------------
def apply_defaults(schema: dict[str, Any], value: Any) -> None:
    """Fill `default`s of absent properties, as the API server does for structural schemas."""
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


def unknown_fields(schema: dict[str, Any], value: Any, where: tuple[Any, ...] = ()) -> list[str]:
    """Paths of fields the structural schema does not declare (it is closed wherever it lists properties)."""
    found: list[str] = []
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                found += unknown_fields(props[key], item, (*where, key))
            elif isinstance(extra, dict):
                found += unknown_fields(extra, item, (*where, key))
            elif props is not None or (schema.get("type") == "object" and extra is False):
                found.append(_path((*where, key)))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(schema["items"], item, (*where, i))
    return found


def schema_causes(schema: dict[str, Any], obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Schema violations as (field, reason, message) worded like the API server's."""
    causes = []
    validator = jsonschema.Draft7Validator(schema, format_checker=_FORMATS)
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        field, inst, val = _path(err.absolute_path), err.instance, err.validator_value
        match err.validator:
            case "required":
                missing = re.findall(r"'([^']+)' is a required property", err.message)
                field = _path((*err.absolute_path, *missing))
                causes.append((field, "FieldValueRequired", "Required value"))
                continue
            case "maximum":
                msg = f"Invalid value: {_j(inst)}: {field} in body should be less than or equal to {val}"
            case "minimum":
                msg = f"Invalid value: {_j(inst)}: {field} in body should be greater than or equal to {val}"
            case "enum":
                msg = f"Unsupported value: {_j(inst)}: supported values: {', '.join(map(_j, val))}"
            case "pattern":
                msg = f"Invalid value: {_j(inst)}: {field} in body should match '{val}'"
            case "maxLength":
                msg = f"Too long: may not be more than {val} bytes"
            case "maxItems" | "maxProperties":
                msg = f"Too many: {len(inst)}: must have at most {val} items"
            case "type":
                msg = f'Invalid value: "{type(inst).__name__}": {field} in body must be of type {val}: {_j(inst)}'
            case "format":
                msg = f"Invalid value: {_j(inst)}: {field} in body must be of type {val}: {_j(inst)}"
            case _:
                msg = f"Invalid value: {_j(inst)}: {err.message}"
        causes.append((field, "FieldValueInvalid", msg))
    return causes


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    return _PROGRAMS[rule]


def _typed(schema: dict[str, Any], value: Any) -> Any:
    """Mirror the API server's CEL typing: strings with format date-time are timestamps, not strings."""
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: _typed(props.get(k) or (extra if isinstance(extra, dict) else {}), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(schema.get("items") or {}, v) for v in value]
    if isinstance(value, str) and schema.get("format") == "date-time":
        return celtypes.TimestampType(value.upper())  # RFC 3339 allows a lowercase t and z; pendulum does not
    return value


def cel_causes(schema: dict[str, Any], new: Any, old: Any, where: tuple[Any, ...] = ()) -> list[tuple[str, str, str]]:
    """Evaluate `x-kubernetes-validations` top-down; rules using `oldSelf` only where an old value exists."""
    causes: list[tuple[str, str, str]] = []
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule["rule"]
        uses_old = re.search(r"\boldSelf\b", text) is not None
        if uses_old and old is None:
            continue  # transition rules are skipped on create, as in the API server
        act = {"self": celpy.json_to_cel(_typed(schema, new))}
        if uses_old:
            act["oldSelf"] = celpy.json_to_cel(_typed(schema, old))
        try:
            result = _program(text).evaluate(act)
        except celpy.CELEvalError as err:
            result = err
        passed = isinstance(result, bool | celtypes.BoolType) and bool(result)
        if not passed:
            kind = _j(type(new).__name__ if not isinstance(new, dict) else "object")
            msg = rule.get("message") or f"failed rule: {text}"
            if isinstance(result, Exception):
                msg = f"{msg} (rule evaluation error: {result})"
            causes.append((_path(where), "FieldValueInvalid", f"Invalid value: {kind}: {msg}"))
    if isinstance(new, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in new:
                old_sub = old.get(key) if isinstance(old, dict) else None
                causes += cel_causes(sub, new[key], old_sub, (*where, key))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in new.items():
                old_sub = old.get(key) if isinstance(old, dict) else None
                causes += cel_causes(extra, item, old_sub, (*where, key))
    elif isinstance(new, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(new):
            causes += cel_causes(schema["items"], item, None, (*where, i))  # old items are not correlated
    return causes


_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"


def name_causes(name: str) -> list[tuple[str, str, str]]:
    """The API server's check of a custom resource's name: a DNS-1123 subdomain (NameIsDNSSubdomain), its wording."""
    causes = []
    if len(name) > 253:
        causes.append(("metadata.name", "FieldValueInvalid",
                       f"Invalid value: {_j(name)}: must be no more than 253 characters"))
    if not re.fullmatch(_SUBDOMAIN, name, flags=re.ASCII):
        causes.append(("metadata.name", "FieldValueInvalid",
                       f"Invalid value: {_j(name)}: a lowercase RFC 1123 subdomain must consist of lower case "
                       "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
                       f"(e.g. 'example.com', regex used for validation is '{_SUBDOMAIN}')"))
    return causes


def validate(crd: CRD, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Raise `Invalid` for a bad name, unknown fields, schema violations, then (only if the schema holds) CEL rule
    failures."""
    name = obj.get("metadata", {}).get("name", "")
    causes = name_causes(name) if old is None else []  # a name cannot change after create
    if causes:
        texts = [f"{field}: {msg}" for field, _, msg in causes]
        raise Invalid(causes, message=f'{crd.kind}.{crd.group} "{name}" is invalid: ' + ", ".join(texts), name=name)
    unknown = unknown_fields(crd.schema, obj)
    if unknown:
        text = ", ".join(f'unknown field "{u}"' for u in unknown)
        raise Invalid([(u, "FieldValueInvalid", f'unknown field "{u}"') for u in unknown], 400, "BadRequest",
                      f'{crd.kind} in version "{crd.version}" cannot be handled as a {crd.kind}: '
                      f"strict decoding error: {text}", name)
    causes = schema_causes(crd.schema, obj) or cel_causes(crd.schema, obj, old)
    if causes:
        texts = [f"{field}: {msg}" for field, _, msg in causes]
        joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
        raise Invalid(causes, message=f'{crd.kind}.{crd.group} "{name}" is invalid: {joined}', name=name)


# -- patches --------------------------------------------------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 (add, remove, replace, test, copy, move); raises `Invalid` as the API server answers 422."""
    doc = copy.deepcopy(doc)

    def walk(pointer: str) -> tuple[Any, str | int]:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
        node = doc
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last: str | int = parts[-1]
        if isinstance(node, list):
            last = len(node) if last == "-" else int(last)
        return node, last

    for op in ops:
        try:
            kind, path = op["op"], op["path"]
            if kind in ("copy", "move"):
                src, key = walk(op["from"])
                value = copy.deepcopy(src[key])
                if kind == "move":
                    del src[key]
                kind, op = "add", {**op, "value": value}
            node, key = walk(path)
            if kind == "test":
                if node[key] != op["value"]:
                    raise ValueError(f"testing value {path} failed")
            elif kind == "remove":
                del node[key]
            elif kind == "replace":
                node[key]
                node[key] = op["value"]
            elif kind == "add":
                if isinstance(node, list):
                    node.insert(int(key), op["value"])
                else:
                    node[key] = op["value"]
            else:
                raise ValueError(f"unknown op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as err:
            text = f"the server rejected our request due to an error in our request: {err}"
            raise Invalid([], message=text) from None
    return doc


# -- the emulator ---------------------------------------------------------------------------------------------------
def _age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    secs = int((dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= 2 * size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def _jsonpath(obj: Any, path: str) -> Any:
    """The `.a.b[0].c` subset of JSONPath that printer columns use."""
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        if name:
            obj = obj.get(name) if isinstance(obj, dict) else None
        else:
            obj = obj[int(index)] if isinstance(obj, list) and int(index) < len(obj) else None
    return obj


@attrs.define(kw_only=True)
class KubeStandinEmulator(k8s.KubernetesEmulator):
    """kmock's emulator with the gaps of 0.8 filled (see the module docstring)."""

    crd_dir: Path = CRD_DIR
    namespaces: set[str] = attrs.field(factory=lambda: {"default", "kube-public", "kube-system", "ts"})
    crds: dict[references.resource, CRD] = attrs.field(factory=dict, init=False)
    _rv: int = attrs.field(default=1, init=False)
    _log: list[tuple[int, references.resource, dict[str, Any]]] = attrs.field(factory=list, init=False)
    _changed: asyncio.Condition | None = attrs.field(default=None, init=False)
    # True: open watch streams stay open but deliver nothing, the silent dead watch of kopf #1276
    watches_stalled: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for crd, names in load_crds(self.crd_dir):
            self.crds[crd.resource] = crd
            self.resources[f"{crd.group}/{crd.version}/{crd.plural}"] = kmock.ResourceInfo(
                kind=crd.kind, singular=names.get("singular"), namespaced=crd.namespaced,
                shortnames=names.get("shortNames", []), categories=names.get("categories", []),
                verbs=["create", "delete", "get", "list", "patch", "update", "watch"],
                subresources=["status"] if crd.status_subresource else [])
        self.resources["v1/events"] = kmock.ResourceInfo(kind="Event", singular="event", namespaced=True,
                                                         verbs=["create", "get", "list", "patch", "watch"])
        # kopf waits until both namespaces and CRDs are discoverable before it watches anything.
        self.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", singular="namespace", namespaced=False,
                                                             shortnames=["ns"], verbs=["get", "list", "watch"])
        crds = references.resource(group="apiextensions.k8s.io", version="v1", plural="customresourcedefinitions")
        self.resources[crds] = kmock.ResourceInfo(kind="CustomResourceDefinition", singular="customresourcedefinition",
                                                  namespaced=False, shortnames=["crd", "crds"],
                                                  verbs=["get", "list", "watch"])
        for path in sorted(self.crd_dir.glob("*.yaml")):  # so `kubectl get crd` shows them as installed
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    doc["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1,
                                           resourceVersion="1")
                    self._objects[crds, None, doc["metadata"]["name"]] = doc

    # -- helpers
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    async def _emit(self, resource: references.resource, kind: str, obj: dict[str, Any]) -> None:
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            self._log.append((int(obj["metadata"]["resourceVersion"]), resource, {"type": kind, "object": obj}))
            self._changed.notify_all()

    def _kind(self, resource: references.resource) -> tuple[str, str]:
        info = self.resources[resource]
        api = f"{resource.group}/{resource.version}" if resource.group else resource.version
        return api, info.kind or resource.plural.capitalize()

    def _live(self, resource: references.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key in self._objects and not self._objects[key].deleted:
            return copy.deepcopy(self._objects[key].raw)
        return None

    def _select(self, request: rendering.Request) -> list[dict[str, Any]]:
        selector = field_selector(request.params.get("fieldSelector", ""))
        labels = label_selector(request.params.get("labelSelector", ""))
        out = []
        for (resource, namespace, name), obj in self._objects.items():
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            if request.name and name != request.name:  # a GET of one object must not list its siblings
                continue
            if not selector(obj.raw) or not labels(obj.raw):
                continue
            out.append(copy.deepcopy(obj.raw))
        return out

    @staticmethod
    def _error(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> aiohttp.web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason, "code": code, "details": details or {}}
        return aiohttp.web.json_response(body, status=code)

    def _invalid(self, err: Invalid, request: rendering.Request, name: str | None) -> aiohttp.web.Response:
        crd = self.crds.get(request.resource) if request.resource else None
        details = {"name": err.name or name or "", "group": request.resource.group if request.resource else "",
                   "kind": crd.kind if crd else (request.resource.plural if request.resource else ""),
                   "causes": [{"reason": r, "message": m, "field": f} for f, r, m in err.causes]}
        return self._error(err.code, err.reason, err.message or str(err), details)

    # -- request routing
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's URL parser fails on /api/v1/namespaces[/<name>] (500), so answer those before it parses them.
        match = re.fullmatch(r"/api/v1/namespaces(?:/([^/]+))?/?", raw_request.path)
        if match and raw_request.method == "GET":
            return await self._serve_namespaces(raw_request, match.group(1))
        if raw_request.path.startswith("/openapi/v3") and raw_request.method == "GET":
            return self._serve_openapi(raw_request.path.removeprefix("/openapi/v3").strip("/"))
        return await super().__call__(raw_request)

    def _serve_openapi(self, group_version: str) -> aiohttp.web.Response:
        """OpenAPI v3, as much as kubectl's validation needs: per CRD group version, the PATCH operations that take
        `fieldValidation`. kubectl then leaves schema checks to the server (`fieldValidation=Strict`, which this
        stand-in always applies) and checks only for duplicate keys itself, so `--validate=false` is not needed."""
        docs = openapi_documents(list(self.crds.values()))
        if not group_version:
            return aiohttp.web.json_response({"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={h}"}
                                                        for gv, (h, _) in docs.items()}})
        if group_version not in docs:
            return self._error(404, "NotFound", f"no OpenAPI document for {group_version}")
        return aiohttp.web.json_response(docs[group_version][1])

    async def _serve_namespaces(self, raw: aiohttp.web.BaseRequest, name: str | None) -> aiohttp.web.StreamResponse:
        names = self.namespaces | {ns for _, ns, _ in self._objects if ns}

        def one(ns: str) -> dict[str, Any]:
            return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "resourceVersion": "1"},
                    "status": {"phase": "Active"}}

        if name is not None:
            if name not in names:
                details = {"name": name, "kind": "namespaces"}
                return self._error(404, "NotFound", f'namespaces "{name}" not found', details)
            return aiohttp.web.json_response(one(name))
        if raw.query.get("watch") == "true":
            # A namespace "exists" once named or used by an object; new ones are announced within half a second.
            resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(raw)
            seen = set() if raw.query.get("resourceVersion", "0") == "0" else set(names)

            async def announce() -> None:
                while True:
                    for ns in sorted(self.namespaces | {ns for _, ns, _ in self._objects if ns} - seen):
                        seen.add(ns)
                        await resp.write(json.dumps({"type": "ADDED", "object": one(ns)}).encode() + b"\n")
                    await asyncio.sleep(0.5)

            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(announce(), timeout=float(raw.query.get("timeoutSeconds", 1800)))
            return resp
        return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList",
                                          "metadata": {"resourceVersion": str(self._rv)},
                                          "items": [one(ns) for ns in sorted(names)]})

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        try:
            if request.resource is not None and request.resource.plural:
                if request.action == enums.action.CREATE:
                    return await self._create(request)
                if request.method in (enums.method.PATCH, enums.method.PUT) and request.name:
                    return await self._update(request)
                if request.action == enums.action.DELETE and request.name:
                    return await self._delete(request)
                if request.action == enums.action.WATCH:
                    return await self._watch(request)
                if request.action in (enums.action.LIST, enums.action.FETCH) and "as=Table" in request.headers.get(
                        "Accept", ""):
                    return await self._table(request)
        except Invalid as err:
            return self._invalid(err, request, request.name)
        return await super()._handle(request)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # kmock's reasons ("Object Not Found") are not Kubernetes' reasons; clients branch on NotFound/AlreadyExists.
        if isinstance(exc, k8s.KubernetesError):
            reason = {404: "NotFound", 409: "AlreadyExists"}.get(exc.status, exc.reason or "InternalError")
            return self._error(exc.status, reason, exc.message or reason)
        return await super()._render_error(exc)

    # -- verbs
    async def _create(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        obj = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name, namespace = meta.get("name"), request.namespace or meta.get("namespace")
        if not name:
            return self._error(422, "Invalid", "metadata.name: Required value: name or generateName is required")
        if namespace:
            meta["namespace"] = namespace
        crd = self.crds.get(request.resource)
        if crd is not None:
            obj["apiVersion"], obj["kind"] = f"{crd.group}/{crd.version}", crd.kind
            if crd.status_subresource:
                obj.pop("status", None)  # the main resource ignores status when the subresource exists
            apply_defaults(crd.schema, obj)
            validate(crd, obj, None)
        async with self._lock:
            if self._live(request.resource, namespace, name) is not None:
                return self._error(409, "AlreadyExists", f'{request.resource.plural}.{request.resource.group} "{name}" '
                                   "already exists", {"name": name, "group": request.resource.group,
                                                      "kind": request.resource.plural})
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1,
                        resourceVersion=self._next_rv())
            if "dryRun" in request.params:
                return aiohttp.web.json_response(obj, status=201)
            key = (request.resource, namespace, name)
            if key in self._objects:
                self._objects[key].create(obj)
            else:
                self._objects[key] = obj
        await self._emit(request.resource, "ADDED", obj)
        return aiohttp.web.json_response(obj, status=201)

    async def _update(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        crd = self.crds.get(request.resource)
        async with self._lock:
            old = self._live(request.resource, request.namespace, request.name)
            if old is None:
                return self._error(404, "NotFound", f'{request.resource.plural} "{request.name}" not found',
                                   {"name": request.name, "kind": request.resource.plural})
            ctype = request.headers.get("Content-Type", "")
            if request.method == enums.method.PUT:
                sent = request.data.get("metadata", {}).get("resourceVersion")
                new = copy.deepcopy(request.data)
            elif "json-patch" in ctype:
                sent, new = None, json_patch(old, request.data)
            else:  # merge, strategic-merge and apply patches are all treated as RFC 7386 merge patches
                sent = (request.data or {}).get("metadata", {}).get("resourceVersion")
                new = merge_patch(old, request.data or {})
            if sent and sent != old["metadata"]["resourceVersion"]:
                return self._error(409, "Conflict", f'Operation cannot be fulfilled on {request.resource.plural} '
                                   f'"{request.name}": the object has been modified; please apply your changes to '
                                   "the latest version and try again")
            meta = new.setdefault("metadata", {})
            for frozen in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                meta[frozen] = old["metadata"].get(frozen)
            if crd is not None and crd.status_subresource:
                # The status subresource writes only status; the main resource writes everything else.
                if request.subresource == "status":
                    new = {**old, "status": new.get("status")} if new.get("status") is not None else {
                        k: v for k, v in old.items() if k != "status"}
                    meta = new["metadata"] = copy.deepcopy(old["metadata"])
                elif "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            if new.get("spec") != old.get("spec"):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            if crd is not None:
                apply_defaults(crd.schema, new)
                validate(crd, new, old)
            meta["resourceVersion"] = self._next_rv()
            if "dryRun" in request.params:
                return aiohttp.web.json_response(new)
            key = (request.resource, request.namespace, request.name)
            gone = bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")
            if gone:
                self._objects[key].create(new)
                self._objects[key].delete()
            else:
                self._objects[key].create(new)
        await self._emit(request.resource, "DELETED" if gone else "MODIFIED", new)
        return aiohttp.web.json_response(new)

    async def _delete(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        async with self._lock:
            obj = self._live(request.resource, request.namespace, request.name)
            if obj is None:
                return self._error(404, "NotFound", f'{request.resource.plural} "{request.name}" not found',
                                   {"name": request.name, "kind": request.resource.plural})
            if "dryRun" in request.params:
                return aiohttp.web.json_response(obj)
            key = (request.resource, request.namespace, request.name)
            meta = obj["metadata"]
            if meta.get("finalizers"):
                if meta.get("deletionTimestamp"):
                    return aiohttp.web.json_response(obj)
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = self._next_rv()
                self._objects[key].create(obj)
                event = "MODIFIED"
            else:
                meta["resourceVersion"] = self._next_rv()
                self._objects[key].delete()
                event = "DELETED"
        await self._emit(request.resource, event, obj)
        return aiohttp.web.json_response(obj)

    async def _watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        assert request._raw_request is not None
        if self._changed is None:
            self._changed = asyncio.Condition()
        since = int(request.params.get("resourceVersion") or 0)
        async with self._lock:
            # No resourceVersion (or "0"): start with the current state, as the API server does; otherwise resume.
            initial = [] if since else [{"type": "ADDED", "object": o} for o in self._select(request)]
            cursor = len(self._log) if not since else next(
                (i for i, (rv, _, _) in enumerate(self._log) if rv > since), len(self._log))
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request._raw_request)
        names = {request.name} if request.name else None
        selector = field_selector(request.params.get("fieldSelector", ""))
        labels = label_selector(request.params.get("labelSelector", ""))

        async def events() -> AsyncIterator[dict[str, Any]]:
            nonlocal cursor
            for event in initial:
                yield event
            while True:
                assert self._changed is not None
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self._log) > cursor)  # noqa: B023 — read at once
                    batch, cursor = self._log[cursor:], len(self._log)
                for _, resource, event in batch:
                    meta = event["object"]["metadata"]
                    if self.watches_stalled or resource != request.resource:
                        continue
                    if request.namespace is not None and meta.get("namespace") != request.namespace:
                        continue
                    if (names and meta.get("name") not in names) or not selector(event["object"]) \
                            or not labels(event["object"]):
                        continue
                    yield event

        async def pump() -> None:
            async for event in events():
                await resp.write(json.dumps(event).encode() + b"\n")

        with contextlib.suppress(TimeoutError, ConnectionError):  # the watch ends; clients re-list or re-watch
            await asyncio.wait_for(pump(), timeout=float(request.params.get("timeoutSeconds", 1800)))
        return resp

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.resource not in self._get_resources():
            raise k8s.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._select(request)
        api, kind = self._kind(request.resource)
        return {"apiVersion": api, "kind": f"{kind}List", "metadata": {"resourceVersion": str(self._rv)},
                "items": items}

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        doc = await super()._serve_version(request)
        if request.resource is not None and request.resource.group == "":
            doc["groupVersion"] = request.resource.version  # kmock says "/v1"
        for entry in doc.get("resources", []):
            if "/" in entry["name"]:  # kmock gives subresources the short names too, so kubectl warns of ambiguity
                entry["shortNames"], entry["categories"] = [], []
        return doc

    async def _table(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Server-side printing (`Accept: …;as=Table`), which is where kubectl gets a CRD's printer columns."""
        async with self._lock:
            items = self._select(request)
        if request.name and not items:
            return self._error(404, "NotFound", f'{request.resource.plural}.{request.resource.group} "{request.name}" '
                               "not found", {"name": request.name, "kind": request.resource.plural})
        crd = self.crds.get(request.resource)
        columns = [c for c in (crd.columns if crd else []) if c["name"].lower() != "age"]
        defs = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
        defs += [{"name": c["name"], "type": c["type"], "format": c.get("format", ""),
                  "description": c.get("description", ""), "priority": c.get("priority", 0)} for c in columns]
        defs.append({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0})
        rows = []
        for obj in items:
            meta = obj["metadata"]
            cells: list[Any] = [meta["name"]]
            for col in columns:
                value = _jsonpath(obj, col["jsonPath"])
                cells.append(_age(value) if col["type"] == "date" and value else value)
            cells.append(_age(meta.get("creationTimestamp")))
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                    "metadata": meta}})
        return aiohttp.web.json_response({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                                          "metadata": {"resourceVersion": str(self._rv)},
                                          "columnDefinitions": defs, "rows": rows})


# -- running it -----------------------------------------------------------------------------------------------------
def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig for kubectl/kopf pointing at `url` with no credentials (the stand-in checks none)."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "standin", "preferences": {},
        "clusters": [{"name": "standin", "cluster": {"server": url}}],
        "users": [{"name": "standin", "user": {"token": "standin"}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin",
                                                      "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


class KubeStandin:
    """Runs `KubeStandinEmulator` on 127.0.0.1:<free port> in a background thread; use as a context manager.

    `url`, `kubeconfig` and `emulator` (its `.objects` for assertions) are set once entered.
    """

    def __init__(self, kubeconfig: Path, crd_dir: Path = CRD_DIR, port: int | None = None) -> None:
        self.kubeconfig, self.crd_dir, self.port = Path(kubeconfig), crd_dir, port
        self.url = ""
        self.emulator: KubeStandinEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kube-standin", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:  # surfaced to __enter__
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with KubeStandinEmulator(crd_dir=self.crd_dir) as emulator, kmock.Server(emulator, port=self.port) as srv:
            self.emulator, self.url = emulator, f"http://{srv.host}:{srv.port}"
            write_kubeconfig(self.kubeconfig, self.url)
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> KubeStandin:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the Kubernetes stand-in did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def main(argv: list[str] | None = None) -> None:
    """`python -m offline.bench.standins.kube_standin --kubeconfig PATH [--port N]`: serve until interrupted (for kopf
    e2e runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    with KubeStandin(args.kubeconfig, port=args.port) as standin:
        print(f"serving {standin.url}; kubeconfig {args.kubeconfig}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
