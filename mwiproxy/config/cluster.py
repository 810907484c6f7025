"""The ``mwiproxy start -c cluster.yaml`` file: what the cluster serves and where it keeps state.

Every key is optional except inside ``databases``; an empty file (or no file, see
``ClusterConfig.default``) gives a working loopback-only cluster with no databases.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import yaml

from mwiproxy._native.workers import AUTO as AUTO_WORKERS
from mwiproxy._native.workers import MAX_WORKERS
from mwiproxy.config.loader import (
    ConfigError,
    Node,
    address_list,
    decode,
    load_yaml_file,
    node_line,
    resolve_token,
)
from mwiproxy.identity import names
from mwiproxy.wire.addr import split_address_list, split_host_port

__all__ = [
    "AuthConfig",
    "ClusterConfig",
    "DBServiceConfig",
    "DatabaseConfig",
    "DatabaseTLS",
    "LogConfig",
    "ProxyConfig",
    "StorageConfig",
    "default_data_dir",
    "is_loopback_addr",
    "load_cluster_config",
]

log = logging.getLogger("mwiproxy.config")

DEFAULT_CLUSTER_NAME = "mwiproxy.local"
DEFAULT_LISTEN_ADDR = "127.0.0.1:3080"
STATE_DB_NAME = "state.db"

_CLUSTER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")


def default_data_dir() -> str:
    """``$MWIPROXY_DATA_DIR``, else the system location for root, else a per-user one."""
    from_env = os.environ.get("MWIPROXY_DATA_DIR")
    if from_env:
        return os.path.expanduser(from_env)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/mwiproxy"
    return os.path.expanduser("~/.local/share/mwiproxy")


def is_loopback_addr(addr: str) -> bool:
    host, _ = split_host_port(addr)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it can be reached from elsewhere


def _check_addr(value: str, key: str, *, min_port: int = 0) -> None:
    try:
        split_host_port(value, min_port=min_port)
    except ValueError as err:
        raise ConfigError(key=key, message=str(err)) from None


@dataclass
class StorageConfig:
    """Where cluster state lives: `sqlite` (a file, the embedded default) or `postgres`
    (a database several hosts can reach; README "PostgreSQL storage")."""

    type: Literal["sqlite", "postgres"] = "sqlite"
    path: str = ""  # sqlite: the file (default: <data_dir>/state.db)
    # postgres: a libpq connection string or URI, or the absolute path of a file that
    # holds one (so a password need not sit in cluster.yaml)
    conn_string: str = ""

    def __post_init__(self) -> None:
        self.path = os.path.expanduser(self.path)

    def validate(self) -> None:
        if self.type == "sqlite":
            if self.conn_string:
                raise ConfigError("only for type: postgres", key="conn_string")
            return
        if self.path:
            raise ConfigError("only for type: sqlite (postgres uses conn_string)", key="path")
        if not self.conn_string:
            raise ConfigError("required for type: postgres (e.g. 'host=db.example "
                              "dbname=mwiproxy user=mwiproxy')", key="conn_string")
        check_conn_string(resolve_token(self.conn_string, "conn_string"))

    def resolved_conn_string(self) -> str:
        return resolve_token(self.conn_string, "storage.conn_string")


def check_conn_string(text: str) -> None:
    from psycopg.conninfo import conninfo_to_dict  # only postgres users need psycopg

    try:
        conninfo_to_dict(text)
    except Exception as e:  # psycopg.ProgrammingError: says what libpq could not parse
        raise ConfigError(f"not a PostgreSQL connection string: {str(e).strip()}",
                          key="conn_string") from None


@dataclass
class ProxyConfig:
    listen_addr: str = DEFAULT_LISTEN_ADDR
    public_addr: str = ""  # what clients are told to dial; defaults to listen_addr
    # keepalive frames on idle `-ping` connections, so middleboxes keep idle sessions
    ping_interval: timedelta = timedelta(seconds=30)
    # clients that have not authenticated yet (README "Limits"): the first bytes and the
    # TLS handshake, then the first protocol message, each within its timeout; at most
    # so many such connections at once, in all and per source address
    handshake_timeout: timedelta = timedelta(seconds=10)
    first_message_timeout: timedelta = timedelta(seconds=10)
    max_unauthenticated: int = 2000
    max_unauthenticated_per_source: int = 512
    # SIGTERM/SIGINT: how long open sessions may finish before they are cut
    drain_timeout: timedelta = timedelta(seconds=30)
    # the proxy's server certificate (auth API, database ALPNs, inner TLS of non-tunnel
    # mode) and its client identity towards database agents; each is re-issued when
    # `renew_at` of its life has passed (the admin identity too), without a restart
    certificate_ttl: timedelta = timedelta(hours=720)
    link_certificate_ttl: timedelta = timedelta(hours=12)
    renew_at: float = 0.5
    # relay engines (native worker threads, each its own core's worth of copying and
    # TLS): 0 = one per core (at most 8); the pure build accepts and ignores it
    workers: int = AUTO_WORKERS

    def __post_init__(self) -> None:
        if not self.public_addr:
            self.public_addr = self.listen_addr

    def validate(self) -> None:
        _check_addr(self.listen_addr, "listen_addr")
        _check_addr(self.public_addr, "public_addr")
        if self.ping_interval <= timedelta(0):
            raise ConfigError("must be a positive duration", key="ping_interval")
        self._validate_limits()
        if not timedelta(0) <= self.drain_timeout <= timedelta(hours=1):
            raise ConfigError("must be between 0s and 1h", key="drain_timeout")
        _check_lifetime(self.certificate_ttl, "certificate_ttl", MAX_OWN_CERT_TTL)
        _check_lifetime(self.link_certificate_ttl, "link_certificate_ttl",
                        timedelta(days=7))
        if not 0.1 <= self.renew_at <= 0.9:
            raise ConfigError("must be a fraction of the certificate's life between 0.1 "
                              "and 0.9 (0.5: at half-life)", key="renew_at")

    def _validate_limits(self) -> None:
        for key in ("handshake_timeout", "first_message_timeout"):
            if not timedelta(seconds=1) <= getattr(self, key) <= timedelta(minutes=5):
                raise ConfigError("must be between 1s and 5m", key=key)
        if isinstance(self.workers, bool) or not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"must be 0 (one per core) or 1 .. {MAX_WORKERS}",
                              key="workers")
        if not 1 <= self.max_unauthenticated <= 1_000_000:
            raise ConfigError("must be between 1 and 1000000", key="max_unauthenticated")
        if not 1 <= self.max_unauthenticated_per_source <= self.max_unauthenticated:
            raise ConfigError("must be between 1 and max_unauthenticated "
                              f"({self.max_unauthenticated})",
                              key="max_unauthenticated_per_source")


# the cluster's own certificates (proxy, admin identity): at least a few seconds, so
# tests can watch them rotate; at most a year
MIN_OWN_CERT_TTL = timedelta(seconds=5)
MAX_OWN_CERT_TTL = timedelta(days=365)


def _check_lifetime(value: timedelta, key: str, most: timedelta) -> None:
    if not MIN_OWN_CERT_TTL <= value <= most:
        raise ConfigError(f"must be between 5s and {most.days * 24}h", key=key)


@dataclass
class AuthConfig:
    """Ceilings the auth service enforces whatever a caller asks for."""

    max_token_ttl: timedelta = timedelta(hours=24)  # join tokens (bot and db)
    # bot identities, database certificates and agent identities
    max_certificate_ttl: timedelta = timedelta(hours=24)
    # `<data dir>/admin/identity` (mwictl's), rewritten at proxy.renew_at of its life
    admin_identity_ttl: timedelta = timedelta(hours=720)

    def validate(self) -> None:
        _check_lifetime(self.admin_identity_ttl, "admin_identity_ttl", MAX_OWN_CERT_TTL)
        if not timedelta(minutes=1) <= self.max_token_ttl <= timedelta(days=30):
            raise ConfigError("must be between 1m and 30 days (720h)", key="max_token_ttl")
        if not timedelta(minutes=1) <= self.max_certificate_ttl <= timedelta(days=7):
            raise ConfigError("must be between 1m and 7 days (168h)",
                              key="max_certificate_ttl")


@dataclass
class AuditConfig:
    # query audit: when the audit sink falls behind, drop records (counted, audited as
    # audit.query.dropped) or make the session wait (its relay stops reading)
    query_backpressure: Literal["drop", "wait"] = "drop"
    # the cluster-wide switch over query audit (roles choose per session within it)
    queries: bool = True


@dataclass
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@dataclass
class DatabaseTLS:
    mode: Literal["verify-full", "verify-ca", "insecure"] = "verify-full"
    ca_file: str = ""  # relative paths are relative to the working directory
    server_name: str = ""  # overrides the host of `uri` for verify-full

    def __post_init__(self) -> None:
        self.ca_file = os.path.expanduser(self.ca_file)

    def validate(self) -> None:
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise ConfigError(key="ca_file", message=f"file {self.ca_file!r} does not exist")


@dataclass
class DatabaseConfig:
    name: str
    protocol: Literal["postgres", "mysql", "redis", "mongodb", "cockroachdb"]
    uri: str
    description: str = ""
    static_labels: dict[str, str] = field(default_factory=dict)
    tls: DatabaseTLS = field(default_factory=DatabaseTLS)
    admin_user: str = ""  # reserved for automatic user provisioning; unused for now

    def validate(self) -> None:
        try:
            names.database_service(self.name)
        except names.InvalidName as err:
            raise ConfigError(key="name", message=str(err)) from None
        _check_addr(self.uri, "uri", min_port=1)
        for label in self.static_labels:
            try:
                names.label_key(label)
            except names.InvalidName as err:
                raise ConfigError(key="static_labels", message=str(err)) from None

    @property
    def host_port(self) -> tuple[str, int]:
        return split_host_port(self.uri, min_port=1)


_CA_PIN = re.compile(r"^sha256:[0-9a-f]{64}$")
DEFAULT_AGENT_ADDR = "127.0.0.1:3081"


@dataclass
class DBServiceConfig:
    """A database agent (`mwiproxy start --roles=db`): how it joins the cluster, where
    proxies reach it, and how long its registration lives without a heartbeat."""

    # the cluster proxy's address (the auth API is on that port), or several cluster
    # processes on one storage (`a:3080,b:3080`, or a YAML list), tried with failover
    auth_server: str = ""
    token: str = ""  # a `db` join token (`mwictl tokens add --type=db`), or /path/to/file
    ca_pins: list[str] = field(default_factory=list)  # `mwictl status` prints the pin
    listen_addr: str = DEFAULT_AGENT_ADDR  # mutual TLS; proxies dial it
    public_addr: str = ""  # what proxies are told to dial; defaults to listen_addr
    hosts: list[str] = field(default_factory=list)  # extra names in the agent's certificate
    heartbeat_ttl: timedelta = timedelta(seconds=60)
    # the agent's own identity; renewed at half-life
    certificate_ttl: timedelta = timedelta(hours=24)
    diag_addr: str = ""  # /livez and /readyz (registered and identity valid); off if empty
    # SIGTERM/SIGINT: how long open link sessions may finish before they are cut
    drain_timeout: timedelta = timedelta(seconds=30)

    def validate(self) -> None:
        if self.auth_server:
            try:
                items = split_address_list(self.auth_server)
            except ValueError as err:
                raise ConfigError(key="auth_server", message=str(err)) from None
            for item in items:
                _check_addr(item, "auth_server")
        _check_addr(self.listen_addr, "listen_addr")
        if self.public_addr:
            _check_addr(self.public_addr, "public_addr", min_port=1)
        if self.diag_addr:
            _check_addr(self.diag_addr, "diag_addr")
        for i, pin in enumerate(self.ca_pins):
            if not _CA_PIN.fullmatch(pin):
                raise ConfigError("expected sha256:<64 hex digits>", key=f"ca_pins[{i}]")
        if not timedelta(seconds=3) <= self.heartbeat_ttl <= timedelta(minutes=10):
            raise ConfigError("must be between 3s and 10m", key="heartbeat_ttl")
        if not timedelta(seconds=10) <= self.certificate_ttl <= timedelta(days=7):
            raise ConfigError("must be between 10s and 7 days", key="certificate_ttl")
        if not timedelta(0) <= self.drain_timeout <= timedelta(hours=1):
            raise ConfigError("must be between 0s and 1h", key="drain_timeout")

    def resolve_token(self) -> str:
        """The join token: the value, or the content of the file when it is an absolute path."""
        return resolve_token(self.token, "db_service.token")


@dataclass
class ClusterConfig:
    version: Literal["v1"] = "v1"
    cluster_name: str = DEFAULT_CLUSTER_NAME
    data_dir: str = field(default_factory=default_data_dir)
    storage: StorageConfig = field(default_factory=StorageConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    databases: list[DatabaseConfig] = field(default_factory=list)
    db_service: DBServiceConfig = field(default_factory=DBServiceConfig)
    # /livez, /readyz (proxy listening, auth service up) and /metrics of `mwiproxy
    # start`; off if empty. "host:port": give a loopback host unless scrapers are remote
    diag_addr: str = ""

    def __post_init__(self) -> None:
        self.data_dir = os.path.expanduser(self.data_dir)

    @classmethod
    def default(cls, data_dir: str | None = None) -> ClusterConfig:
        """The configuration used when no file is given."""
        return cls(data_dir=data_dir) if data_dir else cls()

    @property
    def storage_path(self) -> str:
        return self.storage.path or os.path.join(self.data_dir, STATE_DB_NAME)

    def database(self, name: str) -> DatabaseConfig | None:
        return next((db for db in self.databases if db.name == name), None)

    def validate(self) -> None:
        if not _CLUSTER_NAME.fullmatch(self.cluster_name):
            raise ConfigError(
                key="cluster_name", message=f"{self.cluster_name!r} is not a valid cluster name"
            )
        if not self.data_dir:
            raise ConfigError(key="data_dir", message="must not be empty")
        if self.diag_addr:
            _check_addr(self.diag_addr, "diag_addr")
        seen: dict[str, int] = {}
        for i, db in enumerate(self.databases):
            if db.name in seen:
                raise ConfigError(
                    key=f"databases[{i}].name",
                    message=f"duplicate database name {db.name!r} (also databases[{seen[db.name]}])",
                )
            seen[db.name] = i


def _address_lists(root: Node, path: str) -> Node:
    """`db_service: {auth_server: [a:3080, b:3080]}` reads as `a:3080,b:3080`."""
    if not isinstance(root, yaml.MappingNode):
        return root
    for i, (key, value) in enumerate(root.value):
        if key.value == "db_service" and isinstance(value, yaml.MappingNode):
            value.value = [(k, address_list(v, k.value, path, "db_service.")) for k, v in value.value]
            root.value[i] = (key, value)
    return root


def load_cluster_config(path: str) -> ClusterConfig:
    """Read and check ``cluster.yaml``; every problem is a ConfigError with file:line."""
    docs = load_yaml_file(path)
    if len(docs) > 1:
        raise ConfigError("expected a single YAML document", file=path, line=node_line(docs[1]))
    config = decode(_address_lists(docs[0], path), ClusterConfig, path) if docs else \
        ClusterConfig.default()
    if not is_loopback_addr(config.proxy.listen_addr):
        log.warning(
            "%s: proxy.listen_addr %s is not a loopback address: the proxy will accept "
            "connections from the network",
            path,
            config.proxy.listen_addr,
        )
    if config.diag_addr and not is_loopback_addr(config.diag_addr):
        log.warning("%s: diag_addr %s is not a loopback address: metrics and health "
                    "are served to the network", path, config.diag_addr)
    return config
