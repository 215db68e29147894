"""The ``drimbox`` command line: ``serve``, ``db upgrade``, ``import``.

Every command takes ``--config FILE`` (TOML; environment variables ``DRIMBOX_*`` override it).
A wrong setting ends the command with exit status 2 and a message naming the setting.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from gateway.config import ConfigError, Settings, load_settings

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration file (DRIMBOX_* environment variables override it).",
)


def _settings(config_file: Path | None) -> Settings:
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        click.echo(f"drimbox: configuration error\n{exc}", err=True)
        sys.exit(2)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom logs every DIMSE message at INFO; keep its warnings and errors only.
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING
    )
    return settings


@click.group()
@click.version_option(package_name="drimbox")
def main() -> None:
    """DRIMbox: the DRIM-M imaging exchange gateway."""


@main.command()
@config_option
def serve(config_file: Path | None) -> None:
    """Run the DICOM SCP and the HTTP app (upgrades the index first)."""
    settings = _settings(config_file)  # before the heavy imports: a wrong setting fails fast
    from gateway.server import serve as run

    run(settings)


@main.group()
def db() -> None:
    """Index database maintenance."""


@db.command("upgrade")
@config_option
def db_upgrade(config_file: Path | None) -> None:
    """Apply the index migrations (Alembic) up to the latest."""
    from gateway.index.engine import create_index_engine, current_revision, upgrade

    settings = _settings(config_file)
    engine = create_index_engine(settings.effective_database_url)
    upgrade(engine)
    click.echo(f"index at revision {current_revision(engine)}")
    engine.dispose()


@main.command("import")
@config_option
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def import_(config_file: Path | None, paths: tuple[Path, ...], quiet: bool) -> None:
    """Ingest folders, CDs (DICOMDIR) or zip files through the same path as C-STORE."""
    from gateway.importer import run_import

    sys.exit(run_import(_settings(config_file), list(paths), quiet=quiet))


if __name__ == "__main__":
    main()
