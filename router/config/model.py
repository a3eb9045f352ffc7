"""The compiled, immutable configuration the runtime uses.

The runtime never reads YAML: `router.config.compile` turns a config dir into these
objects once (schemas checked, every expression compiled), and a reload swaps the
whole `CompiledConfig` atomically. Mutable containers from YAML are frozen into
tuples and read-only mappings so a running pipeline cannot change its own rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from router.expr.jmes import Expr

FieldPath = tuple[str, ...]
EMPTY: Mapping[str, Any] = MappingProxyType({})


def freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts/lists again, for JSON output and for handing to jsonschema."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Where:
    """Where a config element was declared, for messages that point back at YAML."""

    file: str
    line: int
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class CanonicalEventDef:
    name: str
    description: str
    category: str
    dedup_keys: tuple[str, ...]
    hold_seconds: int
    schema: Mapping[str, Any]
    validator: Any = field(compare=False, repr=False)  # python-jsonschema: positioned errors
    _fast: list[Any] = field(default_factory=list, compare=False, repr=False)

    @property
    def fast_validator(self) -> Any:
        """jsonschema-rs, built on first use: `validate` never needs it, ingest always."""
        if not self._fast:
            import jsonschema_rs

            self._fast.append(jsonschema_rs.validator_for(thaw(self.schema)))
        return self._fast[0]


@dataclass(frozen=True)
class FieldRule:
    """One output field of a mapping: where it goes and the expression that fills it."""

    path: FieldPath
    expr: Expr | None  # None removes a field inherited from defaults or a field set


@dataclass(frozen=True)
class EventRule:
    source_event: str
    canonical: str
    fields: tuple[FieldRule, ...]
    where: Where


@dataclass(frozen=True)
class AuthScheme:
    scheme: str  # write_key | hmac | static_secret | origin
    header: str | None = None
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    signed: str = "body"  # body | timestamp_dot_body
    credential: str = ""  # set per scheme at compile time (see compile._auth_scheme)
    timestamp_header: str | None = None
    tolerance_seconds: int = 300
    first_item_fallback: bool = False


@dataclass(frozen=True)
class CookieSpec:
    name: str
    meta: str
    format: str
    from_query: str | None = None
    http_only: bool = False
    max_age_days: int | None = None  # None: router.yaml server.cookie_max_age_days


@dataclass(frozen=True)
class IngestSpec:
    endpoints: tuple[str, ...] = ("webhook",)  # tracking_api | webhook | collect
    auth: tuple[AuthScheme, ...] = ()
    detect: Expr | None = None
    batch_path: Expr | None = None
    idempotency: Expr | None = None
    account_header: str | None = None
    environment_header: str | None = None
    lookup: str | None = None
    lookup_header: str | None = None
    meta_headers: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    read_cookies: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    set_cookies: tuple[CookieSpec, ...] = ()
    half: str | None = None  # browser | server: which half of a merged purchase it brings


@dataclass(frozen=True)
class SourceMapping:
    source: str
    version: str
    title: str
    key: Expr
    ingest: IngestSpec
    default_fields: tuple[FieldRule, ...]
    rules: Mapping[str, EventRule]
    file: str

    @cached_property  # read per event and per Delivery; the parts never change
    def version_tag(self) -> str:
        return f"{self.source}@{self.version}"


@dataclass(frozen=True)
class SourceConnection:
    source: str
    enabled: bool = True
    write_key: str | None = None
    webhook_secret: str | None = None
    static_secret: str | None = None
    secret: str | None = None
    shop_domain: str | None = None
    origins: tuple[str, ...] = ()
    mapping: str | None = None


@dataclass(frozen=True)
class DestinationConnection:
    destination: str
    enabled: bool = True
    test_mode: bool = False
    settings: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    # Global Privacy Control on a destination with a restricted-processing flag:
    # "restrict" (send flagged, the default) or "drop"
    gpc: str = "restrict"


@dataclass(frozen=True)
class Environment:
    name: str
    sources: Mapping[str, SourceConnection]
    destinations: Mapping[str, DestinationConnection]
    consent_region: str | None = None


@dataclass(frozen=True)
class Account:
    name: str
    title: str
    default_country: str
    timezone: str
    retention_days: int
    environments: Mapping[str, Environment]
    file: str


@dataclass(frozen=True)
class IdentifierSpec:
    """A hashed identifier variant a destination needs, computed at ingest."""

    name: str
    source: str  # the normalized personal field it derives from
    normalize: str  # filter name
    hash: str  # sha256 | md5 | sha1 | none


@dataclass(frozen=True)
class ResponseRules:
    success: Expr | None
    event_errors: Expr | None
    retryable: Expr | None
    auth: Expr | None
    error_message: Expr | None
    retryable_status: frozenset[int]
    auth_status: frozenset[int]


@dataclass(frozen=True)
class Destination:
    """A compiled destination: templates, batching and response rules."""

    name: str
    version: str
    title: str
    docs: str | None
    settings_schema: Mapping[str, Any]
    consent_requires: tuple[str, ...]
    tcf_vendor_id: int | None
    profiles: bool
    plaintext_pii: bool
    event_names: Mapping[str, str]
    name_templates: Mapping[str, Any]  # compiled, for names that are templates
    identifiers: tuple[IdentifierSpec, ...]
    send_if: Any  # TemplateTree | None
    delay_seconds: float
    payload: Any  # TemplateTree
    test_payload: Any  # TemplateTree | None
    request: Mapping[str, Any]  # method, body, base_url, sign, auth (templates compiled)
    url: Any  # TemplateTree
    test_url: Any  # TemplateTree | None
    query: Any  # TemplateTree
    test_query: Any  # TemplateTree | None
    headers: Any  # TemplateTree
    test_headers: Any  # TemplateTree | None
    wrapper: Any  # TemplateTree | None
    test_wrapper: Any  # TemplateTree | None
    batch_key: Any  # TemplateTree | None
    max_events: int
    max_bytes: int
    rate_per_second: float | None
    concurrency: int | None  # None: delivery.concurrency_per_destination
    timeout_seconds: float
    max_attempts: int | None
    retry_base_seconds: float | None
    retry_factor: float
    response: ResponseRules
    sandbox: Mapping[str, Any] | None
    definition: Mapping[str, Any]  # the whole frozen document
    file: str
    linger_ms: float | None = None  # None: delivery.linger_ms
    # hosts a 307/308 may lead to besides the request's own origin (HTTPS only)
    redirect_hosts: tuple[str, ...] = ()
    # events that occurred longer ago than this are dropped before batching
    max_event_age_seconds: float | None = None
    # JMESPath over one payload: the key a platform names failed events by
    event_key: Expr | None = None
    # the platform has a restricted-processing flag: GPC sends with it instead of dropping
    gpc_restricts: bool = False

    @cached_property  # read per event and per Delivery; the parts never change
    def version_tag(self) -> str:
        return f"{self.name}@{self.version}"

    def platform_event(self, canonical: str) -> str | None:
        return self.event_names.get(canonical) or self.event_names.get("*")


@dataclass(frozen=True)
class ConsentConfig:
    version: str
    purposes: tuple[str, ...]
    categories: Mapping[str, tuple[str, ...]]
    google_consent_mode: Mapping[str, tuple[str, ...]]
    tcf: Mapping[int, tuple[str, ...]]
    gpc_denies: tuple[str, ...]
    default_mode: str
    opt_in_regions: frozenset[str]
    opt_out_regions: frozenset[str]


@dataclass(frozen=True)
class MergeSpec:
    """What a browser half and a server half of one business action each bring.

    An event of a canonical type with a `hold` waits up to that long for its other
    half when its source brings one half, the account has a source of the other half,
    and the event carries none of the other half's identifiers (dotted paths into the
    event: `user_data.fbp`, `context.ip`)."""

    browser: tuple[tuple[str, ...], ...] = ()
    server: tuple[tuple[str, ...], ...] = ()
    # fields a browser half's value replaces when the halves merge (its action source)
    browser_wins: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class OutboundSettings:
    """delivery.outbound: which hosts delivery may connect to (router/delivery/outbound.py)."""

    deny_private: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.deny_private or bool(self.deny)


@dataclass(frozen=True)
class ChannelSpec:
    """Where alert notifications go. A channel whose URL is empty is off: the shipped
    config wires each one to an environment variable, so setting it turns it on."""

    name: str
    type: str  # slack | email | webhook | log
    url: str = ""  # the Slack incoming webhook, the webhook, or smtp(s)://user:pass@host:port
    secret: str = ""  # webhook: HMAC-SHA256 signing secret
    to: tuple[str, ...] = ()  # email recipients
    sender: str = ""  # email From
    tls_ca_file: str | None = None  # email: CA bundle for a relay with a private certificate
    timeout_seconds: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.type == "log" or bool(self.url)


@dataclass(frozen=True)
class PlatformDownSettings:
    enabled: bool = True
    window_seconds: float = 900.0  # the failures must be this recent
    min_failures: int = 10  # consecutive failed attempts on one connection


@dataclass(frozen=True)
class QueueBacklogSettings:
    enabled: bool = True
    max_age_seconds: float = 900.0  # a due delivery waiting longer than this
    growth_seconds: float = 1800.0  # pending depth rising for this long ...
    min_depth: int = 1000  # ... to at least this many
    inbox_max_age_seconds: float = 300.0  # acknowledged messages waiting for the processor


@dataclass(frozen=True)
class TrackingStoppedSettings:
    enabled: bool = True
    window_seconds: float = 3600.0  # the recent traffic ...
    period_seconds: float = 604_800.0  # ... compared with the same window a week earlier ...
    periods: int = 4  # ... averaged over this many weeks (that hour of the week)
    min_baseline_events: int = 20  # quieter baselines are not judged
    ratio: float = 0.1  # silent: at most this share of the baseline


@dataclass(frozen=True)
class DeliveryRateSettings:
    enabled: bool = True
    window_seconds: float = 86_400.0
    settle_seconds: float = 900.0  # orders younger than this are not judged yet
    threshold: float = 0.9  # channel accuracy below this opens the alert
    min_orders: int = 20
    events: tuple[str, ...] = ("purchase",)  # the order events ...
    sources: tuple[str, ...] = ()  # ... the source(s) of truth reported (none: any source)


IdentifierTokens = tuple[tuple[str, ...], ...]

DEFAULT_IDENTIFIERS: Mapping[str, IdentifierTokens] = MappingProxyType({
    "email": (("email_sha256",),), "phone": (("phone_sha256",),),
    "external_id": (("external_id",), ("external_id_sha256",)),
    "ip_user_agent": (("context.ip", "context.user_agent"),)})


@dataclass(frozen=True)
class MatchQualitySettings:
    enabled: bool = True
    window_seconds: float = 3600.0
    baseline_seconds: float = 604_800.0  # the window before, the share is compared with
    min_events: int = 20  # in the window and in the baseline
    min_baseline_share: float = 0.2  # identifiers rarer than this are not judged
    ratio: float = 0.5  # opens when the share falls below ratio x baseline
    events: tuple[str, ...] = ("purchase",)  # event names judged (empty: every name)
    identifiers: Mapping[str, IdentifierTokens] = field(  # name -> signal tokens
        default_factory=lambda: DEFAULT_IDENTIFIERS)


@dataclass(frozen=True)
class AlertSettings:
    interval_seconds: float = 60.0
    console_url: str = ""  # links in notifications: {console_url}/console/...
    channels: tuple[ChannelSpec, ...] = ()
    channel_retry_base_seconds: float = 5.0
    channel_max_attempts: int = 6
    platform_down: PlatformDownSettings = PlatformDownSettings()
    queue_backlog: QueueBacklogSettings = QueueBacklogSettings()
    tracking_stopped: TrackingStoppedSettings = TrackingStoppedSettings()
    delivery_rate_drop: DeliveryRateSettings = DeliveryRateSettings()
    match_quality_drop: MatchQualitySettings = MatchQualitySettings()


@dataclass(frozen=True)
class RouterSettings:
    version: str = "1"
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576
    max_batch_events: int = 500
    max_event_bytes: int = 65_536
    max_inflight_requests: int = 256
    body_timeout_seconds: float = 10.0
    unauthenticated_bodies_per_client: int = 32
    replay_window_seconds: float = 0.0
    replay_cache_entries: int = 100_000
    trusted_proxy_header: str | None = None
    pixel_rate_limit_per_minute: int = 600
    cookie_domain: str | None = None
    cookie_max_age_days: int = 390
    store_url: str = "sqlite:///./router.db"
    group_commit_max_events: int = 2000
    group_commit_max_wait_ms: float = 2.0
    dedup_window_seconds: int = 86_400
    retry_base_seconds: float = 300.0
    max_attempts: int = 5
    concurrency_per_destination: int = 4
    poll_interval_ms: int | None = None  # no effect since delivery is event-driven
    linger_ms: float = 0.0
    partitions: int = 16
    processor_batch_events: int = 500
    lease_seconds: float = 30.0
    wait_timeout_seconds: float = 30.0
    background_share: float = 0.25
    max_backlog_messages: int = 5_000_000
    outbound: OutboundSettings = OutboundSettings()
    retention_days: int = 90
    admin_token: str | None = None
    alerts: AlertSettings = AlertSettings()


@dataclass(frozen=True)
class CompiledConfig:
    root: str
    config_hash: str
    settings: RouterSettings
    consent: ConsentConfig
    canonical_version: str
    canonical: Mapping[str, CanonicalEventDef]
    identity_link: tuple[str, ...]
    identity_enrich: tuple[str, ...]
    identifier_variants: tuple[IdentifierSpec, ...]
    mappings: Mapping[str, SourceMapping]
    destinations: Mapping[str, Destination]
    accounts: Mapping[str, Account]
    warnings: tuple[Any, ...] = ()
    merge: MergeSpec = MergeSpec()

    def account_env(self, account: str, environment: str) -> tuple[Account, Environment]:
        acc = self.accounts.get(account)
        if acc is None:
            raise KeyError(f"unknown account {account!r} (known: {', '.join(sorted(self.accounts))})")
        env = acc.environments.get(environment)
        if env is None:
            raise KeyError(f"account {account!r} has no environment {environment!r} "
                           f"(known: {', '.join(sorted(acc.environments))})")
        return acc, env

    def mapping_for(self, env: Environment, source: str) -> SourceMapping:
        conn = env.sources.get(source)
        name = conn.mapping if conn and conn.mapping else source
        mapping = self.mappings.get(name)
        if mapping is None:
            raise KeyError(f"no mapping for source {source!r} "
                           f"(known: {', '.join(sorted(self.mappings))})")
        return mapping
