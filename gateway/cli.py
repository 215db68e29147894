"""The ``drimbox`` command line: ``serve``, ``db upgrade``, ``import``, ``backup
create|verify|restore|list``, ``study show``, ``kos``, ``manifest``, ``publish``,
``unpublish``, ``outbox list|retry``, ``mssante list|retry``, ``dmp-sim``, ``psc-sim``,
``annuaire-sim``, ``whitelist check``, ``consumer export``, ``pki init``, ``sandbox``,
``pacs speedtest``.

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
    from gateway.ingest.workers import LOG_FORMAT, prepare_multiprocess_metrics

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
@click.option("--on-conflict", type=click.Choice(["keep", "replace", "refuse"]), default="keep",
              show_default=True,
              help="A SOP Instance UID already stored with other bytes: keep the stored copy, "
                   "replace it, or reject the file.")
def import_(config_file: Path | None, paths: tuple[Path, ...], quiet: bool, as_json: bool,
            on_conflict: str) -> None:
    """Ingest folders, CDs (DICOMDIR) or zip files through the same path as C-STORE.

    Exit status: 0 all DICOM files kept, 1 some rejected or missing, 2 usage or configuration.
    """
    from gateway.ingest.importer import run_import

    settings = _settings(config_file).model_copy(update={"duplicate_policy": on_conflict})
    sys.exit(run_import(settings, list(paths), quiet=quiet, as_json=as_json))


def _runtime_index(settings: Settings):  # noqa: ANN202 - InstanceIndex
    from gateway.index.engine import create_index_engine, upgrade
    from gateway.index.store import InstanceIndex

    engine = create_index_engine(settings.effective_database_url)
    upgrade(engine)
    return InstanceIndex(engine)


@main.group()
def store() -> None:
    """Look after the file store."""


@store.command("check")
@config_option
@click.option("--repair", is_flag=True, help="Delete orphan files (never acknowledged).")
@click.option("--verify", is_flag=True, help="Hash every file against the index (slow).")
@click.option("--min-age", type=float, default=300.0, show_default=True,
              help="Seconds: younger unindexed files may be a commit in flight; skipped.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def store_check(config_file: Path | None, repair: bool, verify: bool, min_age: float,
                as_json: bool) -> None:
    """Compare the file store with the index: orphans, missing and damaged files.

    Exit status: 0 clean (or repaired), 1 problems remain.
    """
    import json as jsonlib

    from gateway.ingest.storage import FileStore
    from gateway.ingest.store_check import check_store

    from gateway.ingest.recovery import recover

    settings = _settings(config_file)
    store, index = FileStore(settings.data_dir), _runtime_index(settings)
    recover(store, index)  # after an unclean stop, rows lost with the last flush come back first
    report = check_store(store, index, repair=repair, verify=verify, min_age=min_age)
    if as_json:
        click.echo(jsonlib.dumps(report.as_dict(), indent=2))
    else:
        click.echo(f"files {report.files}, index rows {report.rows}")
        for key in report.orphans:
            click.echo(f"orphan   {key}" + (" (removed)" if repair else ""))
        for item in report.missing:
            click.echo(f"missing  {item}")
        for item in report.damaged:
            click.echo(f"damaged  {item}")
        for item in report.evicted:
            click.echo(f"evicted  {item} (in the PACS; fetched back on request)")
        click.echo("clean" if report.clean else "problems found")
    sys.exit(0 if report.clean else 1)


@store.command("evict")
@config_option
@click.option("--dry-run", is_flag=True, help="Say which studies would be evicted; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def store_evict(config_file: Path | None, dry_run: bool, as_json: bool) -> None:
    """Evict the files of the least recently used studies above storage_max_bytes or
    storage_max_age_days (the index rows stay; WADO-RS fetches them back from the PACS).

    Exit status: 0 done (or nothing to do), 2 configuration error.
    """
    import json as jsonlib

    from gateway.ingest.retention import evict
    from gateway.runtime import Runtime

    settings = _settings(config_file)
    runtime = Runtime.build(settings, clear_staging=False)
    try:
        report = evict(runtime.store, runtime.index, settings, dry_run=dry_run,
                       keep_metadata=runtime.metadata.study)
    finally:
        runtime.close()
    if as_json:
        click.echo(jsonlib.dumps(report.as_dict(), indent=2))
        return
    if not report.enabled:
        click.echo("eviction is off (set storage_max_bytes and/or storage_max_age_days)")
    verb = "would evict" if dry_run else "evicted"
    for e in report.evicted:
        click.echo(f"{verb} {e['study']}: {e['instances']} instances, {e['bytes']} bytes "
                   f"(last used {e['last_used']}, {e['reason']})")
    for k in report.kept:
        click.echo(f"kept    {k['study']}: {k['reason']}")
    click.echo(f"stored bytes {report.stored_bytes_before} -> {report.stored_bytes_after}"
               + (" (dry run)" if dry_run else ""))


@store.command("purge")
@config_option
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def store_purge(config_file: Path | None, dry_run: bool, as_json: bool) -> None:
    """Delete audit rows older than audit_retention_days and rejected instances older than
    rejected_retention_days."""
    import json as jsonlib

    from gateway.ingest.retention import purge
    from gateway.ingest.storage import FileStore

    settings = _settings(config_file)
    report = purge(FileStore(settings.data_dir), _runtime_index(settings), settings,
                   dry_run=dry_run)
    if as_json:
        click.echo(jsonlib.dumps(report.as_dict(), indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {report.audit_rows} audit rows recorded before {report.audit_before}")
    click.echo(f"{verb} {report.rejected_notes} rejection notes ({report.rejected_files} files) "
               f"received before {report.rejected_before}")


@main.group()
def backup() -> None:
    """Backups of the index and the file store, taken while serving (the PRA)."""


def _backup_echo(report, as_json: bool, lines) -> None:  # noqa: ANN001
    import json as jsonlib

    if as_json:
        click.echo(jsonlib.dumps(report.as_dict(), indent=2))
    else:
        for line in lines:
            click.echo(line)


def _backup_call(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    """Run a backup operation: refused is exit status 2, failed is 1, with the reason."""
    from gateway.backup.layout import BackupFailed, BackupRefused

    try:
        return fn(*args, **kwargs)
    except BackupRefused as exc:
        click.echo(f"drimbox: {exc}", err=True)
        sys.exit(2)
    except (BackupFailed, OSError) as exc:
        click.echo(f"drimbox: backup failed: {exc}", err=True)
        sys.exit(1)


@backup.command("create")
@config_option
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--full", is_flag=True,
              help="Copy every file, even those an earlier backup in DEST already holds.")
@click.option("--keep", type=int, default=None,
              help="Then delete the oldest backups in DEST beyond this many.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def backup_create(config_file: Path | None, dest: Path, full: bool, keep: int | None,
                  as_json: bool) -> None:
    """Back up the index and the files into a new folder of DEST, while the gateway serves.

    Only files that changed since the newest backup in DEST are copied (the others are hard
    links to it). Exit status: 0 done, 1 failed (nothing kept), 2 refused.
    """
    from gateway.backup.create import create_backup

    r = _backup_call(create_backup, _settings(config_file), dest, full=full, keep=keep)
    _backup_echo(r, as_json, [
        f"backup   {r.path}",
        f"index    {r.backend}, revision {r.revision}, {r.instances} instances",
        f"files    {r.files} ({r.bytes} bytes): {r.copied} copied ({r.copied_bytes} bytes), "
        f"{r.linked} unchanged since {r.base or '-'}",
        *(f"pruned   {name}" for name in r.pruned),
        *(f"warning  {w}" for w in r.warnings),
    ])


@backup.command("verify")
@config_option
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--all", "every", is_flag=True, help="Every backup in SRC, not only the newest.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def backup_verify(config_file: Path | None, src: Path, every: bool, as_json: bool) -> None:
    """Re-hash every file of a backup against its manifest and read its index copy.

    SRC is a backup folder, or a destination (its newest backup; --all: every one).
    Exit status: 0 sound, 1 problems (each named), 2 SRC is not a backup.
    """
    import json as jsonlib

    from gateway.backup.layout import list_sets, resolve_set
    from gateway.backup.verify import verify_backup

    settings = _settings(config_file)
    sets = (list_sets(src) if every and not (src / "backup.json").is_file()
            else [_backup_call(resolve_set, src)])
    if not sets:
        click.echo(f"drimbox: {src} holds no DRIMbox backup", err=True)
        sys.exit(2)
    reports = [_backup_call(verify_backup, s, settings.pg_bin_dir) for s in sets]
    if as_json:
        click.echo(jsonlib.dumps([r.as_dict() for r in reports] if every else
                                 reports[0].as_dict(), indent=2))
    else:
        for r in reports:
            click.echo(f"backup   {r.path}")
            for line in r.problems + r.notes:
                click.echo(line)
            click.echo(f"{'sound' if r.ok else 'PROBLEMS: ' + str(len(r.problems))}: "
                       f"{r.files} files ({r.bytes} bytes), index {r.backend} at revision "
                       f"{r.revision}")
    sys.exit(0 if all(r.ok for r in reports) else 1)


@backup.command("restore")
@config_option
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def backup_restore(config_file: Path | None, src: Path, as_json: bool) -> None:
    """Restore a backup into an EMPTY data directory and index (the configured ones).

    SRC is a backup folder, or a destination (its newest backup). Then `drimbox serve`.
    Exit status: 0 restored, 1 restored with damaged or missing files (named) or failed,
    2 refused (not empty, another index back-end, a newer backup's format).
    """
    from gateway.backup.restore import restore_backup

    r = _backup_call(restore_backup, _settings(config_file), src)
    _backup_echo(r, as_json, [
        f"restored {r.path}",
        f"into     {r.data_dir}",
        f"index    {r.backend}, revision {r.revision_in_backup} -> {r.revision}",
        f"files    {r.files} ({r.bytes} bytes)",
        *r.problems,
        "done" if r.ok else f"PROBLEMS: {len(r.problems)} file(s) not restored (see above)",
    ])
    sys.exit(0 if r.ok else 1)


@backup.command("list")
@click.argument("dest", type=click.Path(exists=True, file_okay=False, path_type=Path))
def backup_list(dest: Path) -> None:
    """The backups in DEST, oldest first: time, index, files, the one each builds on."""
    from gateway.backup.layout import BackupRefused, list_sets, read_metadata

    for s in list_sets(dest):
        try:
            m = read_metadata(s)
        except BackupRefused as exc:
            click.echo(f"{s.name}  unreadable: {exc}")
            continue
        f, i = m.get("files", {}), m.get("index", {})
        click.echo(f"{s.name}  {i.get('backend')} rev {i.get('alembic_revision')}  "
                   f"{f.get('instances')} instances, {f.get('count')} files, "
                   f"{f.get('copied')} copied  base {m.get('base') or '-'}")


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

    from gateway.index.facts import UnknownStudy, study_state
    from gateway.manifest.manifests import policy
    from gateway.publication.study_status import study_status
    from gateway.publication.workflow import publication_status

    settings = _settings(config_file)
    index = _runtime_index(settings)
    try:
        state = study_state(index, study_uid, policy(settings))
    except UnknownStudy:
        click.echo(f"drimbox: no study {study_uid} in the index", err=True)
        sys.exit(1)
    publication = publication_status(index, study_uid)
    status = study_status(index, settings, study_uid)
    if as_json:
        click.echo(jsonlib.dumps(status, default=str, indent=2))
        return
    ins = f"{state.ins_matricule[:10]}***** ({state.ins_oid})" if state.ins_matricule else "none"
    click.echo(f"study        {state.study_instance_uid}")
    click.echo(f"content      {state.series_count} series, {state.instance_count} instances")
    click.echo(f"received     {state.created_at:%Y-%m-%d %H:%M:%S} .. {state.updated_at:%Y-%m-%d %H:%M:%S}")
    click.echo(f"stable       {'yes, since ' + format(state.stable_at, '%Y-%m-%d %H:%M:%S') if state.stable else 'no (receiving)'}")
    click.echo(f"INS          {ins}")
    click.echo(f"publishable  {'yes' if status['publishable'] else 'no: ' + status['reason']}")
    report = status["report"]
    if report:
        click.echo(f"report       CR {report['id_cda']} ({report['message_type']}, received "
                   f"{report['received_at']:%Y-%m-%d %H:%M:%S})")
        click.echo(f"viewer link  {status['viewer_link']}")
    else:
        click.echo("report       none")
    for problem in status["problems"]:
        click.echo(f"problem      {problem}")
    for m in status["mssante"]:
        state = m["state"] + (f", attempt {m['attempts']}" if m["state"] != "sent" else "")
        said = m["smtp_reply"] or m["error_text"] or m["last_error"]
        click.echo(f"MSSanté      #{m['id']} {m['recipient_kind']} {m['address']}: {state}"
                   f" {m['message_id']}" + (f" ({said})" if said else ""))
    _echo_publication(publication)


def _echo_publication(p) -> None:  # noqa: ANN001 - gateway.publication.workflow.PublicationStatus
    """The study's publication state, its outbox rows still open, and its history."""
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
    from gateway.manifest.manifests import build_study_manifest

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
    from gateway.manifest.manifests import document_entry, fhir_bundle
    from gateway.manifest.xds_metadata import MetadataError

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


@main.group()
def audit() -> None:
    """The audit trail of access decisions (R15, R22)."""


@audit.command("export")
@config_option
@click.option("--format", "fmt", type=click.Choice(["fhir", "kpi"]), default="fhir",
              show_default=True, help="FHIR R4B Bundle of AuditEvents, or the DRIM-M KPI CSV.")
@click.option("--since", default=None, help="ISO 8601 date or date-time (UTC if no offset).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def audit_export(config_file: Path | None, fmt: str, since: str | None,
                 output: Path | None) -> None:
    """Export the audit trail (formats: see gateway/access/audit_export.py)."""
    from dicomweb.admin_audit import parse_since
    from gateway.access.audit_export import fhir_audit_bundle, kpi_csv

    settings = _settings(config_file)
    try:
        start = parse_since(since)
    except ValueError:
        raise click.BadParameter(f"{since!r} is not an ISO 8601 date or date-time",
                                 param_hint="--since") from None
    index = _runtime_index(settings)
    if fmt == "kpi":
        text = kpi_csv(index, start)
    else:
        text = fhir_audit_bundle(index, settings.ae_title, start).model_dump_json(
            indent=2, exclude_none=True) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")

# --- Publication to the shared record (DMP) and its outbox. ---


@main.command("publish")
@config_option
@click.argument("study_uid")
def publish(config_file: Path | None, study_uid: str) -> None:
    """Queue a study's publication to the DMP (a replacement, RPLC, if a KOS is live).

    The outbox of ``drimbox serve`` sends it. Exit status 1 when nothing was queued (the reason
    is printed: no usable INS, already published as is, unknown study).
    """
    from gateway.index.facts import UnknownStudy
    from gateway.publication.workflow import PublicationWorkflow

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
    from gateway.publication.workflow import PublicationWorkflow

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


@main.group("mssante")
def mssante_group() -> None:
    """The MSSanté outbox: reports' messages queued, sent, refused."""


@mssante_group.command("list")
@config_option
@click.option("--state", type=click.Choice(["pending", "sending", "sent", "refused"]),
              default=None, help="Only messages in this state.")
@click.option("--study", "study_uid", default=None, help="Only this study's messages.")
@click.option("--limit", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def mssante_list(config_file: Path | None, state: str | None, study_uid: str | None,
                 limit: int, as_json: bool) -> None:
    """MSSanté messages, newest first, with counts by state."""
    import json as jsonlib
    from dataclasses import asdict

    from gateway.index import mssante
    from gateway.publication.outbox import redact

    index = _runtime_index(_settings(config_file))
    with index.read() as s:
        rows = mssante.list_rows(s, study_uid=study_uid, state=state, limit=limit)
        counts = mssante.counts_by_state(s)
    if as_json:
        shown = [{k: (redact(v) if k == "address" else v) for k, v in asdict(r).items()
                  if k != "body"} for r in rows]
        click.echo(jsonlib.dumps({"counts": counts, "rows": shown}, default=str, indent=2))
        return
    click.echo("  ".join(f"{k} {v}" for k, v in counts.items()))
    for r in rows:
        if r.state == "refused":
            status = f"REFUSED {r.error_text}"
        elif r.state == "sent":
            status = f"sent {r.done_at:%Y-%m-%d %H:%M:%S} {r.smtp_reply}"
        else:
            status = f"{r.state} (attempt {r.attempts}, next {r.next_attempt_at:%H:%M:%S})" + (
                f" last error: {r.last_error}" if r.last_error else "")
        click.echo(f"#{r.id:<5} {r.recipient_kind:<12} {redact(r.address)} "
                   f"{r.study_instance_uid} {r.message_id}  {status}")


@mssante_group.command("retry")
@config_option
@click.argument("row_id", type=int)
def mssante_retry(config_file: Path | None, row_id: int) -> None:
    """Send a refused (or waiting) message again now (the same Message-ID)."""
    from gateway.index import mssante

    index = _runtime_index(_settings(config_file))
    with index.write() as s:
        why_not = mssante.retry_now(s, row_id)
    if why_not:
        click.echo(f"drimbox: {why_not}", err=True)
        sys.exit(1)
    click.echo(f"MSSanté #{row_id}: due now")


@main.command("annuaire-sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8280, show_default=True, type=int)
@click.option("--api-key", envvar="ANNUAIRE_SIM_API_KEY", required=True,
              help="The ESANTE-API-KEY it accepts (or ANNUAIRE_SIM_API_KEY); any other is 401.")
@click.option("--fixture", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON file {\"resources\": [...]} of Practitioner, "
                                 "PractitionerRole and Organization resources (default: the "
                                 "test entries of adapters/annuaire/fixture.json).")
@click.option("--base-url", default=None, help="Public base URL (fullUrl of the entries).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve https with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private key of --tls-cert (PEM).")
def annuaire_sim(host: str, port: int, api_key: str, fixture: Path | None,
                 base_url: str | None, tls_cert: Path | None, tls_key: Path | None) -> None:
    """Run the Annuaire Santé FHIR API simulator (Practitioner, PractitionerRole,
    Organization searches from a fixture; 401 without the API key)."""
    from adapters.annuaire.simulator import DEFAULT_FIXTURE, AnnuaireSimulator, load_fixture, serve

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    try:
        resources = load_fixture(fixture or DEFAULT_FIXTURE)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--fixture") from None
    scheme = "https" if tls_cert else "http"
    sim = AnnuaireSimulator(resources, api_key, base_url or f"{scheme}://{host}:{port}")
    click.echo(f"annuaire-sim: {len(resources)} resources on {scheme}://{host}:{port}",
               err=True)
    serve(sim, host, port, tls_cert, tls_key)


@main.command("psc-sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8180, show_default=True, type=int)
@click.option("--base-url", default=None,
              help="Public base URL (default http://HOST:PORT, https with --tls-cert).")
@click.option(
    "--client",
    "clients",
    multiple=True,
    metavar="ID:SECRET:REDIRECT_URI[,URI...]",
    help="A relying party; repeat for several (SECRET empty for tls_client_auth and "
         "private_key_jwt). Default: drimbox:secret:<any localhost URI>.",
)
@click.option("--client-auth", "client_auths", multiple=True, metavar="ID=METHOD",
              help="The client's authentication: client_secret_basic (default; the secret "
                   "may also come in the form), client_secret_post, tls_client_auth, "
                   "private_key_jwt.")
@click.option("--client-dn", "client_dns", multiple=True, metavar="ID=DN",
              help="tls_client_auth: the subject DN (RFC 4514) of the client's certificate.")
@click.option("--client-jwks", "client_jwks", multiple=True, metavar="ID=FILE",
              help="private_key_jwt: the client's public keys (JWKS or JWK JSON, PEM public "
                   "key or PEM certificate).")
@click.option("--userinfo", type=click.Choice(["json", "jwt"]), default="json", show_default=True)
@click.option("--acr", default="eidas1", show_default=True)
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM file keeping the signing key across restarts (created if missing).")
@click.option("--test-tokens", is_flag=True,
              help="Open POST /test/tokens, issuing tokens of any shape (relying-party tests).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve https with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private key of --tls-cert (PEM).")
@click.option("--client-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Ask for a client certificate issued by these CAs (tls_client_auth).")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append a JSON line per token or introspection request: how the client "
                   "authenticated and which credentials it carried (never their values).")
def psc_sim(host: str, port: int, base_url: str | None, clients: tuple[str, ...],
            client_auths: tuple[str, ...], client_dns: tuple[str, ...],
            client_jwks: tuple[str, ...], userinfo: str, acr: str, key_file: Path | None,
            test_tokens: bool, tls_cert: Path | None, tls_key: Path | None,
            client_ca: Path | None, record: Path | None) -> None:
    """Run the Pro Santé Connect simulator (an OpenID provider with test practitioners)."""
    from adapters.psc.simulator import (
        PscSimulator,
        SimClient,
        load_client_keys,
        load_or_create_key,
        serve,
    )

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if client_ca and not tls_cert:
        raise click.UsageError("--client-ca needs --tls-cert/--tls-key")

    def by_id(option: str, values: tuple[str, ...]) -> dict[str, str]:
        out = {}
        for value in values:
            client_id, sep, rest = value.partition("=")
            if not sep or not client_id or not rest:
                raise click.BadParameter(f"{value!r} is not ID=VALUE", param_hint=option)
            out[client_id] = rest
        return out

    methods = by_id("--client-auth", client_auths)
    dns = by_id("--client-dn", client_dns)
    jwks = by_id("--client-jwks", client_jwks)
    parsed = []
    for spec in clients or ("drimbox:secret:http://127.0.0.1:8080/auth/callback",):
        try:
            client_id, secret, uris = spec.split(":", 2)
        except ValueError:
            raise click.BadParameter(f"{spec!r} is not ID:SECRET:REDIRECT_URI") from None
        try:
            keys = load_client_keys(Path(jwks[client_id])) if client_id in jwks else None
            parsed.append(SimClient(client_id, secret, uris.split(","),
                                    auth_method=methods.get(client_id, "client_secret_basic"),
                                    tls_client_auth_subject_dn=dns.get(client_id),
                                    jwks=keys))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--client") from None
    unknown = (set(methods) | set(dns) | set(jwks)) - {c.client_id for c in parsed}
    if unknown:
        raise click.BadParameter(f"no --client {', '.join(sorted(unknown))}")
    if any(c.auth_method == "tls_client_auth" for c in parsed) and not client_ca:
        raise click.UsageError("a tls_client_auth client needs --client-ca (and --tls-cert)")
    scheme = "https" if tls_cert else "http"
    sim = PscSimulator(base_url or f"{scheme}://{host}:{port}", parsed,
                       load_or_create_key(key_file), userinfo_format=userinfo, acr=acr,
                       test_tokens=test_tokens, mtls=bool(client_ca), record=record)
    serve(sim, host, port, tls_cert, tls_key, client_ca)


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
    """Run the DMP simulator (XDS.b SOAP endpoints /registry and /repository, FHIR /fhir)."""
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


@main.group()
def pki() -> None:
    """A development PKI (not for production)."""


@pki.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True, metavar="NAME_OR_IP",
              help="A host name or IP address of the server certificate (repeat; the first "
                   "is its CN). Default: localhost and 127.0.0.1.")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True,
              help="Validity of the certificates.")
@click.option("--centre", default="CENTRE IMAGERIE TEST", show_default=True,
              help="O= of the subjects (the operator's name).")
@click.option("--structure-id", default="499700367909006", show_default=True,
              help="OU= of the subjects (the structure's SIRET or FINESS, as IGC-Santé).")
@click.option("--state", default="Paris (75)", show_default=True, help="ST= of the subjects.")
@click.option("--client-cn", default="DRIMbox", show_default=True,
              help="CN of the client (ORG authentication) certificate; the signature "
                   "certificate's is '<CN> signature'.")
@click.option("--with-negative", is_flag=True,
              help="Also expired certificates and certificates from another CA, for negative "
                   "tests.")
@click.option("--force", is_flag=True, help="Replace the files already in DIRECTORY.")
def pki_init(directory: Path, hosts: tuple[str, ...], days: int, centre: str, structure_id: str,
             state: str, client_cn: str, with_negative: bool, force: bool) -> None:
    """Write a test CA and the server, client (ORG authentication) and signature
    certificates the gateway, dmp-sim and the test clients need into DIRECTORY, and print
    which setting takes which file."""
    from gateway.pki import DEFAULT_HOSTS, PkiError, init_pki, settings_guide

    try:
        made = init_pki(directory, hosts=hosts or DEFAULT_HOSTS, days=days, centre=centre,
                        structure_id=structure_id, state=state, client_cn=client_cn,
                        with_negative=with_negative, overwrite=force)
    except PkiError as exc:
        click.echo(f"drimbox: {exc}", err=True)
        sys.exit(2)
    click.echo(settings_guide(made), nl=False)


# --- The ITI-65 Bundle of a study (IHE MHD / ANS PDSm) ---
@main.command("mhd-bundle")
@config_option
@click.argument("study_uid")
@click.option("--replaces", default=None, metavar="UNIQUE_ID",
              help="The uniqueId (KOS SOP Instance UID) of the published KOS this one replaces.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def mhd_bundle(config_file: Path | None, study_uid: str, replaces: str | None,
               output: Path | None) -> None:
    """The ITI-65 Provide Document Bundle (FHIR JSON) that would publish the study's KOS over
    MHD / PDSm: a new KOS, its DocumentReference, the SubmissionSet List and the Binary."""
    import datetime as dt
    import json as jsonlib

    from adapters.mhd.bundle import provide_bundle
    from adapters.mhd.transport import new_oid
    from gateway.index.facts import NotPublishable
    from gateway.manifest.manifests import document_entry
    from gateway.manifest.xds_metadata import (
        SCHEME_CONTENT_TYPE,
        Code,
        MetadataError,
        submission_set,
    )

    settings = _settings(config_file)
    source = settings.dmp_source_id or settings.repository_oid
    if not settings.dmp_content_type:
        click.echo("drimbox: DRIMBOX_DMP_CONTENT_TYPE is not set (SubmissionSet "
                   "contentTypeCode, e.g. 04)", err=True)
        sys.exit(2)
    built = _manifest_or_exit(settings, study_uid)
    try:
        entry = document_entry(built, settings)
    except (NotPublishable, MetadataError) as exc:
        click.echo(f"drimbox: study {study_uid} is not publishable: {exc}", err=True)
        sys.exit(1)
    code = Code(settings.dmp_content_type, SCHEME_CONTENT_TYPE, settings.dmp_content_type)
    ss = submission_set(entry, new_oid(), str(source), dt.datetime.now(dt.UTC), code)
    bundle = provide_bundle(entry, ss, built.facts.patient.ins, built.kos_bytes, replaces)
    text = jsonlib.dumps(bundle.json(), indent=2, ensure_ascii=False)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")

# -- the PACS -------------------------------------------------------------------------------


@main.group("pacs")
def pacs_group() -> None:
    """The centre's PACS seen from the gateway."""


def _pacs_address(value: str | None, settings: Settings) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` from the command line, else the ``pacs_*`` settings."""
    from gateway.config import validate_ae_title

    if value is None:
        if not settings.pacs_configured:
            click.echo("drimbox: no PACS: set pacs_ae_title, pacs_host and pacs_port, or give "
                       "--pacs AET@HOST:PORT", err=True)
            sys.exit(2)
        return (settings.pacs_ae_title or "", settings.pacs_host or "",
                settings.pacs_port or 0)
    aet, at, rest = value.partition("@")
    host, colon, port = rest.rpartition(":")
    try:
        if not (at and colon and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("expected AET@HOST:PORT")
        return validate_ae_title(aet), host.strip("[]"), int(port)
    except ValueError as exc:
        click.echo(f"drimbox: --pacs {value!r}: {exc}", err=True)
        sys.exit(2)


@pacs_group.command("speedtest")
@config_option
@click.option("--study", "study_uid", default=None,
              help="StudyInstanceUID to move [default: the ANS reference study "
                   "1.2.250.1.213.4.5.2.1.199].")
@click.option("--pacs", "pacs", default=None, metavar="AET@HOST:PORT",
              help="The PACS to measure [default: pacs_ae_title, pacs_host, pacs_port].")
@click.option("--ae-title", default="STORESCP", show_default=True,
              help="The test's C-STORE SCP: the move destination the PACS must know.")
@click.option("--port", "listen_port", type=click.IntRange(1, 65535), default=9999,
              show_default=True, help="Port the test's C-STORE SCP listens on.")
@click.option("--bind", "bind_address", default="", help="Address to listen on [default: all].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pacs_speedtest(config_file: Path | None, study_uid: str | None, pacs: str | None,
                   ae_title: str, listen_port: int, bind_address: str, as_json: bool) -> None:
    """Time a C-MOVE of a study from the PACS (DB.SO.102, R20): first image, throughput.

    Asked with the gateway's AE title (ae_title); the images go to a C-STORE SCP of the
    test's own (--ae-title, --port), which counts them and keeps nothing.
    Exit status 1 when the PACS cannot be reached, the C-MOVE fails or no image comes."""
    import json as jsonlib

    from adapters.pacs.speedtest import REFERENCE_STUDY, run_speedtest
    from gateway.config import validate_ae_title
    from gateway.ingest.uids import is_safe_uid

    settings = _settings(config_file)
    pacs_aet, host, port = _pacs_address(pacs, settings)
    study_uid = study_uid or REFERENCE_STUDY
    if not is_safe_uid(study_uid):
        click.echo(f"drimbox: --study {study_uid!r}: not a DICOM UID", err=True)
        sys.exit(2)
    try:
        ae_title = validate_ae_title(ae_title)
    except ValueError as exc:
        click.echo(f"drimbox: --ae-title {ae_title!r}: {exc}", err=True)
        sys.exit(2)
    try:
        result = run_speedtest(pacs_ae_title=pacs_aet, host=host, port=port,
                               calling_ae_title=settings.ae_title, study_uid=study_uid,
                               ae_title=ae_title, listen_port=listen_port,
                               bind_address=bind_address, max_pdu=settings.max_pdu_size,
                               move_timeout=settings.pacs_retrieve_timeout,
                               reactor_wait=settings.reactor_wait)
    except OSError as exc:
        click.echo(f"drimbox: cannot listen on port {listen_port}: {exc.strerror or exc}",
                   err=True)
        sys.exit(1)
    if as_json:
        click.echo(jsonlib.dumps(result.as_dict(), indent=2))
    else:
        first = "none" if result.first_image_s is None else f"{result.first_image_s:.3f} s"
        assoc = ("" if result.association_s is None
                 else f" (association {result.association_s:.3f} s)")
        status = "none" if result.status is None else f"0x{result.status:04X}"
        click.echo(f"PACS speed test (DB.SO.102): study {result.study_uid}\n"
                   f"  from {result.pacs} to {result.destination}, started "
                   f"{result.started_at:%Y-%m-%d %H:%M:%S} UTC\n"
                   f"  first image      {first}\n"
                   f"  total            {result.total_s:.3f} s{assoc}\n"
                   f"  instances        {result.instances} (C-MOVE status {status}; completed "
                   f"{result.completed}, failed {result.failed}, warning {result.warning})\n"
                   f"  data received    {result.bytes / 1e6:.1f} MB in "
                   f"{', '.join(result.transfer_syntaxes) or 'no transfer syntax'}\n"
                   f"  throughput       {result.mbit_per_s:.1f} Mbit/s, "
                   f"{result.instances_per_s:.1f} images/s")
    if not result.ok:
        click.echo(f"drimbox: {result.error}", err=True)
        sys.exit(1)


# -- HL7 v2 (reports from the RIS) ---------------------------------------------


@main.command("sandbox")
@click.option("--base-port", type=click.IntRange(1024, 65535 - 8), default=None,
              help="First of the 8 loopback ports (docs/sandbox.md). [default: 8700]")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Its state, emptied at each start. [default: ./data/sandbox]")
@click.option("--no-orthanc", is_flag=True, help="Do not start Orthanc (no PACS).")
def sandbox(base_port: int | None, root: Path | None, no_orthanc: bool) -> None:
    """The whole chain on loopback: a fresh development PKI, a Source and a Consumer gateway,
    dmp-sim, psc-sim and Orthanc as the Consumer's PACS; a sample study published. Prints the
    URLs and "ready"; Ctrl-C (SIGINT) or SIGTERM stops everything.
    """
    from gateway.sandbox.layout import DEFAULT_BASE_PORT, DEFAULT_DIR
    from gateway.sandbox.run import run

    sys.exit(run(base_port or DEFAULT_BASE_PORT, root or DEFAULT_DIR,
                 lambda line: click.echo(line), with_orthanc=not no_orthanc))


@main.group()
def hl7() -> None:
    """HL7 v2 over MLLP (reports from the RIS)."""


@hl7.command("send")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, required=True, help="The MLLP port (hl7_port).")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Seconds to wait for the ACK (a report may wait for a C-MOVE).")
@click.option("--set", "substitutions", multiple=True, metavar="NAME=VALUE",
              help="Replace {{NAME}} in the file (the ANS samples' placeholders).")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="MLLP over TLS: the CAs trusted for the listener's certificate (PEM).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="MLLP over TLS: our client certificate (PEM), with --tls-key.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The private key of --tls-cert (PEM).")
def hl7_send(file: Path, host: str, port: int, timeout: float,
             substitutions: tuple[str, ...], tls_ca: str | None, tls_cert: str | None,
             tls_key: str | None) -> None:
    """Send one HL7 message FILE over MLLP and print the ACK (exit 0 on AA, 1 otherwise).

    CRLF or LF line ends in the file are sent as CR, as HL7 wants. With --tls-ca (and
    --tls-cert/--tls-key when the listener wants a client certificate) over TLS.
    """
    from gateway.reports.hl7_reader import charset_of, normalise
    from gateway.reports.mllp import ack_summary, client_context, send_message
    from gateway.reports.workflow import ReportRefused

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_cert and not tls_ca:
        raise click.UsageError("--tls-cert needs --tls-ca (the listener's CA)")
    context = client_context(tls_ca, tls_cert, tls_key) if tls_ca else None

    raw = file.read_bytes()
    try:
        charset = charset_of(raw)
    except ReportRefused:  # an MSH-18 we do not read: its bytes go as they are (the peer judges)
        charset = "latin-1"
    text = raw.decode(charset)
    for item in substitutions:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--set {item!r}: expected NAME=VALUE")
        text = text.replace("{{" + name + "}}", value)
    try:
        ack = send_message(normalise(text) + "\r", host, port, timeout=timeout, encoding=charset,
                           ssl_context=context)
    except OSError as exc:
        click.echo(f"drimbox: cannot send to {host}:{port}: {exc}", err=True)
        sys.exit(2)
    click.echo(ack.replace("\r", "\n").rstrip("\n"))
    sys.exit(0 if ack_summary(ack).get("ack") == "AA" else 1)


@main.group()
def report() -> None:
    """Reports (CR) received from the RIS."""


@report.command("show")
@click.option("--study", "study_uid", default=None, help="Only messages naming this study.")
@click.option("--msh10", "control_id", default=None, help="Only the message with this MSH-10.")
@click.option("--limit", type=int, default=20, show_default=True)
@config_option
def report_show(study_uid: str | None, control_id: str | None, limit: int,
                config_file: Path | None) -> None:
    """Print the recorded HL7 messages (newest first) as JSON: kind, state, ACK, error."""
    import json

    from gateway.index.engine import create_index_engine, upgrade
    from gateway.index.reports import list_reports
    from gateway.index.store import InstanceIndex

    settings = _settings(config_file)
    engine = create_index_engine(settings.effective_database_url)
    upgrade(engine)
    rows = list_reports(InstanceIndex(engine), study_uid=study_uid, control_id=control_id,
                        limit=limit)
    click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    sys.exit(0 if rows else 1)

# --- Patient share links (the CD replacement). ---


class _ShareGroup(click.Group):
    """``drimbox share STUDY_UID ...`` creates; ``drimbox share list|revoke`` manage."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not any(a in self.commands for a in args) and args[0] not in (
                "--help", "-h"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_ShareGroup)
def share() -> None:
    """Patient share links: `drimbox share STUDY_UID --days N`, `share list`, `share revoke ID`."""


def _share_links(settings: Settings):  # noqa: ANN202 - ShareLinks
    from datetime import timedelta

    from gateway.access.share_links import ShareLinks

    return ShareLinks(_runtime_index(settings), settings.share_max_attempts,
                      timedelta(minutes=settings.share_lock_minutes),
                      settings.share_link_max_days)


def _cli_audit(links, action: str, link_id: str, study_uid: str) -> None:  # noqa: ANN001
    import getpass

    from gateway.access.audit import ALLOWED, AccessRecord, record_access
    from gateway.access.principal import Principal

    who = Principal(kind="staff", subject=getpass.getuser(), via="cli")
    record_access(links.index, AccessRecord(who, action, ALLOWED, f"link {link_id}",
                                            study_uid=study_uid))


@share.command("create")
@config_option
@click.argument("study_uid")
@click.option("--days", type=int, default=None, help="Validity in days (default: share_link_days).")
@click.option("--qr-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to write share-<id>.png and share-<id>.svg.")
def share_create(config_file: Path | None, study_uid: str, days: int | None, qr_dir: Path) -> None:
    """Make a share link for a study: prints its URL (shown once), writes its QR code."""
    from gateway.access.handout import share_url, write_qr_files
    from gateway.access.share_links import CannotShare

    settings = _settings(config_file)
    links = _share_links(settings)
    try:
        new = links.create(study_uid, days or settings.share_link_days, "cli")
    except CannotShare as exc:
        click.echo(f"drimbox: {exc}", err=True)
        sys.exit(1)
    _cli_audit(links, "share-create", new.link.id, study_uid)
    url = share_url(settings.effective_public_url, new.token)
    qr_dir.mkdir(parents=True, exist_ok=True)
    png, svg = write_qr_files(url, qr_dir / f"share-{new.link.id}")
    click.echo(url)
    click.echo(f"id       {new.link.id}", err=True)
    click.echo(f"expires  {new.link.expires_at:%Y-%m-%d %H:%M} UTC", err=True)
    click.echo(f"handout  {url}/handout", err=True)
    click.echo(f"QR code  {png}, {svg}", err=True)


@share.command("list")
@config_option
@click.option("--study", "study_uid", default=None, help="Only this study's links.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def share_list(config_file: Path | None, study_uid: str | None, as_json: bool) -> None:
    """Share links, newest first (their tokens are never shown again)."""
    import json as jsonlib
    from dataclasses import asdict

    links = _share_links(_settings(config_file))
    now = links.now()
    items = links.list(study_uid)
    if as_json:
        click.echo(jsonlib.dumps([asdict(i) | {"status": i.status(now)} for i in items],
                                 default=str, indent=2))
        return
    for i in items:
        click.echo(f"{i.id}  {i.status(now):8}  expires {i.expires_at:%Y-%m-%d %H:%M}  "
                   f"{i.study_uid}")


@share.command("revoke")
@config_option
@click.argument("link_id")
def share_revoke(config_file: Path | None, link_id: str) -> None:
    """Revoke a share link: it stops working and its open sessions end at once."""
    links = _share_links(_settings(config_file))
    link = links.revoke(link_id)
    if link is None:
        click.echo(f"drimbox: no share link {link_id}", err=True)
        sys.exit(1)
    _cli_audit(links, "share-revoke", link.id, link.study_uid)
    click.echo(f"revoked {link.id} ({link.study_uid})")



# --- The ANS whitelist (R11): the Source DRIMboxes a consumer may call. ---


@main.group()
def whitelist() -> None:
    """The ANS whitelist (liste blanche) of DRIMbox hosts (R11)."""


@whitelist.command("check")
@config_option
@click.option("--source", default=None,
              help="A file path or https URL instead of the whitelist_source setting.")
@click.option("--url", "urls", multiple=True,
              help="Also say whether this KOS Retrieve URL's host is trusted (repeatable).")
@click.option("--at", "at", default=None,
              help="Diagnosis only: check the signer's certificate at this ISO 8601 time "
                   "instead of now (e.g. the list's signing time).")
def whitelist_check(config_file: Path | None, source: str | None, urls: tuple[str, ...],
                    at: str | None) -> None:
    """Fetch, verify and print the whitelist (the saved last good list is not changed).

    Exit status: 0 the list is accepted (and every --url trusted), 1 refused or unreachable
    (or a --url not trusted), 2 usage or configuration.
    """
    import datetime as dt

    from adapters.whitelist import WhitelistKeeper, WhitelistRefused, WhitelistUnavailable, fetch
    from adapters.whitelist.verify import WhitelistVerifier

    settings = _settings(config_file)
    source = source or settings.whitelist_source
    if not source:
        click.echo("drimbox: no whitelist source (set whitelist_source or give --source)",
                   err=True)
        sys.exit(2)
    when = None
    if at is not None:
        try:
            when = dt.datetime.fromisoformat(at)
        except ValueError:
            raise click.BadParameter(f"{at!r} is not an ISO 8601 date-time",
                                     param_hint="--at") from None
        when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    try:
        keeper = WhitelistKeeper.from_settings(settings)
        if when is not None and settings.whitelist_trust_anchors is not None:
            keeper.verifier = WhitelistVerifier(
                settings.whitelist_trust_anchors, signer_cn=settings.whitelist_signer_cn,
                signer_ou=settings.whitelist_signer_ou, verification_time=when)
    except ValueError as exc:
        click.echo(f"drimbox: {exc}", err=True)
        sys.exit(2)
    click.echo(f"source     {source}")
    try:
        listed = keeper.check(fetch(source, ca_bundle=settings.whitelist_tls_ca_bundle,
                                    timeout=settings.whitelist_timeout))
    except WhitelistUnavailable as exc:
        click.echo(f"UNAVAILABLE: {exc}")
        sys.exit(1)
    except WhitelistRefused as exc:
        click.echo(f"REFUSED: {exc}")
        sys.exit(1)
    click.echo(f"signed by  {listed.signer or 'NOBODY (unsigned list accepted: development mode)'}")
    if listed.signed_at:
        click.echo(f"signed at  {listed.signed_at}")
    click.echo(f"generated  {listed.generated_at} (format {listed.format_version or '?'})")
    click.echo(f"entries    {len(listed.sources)}")
    for s in listed.sources:
        click.echo(f"  {s.identifier:>5}  {s.drimbox_host:<40} {s.viewer_host or '-':<40} {s.name}")
    trusted = True
    for url in urls:
        decision = listed.is_trusted(url)
        trusted = trusted and decision.trusted
        click.echo(f"{'TRUSTED' if decision else 'NOT TRUSTED'}: {url}: {decision.reason}")
    click.echo("ACCEPTED" if trusted else "ACCEPTED (but a --url is not trusted)")
    sys.exit(0 if trusted else 1)


# --- The consumer (R13-R17): operators' commands. ---


@main.group()
def consumer() -> None:
    """The consumer DRIMbox: retrieved studies."""


@consumer.command("export")
@config_option
@click.argument("study_uid")
@click.option("--to", "kind", type=click.Choice(["cstore", "stow", "orthanc"]), default=None,
              help="Destination (default: the export_destination setting).")
@click.option("--from", "folder", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="A folder of the study's Part 10 files instead of the cache.")
@click.option("--patient-id", default=None,
              help="Local PatientID (IPP) to put in the instances; needs --ins. Without it the "
                   "instances go as retrieved.")
@click.option("--issuer", default="", help="Its issuer, as HL7 PID-3.4 (name&OID&ISO).")
@click.option("--ins", default=None,
              help="The patient's INS matricule: every instance must carry it to be coerced.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def consumer_export(config_file: Path | None, study_uid: str, kind: str | None,
                    folder: Path | None, patient_id: str | None, issuer: str, ins: str | None,
                    as_json: bool) -> None:
    """Export a retrieved study into the centre's PACS (R17): C-STORE, STOW-RS or Orthanc.

    STUDY_UID names the study by its Study Instance UID or its KOS document unique id: the
    latest complete retrieval of it in the cache is exported (or --from a folder).

    Instances the PACS already holds are skipped, so running it again completes an export
    that stopped or was partly refused. Exit status: 0 every instance is in the PACS, 1 some
    are not (or nothing was sent: the reason is printed), 2 usage or configuration.
    """
    import getpass
    from datetime import timedelta

    from adapters.pacs.export import destination
    from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
    from gateway.access.principal import Principal
    from gateway.consumer.cache import StudyCache, cache_root, latest_complete
    from gateway.consumer.export import COMPLETE, ExportError, LocalIdentity, run_export

    settings = _settings(config_file)
    if (patient_id is None) != (ins is None):
        raise click.UsageError("--patient-id and --ins go together")
    try:
        identity = LocalIdentity(patient_id, issuer, ins) if patient_id is not None else None
        target = destination(settings, kind)
    except ExportError as exc:
        click.echo(f"drimbox: {exc}", err=True)
        sys.exit(2)
    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
    else:
        index = _runtime_index(settings)
        row = latest_complete(index, study_uid)
        if row is None:
            click.echo(f"drimbox: no complete retrieval of {study_uid} in the cache (give "
                       "--from DIR)", err=True)
            sys.exit(1)
        files = StudyCache(index, cache_root(settings.data_dir), 0,
                           timedelta()).retrieved_files(row.id)
        study_uid = row.study_instance_uid or study_uid
    try:
        report = run_export(files, target, identity, study_uid)
    finally:
        target.close()
    who = Principal(kind="staff", subject=getpass.getuser(), via="cli")
    record_access(_runtime_index(settings), AccessRecord(
        who, "consumer_export", ALLOWED if report.outcome == COMPLETE else DENIED,
        report.summary()[:255], study_uid=study_uid, patient_ins=ins or ""))
    if as_json:
        click.echo(report.to_json())
    else:
        for o in report.outcomes:
            click.echo(f"{o.outcome:16} {o.sop_instance_uid}" + (f"  {o.reason}" if o.reason
                                                                  else ""))
        click.echo(report.summary())
    sys.exit(0 if report.outcome == COMPLETE else 1)


# --- The consumer's cache of retrieved studies (R17). ---


@consumer.group("cache")
def consumer_cache() -> None:
    """The cache of studies retrieved from Source DRIMboxes (R17)."""


@consumer_cache.command("purge")
@config_option
@click.option("--all", "everything", is_flag=True,
              help="Also retrievals marked as running (only when no gateway runs).")
def consumer_cache_purge(config_file: Path | None, everything: bool) -> None:
    """Remove the retrieved studies from the cache (finished retrievals; with --all, also
    those marked as running) and any stray folder. Exit 0; prints what was freed."""
    from gateway.consumer.cache import cache_root, purge

    settings = _settings(config_file)
    index = _runtime_index(settings)
    try:
        studies, freed = purge(index, cache_root(settings.data_dir), everything)
    finally:
        index.engine.dispose()
    click.echo(f"purged {studies} retrieved stud{'y' if studies == 1 else 'ies'}, "
               f"{freed} bytes")



# --- IHE XDM archives (ITI-32, R23). ---


@main.group()
def xdm() -> None:
    """IHE XDM archives: a study's manifest on media or by MSSante (R23)."""


@xdm.command("export")
@config_option
@click.argument("study_uid")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The zip archive to write.")
@click.option("--with-images", is_flag=True,
              help="Add the stored images as DICOM media (DICOMDIR at the archive's root).")
def xdm_export(config_file: Path | None, study_uid: str, output: Path, with_images: bool) -> None:
    """Write the XDM archive of a study: METADATA.XML (the DMP publication's XDS-I.b
    metadata), the KOS, the CR when there is one, SIGN_1.XML, INDEX.HTM, README.TXT.

    Exit status: 0 written, 1 the study cannot be exported (the reason is printed)."""
    from adapters.xdm.archive import XdmExportError, build_xdm_archive
    from gateway.index.facts import NotPublishable, UnknownStudy
    from gateway.manifest.xds_metadata import MetadataError

    settings = _settings(config_file)
    index = _runtime_index(settings)
    try:
        archive = build_xdm_archive(index, settings, study_uid, with_images=with_images)
    except UnknownStudy:
        click.echo(f"drimbox xdm export: no study {study_uid} in the index", err=True)
        sys.exit(1)
    except (NotPublishable, MetadataError, XdmExportError) as exc:
        click.echo(f"drimbox xdm export: study {study_uid} cannot be exported: {exc}", err=True)
        sys.exit(1)
    finally:
        index.engine.dispose()
    tmp = output.with_name(output.name + ".partial")
    tmp.write_bytes(archive.data)
    tmp.replace(output)
    images = f", {archive.image_count} images" if with_images else ""
    click.echo(f"{output}: XDM of study {study_uid}, KOS {archive.kos_uid}{images}, "
               f"{len(archive.data)} bytes")


@xdm.command("import")
@config_option
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--check", "check_only", is_flag=True,
              help="Only check the archive (zip, METADATA.XML, sizes and hashes, signature).")
def xdm_import(config_file: Path | None, archive: Path, check_only: bool) -> None:
    """Check an XDM archive, then import it: its images (DICOM media) through the same path
    as C-STORE, like ``drimbox import``; on a consumer, the archive is kept in the XDM inbox:
    the consumer page of its patient offers to retrieve the study (under the practitioner's
    Pro Sante Connect session).

    Exit status: 0 imported (or checked), 1 refused (the reason is printed) or images
    rejected, 2 configuration errors."""
    import io
    import tempfile

    from adapters.xdm.reader import XdmRefused, check_archive, extract_media

    settings = _settings(config_file)
    try:
        package = check_archive(archive, settings)
    except XdmRefused as exc:
        click.echo(f"drimbox xdm import: refused: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{archive}: XDM checked: KOS {package.kos.entry.unique_id} "
               f"(patient {package.patient_id.split('^')[0]}), "
               + (f"signed by {package.signer}" if package.signer else "not signed")
               + "".join(f"; {note}" for note in package.notes))
    if check_only:
        return
    status = 0
    if package.has_dicomdir:
        from gateway.ingest.importer import run_import

        with tempfile.TemporaryDirectory(prefix="drimbox-xdm-") as tmp:
            try:
                count = extract_media(archive, package, Path(tmp))
            except XdmRefused as exc:
                click.echo(f"drimbox xdm import: refused: {exc}", err=True)
                sys.exit(1)
            click.echo(f"images: {count} files of DICOM media")
            status = run_import(settings, [Path(tmp)], quiet=True)
    else:
        click.echo("images: none in the archive")
    if settings.consumer_enabled:
        import datetime as dt

        from pydicom import dcmread

        from gateway.consumer.xdm_inbox import InboxItem, XdmInbox

        ins, _, rest = package.patient_id.partition("^^^&")
        kos = dcmread(io.BytesIO(package.kos.data), stop_before_pixels=True)
        kept = XdmInbox(settings.data_dir).put(archive, InboxItem(
            kos_uid=package.kos.entry.unique_id, study_uid=str(kos.get("StudyInstanceUID", "")),
            patient_ins=ins, patient_oid=rest.split("&", 1)[0],
            received_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            signer=package.signer, filename=archive.name))
        click.echo(f"KOS: kept in the consumer's XDM inbox ({kept}); the consumer page of "
                   "this patient offers it: the study is retrieved from its Source under the "
                   "practitioner's Pro Sante Connect session")
    sys.exit(status)

if __name__ == "__main__":
    main()
