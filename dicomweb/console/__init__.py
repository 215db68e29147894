"""The operator console at ``/`` (docs/console.md): server-rendered pages for the centre's
staff over what the CLI and the admin endpoints already do.

* :mod:`~dicomweb.console.access`: who may look (``viewer``) and act (``admin``), CSRF;
* :mod:`~dicomweb.console.pages`: the pages (GET) and the live fragments;
* :mod:`~dicomweb.console.actions`: publish, unpublish, share, revoke, retry (POST);
* :mod:`~dicomweb.console.views`, :mod:`~dicomweb.console.layout`: the HTML, escaped;
* :mod:`~dicomweb.console.i18n`: French first, English available.
"""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    from dicomweb.console import actions, pages

    app.include_router(pages.router, tags=["console"])
    app.include_router(actions.router, tags=["console"])
