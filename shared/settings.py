"""Typed settings, read once from the environment.

Project settings use the ``SWITCHBOARD_`` prefix; ``DATABASE_URL`` and
``KAFKA_BOOTSTRAP_SERVERS`` keep their conventional names.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Everything a Switchboard process needs to know about its environment."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHBOARD_", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "SWITCHBOARD_DATABASE_URL")
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "SWITCHBOARD_KAFKA_BOOTSTRAP"),
    )
    kafka_idempotent_producer: bool = Field(
        default=True,
        description="On for real Kafka; `up` turns it off for the embedded broker.",
    )
    kafka_client_id: str = "switchboard"
    topic_prefix: str = "sb."
    consumer_group_prefix: str = Field(
        default="switchboard-", description="consumer groups are <prefix><role>"
    )
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    topic_replication_factor: int = Field(default=1, ge=1, le=16)
    data_dir: Path = Path(".data")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)
    sql_dir: Path = REPO_ROOT / "sql"
    partitions_months_ahead: int = Field(default=3, ge=0, le=36)
    retention_months: int = Field(
        default=24, ge=1, le=1200, description="months kept attached; older ones are archived"
    )
    audit_retention_months: int = Field(
        default=84, ge=1, le=1200, description="retention of audit_logs (longer: evidence)"
    )
    partition_maintenance_interval_s: float = Field(default=3600.0, gt=0)
    secret_key: SecretStr | None = Field(
        default=None, description="base64 AES-256 key for integration credentials"
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="bearer token of the operator HTTP API (/admin/v1); unset = no API",
    )
    publish_timeout_s: float = Field(default=2.5, gt=0, le=30)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    integration_cache_ttl_s: float = Field(default=2.0, gt=0)
    slack_timestamp_tolerance_s: int = Field(default=300, ge=1)
    widget_rate_limit_per_minute: int = Field(default=30, ge=1)
    widget_rate_limit_burst: int = Field(default=10, ge=1)
    worker_batch_size: int = Field(default=2000, ge=1, le=100_000)
    worker_linger_ms: int = Field(default=200, ge=0, le=60_000)
    reply_linger_ms: int = Field(
        default=5, ge=0, le=60_000, description="batch linger of the agent and egress roles"
    )
    worker_session_timeout_ms: int = Field(default=10_000, ge=1000)
    worker_http_port: int | None = Field(
        default=None, ge=0, le=65535, description="ops endpoints of a worker (0 = any port)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shutdown_timeout_s: float = Field(default=15.0, gt=0)
    analytics_flush_interval_s: float = Field(
        default=2.0, gt=0, le=300, description="how often analytics aggregates are written"
    )
    analytics_flush_max_rows: int = Field(
        default=5000, ge=1, description="pending aggregate rows that force an earlier write"
    )
    analytics_horizon_s: float = Field(
        default=86400.0,
        ge=600,
        description="how long analytics state is kept; older messages are not counted",
    )
    analytics_rollup_refresh_s: float = Field(
        default=300.0, ge=0, description="daily rollup refresh period (0 = only by the CLI)"
    )
    # Egress: platform API endpoints (tests point them at local stand-ins) and pacing.
    telegram_api_base: str = "https://api.telegram.org"
    slack_api_base: str = "https://slack.com"
    whatsapp_api_base: str = "https://graph.facebook.com"
    whatsapp_api_version: str = Field(default="v21.0", pattern=r"^v\d+\.\d+$")
    egress_http_timeout_s: float = Field(default=10.0, gt=0, le=120)
    egress_telegram_per_bot_per_s: float = Field(default=30.0, gt=0)
    egress_telegram_per_chat_per_s: float = Field(default=1.0, gt=0)
    egress_telegram_per_group_per_min: float = Field(default=20.0, gt=0)
    egress_slack_per_channel_per_s: float = Field(default=1.0, gt=0)
    egress_whatsapp_per_number_per_s: float = Field(default=80.0, gt=0)
    egress_whatsapp_per_recipient_per_s: float = Field(
        default=1 / 6, gt=0, description="Meta's pair rate: one message per 6 s to one user"
    )
    egress_conversation_burst: int = Field(
        default=3, ge=1, le=45, description="messages one chat/channel/recipient may get at once"
    )
    egress_retry_delays_s: tuple[float, float, float] = Field(
        default=(1.0, 10.0, 60.0),
        description="delay of each retry tier topic (messages.outbound.retry.0..2)",
    )
    egress_max_attempts: int = Field(
        default=6, ge=1, le=100, description="attempts before a transient failure is final"
    )
    # Agent: knowledge answers and the LLM port.
    knowledge_min_score: float = Field(
        default=0.35, ge=0, le=1, description="best knowledge match below this is not sent"
    )
    llm_timeout_s: float = Field(default=20.0, gt=0, le=300)
    seed_demo: bool = Field(
        default=True,
        description="`up` on the embedded database seeds a demo tenant, widget, flow and FAQ",
    )
    agent_fallback_text: str = Field(
        default="Sorry, I didn't catch that. Could you say it another way?",
        min_length=1,
        description="sent when a flow, the knowledge base and the LLM all have no answer",
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("topic prefix may only hold letters, digits, '.', '_' and '-'")
        return value

    def require_database_url(self) -> str:
        """The database URL, or a start-up error that names the variable."""
        if not self.database_url:
            raise ConfigurationError("DATABASE_URL is not set (or run `switchboard up`)")
        return self.database_url

    def require_secret_key(self) -> bytes:
        """The credentials key, or a start-up error that names the variable."""
        from shared.crypto import parse_key

        if self.secret_key is None:
            raise ConfigurationError(
                "SWITCHBOARD_SECRET_KEY is not set (base64 of 32 random bytes; "
                "`switchboard up` generates one into its data dir)"
            )
        return parse_key(self.secret_key.get_secret_value())

    def require_kafka(self) -> str:
        """The bootstrap servers, or a start-up error that names the variable."""
        if not self.kafka_bootstrap_servers:
            raise ConfigurationError("KAFKA_BOOTSTRAP_SERVERS is not set (or run `switchboard up`)")
        return self.kafka_bootstrap_servers


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning validation failures into one clear ConfigurationError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{_env_name(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigurationError(f"invalid settings: {problems}") from None


def with_stack_file(settings: Settings, data_dir: Path) -> Settings:
    """Fill unset URLs and key from a running ``switchboard up``'s data dir, if there is one.

    Lets an operator run ``switchboard tenants ...`` beside ``make run`` with no exports.
    """
    import orjson

    stack_file = data_dir / "stack.json"
    if (settings.database_url and settings.kafka_bootstrap_servers) or not stack_file.exists():
        return settings
    info = orjson.loads(stack_file.read_bytes())
    updates: dict[str, object] = {}
    if not settings.database_url:
        updates["database_url"] = info["database_url"]
    if not settings.kafka_bootstrap_servers:
        updates["kafka_bootstrap_servers"] = info["kafka_bootstrap"]
        if info.get("embedded", {}).get("broker"):
            updates["kafka_idempotent_producer"] = False
    key_file = data_dir / "secret.key"
    if settings.secret_key is None and key_file.exists():
        updates["secret_key"] = SecretStr(key_file.read_text().strip())
    token_file = data_dir / "admin.token"
    if settings.admin_token is None and token_file.exists():
        updates["admin_token"] = SecretStr(token_file.read_text().strip())
    return settings.model_copy(update=updates)


def _env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable behind a validation error's location."""
    name = str(loc[0]) if loc else "settings"
    return name if name.isupper() else f"SWITCHBOARD_{name.upper()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
