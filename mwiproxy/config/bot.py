"""`mwibot -c tbot.yaml`: Teleport tbot's v2 configuration file, decoded strictly.

The shape is tbot's (teleport-facts.md §1) so users bring their files unchanged. Where
mwibot differs it says so in an error rather than silently ignoring a key:

- `join_method`: only `token` for now; other tbot join methods are refused by name.
- `fips: true` is refused (mwibot has no FIPS mode).
- `storage` defaults to the directory `/var/lib/mwibot` (tbot: `/var/lib/teleport/bot`),
  so mwibot never touches a tbot's own state by accident.
- Destinations: only `type: directory` (tbot also has memory, kubernetes_secret);
  `acls: required` is refused and `acls: try` warns: mwibot does not set ACLs yet.
- Service types: `database`, `database-tunnel`, `identity`.
- mwibot extension (not in tbot's schema): `reload` under a `database` or `identity`
  service, an action run after each renewal of that output, e.g.
  `reload: {pid_file: /run/pgbouncer.pid, signal: HUP}` (signal defaults to HUP) or
  `reload: {command: [systemctl, reload, pgbouncer]}`. tbot refuses the key, so a file
  using it is mwibot-only.

Services are a list discriminated by `type`, so they are decoded here one by one (each
with its own dataclass) rather than by the generic loader; errors still carry the
file, line and key, e.g. `tbot.yaml:12: services[0].format: invalid value 'pem'`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import signal as signals
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import yaml

from mwiproxy.config.durations import format_duration
from mwiproxy.config.loader import (
    ConfigError,
    Node,
    address_list,
    decode,
    load_yaml_file,
    node_line,
    resolve_token,
)
from mwiproxy.wire.addr import Address, parse_listen, split_address_list, split_host_port

__all__ = [
    "BotConfig",
    "DatabaseService",
    "DatabaseTunnelService",
    "DirectoryDestinationConfig",
    "IdentityService",
    "Onboarding",
    "Reader",
    "ReloadAction",
    "ServiceConfig",
    "load_bot_config",
    "parse_bot_config",
]

log = logging.getLogger("mwiproxy.config")

DEFAULT_STORAGE_PATH = "/var/lib/mwibot"
DEFAULT_CREDENTIAL_TTL = timedelta(hours=1)
DEFAULT_RENEWAL_INTERVAL = timedelta(minutes=20)
MAX_RECOMMENDED_TTL = timedelta(hours=24)

_CA_PIN = re.compile(r"^sha256:[0-9a-f]{64}$")
_OTHER_JOIN_METHODS = (
    "iam ec2 gcp azure azure_devops github gitlab circleci kubernetes spacelift "
    "bitbucket terraform_cloud tpm oracle bound_keypair"
).split()


@dataclass
class Reader:
    user: str | int = ""
    group: str | int = ""

    def validate(self) -> None:
        if (self.user == "") == (self.group == ""):
            raise ConfigError("give exactly one of user or group")


@dataclass
class DirectoryDestinationConfig:
    path: str
    type: str = "directory"
    symlinks: Literal["try-secure", "secure", "insecure"] = "try-secure"
    acls: Literal["off", "try", "required"] = "off"
    readers: list[Reader] = field(default_factory=list)

    def validate(self) -> None:
        if self.type != "directory":
            raise ConfigError(
                f"destination type {self.type!r} is not supported (mwibot: directory)", key="type"
            )
        if not self.path:
            raise ConfigError("must not be empty", key="path")
        if self.acls == "required":
            raise ConfigError("mwibot cannot set ACLs yet; use off or try", key="acls")
        if self.acls == "try":
            log.warning("%s: acls: try: mwibot does not set ACLs; files stay 0600", self.path)

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "directory", "path": self.path}
        if self.symlinks != "try-secure":
            out["symlinks"] = self.symlinks
        if self.acls != "off":
            out["acls"] = self.acls
        if self.readers:
            out["readers"] = [{k: v for k, v in vars(r).items() if v != ""} for r in self.readers]
        return out


Destination = DirectoryDestinationConfig | str


def as_directory(dest: Destination) -> DirectoryDestinationConfig:
    """A bare string destination is a directory path."""
    return DirectoryDestinationConfig(path=dest) if isinstance(dest, str) else dest


@dataclass
class Onboarding:
    join_method: str = "token"
    token: str = ""
    ca_pins: list[str] = field(default_factory=list)
    ca_path: str = ""

    def validate(self) -> None:
        if self.join_method in _OTHER_JOIN_METHODS:
            raise ConfigError(
                f"join method {self.join_method!r} is not supported by mwibot (use token)",
                key="join_method",
            )
        if self.join_method != "token":
            raise ConfigError(f"unknown join method {self.join_method!r}", key="join_method")
        for i, pin in enumerate(self.ca_pins):
            if not _CA_PIN.fullmatch(pin):
                raise ConfigError("expected sha256:<64 hex digits>", key=f"ca_pins[{i}]")
        if self.ca_pins and self.ca_path:
            raise ConfigError("ca_pins and ca_path are mutually exclusive", key="ca_path")

    def resolve_token(self) -> str:
        """The join token: the value, or the content of the file when it is an absolute path."""
        return resolve_token(self.token, "onboarding.token")

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"join_method": self.join_method}
        for key in ("token", "ca_pins", "ca_path"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


@dataclass
class ReloadAction:
    """mwibot extension: tell a consumer its credentials changed (see the module doc)."""

    pid_file: str = ""
    signal: str = ""
    command: list[str] = field(default_factory=list)
    timeout: timedelta = timedelta(seconds=30)

    def validate(self) -> None:
        if bool(self.pid_file) == bool(self.command):
            raise ConfigError("give exactly one of pid_file or command")
        if self.signal and not self.pid_file:
            raise ConfigError("signal needs pid_file", key="signal")
        if self.signal:
            try:
                parse_signal(self.signal)
            except ValueError as e:
                raise ConfigError(str(e), key="signal") from None
        if self.command and not self.command[0]:
            raise ConfigError("the program name must not be empty", key="command[0]")

    @property
    def signum(self) -> signals.Signals:
        return parse_signal(self.signal or "HUP")

    def to_yaml(self) -> dict[str, Any]:
        default = ReloadAction()
        return {f.name: _yaml_value(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


def parse_signal(name: str) -> signals.Signals:
    """"HUP", "SIGHUP" or a number -> the signal."""
    text = name.strip().upper()
    if text.isdigit():
        try:
            return signals.Signals(int(text))
        except ValueError:
            raise ValueError(f"unknown signal {name!r}") from None
    try:
        return signals.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except KeyError:
        raise ValueError(f"unknown signal {name!r} (e.g. HUP, USR1, TERM)") from None


@dataclass
class _ServiceBase:
    """What every service type shares: the lifetime check and YAML rendering."""

    def check_lifetime(self) -> None:
        ttl = getattr(self, "credential_ttl", None)
        interval = getattr(self, "renewal_interval", None)
        if (ttl is None) != (interval is None):
            missing = "renewal_interval" if interval is None else "credential_ttl"
            raise ConfigError(
                "set both credential_ttl and renewal_interval, or neither", key=missing
            )

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value not in (None, "", []):
                out[f.name] = _yaml_value(value)
        return out


@dataclass
class DatabaseService(_ServiceBase):
    type: Literal["database"]
    destination: Destination
    service: str
    name: str = ""
    roles: list[str] = field(default_factory=list)
    format: Literal["", "tls", "mongo", "cockroach"] = ""
    database: str = ""
    username: str = ""
    credential_ttl: timedelta | None = None
    renewal_interval: timedelta | None = None
    reload: ReloadAction | None = None

    def validate(self) -> None:
        if not self.service:
            raise ConfigError("must not be empty", key="service")
        self.check_lifetime()

    @property
    def directory(self) -> DirectoryDestinationConfig:
        return as_directory(self.destination)

    def effective_username(self, protocol: str) -> str:
        """Redis with no username means its `default` user (as tbot does)."""
        return "default" if protocol == "redis" and not self.username else self.username


@dataclass
class DatabaseTunnelService(_ServiceBase):
    type: Literal["database-tunnel"]
    listen: str
    service: str
    database: str
    username: str
    name: str = ""
    roles: list[str] = field(default_factory=list)
    credential_ttl: timedelta | None = None
    renewal_interval: timedelta | None = None

    def validate(self) -> None:
        for key in ("listen", "service", "database", "username"):
            if not getattr(self, key):
                raise ConfigError("must not be empty", key=key)
        try:
            parse_listen(self.listen)
        except ValueError as e:
            raise ConfigError(str(e), key="listen") from None
        self.check_lifetime()

    @property
    def address(self) -> Address:
        return parse_listen(self.listen)


@dataclass
class IdentityService(_ServiceBase):
    type: Literal["identity"]
    destination: Destination
    name: str = ""
    roles: list[str] = field(default_factory=list)
    credential_ttl: timedelta | None = None
    renewal_interval: timedelta | None = None
    reload: ReloadAction | None = None

    def validate(self) -> None:
        self.check_lifetime()

    @property
    def directory(self) -> DirectoryDestinationConfig:
        return as_directory(self.destination)


ServiceConfig = DatabaseService | DatabaseTunnelService | IdentityService
SERVICE_TYPES: dict[str, type[Any]] = {
    "database": DatabaseService,
    "database-tunnel": DatabaseTunnelService,
    "identity": IdentityService,
}


@dataclass
class BotConfig:
    version: str
    onboarding: Onboarding = field(default_factory=Onboarding)
    storage: Destination = field(
        default_factory=lambda: DirectoryDestinationConfig(DEFAULT_STORAGE_PATH)
    )
    debug: bool = False
    auth_server: str = ""
    proxy_server: str = ""
    oneshot: bool = False
    fips: bool = False
    diag_addr: str = ""
    insecure: bool = False
    credential_ttl: timedelta = field(
        default=DEFAULT_CREDENTIAL_TTL, metadata={"deprecated": "certificate_ttl"}
    )
    renewal_interval: timedelta = DEFAULT_RENEWAL_INTERVAL
    services: list[ServiceConfig] = field(default_factory=list)

    def validate(self) -> None:
        if self.version != "v2":
            raise ConfigError(f"unsupported version {self.version!r}: expected v2", key="version")
        if self.fips:
            raise ConfigError("mwibot has no FIPS mode", key="fips")
        if self.auth_server and self.proxy_server:
            raise ConfigError(
                "auth_server and proxy_server are mutually exclusive", key="auth_server"
            )
        if self.onboarding.ca_pins and self.insecure:
            raise ConfigError(
                "ca_pins and insecure are mutually exclusive", key="onboarding.ca_pins"
            )
        for key in ("auth_server", "proxy_server", "diag_addr"):
            self._check_address(key, several=key != "diag_addr")

    def _check_address(self, key: str, several: bool) -> None:
        """One host:port; the cluster's keys take several (`a:3080,b:3080`, or a YAML
        list), tried in order with failover."""
        value = getattr(self, key)
        if value:
            try:
                for item in split_address_list(value) if several else [value]:
                    split_host_port(item)
            except ValueError as e:
                raise ConfigError(str(e), key=key) from None

    @property
    def storage_directory(self) -> DirectoryDestinationConfig:
        return as_directory(self.storage)

    def to_yaml(self) -> str:
        """The file `mwibot configure` prints; `load_bot_config` reads it back unchanged."""
        defaults = BotConfig(version=self.version)
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "version" or value != getattr(defaults, f.name):
                out[f.name] = _yaml_value(value)
        return yaml.safe_dump(out, sort_keys=False, default_flow_style=False)


def _yaml_value(value: Any) -> Any:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, str | bool | int | type(None)):
        return value
    if isinstance(value, list):
        return [_yaml_value(v) for v in value]
    to_yaml = getattr(value, "to_yaml", None)
    if callable(to_yaml):
        return to_yaml()
    raise TypeError(f"cannot render {value!r}")


# --- loading ---------------------------------------------------------------------------


def load_bot_config(path: str, *, require_server: bool = True) -> BotConfig:
    """Read and check a tbot.yaml v2 file; ConfigError names file, line and key."""
    docs = load_yaml_file(path)
    if len(docs) != 1:
        raise ConfigError(f"expected one YAML document, found {len(docs)}", file=path)
    return parse_bot_config(docs[0], path, require_server=require_server)


def parse_bot_config(root: Node, filename: str, *, require_server: bool = True) -> BotConfig:
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            "expected a mapping at the top level", file=filename, line=node_line(root)
        )
    lists = {k.value: (k, v) for k, v in root.value if k.value in ("services", "outputs")}
    rest = yaml.MappingNode(root.tag, [(k, address_list(v, k.value, filename))
                                       for k, v in root.value if k.value not in lists])
    rest.start_mark = root.start_mark
    config = decode(rest, BotConfig, filename)
    if "outputs" in lists:
        log.warning(
            "%s:%d: outputs is deprecated, use services", filename, node_line(lists["outputs"][0])
        )
    items: list[tuple[str, Node, ServiceConfig]] = []
    for key in ("services", "outputs"):
        if key in lists:
            items.extend(_decode_services(lists[key][1], key, filename))
    config.services = _named_services(items, filename)
    if require_server and not (config.auth_server or config.proxy_server):
        raise ConfigError("set proxy_server (or auth_server)", file=filename, line=node_line(root))
    _warn_lifetimes(config, filename)
    return config


def _decode_services(node: Node, key: str, filename: str) -> list[tuple[str, Node, ServiceConfig]]:
    if not isinstance(node, yaml.SequenceNode):
        raise ConfigError("expected a list", file=filename, line=node_line(node), key=key)
    return [
        (f"{key}[{i}]", item, _decode_service(item, f"{key}[{i}]", filename))
        for i, item in enumerate(node.value)
    ]


def _decode_service(node: Node, key: str, filename: str) -> ServiceConfig:
    line = node_line(node)
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("expected a mapping", file=filename, line=line, key=key)
    type_node = next((v for k, v in node.value if k.value == "type"), None)
    if type_node is None:
        raise ConfigError("is required", file=filename, line=line, key=f"{key}.type")
    cls = SERVICE_TYPES.get(str(type_node.value))
    if cls is None:
        known = ", ".join(SERVICE_TYPES)
        raise ConfigError(
            f"service type {type_node.value!r} is not supported by mwibot (supported: {known})",
            file=filename,
            line=node_line(type_node),
            key=f"{key}.type",
        )
    service: ServiceConfig = decode(node, cls, filename, key)
    return service


def _named_services(
    items: list[tuple[str, Node, ServiceConfig]], filename: str
) -> list[ServiceConfig]:
    """Name unnamed services and refuse duplicates (names label metrics and health)."""
    seen: set[str] = set()
    for i, (key, node, service) in enumerate(items):
        if not service.name:
            service.name = f"{service.type}-{i + 1}"
        if service.name in seen:
            name_node = next((k for k, _ in node.value if k.value == "name"), node)
            raise ConfigError(
                f"duplicate service name {service.name!r}",
                file=filename,
                line=node_line(name_node),
                key=f"{key}.name",
            )
        seen.add(service.name)
    return [service for _, _, service in items]


def _warn_lifetimes(config: BotConfig, filename: str) -> None:
    _warn_lifetime(filename, "", config.credential_ttl, config.renewal_interval, config.oneshot)
    for s in config.services:
        if s.credential_ttl is not None and s.renewal_interval is not None:
            _warn_lifetime(
                filename, f"{s.name}: ", s.credential_ttl, s.renewal_interval, config.oneshot
            )


def _warn_lifetime(
    filename: str, who: str, ttl: timedelta, interval: timedelta, oneshot: bool
) -> None:
    if ttl > MAX_RECOMMENDED_TTL:
        log.warning(
            "%s: %scredential_ttl %s is over 24h; long-lived credentials are riskier",
            filename,
            who,
            format_duration(ttl),
        )
    if ttl < interval and not oneshot:
        log.warning(
            "%s: %scredential_ttl %s is shorter than renewal_interval %s: "
            "credentials will expire before they are renewed",
            filename,
            who,
            format_duration(ttl),
            format_duration(interval),
        )
