"""Gateway configuration: environment variables (``DRIMBOX_*``) and an optional TOML file.

Precedence, highest first: explicit keyword arguments, environment variables, the TOML
file given to ``drimbox serve --config FILE`` (or ``DRIMBOX_CONFIG``), the defaults below.
Every setting is validated when the settings are built, so a wrong value stops start-up
with a message that names it (see :func:`load_settings`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash,
# no control characters; leading/trailing spaces are not significant.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def validate_ae_title(value: str) -> str:
    """Return the AE title stripped of padding, or raise ``ValueError`` naming the rule."""
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)"
        )
    return stripped


class PeerAE(BaseModel):
    """A DICOM application entity we know: a modality, the centre's PACS, another DRIMbox."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)

    _check_ae = field_validator("ae_title")(validate_ae_title)


class ConfigError(Exception):
    """A setting is wrong; the message names it."""


class Settings(BaseSettings):
    """All the gateway's settings. Environment variables are ``DRIMBOX_`` + the upper-case name."""

    model_config = SettingsConfigDict(
        env_prefix="DRIMBOX_", extra="forbid", validate_default=True
    )

    data_dir: Path = Path("./data")
    """Where instances (``storage/``), the staging area and the SQLite index live."""

    database_url: str | None = None
    """SQLAlchemy URL of the index. Default: SQLite (WAL) at ``<data_dir>/index.sqlite``.
    PostgreSQL: ``postgresql+psycopg://user@host:5432/dbname``."""

    ae_title: str = "DRIMBOX"
    host: str = "127.0.0.1"
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    http_port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    """Base URL the outside world uses to reach our HTTP side (used in every URI we emit).
    Default: ``http://<host>:<http_port>``."""

    peers: list[PeerAE] = Field(default_factory=list)
    """Known DICOM peers. In the environment: JSON, e.g.
    ``[{"ae_title": "PACS", "host": "10.0.0.5", "port": 104}]``."""

    restrict_callers: bool = False
    """Accept associations only from calling AE titles listed in ``peers``."""

    check_called_ae: bool = True
    """Refuse associations whose called AE title is not ours."""

    accept_unknown_sop_classes: bool = False
    """Accept C-STORE of private or unknown SOP classes (like Orthanc's UnknownSopClassAccepted)."""

    duplicate_policy: Literal["replace", "refuse"] = "replace"
    """What a re-sent SOP Instance UID with *different* content does: ``replace`` the stored
    instance (the PACS corrected it) or ``refuse`` it with status 0x0111. Identical content
    always succeeds without a second copy."""

    max_pdu_size: int = Field(default=1_048_576, ge=0)
    """Largest P-DATA PDU we accept (0 = unlimited). Large PDUs cut per-fragment overhead."""

    dul_poll_interval: float = Field(default=0.0002, gt=0, le=0.01)
    """Seconds pynetdicom's network thread sleeps when an association has nothing to read or
    send (pynetdicom's own default: 0.001). Every C-STORE waits for up to two such sleeps
    (to see the request, to send the response), so 1 ms costs ~1 ms per instance with one
    association; 0.2 ms costs ~5 % of a core per idle association."""

    commit_batch_max: int = Field(default=64, ge=1, le=10_000)
    """Most index rows one group commit holds (instances arriving together over several
    associations share a directory fsync and an index commit; each is still acknowledged
    only after the commit that holds it)."""

    max_associations: int = Field(default=32, ge=1, le=1000)
    network_timeout: float = Field(default=60.0, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    """Seconds SIGTERM waits for in-flight associations before aborting them."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return validate_ae_title(v)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError(f"{v!r} is not an absolute http(s) URL")
        return v.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v[len("postgresql://") :]
        return v

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if self.dicom_port and self.http_port and self.dicom_port == self.http_port:
            raise ValueError("dicom_port and http_port must differ")
        if self.restrict_callers and not self.peers:
            raise ValueError("restrict_callers is on but no peers are configured")
        return self

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.http_port}"

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
        toml_file = os.environ.get("DRIMBOX_CONFIG")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        name = ".".join(str(p) for p in e["loc"]) or "settings"
        env = "DRIMBOX_" + str(e["loc"][0]).upper() if e["loc"] else ""
        lines.append(f"setting {name!r} ({env}): {e['msg']}")
    return "\n".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, raising :class:`ConfigError` with a readable message on any error."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        os.environ["DRIMBOX_CONFIG"] = str(path)
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    except ValueError as err:  # e.g. malformed TOML
        raise ConfigError(f"configuration: {err}") from None
