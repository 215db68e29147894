"""The ``drimbox`` command line: ``serve``, ``db upgrade``, ``import``, ``study show``, ``kos``,
``manifest``, ``publish``, ``unpublish``, ``outbox list|retry``, ``dmp-sim``, ``psc-sim``.

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
    # Migrations run by every command would log at INFO; keep alembic quiet unless debugging.
    logging.getLogger("alembic").setLevel(
        logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING
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
    from gateway.workers import LOG_FORMAT, prepare_multiprocess_metrics

    logging.getLogger().handlers[0].setFormatter(logging.Formatter(LOG_FORMAT))  # with the PID
    if settings.dicom_workers:
        prepare_multiprocess_metrics(settings.data_dir)  # before prometheus_client is imported
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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def import_(config_file: Path | None, paths: tuple[Path, ...], quiet: bool, as_json: bool) -> None:
    """Ingest folders, CDs (DICOMDIR) or zip files through the same path as C-STORE.

    Exit status: 0 all DICOM files kept, 1 some rejected or missing, 2 usage or configuration.
    """
    from gateway.importer import run_import

    sys.exit(run_import(_settings(config_file), list(paths), quiet=quiet, as_json=as_json))


def _runtime_index(settings: Settings):  # noqa: ANN202 - InstanceIndex
    from gateway.index.engine import create_index_engine, upgrade
    from gateway.index.store import InstanceIndex

    engine = create_index_engine(settings.effective_database_url)
    upgrade(engine)
    return InstanceIndex(engine)


@main.group()
def study() -> None:
    """Look at stored studies."""


@study.command("show")
@config_option
@click.argument("study_uid")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def study_show(config_file: Path | None, study_uid: str, as_json: bool) -> None:
    """A study's state: instances, stability, INS, publishable or why not."""
    import json as jsonlib
    from dataclasses import asdict

    from gateway.index.facts import UnknownStudy, study_state
    from gateway.manifests import policy
    from gateway.publication import publication_status

    settings = _settings(config_file)
    index = _runtime_index(settings)
    try:
        state = study_state(index, study_uid, policy(settings))
    except UnknownStudy:
        click.echo(f"drimbox: no study {study_uid} in the index", err=True)
        sys.exit(1)
    publication = publication_status(index, study_uid)
    if as_json:
        data = asdict(state) | {"stable": state.stable, "publication": asdict(publication)}
        click.echo(jsonlib.dumps(data, default=str, indent=2))
        return
    ins = f"{state.ins_matricule[:10]}***** ({state.ins_oid})" if state.ins_matricule else "none"
    click.echo(f"study        {state.study_instance_uid}")
    click.echo(f"content      {state.series_count} series, {state.instance_count} instances")
    click.echo(f"received     {state.created_at:%Y-%m-%d %H:%M:%S} .. {state.updated_at:%Y-%m-%d %H:%M:%S}")
    click.echo(f"stable       {'yes, since ' + format(state.stable_at, '%Y-%m-%d %H:%M:%S') if state.stable else 'no (receiving)'}")
    click.echo(f"INS          {ins}")
    click.echo(f"publishable  {'yes' if state.publishable else 'no: ' + state.reason}")
    _echo_publication(publication)


def _echo_publication(p) -> None:  # noqa: ANN001 - gateway.publication.PublicationStatus
    """Issue #5: the study's publication state, its outbox rows still open, and its history."""
    line = p.state
    if p.current_kos_uid:
        line += f" (current KOS {p.current_kos_uid}, entryUUID {p.current_entry_uuid or '?'})"
    click.echo(f"publication  {line}")
    for r in p.rows:
        if r.state in ("pending", "sending"):
            extra = f", last error: {r.last_error}" if r.last_error else ""
            click.echo(f"  outbox #{r.id} {r.kind} {r.kos_uid}: {r.state}, attempt {r.attempts}, "
                       f"next {r.next_attempt_at:%H:%M:%S}{extra}")
        elif r.state == "refused":
            click.echo(f"  outbox #{r.id} {r.kind} {r.kos_uid}: REFUSED {r.error_text}")
    if p.history:
        click.echo("history")
        for e in p.history:
            what = " ".join(x for x in (e.kos_uid, e.detail) if x)
            ref = f" [#{e.outbox_id}]" if e.outbox_id else ""
            click.echo(f"  {e.at:%Y-%m-%d %H:%M:%S} {e.event}{ref} {what}")


def _manifest_or_exit(settings: Settings, study_uid: str):  # noqa: ANN202
    from gateway.index.facts import NotPublishable, UnknownStudy
    from gateway.manifests import build_study_manifest

    try:
        return build_study_manifest(_runtime_index(settings), settings, study_uid)
    except UnknownStudy:
        click.echo(f"drimbox: no study {study_uid} in the index", err=True)
    except NotPublishable as exc:
        click.echo(f"drimbox: study {study_uid} is not publishable: {exc}", err=True)
    sys.exit(1)


@main.command("kos")
@config_option
@click.argument("study_uid")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the KOS (DICOM Part 10) there; without it, print it.")
def kos(config_file: Path | None, study_uid: str, output: Path | None) -> None:
    """The DRIM-M KOS manifest this DRIMbox would publish for a study (R3)."""
    settings = _settings(config_file)
    manifest = _manifest_or_exit(settings, study_uid)
    if output is None:
        click.echo(str(manifest.kos))
        return
    output.write_bytes(manifest.kos_bytes)
    click.echo(f"{output}: KOS {manifest.kos.SOPInstanceUID}, "
               f"{manifest.facts.instance_count} instances in {len(manifest.facts.series)} series")


@main.command("manifest")
@config_option
@click.argument("study_uid")
@click.option("--fhir", is_flag=True, help="The FHIR twin (Bundle) instead of the XDS-I.b metadata.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def manifest(config_file: Path | None, study_uid: str, fhir: bool, output: Path | None) -> None:
    """The publication metadata of a study: XDS-I.b DocumentEntry (R4) or FHIR twin."""
    import json as jsonlib
    from dataclasses import asdict

    from gateway.index.facts import NotPublishable
    from gateway.manifests import document_entry, fhir_bundle
    from gateway.xds_metadata import MetadataError

    settings = _settings(config_file)
    built = _manifest_or_exit(settings, study_uid)
    try:
        if fhir:
            text = fhir_bundle(built, settings).model_dump_json(indent=2, exclude_none=True)
        else:
            text = jsonlib.dumps(asdict(document_entry(built, settings)), indent=2,
                                 ensure_ascii=False)
    except (NotPublishable, MetadataError) as exc:
        click.echo(f"drimbox: study {study_uid} is not publishable: {exc}", err=True)
        sys.exit(1)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")


# --- Issue #5: publication to the shared record (DMP) and its outbox. ---


@main.command("publish")
@config_option
@click.argument("study_uid")
def publish(config_file: Path | None, study_uid: str) -> None:
    """Queue a study's publication to the DMP (a replacement, RPLC, if a KOS is live).

    The outbox of ``drimbox serve`` sends it. Exit status 1 when nothing was queued (the reason
    is printed: no usable INS, already published as is, unknown study).
    """
    from gateway.index.facts import UnknownStudy
    from gateway.publication import PublicationWorkflow

    settings = _settings(config_file)
    try:
        result = PublicationWorkflow(_runtime_index(settings), settings).request_publication(
            study_uid)
    except UnknownStudy:
        click.echo(f"drimbox: no study {study_uid} in the index", err=True)
        sys.exit(1)
    if not result.queued:
        click.echo(f"drimbox: nothing queued for {study_uid}: {result.reason}", err=True)
        sys.exit(1)
    click.echo(f"outbox #{result.outbox_id}: {result.kind} of KOS {result.kos_uid}"
               + (f" (replaces {result.replaces_kos_uid})" if result.replaces_kos_uid else ""))
    if not settings.dmp_configured:
        click.echo("drimbox: no DMP is configured (DRIMBOX_DMP_REGISTRY_URL / _REPOSITORY_URL): "
                   "the row waits for a `drimbox serve` that has one", err=True)


@main.command("unpublish")
@config_option
@click.argument("study_uid")
@click.option("--reason", default="", help="Kept in the study's publication history.")
def unpublish(config_file: Path | None, study_uid: str, reason: str) -> None:
    """Withdraw a study's KOS from the DMP (ITI-57: Deprecated); access through it ends now."""
    from gateway.index.facts import UnknownStudy
    from gateway.publication import PublicationWorkflow

    settings = _settings(config_file)
    try:
        result = PublicationWorkflow(_runtime_index(settings), settings).request_withdrawal(
            study_uid, reason=reason)
    except UnknownStudy:
        click.echo(f"drimbox: no study {study_uid} in the index", err=True)
        sys.exit(1)
    if not result.queued:
        click.echo(f"drimbox: nothing to withdraw for {study_uid}: {result.reason}", err=True)
        sys.exit(1)
    click.echo(f"outbox #{result.outbox_id}: withdrawal of KOS {result.kos_uid}")


@main.group("outbox")
def outbox_group() -> None:
    """The publication outbox: what is queued, sent, refused."""


@outbox_group.command("list")
@config_option
@click.option("--state", type=click.Choice(["pending", "sending", "done", "refused", "superseded"]),
              default=None, help="Only rows in this state.")
@click.option("--study", "study_uid", default=None, help="Only this study's rows.")
@click.option("--limit", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def outbox_list(config_file: Path | None, state: str | None, study_uid: str | None, limit: int,
                as_json: bool) -> None:
    """Outbox rows, newest first, with counts by state."""
    import json as jsonlib
    from dataclasses import asdict

    from gateway.index import outbox

    index = _runtime_index(_settings(config_file))
    with index.read() as s:
        rows = outbox.list_rows(s, state, study_uid, limit)
        counts = outbox.counts_by_state(s)
    if as_json:
        click.echo(jsonlib.dumps({"counts": counts, "rows": [asdict(r) for r in rows]},
                                 default=str, indent=2))
        return
    click.echo("  ".join(f"{k} {v}" for k, v in counts.items()))
    for r in rows:
        if r.state == "refused":
            status = f"REFUSED {r.error_text}"
        elif r.state == "done":
            status = f"done {r.done_at:%Y-%m-%d %H:%M:%S} {r.entry_uuid}"
        else:
            status = f"{r.state} (attempt {r.attempts}, next {r.next_attempt_at:%H:%M:%S})" + (
                f" last error: {r.last_error}" if r.last_error else "")
        click.echo(f"#{r.id:<5} {r.kind:<8} {r.study_instance_uid} KOS {r.kos_uid}  {status}")


@outbox_group.command("retry")
@config_option
@click.argument("row_id", type=int)
def outbox_retry(config_file: Path | None, row_id: int) -> None:
    """Send a refused (or waiting) row again now."""
    from gateway.index import outbox

    index = _runtime_index(_settings(config_file))
    with index.write() as s:
        why_not = outbox.retry_now(s, row_id)
    if why_not:
        click.echo(f"drimbox: {why_not}", err=True)
        sys.exit(1)
    click.echo(f"outbox #{row_id}: due now")


@main.command("psc-sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8180, show_default=True, type=int)
@click.option("--base-url", default=None, help="Public base URL (default http://HOST:PORT).")
@click.option(
    "--client",
    "clients",
    multiple=True,
    metavar="ID:SECRET:REDIRECT_URI[,URI...]",
    help="A relying party; repeat for several. Default: drimbox:secret:<any localhost URI>.",
)
@click.option("--userinfo", type=click.Choice(["json", "jwt"]), default="json", show_default=True)
@click.option("--acr", default="eidas1", show_default=True)
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM file keeping the signing key across restarts (created if missing).")
def psc_sim(host: str, port: int, base_url: str | None, clients: tuple[str, ...],
            userinfo: str, acr: str, key_file: Path | None) -> None:
    """Run the Pro Santé Connect simulator (an OpenID provider with test practitioners)."""
    import uvicorn

    from adapters.psc.simulator import PscSimulator, SimClient, load_or_create_key

    parsed = []
    for spec in clients or ("drimbox:secret:http://127.0.0.1:8080/auth/callback",):
        try:
            client_id, secret, uris = spec.split(":", 2)
        except ValueError:
            raise click.BadParameter(f"{spec!r} is not ID:SECRET:REDIRECT_URI") from None
        parsed.append(SimClient(client_id, secret, uris.split(",")))
    sim = PscSimulator(base_url or f"http://{host}:{port}", parsed, load_or_create_key(key_file),
                       userinfo_format=userinfo, acr=acr)
    uvicorn.run(sim.app, host=host, port=port, log_level="warning")


@main.command("dmp-sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, required=True, help="TCP port.")
@click.option("--db", type=click.Path(dir_okay=False), default="dmp-sim.sqlite", show_default=True,
              help="The simulator's own SQLite file.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Server key (PEM).")
@click.option("--client-ca", type=click.Path(exists=True, dir_okay=False),
              help="Require a client certificate issued by these CAs (mutual TLS, R7).")
@click.option("--trust-ca", type=click.Path(exists=True, dir_okay=False),
              help="CAs trusted for the VIHF and Signature01 certificates (default: --client-ca).")
@click.option("--repository-id", default="1.2.250.1.213.1.1.9.99", show_default=True,
              help="repositoryUniqueId the simulator answers with.")
@click.option("--fault", "fault_mode", default="none", show_default=True,
              type=click.Choice(["none", "http500", "soap_fault", "timeout", "drop_after_store"]),
              help="Fault injected into the next --fault-count SOAP calls.")
@click.option("--fault-count", type=int, default=0, show_default=True)
@click.option("--allow-sha1", is_flag=True,
              help="Accept RSA-SHA1 VIHF signatures (as in the 2023 DMP samples).")
@click.option("--fault-seconds", type=float, default=5.0, show_default=True,
              help="Sleep of the timeout fault.")
def dmp_sim(host: str, port: int, db: str, tls_cert: str | None, tls_key: str | None,
            client_ca: str | None, trust_ca: str | None, repository_id: str, fault_mode: str,
            fault_count: int, allow_sha1: bool, fault_seconds: float) -> None:
    """Run the DMP simulator (XDS.b SOAP endpoints /registry and /repository)."""
    from adapters.dmp.simulator import serve as serve_sim

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if client_ca and not tls_cert:
        raise click.UsageError("--client-ca needs --tls-cert/--tls-key")
    trust = trust_ca or client_ca
    if not trust:
        raise click.UsageError("give --trust-ca (or --client-ca): the CAs of VIHF signers")
    serve_sim(host, port, db, trust, tls_cert, tls_key, client_ca, repository_id, fault_mode,
              fault_count, fault_seconds, allow_sha1=allow_sha1)


if __name__ == "__main__":
    main()
