"""The gateway's HTTP application (FastAPI). ``drimbox serve`` runs it on uvicorn.

Routes: ``GET /healthz`` (liveness and index reachability, no patient data), ``GET /metrics``
(Prometheus text format), the viewer (``viewer`` module), the PSC login; with the Source role
(``roles`` source or both) DICOMweb under ``/dicom-web`` (``qido``, ``wado``, ``stow``
modules) and WADO-URI at ``/wado`` (``wado_uri``), the R18 viewer link, share links and the
study admin; with the consumer role, the consumer pages under ``/consumer`` (``consumer``
module and its siblings). ``http_methods``: 405 with a complete ``Allow``, HEAD. The operator console at ``/``
(``console`` package, docs/console.md). ``hot_path``: QIDO-RS, one instance and frames reach
their route functions without the routing (same functions, same access gate).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Response
from sqlalchemy import text

from dicomweb import admin_audit, http_methods, metadata, qido, rendered, stow, viewer, wado
from dicomweb.hot_path import GatewayApp, HotRoutes
from gateway import __version__
from gateway import metrics as gateway_metrics
from gateway.imaging.locations import DICOMWEB_PREFIX
from gateway.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = GatewayApp(title="DRIMbox gateway", version=__version__)
    app.state.runtime = runtime
    # Modules that prove principals (viewer login, share links) append async callables here;
    # see dicomweb/deps.py for the order in which they are asked.
    app.state.principal_resolvers = []
    http_methods.install(app)  # 405 with every allowed method; HEAD without a body
    source = runtime.settings.source_enabled
    if source:  # the Source's archive: DICOMweb, the R18 viewer link
        for module in (qido, wado, metadata, rendered, stow):
            app.include_router(module.router, prefix=DICOMWEB_PREFIX, tags=["dicomweb"])
        from dicomweb import wado_uri

        app.include_router(wado_uri.router, tags=["dicomweb"])  # WADO-URI at /wado
        from dicomweb import viewer_source

        app.include_router(viewer_source.router, tags=["viewer"])  # before /viewer/{rel}
        from dicomweb import download

        app.include_router(download.router, tags=["viewer"])  # the study as DICOM media
    app.include_router(viewer.router, tags=["viewer"])

    # Viewer sessions (PSC login) and, for a Source, patient share links.
    from dicomweb import login, session_cookies, share

    session_cookies.install(app)
    login.install(app)
    if source:
        share.install(app)
    from dicomweb import console  # the operator console at / (docs/console.md)

    console.install(app)
    if runtime.settings.consumer_enabled:  # R13-R16: the consumer role's routes, else 404
        from dicomweb import consumer, consumer_export

        consumer.install(app)
        consumer_export.install(app)  # R17: import of a retrieved study into the local PACS
        from dicomweb import consumer_studies  # R17: retrieval, cache, consumer DICOMweb

        consumer_studies.install(app)
        from dicomweb import consumer_xdm  # R23: a KOS from an XDM archive, the same retrieval

        consumer_xdm.install(app)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> Response:
        """200 when the index answers, 503 otherwise. Reveals no patient data."""
        try:
            with runtime.index.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return Response('{"status":"index unreachable"}', 503, media_type="application/json")
        return Response('{"status":"ok"}', 200, media_type="application/json")

    @app.get("/metrics", tags=["operations"])
    def metrics() -> Response:
        """Prometheus metrics: instances and bytes received, failures by status, associations."""
        body, content_type = gateway_metrics.exposition()
        return Response(body, media_type=content_type)

    # --- Access control: principal resolvers, admin audit export. ---
    app.include_router(admin_audit.router, tags=["admin"])
    if source:
        from dicomweb import admin_studies

        app.include_router(admin_studies.router, tags=["admin"])  # a study's state
    settings = runtime.settings
    if settings.dicomweb_auth == "psc" and not settings.psc_issuer:
        logging.getLogger("drimbox.access").warning(
            "dicomweb_auth is psc but no PSC issuer is configured (DRIMBOX_PSC_ISSUER): "
            "DICOMweb answers 401 without credentials and 503 to bearer tokens; set "
            "DRIMBOX_DICOMWEB_AUTH=none for anonymous loopback development")
    if source:  # the most frequent reads skip the routing, same functions (hot_path module)
        app.hot_routes = HotRoutes.from_app(app)

    return app
