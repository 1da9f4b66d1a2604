"""Typed settings read from environment variables, validated once at start.

Every variable, its default and its meaning is listed in docs/configuration.md.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from time import time
from urllib.parse import quote

# Keys that must never be used outside development: they are public (in this repo or in tutorials).
KNOWN_UNSAFE_SECRET_KEYS = {"", "dev", "changeme", "change-me", "secret", "development", "please-change-me"}
SAMESITE_VALUES = {"Strict", "Lax", "None"}
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


# The speedups, in install order (deployment/operations/speedups.py installs them; SPEEDUPS, SPEEDUPS_SKIP).
# Named here, where gunicorn's master checks the settings before any worker starts.
SPEEDUP_NAMES = (
    "event_context",
    "session_cache",
    "event_greenlets",
    "pywsgi_speedups",
    "connection_memory",
    "websocket_writes",
    "idle_websockets",
)


class ConfigError(ValueError):
    """A setting is missing, malformed or unsafe; the message names the variable."""


def env_str(env, name, default=""):
    return env.get(name, default).strip()


def env_bool(env, name, default):
    raw = env.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


def env_number(env, name, default, kind=int, minimum=None):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {kind.__name__}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
    return value


def env_secret(env, name):
    """NAME, or the content of the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    path = env.get(f"{name}_FILE", "").strip()
    if path:
        try:
            with open(path) as secret_file:
                return secret_file.read().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path!r} cannot be read: {exc.strerror}") from None
    return env.get(name, "")


def with_password(url, password):
    """Put a password into a redis:// URL that has none (REDIS_PASSWORD / REDIS_PASSWORD_FILE). In a
    redis+sentinel:// URL it is the password of the Redis master (and replicas), not of the sentinels."""
    if not url or not password or "@" in url.split("://", 1)[-1]:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://:{quote(password, safe='')}@{rest}"


SENTINEL_URL_FORM = "redis+sentinel://[:password@]host1:port1[,host2:port2...]/db/service_name"


def check_sentinel_url(url):
    """REDIS_URL=redis+sentinel://...: every sentinel as host:port, a numeric db, and the service name (the
    name in the sentinels' `sentinel monitor` line). python-socketio would fall back to the channel name
    without one, which is never what a deployment means."""
    shown = mask_url_password(url)
    rest = url[len("redis+sentinel://") :]
    hosts, _, path = rest.partition("/")
    hosts = hosts.rsplit("@", 1)[-1]
    for host_port in hosts.split(","):
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"REDIS_URL={shown!r}: sentinel {host_port!r} must be host:port (expected {SENTINEL_URL_FORM})"
            )
    db, _, service = path.partition("/")
    if db and not db.isdigit():
        raise ConfigError(f"REDIS_URL={shown!r}: db {db!r} must be a number (expected {SENTINEL_URL_FORM})")
    if not db or not service or "/" in service:
        raise ConfigError(
            f"REDIS_URL={shown!r} needs the db and the Sentinel service name, e.g. "
            f"redis+sentinel://sentinel1:26379,sentinel2:26379/0/mymaster (expected {SENTINEL_URL_FORM})"
        )


def env_list(env, name):
    return [item.strip() for item in env.get(name, "").split(",") if item.strip()]


@dataclass(frozen=True)
class CookieSettings:
    """The Engine.IO `io` cookie that HAProxy uses for sticky sessions."""

    enabled: bool = True
    name: str = "io"
    path: str = "/"
    domain: str = ""
    http_only: bool = True
    same_site: str = "Lax"  # Strict, Lax, None, or "" to leave the attribute out
    secure: bool = False
    max_age: int | None = None  # seconds; None = session cookie
    expires: int | None = None  # seconds from the handshake; None = no Expires attribute

    def validate(self):
        if not self.enabled:
            return
        if not self.name or any(c in self.name for c in ' ;,="\t'):
            raise ConfigError(f"IO_COOKIE_NAME={self.name!r} is not a valid cookie name")
        if self.same_site and self.same_site not in SAMESITE_VALUES:
            raise ConfigError(f"IO_COOKIE_SAMESITE={self.same_site!r} must be one of Strict, Lax, None")
        if self.same_site == "None" and not self.secure:
            raise ConfigError("IO_COOKIE_SAMESITE=None requires IO_COOKIE_SECURE=true (browsers drop it otherwise)")
        if not self.path.startswith("/"):
            raise ConfigError(f"IO_COOKIE_PATH={self.path!r} must start with /")

    def engineio_option(self):
        """The `cookie=` argument for python-engineio: its keys are written verbatim, values must be
        str, True or a callable (an int or False raises TypeError at handshake), hence this builder."""
        if not self.enabled:
            return None
        attrs = {"name": self.name, "Path": self.path}
        if self.domain:
            attrs["Domain"] = self.domain
        if self.http_only:
            attrs["HttpOnly"] = True
        if self.same_site:
            attrs["SameSite"] = self.same_site
        if self.secure:
            attrs["Secure"] = True
        if self.max_age is not None:
            attrs["Max-Age"] = str(self.max_age)
        if self.expires is not None:
            seconds = self.expires
            attrs["Expires"] = lambda: formatdate(time() + seconds, usegmt=True)
        return attrs


@dataclass(frozen=True)
class Settings:
    env: str = "production"  # APP_ENV: production or development
    secret_key: str = field(default="", repr=False)
    instance_name: str = ""
    redis_url: str = ""
    message_queue_channel: str = "flask-socketio"
    cors_allowed_origins: tuple[str, ...] = ()
    ping_interval: int = 25
    ping_timeout: int = 20
    max_http_buffer_size: int = 1_000_000
    async_handlers: bool = True  # ASYNC_HANDLERS: a waiting handler holds up no other event; false = in order
    read_buffer_size: int = 4096  # READ_BUFFER_SIZE: bytes each connection holds for reads (connection_memory.py)
    websocket_direct_send: bool = True  # WEBSOCKET_DIRECT_SEND: idle WebSockets' packets via the loop's outbox
    websocket_writer_on_demand: bool = True  # WEBSOCKET_WRITER_ON_DEMAND: no writer greenlet for an idle WebSocket
    speedups: bool = True  # SPEEDUPS: false runs the stock libraries only (deployment/patches/README.md)
    speedups_skip: tuple[str, ...] = ()  # SPEEDUPS_SKIP: names of single speedups to leave off
    # per-connection limits (deployment/operations/limits.py); 0 turns a limit off
    event_rate: float = 50.0  # EVENT_RATE: Socket.IO packets per second per connection
    event_burst: int = 100  # EVENT_BURST: bucket size
    event_flood_disconnect: int = 500  # EVENT_FLOOD_DISCONNECT: refused packets within 10s that end the connection
    bad_packet_limit: int = 10  # BAD_PACKET_LIMIT: malformed packets that end the connection
    max_rooms_per_client: int = 50  # MAX_ROOMS_PER_CLIENT
    # graceful stop (operations/lifecycle.py) and Redis start-up wait (operations/message_queue.py)
    drain_seconds: float = 3.0  # DRAIN_SECONDS
    close_spread_seconds: float = 10.0  # CLOSE_SPREAD_SECONDS
    redis_wait_seconds: float = 30.0  # REDIS_WAIT_SECONDS
    # connection state recovery (operations/recovery.py): same id, rooms, session and missed packets after a cut
    connection_state_recovery: bool = False  # CONNECTION_STATE_RECOVERY
    recovery_max_disconnection: float = 120.0  # RECOVERY_MAX_DISCONNECTION: seconds a session is kept
    cookie: CookieSettings = CookieSettings()
    require_login: bool = False
    probes: bool = True  # PROBES: the stack's probe events and cookies (deployment/operations/probes.py)
    log_level: str = "INFO"
    log_format: str = "text"  # LOG_FORMAT: text or json (one JSON object per line)

    @property
    def development(self):
        return self.env == "development"

    @classmethod
    def from_env(cls, env=None, **overrides):
        env = os.environ if env is None else env
        cookie = CookieSettings(
            enabled=env_bool(env, "IO_COOKIE", True),
            name=env_str(env, "IO_COOKIE_NAME", "io"),
            path=env_str(env, "IO_COOKIE_PATH", "/"),
            domain=env_str(env, "IO_COOKIE_DOMAIN"),
            http_only=env_bool(env, "IO_COOKIE_HTTPONLY", True),
            same_site=env_str(env, "IO_COOKIE_SAMESITE", "Lax").capitalize(),
            secure=env_bool(env, "IO_COOKIE_SECURE", False),
            max_age=env_number(env, "IO_COOKIE_MAX_AGE", None, minimum=0),
            expires=env_number(env, "IO_COOKIE_EXPIRES", None, minimum=0),
        )
        values = dict(
            env=env_str(env, "APP_ENV", "production").lower(),
            secret_key=env_secret(env, "SECRET_KEY"),
            instance_name=env_str(env, "INSTANCE_NAME") or socket.gethostname(),
            redis_url=with_password(env_str(env, "REDIS_URL"), env_secret(env, "REDIS_PASSWORD")),
            message_queue_channel=env_str(env, "SOCKETIO_CHANNEL", "flask-socketio"),
            cors_allowed_origins=tuple(env_list(env, "CORS_ALLOWED_ORIGINS")),
            ping_interval=env_number(env, "PING_INTERVAL", 25, minimum=1),
            ping_timeout=env_number(env, "PING_TIMEOUT", 20, minimum=1),
            max_http_buffer_size=env_number(env, "MAX_HTTP_BUFFER_SIZE", 1_000_000, minimum=1024),
            async_handlers=env_bool(env, "ASYNC_HANDLERS", True),
            read_buffer_size=env_number(env, "READ_BUFFER_SIZE", 4096, minimum=256),
            websocket_direct_send=env_bool(env, "WEBSOCKET_DIRECT_SEND", True),
            websocket_writer_on_demand=env_bool(env, "WEBSOCKET_WRITER_ON_DEMAND", True),
            speedups=env_bool(env, "SPEEDUPS", True),
            speedups_skip=tuple(env_list(env, "SPEEDUPS_SKIP")),
            event_rate=env_number(env, "EVENT_RATE", 50.0, kind=float, minimum=0),
            event_burst=env_number(env, "EVENT_BURST", 100, minimum=1),
            event_flood_disconnect=env_number(env, "EVENT_FLOOD_DISCONNECT", 500, minimum=0),
            bad_packet_limit=env_number(env, "BAD_PACKET_LIMIT", 10, minimum=0),
            max_rooms_per_client=env_number(env, "MAX_ROOMS_PER_CLIENT", 50, minimum=0),
            drain_seconds=env_number(env, "DRAIN_SECONDS", 3.0, kind=float, minimum=0),
            close_spread_seconds=env_number(env, "CLOSE_SPREAD_SECONDS", 10.0, kind=float, minimum=0),
            redis_wait_seconds=env_number(env, "REDIS_WAIT_SECONDS", 30.0, kind=float, minimum=0),
            connection_state_recovery=env_bool(env, "CONNECTION_STATE_RECOVERY", False),
            recovery_max_disconnection=env_number(env, "RECOVERY_MAX_DISCONNECTION", 120.0, kind=float, minimum=1),
            cookie=cookie,
            require_login=env_bool(env, "REQUIRE_LOGIN", False),
            probes=env_bool(env, "PROBES", True),
            log_level=env_str(env, "LOG_LEVEL", "info").upper(),
            log_format=env_str(env, "LOG_FORMAT", "text").lower(),
        )
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self):
        if self.env not in ("production", "development"):
            raise ConfigError(f"APP_ENV={self.env!r} must be production or development")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT={self.log_format!r} must be text or json")
        if not self.development:
            if self.secret_key.strip().lower() in KNOWN_UNSAFE_SECRET_KEYS:
                raise ConfigError(
                    "SECRET_KEY is missing or a known default: set it to a long random value, e.g. "
                    "`python -c 'import secrets; print(secrets.token_hex(32))'` "
                    "(or APP_ENV=development for local work)"
                )
            if len(self.secret_key) < 16:
                raise ConfigError("SECRET_KEY is shorter than 16 characters: use a long random value")
        if "*" in self.cors_allowed_origins:
            raise ConfigError("CORS_ALLOWED_ORIGINS=* would let any web site use your users' cookies: list origins")
        for origin in self.cors_allowed_origins:
            if not origin.startswith(("http://", "https://")):
                raise ConfigError(f"CORS_ALLOWED_ORIGINS entry {origin!r} must start with http:// or https://")
        if self.redis_url.startswith("redis+sentinel://"):
            check_sentinel_url(self.redis_url)
        elif self.redis_url and not self.redis_url.startswith(("redis://", "rediss://")):
            raise ConfigError(
                f"REDIS_URL={mask_url_password(self.redis_url)!r} must start with redis://, rediss:// or "
                "redis+sentinel:// (other schemes would silently select Kombu)"
            )
        self.cookie.validate()
        unknown = sorted(set(self.speedups_skip) - set(SPEEDUP_NAMES))
        if unknown:
            raise ConfigError(f"SPEEDUPS_SKIP names unknown speedups {unknown}: choose from {', '.join(SPEEDUP_NAMES)}")

    def public_dict(self):
        """The effective settings with secrets masked, for the start-up log line."""
        data = asdict(self)
        data["secret_key"] = "***" if self.secret_key else "(unset)"
        data["redis_url"] = mask_url_password(self.redis_url) or "(unset: single process, no message queue)"
        data["development"] = self.development
        return data


def mask_url_password(url):
    """redis://:pw@host/0 -> redis://:***@host/0, redis+sentinel://:pw@s1:26379,s2:26379/0/mymaster ->
    redis+sentinel://:***@s1:26379,s2:26379/0/mymaster"""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
