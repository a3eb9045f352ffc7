"""Config dir -> CompiledConfig, collecting every problem instead of stopping at the first.

Order: load every file (syntax, duplicate keys, ${ENV}), check each against its kind's
schema, then cross-reference (mappings target real canonical events, accounts enable
real destinations with valid settings, purposes exist), and compile every JMESPath
expression and Jinja template. Only a config with no errors becomes a CompiledConfig.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from router.config import schemas
from router.config.alerts import compile_alerts
from router.config.issues import ERROR, WARNING, ConfigError, Issue
from router.config.model import (
    Account,
    AuthScheme,
    CanonicalEventDef,
    CompiledConfig,
    ConsentConfig,
    CookieSpec,
    Destination,
    DestinationConnection,
    Environment,
    EventRule,
    FieldRule,
    IdentifierSpec,
    IngestSpec,
    MergeSpec,
    OutboundSettings,
    ResponseRules,
    RouterSettings,
    SourceConnection,
    SourceMapping,
    Where,
    freeze,
)
from router.config.yamlload import Loaded, load_yaml_file
from router.expr.jinja import FILTERS as JINJA_FILTERS
from router.expr.jmes import ExprError, compile_expr
from router.expr.tree import TemplateTree, compile_tree

SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|private[_-]?key|write[_-]?key)$",
                        re.IGNORECASE)
# literals that look like credentials wherever they appear (platform token shapes, long keys)
TOKEN_LIKE = re.compile(r"^(EAA[A-Za-z0-9]{20,}|sk_(live|test)_[A-Za-z0-9]{10,}|pk_[A-Za-z0-9]{20,}"
                        r"|xox[abp]-[A-Za-z0-9-]{10,}|ya29\.[A-Za-z0-9_-]{20,}|[A-Za-z0-9_-]{40,})$")
MAPPING_FIELD_KEYS = ("event_id", "message_id", "occurred_at", "user_data", "custom_data",
                      "context", "consent")
BASE_URL_SCHEMA = {"type": "string", "pattern": "^https?://",
                   "description": "Replaces the platform host (sandbox, proxy, regional endpoint)."}


@dataclass
class _Files:
    root: str
    router: Loaded | None = None
    consent: Loaded | None = None
    canonical: Loaded | None = None
    accounts: list[Loaded] = field(default_factory=list)
    mappings: list[Loaded] = field(default_factory=list)
    destinations: list[Loaded] = field(default_factory=list)

    def all(self) -> Iterator[Loaded]:
        for one in (self.router, self.consent, self.canonical):
            if one is not None:
                yield one
        yield from self.accounts
        yield from self.mappings
        yield from self.destinations


def _display(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _yaml_files(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                  if n.endswith((".yaml", ".yml")) and not n.endswith(("_test.yaml", "_test.yml")))


def _load(root: str, issues: list[Issue]) -> _Files:
    files = _Files(root=root)
    for sub in ("configs", "mappings", "destinations.d"):
        if not os.path.isdir(os.path.join(root, sub)):
            issues.append(Issue(_display(os.path.join(root, sub)), 1, 1, ERROR,
                                f"missing directory {sub}/ in config dir {root}",
                                code="layout",
                                hint="a config dir holds configs/, mappings/ and destinations.d/"))

    def one(rel: str, required: bool = True, resolve: bool = True) -> Loaded | None:
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            if required:
                issues.append(Issue(_display(path), 1, 1, ERROR, f"missing file {rel}",
                                    code="layout"))
            return None
        return load_yaml_file(path, _display(path), resolve=resolve)

    files.router = one("configs/router.yaml")
    files.consent = one("configs/consent.yaml")
    files.canonical = one("mappings/canonical.yaml", resolve=False)
    files.accounts = [load_yaml_file(p, _display(p))
                      for p in _yaml_files(os.path.join(root, "configs", "accounts"))]
    files.mappings = [load_yaml_file(p, _display(p), resolve=False)
                      for p in _yaml_files(os.path.join(root, "mappings"))
                      if os.path.basename(p) not in ("canonical.yaml", "canonical.yml")]
    files.destinations = [load_yaml_file(p, _display(p), resolve=False)
                          for p in _yaml_files(os.path.join(root, "destinations.d"))]
    for loaded in files.all():
        issues.extend(loaded.issues)
    return files


def _walk(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, i))


def _check_secrets(loaded: Loaded, issues: list[Issue], names: bool = True) -> None:
    """Secrets are only ever ${ENV} references; flag literals (and token-shaped values).

    `names=False` (destination files, whose keys describe settings rather than hold
    them) flags only values shaped like credentials."""
    for path, value in _walk(loaded.data):
        if not isinstance(value, str) or not value or not path:
            continue
        key = path[-1]
        if path in loaded.env_refs or "{{" in value:
            continue
        if names and isinstance(key, str) and SECRET_KEY.search(key):
            issues.append(loaded.issue(
                path, f"literal secret in {key!r}: secrets must be ${{ENV}} references",
                code="literal-secret",
                hint=f"write {key}: ${{SOME_NAME}} and set SOME_NAME in the environment"))
        elif TOKEN_LIKE.match(value) and not value.startswith(("http", "{{", "/")):
            issues.append(loaded.issue(
                path, f"{'.'.join(map(str, path))} looks like a credential written inline",
                severity=WARNING, code="token-like-literal",
                hint="if it is a secret, move it to an environment variable (${NAME})"))


def _suggest(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def _version(data: dict[str, Any]) -> str:
    return str(data.get("version", "0"))


# --- canonical ------------------------------------------------------------------------

def _compile_canonical(loaded: Loaded, issues: list[Issue]) -> dict[str, CanonicalEventDef]:
    out: dict[str, CanonicalEventDef] = {}
    defs = loaded.data.get("$defs") or {}
    events = loaded.data.get("events") or {}
    # one metaschema pass over all event schemas together: 5x faster than one per event,
    # which keeps `router validate` quick enough for a pre-commit hook
    prefix = "__event__"
    combined = {"$defs": {**defs, **{prefix + n: e.get("custom_data") or {}
                                     for n, e in events.items()}}}
    broken: set[str] = set()
    meta = Draft202012Validator(Draft202012Validator.META_SCHEMA)
    for error in meta.iter_errors(combined):
        path = list(error.absolute_path)
        key = str(path[1]) if len(path) > 1 else ""
        if key.startswith(prefix):
            name = key[len(prefix):]
            broken.add(name)
            where: tuple[str | int, ...] = ("events", name, "custom_data", *path[2:])
            label = f"events.{name}.custom_data"
        else:
            where, label = ("$defs", *path[1:]), "$defs"
            broken.update(events)
        issues.append(loaded.issue(where, f"{label} is not a valid JSON Schema: {error.message}",
                                   code="canonical-schema"))
    for name, spec in events.items():
        if name in broken:
            continue
        schema = dict(spec.get("custom_data") or {})
        schema["$defs"] = defs
        validator = Draft202012Validator(schema)
        declared = (spec.get("custom_data") or {}).get("properties") or {}
        for key in spec.get("dedup_keys") or []:
            if key not in declared:
                issues.append(loaded.issue(
                    ("events", name, "dedup_keys"),
                    f"dedup key {key!r} of {name} is not a declared custom_data property",
                    code="canonical-dedup", hint=_suggest(key, declared)))
        out[name] = CanonicalEventDef(
            name=name, description=spec.get("description", ""), category=spec.get("category", ""),
            dedup_keys=tuple(spec.get("dedup_keys") or ()), hold_seconds=int(spec.get("hold") or 0),
            schema=freeze(schema), validator=validator)
    return out


# --- mappings -------------------------------------------------------------------------

def _flatten_fields(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if key in ("canonical", "use", "description") and not prefix:
            continue
        if isinstance(value, dict):
            yield from _flatten_fields(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _compile_fields(loaded: Loaded, tree: dict[str, Any], base: tuple[str | int, ...],
                    issues: list[Issue]) -> dict[tuple[str, ...], FieldRule]:
    out: dict[tuple[str, ...], FieldRule] = {}
    for path, source in _flatten_fields(tree):
        if source is None:
            out[path] = FieldRule(path, None)
            continue
        try:
            out[path] = FieldRule(path, compile_expr(str(source), falsy_logic_is_null=True))
        except ExprError as exc:
            issues.append(loaded.issue((*base, *path), f"{'.'.join(path)}: {exc}",
                                       code="jmespath",
                                       hint="JMESPath reference: https://jmespath.org/specification.html"))
    return out


def _optional_expr(loaded: Loaded, path: tuple[str | int, ...], source: str | None,
                   issues: list[Issue]) -> Any:
    if not source:
        return None
    try:
        return compile_expr(source)
    except ExprError as exc:
        issues.append(loaded.issue(path, f"{'.'.join(map(str, path))}: {exc}", code="jmespath"))
        return None


DEFAULT_CREDENTIAL = {"write_key": "write_key", "hmac": "webhook_secret",
                      "static_secret": "static_secret", "origin": ""}


def _auth_scheme(spec: dict[str, Any]) -> AuthScheme:
    """Each scheme checks its own credential unless the file names another one."""
    spec = dict(spec)
    spec.setdefault("credential", DEFAULT_CREDENTIAL.get(spec["scheme"], ""))
    return AuthScheme(**spec)


def _compile_ingest(loaded: Loaded, data: dict[str, Any], issues: list[Issue]) -> IngestSpec:
    account = data.get("account") or {}
    cookies = data.get("cookies") or {}
    return IngestSpec(
        endpoints=tuple(data.get("endpoints") or ("webhook",)),
        auth=tuple(_auth_scheme(scheme) for scheme in data.get("auth") or ()),
        detect=_optional_expr(loaded, ("ingest", "detect"), data.get("detect"), issues),
        batch_path=_optional_expr(loaded, ("ingest", "batch_path"), data.get("batch_path"), issues),
        idempotency=_optional_expr(loaded, ("ingest", "idempotency"), data.get("idempotency"),
                                   issues),
        account_header=account.get("header"),
        environment_header=account.get("environment_header"),
        lookup=account.get("lookup"), lookup_header=account.get("lookup_header"),
        meta_headers=freeze(data.get("meta") or {}),
        read_cookies=freeze(cookies.get("read") or {}),
        set_cookies=tuple(CookieSpec(**c) for c in cookies.get("set") or ()),
        half=data.get("half"))


def _compile_mapping(loaded: Loaded, canonical: dict[str, CanonicalEventDef],
                     issues: list[Issue]) -> SourceMapping | None:
    data = loaded.data
    source = data["source"]
    n_before = len(issues)
    try:
        key = compile_expr(data["key"])
    except ExprError as exc:
        issues.append(loaded.issue(("key",), f"key: {exc}", code="jmespath"))
        key = None
    ingest = _compile_ingest(loaded, data.get("ingest") or {}, issues)
    defaults = _compile_fields(loaded, data.get("defaults") or {}, ("defaults",), issues)
    sets = {name: _compile_fields(loaded, tree, ("field_sets", name), issues)
            for name, tree in (data.get("field_sets") or {}).items()}
    used_sets: set[str] = set()
    rules: dict[str, EventRule] = {}
    for source_event, spec in (data.get("events") or {}).items():
        target = spec["canonical"]
        if target not in canonical:
            issues.append(loaded.issue(
                ("events", source_event, "canonical"),
                f"{source_event!r} maps to unknown canonical event {target!r}",
                code="unknown-canonical",
                hint=_suggest(target, canonical) or "see mappings/canonical.yaml for the 32 events"))
        merged = dict(defaults)
        for set_name in spec.get("use") or []:
            if set_name not in sets:
                issues.append(loaded.issue(
                    ("events", source_event, "use"), f"{source_event!r} uses unknown field set "
                    f"{set_name!r}", code="unknown-field-set", hint=_suggest(set_name, sets)))
                continue
            used_sets.add(set_name)
            merged.update(sets[set_name])
        merged.update(_compile_fields(loaded, spec, ("events", source_event), issues))
        line, col = loaded.mark(("events", source_event))
        rules[source_event] = EventRule(source_event, target, tuple(merged.values()),
                                        Where(loaded.file, line, col))
    for set_name in sets.keys() - used_sets:
        issues.append(loaded.issue(("field_sets", set_name),
                                   f"field set {set_name!r} is never used", severity=WARNING,
                                   code="unused-field-set"))
    if key is None or any(i.severity == ERROR for i in issues[n_before:]):
        return None
    return SourceMapping(source=source, version=_version(data), title=data.get("title", source),
                         key=key, ingest=ingest, default_fields=tuple(defaults.values()),
                         rules=MappingProxyType(rules), file=loaded.file)


# --- destinations ---------------------------------------------------------------------

# personal fields that must never sit unhashed on a stored Event (postal code, city,
# state and country are coarse enough that some platforms require them in plaintext)
PLAINTEXT_FORBIDDEN = frozenset({"email", "phone", "first_name", "last_name", "street",
                                 "date_of_birth", "gender"})
DEFAULT_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
DEFAULT_AUTH = frozenset({401, 403})


def _compile_destination(loaded: Loaded, canonical: dict[str, CanonicalEventDef],
                         purposes: set[str] | None, issues: list[Issue]) -> Destination | None:
    data = loaded.data
    name = os.path.splitext(os.path.basename(loaded.file))[0]
    n_before = len(issues)
    settings_schema = dict(data.get("settings") or {"type": "object"})
    props = dict(settings_schema.get("properties") or {})
    props.setdefault("base_url", BASE_URL_SCHEMA)
    settings_schema["properties"] = props
    try:
        Draft202012Validator.check_schema(settings_schema)
    except SchemaError as exc:
        issues.append(loaded.issue(("settings", *exc.relative_path),
                                   f"settings is not a valid JSON Schema: {exc.message}",
                                   code="settings-schema"))
    for canon in data.get("events") or {}:
        if canon != "*" and canon not in canonical:
            issues.append(loaded.issue(("events", canon), f"unknown canonical event {canon!r}",
                                       code="unknown-canonical", hint=_suggest(canon, canonical)))
    consent = data.get("consent") or {}
    requires = tuple(consent.get("requires") or ())
    if purposes is not None:
        for i, purpose in enumerate(requires):
            if purpose not in purposes:
                issues.append(loaded.issue(("consent", "requires", i),
                                           f"unknown consent purpose {purpose!r}",
                                           code="unknown-purpose",
                                           hint=_suggest(purpose, purposes) or
                                           f"purposes in configs/consent.yaml: {', '.join(sorted(purposes))}"))

    def template_error(path: tuple[str | int, ...], message: str) -> None:
        issues.append(loaded.issue(path, f"{'.'.join(map(str, path))}: {message}", code="jinja",
                                   hint="filters available: see docs/configuration.md#filters"))

    def tree(value: Any, *path: str | int) -> TemplateTree | None:
        return compile_tree(value, path, template_error) if value is not None else None

    def expr(key: str) -> Any:
        return _optional_expr(loaded, ("response", key), (data.get("response") or {}).get(key),
                              issues)

    identifiers = []
    for ident, spec in (data.get("identifiers") or {}).items():
        if spec["normalize"] not in JINJA_FILTERS:
            issues.append(loaded.issue(("identifiers", ident, "normalize"),
                                       f"unknown filter {spec['normalize']!r}", code="jinja",
                                       hint=_suggest(spec["normalize"], JINJA_FILTERS)))
        if spec["hash"] == "none" and spec["from"] in PLAINTEXT_FORBIDDEN:
            issues.append(loaded.issue(("identifiers", ident, "hash"),
                                       f"{spec['from']} may not be stored unhashed "
                                       f"(identifier {ident!r})", code="plaintext-identifier",
                                       hint="hash it, or set plaintext_pii: true and read "
                                            "`pii` in the template instead"))
        identifiers.append(IdentifierSpec(ident, spec["from"], spec["normalize"], spec["hash"]))
    request = data.get("request") or {}
    batch = data.get("batch") or {}
    test_mode = data.get("test_mode") or {}
    response = data.get("response") or {}
    retry = data.get("retry") or {}
    compiled_request = {
        "method": request.get("method", "POST"), "body": request.get("body", "json"),
        "base_url": request.get("base_url"),
        "sign": {k: tree(v, "request", "sign", k) for k, v in (request.get("sign") or {}).items()}
        if request.get("sign") else None,
        # `type` stays a plain word (it selects the scheme); every other key is a template
        "auth": {k: v if k == "type" else tree(v, "request", "auth", k)
                 for k, v in (request.get("auth") or {}).items()}
        if request.get("auth") else None,
    }
    destination = Destination(
        name=name, version=_version(data), title=data.get("title", name), docs=data.get("docs"),
        settings_schema=freeze(settings_schema), consent_requires=requires,
        tcf_vendor_id=consent.get("tcf_vendor_id"),
        profiles=bool(data.get("profiles", False)),
        plaintext_pii=bool(data.get("plaintext_pii", False)),
        event_names=freeze(data.get("events") or {}),
        name_templates=MappingProxyType({
            canon: t for canon, value in (data.get("events") or {}).items()
            if (t := tree(value, "events", canon)) is not None and "{{" in str(value)}),
        identifiers=tuple(identifiers),
        send_if=tree(data.get("send_if"), "send_if"),
        delay_seconds=float(data.get("delay_seconds", 0)),
        payload=tree(data.get("payload"), "payload"),
        test_payload=tree(test_mode.get("payload"), "test_mode", "payload"),
        request=freeze(compiled_request),
        url=tree(request.get("url"), "request", "url"),
        test_url=tree(test_mode.get("url"), "test_mode", "url"),
        query=tree(request.get("query") or {}, "request", "query"),
        test_query=tree(test_mode.get("query"), "test_mode", "query"),
        headers=tree(request.get("headers") or {}, "request", "headers"),
        test_headers=tree(test_mode.get("headers"), "test_mode", "headers"),
        wrapper=tree(batch.get("wrapper"), "batch", "wrapper"),
        test_wrapper=tree(test_mode.get("wrapper"), "test_mode", "wrapper"),
        batch_key=tree(batch.get("key"), "batch", "key"),
        max_events=int(batch.get("max_events", 1)),
        max_bytes=int(batch.get("max_bytes", 4_000_000)),
        rate_per_second=(data.get("rate_limit") or {}).get("per_second"),
        concurrency=int(data["concurrency"]) if "concurrency" in data else None,
        linger_ms=float(batch["linger_ms"]) if "linger_ms" in batch else None,
        timeout_seconds=float(data.get("timeout_seconds", 10)),
        max_attempts=retry.get("max_attempts"), retry_base_seconds=retry.get("base_seconds"),
        retry_factor=float(retry.get("factor", 6)),
        response=ResponseRules(
            success=expr("success"), event_errors=expr("event_errors"),
            retryable=expr("retryable"), auth=expr("auth"), error_message=expr("error_message"),
            retryable_status=frozenset(response.get("retryable_status") or DEFAULT_RETRYABLE),
            auth_status=frozenset(response.get("auth_status") or DEFAULT_AUTH)),
        sandbox=_checked_sandbox(data.get("sandbox"), tree),
        definition=freeze(data), file=loaded.file,
        redirect_hosts=tuple(request.get("redirect_hosts") or ()),
        max_event_age_seconds=_duration(data.get("max_event_age")),
        event_key=_optional_expr(loaded, ("response", "event_key"), response.get("event_key"),
                                 issues),
        gpc_restricts=consent.get("gpc") == "restrict")
    if any(i.severity == ERROR for i in issues[n_before:]):
        return None
    return destination


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: Any) -> float | None:
    """Seconds from a number of seconds or "90s", "30m", "72h", "7d" (schema-checked)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    return float(text[:-1]) * DURATION_UNITS[text[-1]]


def _checked_sandbox(sandbox: Any, tree: Any) -> Any:
    """Compile the sandbox's reply templates so `validate` reports their errors."""
    if not sandbox:
        return None
    for reply in ("success", "event_error", "error"):
        if isinstance(sandbox.get(reply), dict) and sandbox[reply].get("body") is not None:
            tree(sandbox[reply]["body"], "sandbox", reply, "body")
    return freeze(sandbox)


def _identifier_variants(destinations: dict[str, Destination], files: dict[str, Loaded],
                         issues: list[Issue]) -> tuple[IdentifierSpec, ...]:
    """The union of every destination's identifier variants; one meaning per name."""
    seen: dict[str, tuple[IdentifierSpec, str]] = {}
    for dest in destinations.values():
        for spec in dest.identifiers:
            prev = seen.get(spec.name)
            if prev and prev[0] != spec:
                loaded = files[dest.name]
                issues.append(loaded.issue(("identifiers", spec.name),
                                           f"identifier {spec.name!r} is defined differently in "
                                           f"{prev[1]}", code="identifier-conflict",
                                           hint="give the variant another name"))
            seen.setdefault(spec.name, (spec, dest.file))
    return tuple(spec for spec, _ in seen.values())


# --- accounts -------------------------------------------------------------------------

def _compile_account(loaded: Loaded, mappings: dict[str, Loaded],
                     destinations: dict[str, dict[str, Any]], issues: list[Issue],
                     default_retention: int = 90) -> Account | None:
    data = loaded.data
    n_before = len(issues)
    stem = os.path.splitext(os.path.basename(loaded.file))[0]
    if data["account"] != stem:
        issues.append(loaded.issue(("account",), f"account {data['account']!r} is declared in "
                                   f"{stem}.yaml", severity=WARNING, code="account-file-name",
                                   hint=f"name the file {data['account']}.yaml"))
    envs: dict[str, Environment] = {}
    for env_name, env in (data.get("environments") or {}).items():
        sources: dict[str, SourceConnection] = {}
        for src, conn in (env.get("sources") or {}).items():
            target = conn.get("mapping", src)
            if target not in mappings:
                issues.append(loaded.issue(
                    ("environments", env_name, "sources", src),
                    f"source {src!r} has no mapping file (no mappings/*.yaml with source: {target})",
                    code="unknown-source", hint=_suggest(target, mappings)))
            sources[src] = SourceConnection(
                source=src, enabled=conn.get("enabled", True), write_key=conn.get("write_key"),
                webhook_secret=conn.get("webhook_secret"), static_secret=conn.get("static_secret"),
                secret=conn.get("secret"), shop_domain=conn.get("shop_domain"),
                origins=tuple(conn.get("origins") or ()), mapping=conn.get("mapping"))
        dests: dict[str, DestinationConnection] = {}
        for dest, conn in (env.get("destinations") or {}).items():
            path = ("environments", env_name, "destinations", dest)
            if dest not in destinations:
                issues.append(loaded.issue(path, f"unknown destination {dest!r}",
                                           code="unknown-destination",
                                           hint=_suggest(dest, destinations) or
                                           "destinations are the files in destinations.d/"))
                continue
            settings = conn.get("settings") or {}
            if conn.get("enabled", True):
                issues.extend(schemas.check_settings(loaded, (*path, "settings"), settings,
                                                     destinations[dest], dest))
            dests[dest] = DestinationConnection(dest, conn.get("enabled", True),
                                                conn.get("test_mode", False), freeze(settings),
                                                conn.get("gpc", "restrict"))
        envs[env_name] = Environment(env_name, MappingProxyType(sources),
                                     MappingProxyType(dests),
                                     (env.get("consent") or {}).get("region"))
    if any(i.severity == ERROR for i in issues[n_before:]):
        return None
    return Account(name=data["account"], title=data.get("title", data["account"]),
                   default_country=data.get("default_country", "US"),
                   timezone=data.get("timezone", "UTC"),
                   retention_days=int(data.get("retention_days", default_retention)),
                   environments=MappingProxyType(envs), file=loaded.file)


def _check_credentials_unique(accounts: list[Loaded], issues: list[Issue]) -> None:
    """A credential authenticates exactly one (account, environment): no staging secret
    may ever authenticate production."""
    seen: dict[tuple[str, str], tuple[str, str, Loaded, tuple[Any, ...]]] = {}
    for loaded in accounts:
        data = loaded.data or {}
        for env_name, env in (data.get("environments") or {}).items():
            for src, conn in ((env or {}).get("sources") or {}).items():
                for kind in ("write_key", "webhook_secret", "static_secret", "secret"):
                    value = (conn or {}).get(kind)
                    if not value:
                        continue
                    owner = (data.get("account", "?"), env_name)
                    path = ("environments", env_name, "sources", src, kind)
                    prev = seen.get((kind, value))
                    if prev and (prev[0], prev[1]) != owner:
                        issues.append(loaded.issue(
                            path, f"{kind} of {owner[0]}/{owner[1]} is the same as "
                            f"{prev[0]}/{prev[1]}'s ({prev[2].file})", code="shared-credential",
                            hint="each account and environment needs its own secret"))
                    else:
                        seen[(kind, value)] = (*owner, loaded, path)


# --- router.yaml and consent.yaml -----------------------------------------------------

def _router_settings(data: dict[str, Any]) -> RouterSettings:
    server = data.get("server") or {}
    store = data.get("store") or {}
    delivery = data.get("delivery") or {}
    pipeline = data.get("pipeline") or {}
    base = RouterSettings()
    retry_base = os.environ.get("ROUTER_RETRY_BASE_SECONDS")
    return RouterSettings(
        version=_version(data),
        host=server.get("host", base.host), port=server.get("port", base.port),
        max_body_bytes=server.get("max_body_bytes", base.max_body_bytes),
        max_batch_events=server.get("max_batch_events", base.max_batch_events),
        max_inflight_requests=server.get("max_inflight_requests", base.max_inflight_requests),
        body_timeout_seconds=server.get("body_timeout_seconds", base.body_timeout_seconds),
        unauthenticated_bodies_per_client=server.get("unauthenticated_bodies_per_client",
                                                     base.unauthenticated_bodies_per_client),
        replay_window_seconds=server.get("replay_window_seconds", base.replay_window_seconds),
        replay_cache_entries=server.get("replay_cache_entries", base.replay_cache_entries),
        max_event_bytes=server.get("max_event_bytes", base.max_event_bytes),
        trusted_proxy_header=server.get("trusted_proxy_header"),
        pixel_rate_limit_per_minute=server.get("pixel_rate_limit_per_minute",
                                               base.pixel_rate_limit_per_minute),
        cookie_domain=server.get("cookie_domain"),
        cookie_max_age_days=server.get("cookie_max_age_days", base.cookie_max_age_days),
        store_url=store.get("url", base.store_url),
        group_commit_max_events=store.get("group_commit_max_events", base.group_commit_max_events),
        group_commit_max_wait_ms=store.get("group_commit_max_wait_ms", base.group_commit_max_wait_ms),
        dedup_window_seconds=(data.get("dedup") or {}).get("window_seconds",
                                                            base.dedup_window_seconds),
        retry_base_seconds=float(retry_base) if retry_base else delivery.get(
            "retry_base_seconds", base.retry_base_seconds),
        max_attempts=delivery.get("max_attempts", base.max_attempts),
        concurrency_per_destination=delivery.get("concurrency_per_destination",
                                                 base.concurrency_per_destination),
        poll_interval_ms=delivery.get("poll_interval_ms"),
        linger_ms=delivery.get("linger_ms", base.linger_ms),
        partitions=pipeline.get("partitions", base.partitions),
        processor_batch_events=pipeline.get("batch_events", base.processor_batch_events),
        lease_seconds=pipeline.get("lease_seconds", base.lease_seconds),
        wait_timeout_seconds=pipeline.get("wait_timeout_seconds", base.wait_timeout_seconds),
        background_share=pipeline.get("background_share", base.background_share),
        max_backlog_messages=pipeline.get("max_backlog_messages", base.max_backlog_messages),
        outbound=OutboundSettings(
            deny_private=bool((delivery.get("outbound") or {}).get("deny_private", False)),
            allow=tuple((delivery.get("outbound") or {}).get("allow") or ()),
            deny=tuple((delivery.get("outbound") or {}).get("deny") or ())),
        retention_days=data.get("retention_days", base.retention_days),
        admin_token=(data.get("admin") or {}).get("token") or None,
    )


def outbound_entry_problem(entry: Any) -> str | None:
    """Why a delivery.outbound allow/deny entry is unusable, or None: a host name, a
    `*.suffix`, an address or a network (CIDR)."""
    if not isinstance(entry, str) or not entry.strip():
        return "an entry must be a host name or a network"
    try:
        ipaddress.ip_network(entry, strict=False)
        return None
    except ValueError as exc:
        if "/" in entry or ":" in entry or entry.replace(".", "").isdigit():
            return f"{entry!r} is not a network: {exc}"
    name = entry[2:] if entry.startswith("*.") else entry
    labels = name.rstrip(".").split(".")
    if not all(label and len(label) <= 63 and label.replace("-", "").isalnum()
               for label in labels):
        return f"{entry!r} is not a host name (or *.suffix)"
    return None


def _check_outbound(loaded: Loaded, issues: list[Issue]) -> None:
    outbound = ((loaded.data or {}).get("delivery") or {}).get("outbound") or {}
    for kind in ("allow", "deny"):
        for i, entry in enumerate(outbound.get(kind) or []):
            problem = outbound_entry_problem(entry)
            if problem is not None:
                issues.append(loaded.issue(("delivery", "outbound", kind, i), problem,
                                           code="outbound-entry",
                                           hint="a host (api.example.com, *.example.com) or "
                                           "a network (10.0.0.0/8, ::1/128)"))


def _consent(loaded: Loaded, issues: list[Issue]) -> ConsentConfig:
    data = loaded.data
    purposes = tuple(data.get("purposes") or {})

    def purpose_lists(section: str) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for key, names in (data.get(section) or {}).items():
            for i, name in enumerate(names):
                if name not in purposes:
                    issues.append(loaded.issue((section, key, i), f"unknown purpose {name!r}",
                                               code="unknown-purpose",
                                               hint=_suggest(name, purposes)))
            out[str(key)] = tuple(names)
        return out

    regions = data.get("regions") or {"default": "opt_out"}
    gpc = tuple((data.get("gpc") or {}).get("denies") or ())
    for i, name in enumerate(gpc):
        if name not in purposes:
            issues.append(loaded.issue(("gpc", "denies", i), f"unknown purpose {name!r}",
                                       code="unknown-purpose", hint=_suggest(name, purposes)))
    return ConsentConfig(
        version=_version(data), purposes=purposes,
        categories=MappingProxyType(purpose_lists("categories")),
        google_consent_mode=MappingProxyType(purpose_lists("google_consent_mode")),
        tcf=MappingProxyType({int(k): v for k, v in purpose_lists("tcf").items()}),
        gpc_denies=gpc, default_mode=regions.get("default", "opt_out"),
        opt_in_regions=frozenset(regions.get("opt_in") or ()),
        opt_out_regions=frozenset(regions.get("opt_out") or ()))


# --- the whole --------------------------------------------------------------------------

def _hash_dir(files: _Files) -> str:
    """Identifies the exact config a process runs (shown by /admin/config, logged on reload)."""
    digest = hashlib.sha256()
    for loaded in sorted(files.all(), key=lambda f: f.file):
        digest.update(loaded.file.encode())
        with open(loaded.file, "rb") as fh:  # display paths are cwd-relative or absolute
            digest.update(fh.read())
    return digest.hexdigest()[:16]


def check_config(root: str) -> tuple[CompiledConfig | None, list[Issue]]:
    """Compile a config dir; return the compiled config (None if any error) and all issues."""
    root = os.path.abspath(root)
    issues: list[Issue] = []
    files = _load(root, issues)

    valid: dict[str, bool] = {}
    kinds = [("router", files.router), ("consent", files.consent),
             ("canonical", files.canonical)]
    kinds += [("account", a) for a in files.accounts]
    kinds += [("mapping", m) for m in files.mappings]
    kinds += [("destination", d) for d in files.destinations]
    for kind, loaded in kinds:
        if loaded is None or loaded.data is None:
            continue
        found = schemas.check(loaded, kind)
        issues.extend(found)
        valid[loaded.file] = not found and not any(i.severity == ERROR for i in loaded.issues)
        if kind in ("router", "account"):
            _check_secrets(loaded, issues)
        if kind == "router" and isinstance(loaded.data, dict) and "poll_interval_ms" in (
                loaded.data.get("delivery") or {}):
            issues.append(loaded.issue(
                ("delivery", "poll_interval_ms"), "delivery.poll_interval_ms has no effect: "
                "delivery is woken by new work, it does not poll", severity=WARNING,
                code="no-effect", hint="remove the key"))
        elif kind == "destination":
            _check_secrets(loaded, issues, names=False)

    def ok(loaded: Loaded | None) -> bool:
        return loaded is not None and valid.get(loaded.file, False)

    canonical = _compile_canonical(files.canonical, issues) if ok(files.canonical) else {}
    consent = _consent(files.consent, issues) if ok(files.consent) else None
    purposes = set(consent.purposes) if consent else None

    mapping_files: dict[str, Loaded] = {}
    for loaded in files.mappings:
        source = (loaded.data or {}).get("source") if isinstance(loaded.data, dict) else None
        if not source:
            continue
        if source in mapping_files:
            issues.append(loaded.issue(("source",), f"source {source!r} is already declared in "
                                       f"{mapping_files[source].file}", code="duplicate-source"))
            continue
        mapping_files[source] = loaded
    mappings: dict[str, SourceMapping] = {}
    if canonical:
        for source, loaded in mapping_files.items():
            if ok(loaded):
                compiled = _compile_mapping(loaded, canonical, issues)
                if compiled:
                    mappings[source] = compiled

    destinations: dict[str, Destination] = {}
    destination_files: dict[str, Loaded] = {}
    settings_schemas: dict[str, dict[str, Any]] = {}
    for loaded in files.destinations:
        name = os.path.splitext(os.path.basename(loaded.file))[0]
        if isinstance(loaded.data, dict):
            schema = dict(loaded.data.get("settings") or {"type": "object"})
            schema["properties"] = {"base_url": BASE_URL_SCHEMA, **(schema.get("properties") or {})}
            settings_schemas[name] = schema
        if ok(loaded) and canonical:
            compiled_dest = _compile_destination(loaded, canonical, purposes, issues)
            if compiled_dest:
                destinations[name] = compiled_dest
                destination_files[name] = loaded
    variants = _identifier_variants(destinations, destination_files, issues)
    if ok(files.router):
        _check_outbound(files.router, issues)

    _check_credentials_unique([a for a in files.accounts if isinstance(a.data, dict)], issues)
    accounts: dict[str, Account] = {}
    for loaded in files.accounts:
        if ok(loaded):
            default_retention = int(((files.router.data or {}) if files.router and isinstance(
                files.router.data, dict) else {}).get("retention_days", 90))
            compiled_acc = _compile_account(loaded, mapping_files, settings_schemas, issues,
                                            default_retention)
            if compiled_acc:
                if compiled_acc.name in accounts:
                    issues.append(loaded.issue(("account",), f"account {compiled_acc.name!r} is "
                                               f"declared twice", code="duplicate-account"))
                accounts[compiled_acc.name] = compiled_acc

    alerts = compile_alerts(files.router, canonical, mapping_files, issues) \
        if ok(files.router) else None
    issues = sorted(set(issues))
    if any(i.severity == ERROR for i in issues) or files.router is None or consent is None \
            or alerts is None:
        return None, issues
    config = CompiledConfig(
        root=root, config_hash=_hash_dir(files),
        settings=replace(_router_settings(files.router.data), alerts=alerts), consent=consent,
        canonical_version=_version(files.canonical.data),
        canonical=MappingProxyType(canonical),
        identity_link=tuple((files.canonical.data.get("identity") or {}).get("link") or ()),
        identity_enrich=tuple((files.canonical.data.get("identity") or {}).get("enrich") or ()),
        identifier_variants=variants,
        mappings=MappingProxyType(mappings),
        destinations=MappingProxyType(destinations), accounts=MappingProxyType(accounts),
        warnings=tuple(i for i in issues if i.severity == WARNING),
        merge=_merge_spec(files.canonical.data))
    return config, issues


def _merge_spec(data: dict[str, Any]) -> MergeSpec:
    merge = data.get("merge") or {}
    return MergeSpec(browser=tuple(tuple(p.split(".")) for p in merge.get("browser") or ()),
                     server=tuple(tuple(p.split(".")) for p in merge.get("server") or ()),
                     browser_wins=tuple(tuple(p.split("."))
                                        for p in merge.get("browser_wins") or ()))


def load_config(root: str) -> CompiledConfig:
    """Compile or raise ConfigError carrying every problem."""
    config, issues = check_config(root)
    if config is None:
        raise ConfigError(issues)
    return config
