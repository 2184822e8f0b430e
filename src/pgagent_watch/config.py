"""Configuration: a TOML file of monitored servers, overridden by the environment.

Environment variables start with ``PGAGENT_WATCH_`` and use ``__`` between
nested names (``PGAGENT_WATCH_WEB__PORT=9000``); the SMTP settings also read
the classic ``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_USER`` and ``SMTP_PASS``.
Passwords are ``SecretStr``: they never appear in a repr, a log or a page.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_toml_path: ContextVar[Path | None] = ContextVar("_toml_path", default=None)

# libpq keepalives: a dead peer is noticed by the kernel too, not only by
# the listener's own heartbeat.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "connect_timeout": "10",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    """One monitored PostgreSQL database that holds pgAgent's schema."""

    name: str
    id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    dsn: SecretStr | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    dbname: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    passfile: Path | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "a server name is 1 to 64 letters, digits, '.', '_' or '-'"
            )
        return value

    @model_validator(mode="after")
    def _check_dsn(self) -> ServerConfig:
        if self.dsn is not None:
            try:
                conninfo_to_dict(self.dsn.get_secret_value())
            except Exception:
                # The libpq message may quote the DSN, password and all.
                raise ValueError(f"server {self.name!r}: dsn is not valid") from None
        elif not (self.host or self.dbname):
            raise ValueError(f"server {self.name!r}: give a dsn or host and dbname")
        return self

    def conninfo(self, **extra: str) -> str:
        """The libpq connection string, secrets included: never log it."""
        params: dict[str, Any] = dict(KEEPALIVES)
        if self.dsn is not None:
            params.update(conninfo_to_dict(self.dsn.get_secret_value()))
        for key in ("host", "port", "dbname", "user"):
            value = getattr(self, key)
            if value is not None:
                params[key] = str(value)
        if self.password is not None:
            params["password"] = self.password.get_secret_value()
        if self.passfile is not None:
            params["passfile"] = str(self.passfile)
        params.setdefault("application_name", "pgagent-watch")
        params.update(extra)
        return make_conninfo(**params)

    def describe(self) -> str:
        """Where this server is, without any secret: safe for logs and pages."""
        params = conninfo_to_dict(self.conninfo())
        shown = [
            f"{k}={params[k]}"
            for k in ("host", "port", "dbname", "user")
            if k in params
        ]
        return " ".join(shown)


class WebSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    # Socket.IO: a client silent this long is dropped.
    ping_interval: float = Field(default=20, gt=0)
    ping_timeout: float = Field(default=20, gt=0)
    # Under load, events of one tick leave as one frame per room.
    coalesce_ms: float = Field(default=5, ge=0, le=1000)


class ListenerSettings(_Strict):
    safety_interval: float = Field(default=30, gt=0)
    heartbeat_interval: float = Field(default=10, gt=0)
    heartbeat_timeout: float = Field(default=5, gt=0)
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30, gt=0)


class CaptureSettings(_Strict):
    retention_days: float = Field(default=14, gt=0)
    prune_interval: float = Field(default=3600, gt=0)


class AuthSettings(_Strict):
    """Sign-in: sessions, slowing down guessers, an optional trusted proxy header."""

    # Signs the session cookie. Unset: a random key kept in the state
    # database, shared by every instance that uses it.
    secret_key: SecretStr | None = None
    # A session unused this long ends; no session lives longer than max_age.
    idle_timeout: float = Field(default=3600, gt=0)
    max_age: float = Field(default=12 * 3600, gt=0)
    # None: Secure cookies when web.public_url starts with https.
    cookie_secure: bool | None = None
    cookie_name: str = Field(default="pgw_session", pattern=r"^[A-Za-z0-9_]{1,40}$")
    # Failed sign-ins per user and address: this many free, then a wait
    # doubling from backoff_initial up to backoff_max seconds.
    free_attempts: int = Field(default=3, ge=0)
    backoff_initial: float = Field(default=1, gt=0)
    backoff_max: float = Field(default=300, gt=0)
    # Single sign-on through a reverse proxy: the header holding the user
    # name, honoured only from these proxy addresses. Off while unset.
    trusted_header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]{1,64}$")
    trusted_proxies: list[str] = Field(default_factory=list)
    # Open sockets are authenticated again this often: a sign-out, a
    # revoked token or a disabled user closes them within this time.
    socket_check_interval: float = Field(default=30, gt=0)

    @model_validator(mode="after")
    def _check_proxy(self) -> AuthSettings:
        if self.trusted_header and not self.trusted_proxies:
            raise ValueError("auth.trusted_header needs auth.trusted_proxies")
        return self


class DetectSettings(_Strict):
    """Health detection (detect.py): what counts as down, overdue, stuck, flapping.

    Times are in seconds. Per-job values set through the API
    (``/api/servers/{id}/jobs/{job_id}/health-settings``) win over these.
    """

    enabled: bool = True
    # One read of the server per interval, and soon after a relevant event,
    # but never more often than min_interval.
    interval: float = Field(default=30, gt=0)
    min_interval: float = Field(default=1, ge=0)
    # No live agent for this long, while a job is scheduled: agent down.
    agent_grace: float = Field(default=60, ge=0)
    # A next run this far in the past with no run started: overdue.
    overdue_grace: float = Field(default=300, ge=0)
    # A run is stuck after stuck_multiple times the stuck_percentile of the
    # durations of its job's last stuck_history finished runs (at least
    # stuck_min_runs of them), and never before stuck_floor; with less
    # history, after stuck_default (0: never).
    stuck_multiple: float = Field(default=3, gt=0)
    stuck_percentile: float = Field(default=0.95, gt=0, le=1)
    stuck_floor: float = Field(default=300, ge=0)
    stuck_history: int = Field(default=20, ge=1, le=1000)
    stuck_min_runs: int = Field(default=5, ge=1, le=1000)
    stuck_default: float = Field(default=3600, ge=0)
    # flapping_changes changes between success and failure among the last
    # 4 x flapping_changes runs that started within flapping_window:
    # flapping, until at most half as many changes are left.
    flapping_window: float = Field(default=3600, gt=0)
    flapping_changes: int = Field(default=4, ge=2, le=100)


SmtpSecurity = Literal["plain", "starttls", "tls"]


class SmtpSettings(_Strict):
    """Where alert mail goes. ``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_USER`` and
    ``SMTP_PASS`` override the file's ``[smtp]`` section.

    ``security`` picks exactly one TLS path: ``plain`` (none, not even an
    offered STARTTLS), ``starttls`` (required), ``tls`` (implicit, port 465).
    Left out, it follows the port: 465 is ``tls``, 587 ``starttls``, any other
    ``plain``.
    """

    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    password: SecretStr | None = None
    security: SmtpSecurity | None = None
    sender: str = "pgagent-watch <pgagent-watch@localhost>"
    reply_to: str | None = None
    timeout: float = Field(default=30, gt=0)
    validate_certs: bool = True
    # A CA bundle for a server whose certificate a private CA signed.
    ca_file: Path | None = None

    def effective_security(self) -> SmtpSecurity:
        if self.security is not None:
            return self.security
        return {465: "tls", 587: "starttls"}.get(self.port or 25, "plain")  # type: ignore[return-value]

    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {"tls": 465, "starttls": 587}.get(self.effective_security(), 25)


class ChannelConfig(_Strict):
    """A named Apprise channel (``json://``, ``slack://``, ``ntfy://``, ...).

    Give credentials apart from the URL: they are percent-encoded into it, so
    a password holding ``@`` or ``/`` works.
    """

    url: SecretStr
    user: str | None = None
    password: SecretStr | None = None


class AlertSettings(_Strict):
    enabled: bool = True
    # Grouping per recipient and channel.
    window: float = Field(default=120, gt=0)
    batch: int = Field(default=250, ge=1, le=10000)
    # The first alert after a quiet spell waits this long for company.
    settle: float = Field(default=1, ge=0)
    # Alerts of one job to one recipient leave at most this often (0: no limit).
    min_interval: float = Field(default=0, ge=0)
    # "22:00-07:00": nothing leaves in that span of quiet_timezone.
    quiet_hours: str | None = Field(default=None, pattern=r"^\d\d:\d\d-\d\d:\d\d$")
    quiet_timezone: str = "UTC"
    max_attempts: int = Field(default=10, ge=1)
    backoff_initial: float = Field(default=5, gt=0)
    backoff_max: float = Field(default=300, gt=0)
    # A claim older than this is taken back (its dispatcher died mid-send).
    claim_timeout: float = Field(default=300, gt=0)
    # The engine's safety read and the dispatcher's tick.
    poll_interval: float = Field(default=5, gt=0)
    # Sent, failed and dead rows older than this leave the outbox.
    retention_days: float = Field(default=30, gt=0)
    output_lines: int = Field(default=20, ge=1)
    output_chars: int = Field(default=4000, ge=100)
    # The demo's embedded SMTP server (aiosmtpd); its catch is on the page.
    mail_catcher: bool = False
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)


class LimitSettings(_Strict):
    """What one browser may cost: its send queue, and the events it may send."""

    # Engine.IO packets waiting for one client; past this it is dropped.
    client_queue_max: int = Field(default=1000, ge=1)
    # A token bucket per connection: a burst, refilled at this rate.
    socket_rate: float = Field(default=20, gt=0)
    socket_burst: int = Field(default=100, ge=1)
    # Refused events in a row, past which the connection is closed.
    socket_strikes: int = Field(default=500, ge=1)


class MetricsSettings(_Strict):
    # How often the database-side figures (queue usage, outbox) are read.
    interval: float = Field(default=15, gt=0)
    # pg_notification_queue_usage() above this logs a warning.
    queue_warn: float = Field(default=0.5, gt=0, le=1)


class ClusterSettings(_Strict):
    """Several instances on one Redis; each server is listened to by one of them."""

    redis_url: SecretStr | None = None
    channel: str = "pgagent-watch"
    # A standby instance tries the listen lock this often.
    standby_interval: float = Field(default=2, gt=0)
    # The pub/sub self-check: a probe every interval, lost after the timeout.
    probe_interval: float = Field(default=10, gt=0)
    probe_timeout: float = Field(default=5, gt=0)


class Settings(BaseSettings):
    """Everything pgagent-watch reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="PGAGENT_WATCH_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    servers: list[ServerConfig] = Field(default_factory=list)
    # The database that holds users, subscriptions and the outbox; by
    # default the first monitored server's.
    state_dsn: SecretStr | None = None
    web: WebSettings = WebSettings()
    listener: ListenerSettings = ListenerSettings()
    capture: CaptureSettings = CaptureSettings()
    auth: AuthSettings = AuthSettings()
    detect: DetectSettings = DetectSettings()
    smtp: SmtpSettings = SmtpSettings()
    alerts: AlertSettings = AlertSettings()
    limits: LimitSettings = LimitSettings()
    metrics: MetricsSettings = MetricsSettings()
    cluster: ClusterSettings = ClusterSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="before")
    @classmethod
    def _classic_smtp_env(cls, data: Any) -> Any:
        """SMTP_HOST, SMTP_PORT, SMTP_USER and SMTP_PASS, as the extension read."""
        if not isinstance(data, dict):
            return data
        classic = {
            "host": "SMTP_HOST",
            "port": "SMTP_PORT",
            "user": "SMTP_USER",
            "password": "SMTP_PASS",
        }
        found = {k: os.environ[v] for k, v in classic.items() if os.environ.get(v)}
        if found:
            smtp = data.get("smtp") or {}
            if isinstance(smtp, BaseModel):
                smtp = smtp.model_dump()
            data = {**data, "smtp": {**dict(smtp), **found}}
        return data

    @field_validator("state_dsn")
    @classmethod
    def _check_state_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                conninfo_to_dict(value.get_secret_value())
            except Exception:
                # The libpq message may quote the DSN, password and all.
                raise ValueError("state_dsn is not valid") from None
        return value

    @model_validator(mode="after")
    def _unique_servers(self) -> Settings:
        names = [s.name for s in self.servers]
        if len(set(names)) != len(names):
            raise ValueError("server names must be unique")
        ids = [s.id for s in self.servers if s.id is not None]
        if len(set(ids)) != len(ids):
            raise ValueError("server ids must be unique")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def server_ids(self) -> dict[int, ServerConfig]:
        """Servers by id: the configured id, else the position from 1."""
        taken = {s.id for s in self.servers if s.id is not None}
        out: dict[int, ServerConfig] = {}
        next_id = 1
        for server in self.servers:
            if server.id is not None:
                out[server.id] = server
                continue
            while next_id in taken:
                next_id += 1
            out[next_id] = server
            taken.add(next_id)
        return out

    def state_conninfo(self, **extra: str) -> str:
        """Where the service keeps its own state; secrets included."""
        if self.state_dsn is not None:
            return make_conninfo(
                self.state_dsn.get_secret_value(), **KEEPALIVES, **extra
            )
        if not self.servers:
            raise ConfigError("no servers configured and no state_dsn")
        return self.servers[0].conninfo(**extra)


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "config"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None = None, **overrides: Any
) -> Settings:
    """Read the TOML file (if any), then the environment, then the overrides.

    Raises ConfigError with every problem named, and never the value of a
    secret.
    """
    toml = Path(path) if path is not None else None
    if toml is not None and not toml.is_file():
        raise ConfigError(f"config file not found: {toml}")
    token = _toml_path.set(toml)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(f"{toml}: {exc}") from None
    finally:
        _toml_path.reset(token)
