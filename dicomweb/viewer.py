"""The OHIF viewer, served same-origin at ``/viewer``.

``make setup`` puts ``@ohif/app``'s prebuilt ``dist/`` in ``.cache/ohif/dist`` (setting
``viewer_dir``). That build assumes it lives at ``/`` (``PUBLIC_URL``): its ``index.html``
names its assets ``/…`` and its webpack runtimes load chunks, workers and WASM from
``__webpack_require__.p = "/"``. We serve it under ``<prefix>/viewer/`` by rewriting, as they
are served, ``index.html`` (asset URLs and ``window.PUBLIC_URL``) and the few bundles that
carry that webpack runtime (patched copies are cached in memory). ``<prefix>`` is the path of
the request's effective public URL (``dicomweb.urls``), so the viewer also works behind a
proxy that adds one.

``app-config.js`` is ours: one DICOMweb data source whose QIDO/WADO roots are
``<public URL>/dicom-web`` and ``routerBasename`` ``<prefix>/viewer``.

Routes: ``/viewer?StudyInstanceUIDs=…`` redirects to OHIF's viewer route
``/viewer/viewer?StudyInstanceUIDs=…`` (``/viewer`` alone is the study list); any other path
under ``/viewer/`` is a file of the build, or, when it names no file and has no file extension,
``index.html`` (the single-page app's own routes survive a reload). Without the files every
route answers 503 and says to run ``make setup``.

These files reveal no patient data; what the viewer shows comes through DICOMweb, which has
its own access rule.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from anyio.from_thread import run as run_async
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse

from dicomweb.deps import RuntimeDep, principal_or_none
from dicomweb.urls import PublicURLDep
from gateway.imaging.locations import DICOMWEB_PREFIX

router = APIRouter()

VIEWER_PATH = "/viewer"
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".map": "application/json",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".ico": "image/x-icon",
    ".png": "image/png",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
}
_NO_CACHE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_MISSING = (
    "The OHIF viewer files are missing (expected in {dir}). Run `make setup` (it fetches "
    "@ohif/app with npm), or set DRIMBOX_VIEWER_DIR to a folder holding OHIF's dist/.\n"
)


def ohif_config(public_url: str, consumer: bool = False, source: bool = True) -> dict:
    """OHIF's ``window.config``: our DICOMweb service as the data source; with the consumer
    role (R17), a second one, ``consumer``, over the studies retrieved from Sources
    (``/consumer/dicom-web``, :mod:`dicomweb.consumer_dicomweb`), which OHIF's route
    ``/viewer/viewer/consumer?StudyInstanceUIDs=…`` selects. Without the Source role
    (``source`` false) the ``consumer`` one is the only data source."""
    dicomweb = public_url + DICOMWEB_PREFIX
    config = {
        "routerBasename": urlsplit(public_url).path + VIEWER_PATH,
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "drimbox",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "drimbox",
                "configuration": {
                    "friendlyName": "DRIMbox",
                    "name": "drimbox",
                    "qidoRoot": dicomweb,
                    "wadoRoot": dicomweb,
                    "wadoUriRoot": dicomweb,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": True,
                    "supportsWildcard": True,
                    "supportsReject": False,
                    "supportsStow": False,
                    "dicomUploadEnabled": False,
                    "staticWado": False,
                    "singlepart": False,
                    "omitQuotationForMultipartRequest": False,
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                },
            }
        ],
    }
    if consumer:
        retrieved = json.loads(json.dumps(config["dataSources"][0]))
        root = public_url + "/consumer/dicom-web"
        retrieved["sourceName"] = "consumer"
        retrieved["configuration"].update(friendlyName="Examens récupérés", name="consumer",
                                       qidoRoot=root, wadoRoot=root, wadoUriRoot=root,
                                       supportsFuzzyMatching=False, supportsWildcard=False)
        config["dataSources"].append(retrieved)
    if not source and consumer:
        config["dataSources"] = config["dataSources"][1:]
        config["defaultDataSourceName"] = "consumer"
    return config


#: OHIF's own onboarding tour (``ohif.tours`` of its default extension, route ``/viewer``):
#: marked as already shown, so that nobody gets a tour of a viewer they open once.
OHIF_TOURS = ("basicViewerTour",)
VIEWER_LANGUAGE = "fr"
"""OHIF 3 ships French (``i18n/src/locales/fr``); its i18next detector reads ``?lng=``, the
``i18next`` cookie, then ``localStorage.i18nextLng`` before the browser's languages."""


def _first_visit_js() -> str:
    """Set before OHIF starts (``app-config.js`` runs before its bundle): French unless the
    user chose another language in OHIF's preferences since our first seeding (the
    ``drimbox.lng`` mark), and the tour already shown."""
    lng = json.dumps(VIEWER_LANGUAGE)
    tours = json.dumps(list(OHIF_TOURS))
    return (
        "(function () {\n"
        "  try {\n"
        "    var s = window.localStorage;\n"
        f"    if (s.getItem('drimbox.lng') !== {lng}) {{\n"
        f"      s.setItem('i18nextLng', {lng}); s.setItem('drimbox.lng', {lng});\n"
        "    }\n"
        "    var shown = JSON.parse(s.getItem('shownTours') || '[]');\n"
        f"    {tours}.forEach(function (t) {{ if (shown.indexOf(t) < 0) shown.push(t); }});\n"
        "    s.setItem('shownTours', JSON.stringify(shown));\n"
        "  } catch (e) { /* storage refused: OHIF's defaults */ }\n"
        "})();\n")


def _banner_js(patient: list[tuple[str, str, str]]) -> str:
    """The identity banner as a strip along the bottom of the window, outside OHIF's React
    tree (its header has no room for it), built with ``textContent`` (never parsed as HTML);
    not when OHIF is already framed under the consumer page's own banner."""
    traits = json.dumps([list(t) for t in patient], ensure_ascii=True)
    label = json.dumps("Identité du patient (traits stricts INS)", ensure_ascii=True)
    return (
        "(function () {\n"
        "  if (window.self !== window.top) { return; }\n"
        f"  var traits = {traits};\n"
        "  function show() {\n"
        "    var bar = document.createElement('section');\n"
        f"    bar.id = 'identity-banner'; bar.setAttribute('aria-label', {label});\n"
        "    bar.style.cssText = 'position:fixed;left:0;right:0;bottom:0;z-index:10000;"
        "background:#1d4e89;color:#fff;font:bold 14px sans-serif;padding:3px 12px';\n"
        "    traits.forEach(function (t) {\n"
        "      var span = document.createElement('span');\n"
        "      span.setAttribute('data-trait', t[0]); span.title = t[1];\n"
        "      span.textContent = t[2]; span.style.marginRight = '1.5em';\n"
        "      bar.appendChild(span);\n"
        "    });\n"
        "    document.body.appendChild(bar);\n"
        "  }\n"
        "  if (document.body) { show(); } else {"
        " document.addEventListener('DOMContentLoaded', show); }\n"
        "})();\n")


def app_config_js(public_url: str, logout: bool = False, consumer: bool = False,
                  source: bool = True, centre: str = "", download: str = "",
                  patient: list[tuple[str, str, str]] | None = None) -> str:
    """``window.config``, in French, without OHIF's tour nor its "investigational use"
    dialog (``investigationalUseDialog: never``). OHIF's ``whiteLabeling`` puts in its header,
    where its logo goes (study list and viewer): the centre's name (``centre``,
    ``institution_name``); with ``logout``, a "Se déconnecter" link to ``/auth/logout``'s
    confirmation page (the logout itself is a POST from that page); with ``download`` (a
    share link's session), a "Télécharger l'examen" link to that URL (the study as DICOM
    media, :mod:`dicomweb.download`); with ``patient`` (a consumer session's current
    appel contextuel: ``(trait, label, value)``), the identity banner's strict traits (R14),
    each in an element with ``data-trait`` as on the consumer pages
    (:mod:`dicomweb.consumer_banner`)."""
    config = ohif_config(public_url, consumer, source)
    config["investigationalUseDialog"] = {"option": "never"}
    text = json.dumps(config, indent=2, ensure_ascii=True)
    js = (f"/* Generated by DRIMbox (dicomweb/viewer.py). */\n{_first_visit_js()}"
          f"window.config = {text};\n")
    if patient:
        js += _banner_js(patient)
    items = []
    if centre:
        items.append("React.createElement('span', {id: 'drimbox-centre', "
                     "className: 'text-white text-base mr-4'}, "
                     f"{json.dumps(centre, ensure_ascii=True)})")
    if download:
        items.append(
            "React.createElement('a', {href: " + json.dumps(download) + ", "
            "id: 'drimbox-download', target: '_self', download: '', "
            "className: 'text-primary text-base hover:underline mr-4', "
            "onClick: function (event) { event.stopPropagation(); }}, "
            + json.dumps("Télécharger l'examen", ensure_ascii=True) + ")")
    if logout:
        items.append(
            "React.createElement('a', {href: " + json.dumps(public_url + "/auth/logout")
            + ", id: 'drimbox-logout', target: '_self', "
            "className: 'text-primary text-base hover:underline', "
            # the viewer's header makes the logo's box a 'back to the list' button
            "onClick: function (event) { event.stopPropagation(); }}, "
            + json.dumps("Se déconnecter", ensure_ascii=True) + ")")
    if items:
        js += (
            "window.config.whiteLabeling = {\n"
            "  createLogoComponentFn: function (React) {\n"
            "    return React.createElement('span', {id: 'drimbox-header', "
            "className: 'flex items-center'},\n      "
            + ",\n      ".join(items) + ");\n"
            "  }\n"
            "};\n")
    return js


class ViewerFiles:
    """OHIF's build on disk, with the per-prefix rewrites cached."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._lock = threading.Lock()
        self._plain: set[str] = set()  # .js files without the webpack public path
        self._patched: dict[tuple[str, str], bytes] = {}

    def available(self) -> bool:
        return (self.root / "index.html").is_file()

    def file(self, rel: str) -> Path | None:
        """The file at ``rel`` inside the build, or ``None`` (never outside it)."""
        pure = PurePosixPath(rel)
        if pure.is_absolute() or any(part in ("..", "") for part in pure.parts):
            return None
        path = (self.root / pure).resolve()
        if self.root not in path.parents or not path.is_file():
            return None
        return path

    def index_html(self, base: str) -> bytes:
        html = (self.root / "index.html").read_bytes()
        b = base.encode()
        html = re.sub(rb'<html lang="en"', b'<html lang="' + VIEWER_LANGUAGE.encode() + b'"',
                      html, count=1)
        html = re.sub(rb"""(\b(?:href|src|content)=["'])/(?!/)""", rb"\1" + b, html)
        return re.sub(rb"""(window\.PUBLIC_URL\s*=\s*)(['"])/\2""", rb"\1\2" + b + rb"\2", html)

    def rewritten(self, rel: str, path: Path, base: str) -> bytes | None:
        """The file with its root-relative URLs moved under ``base``; ``None`` when it has
        none (then it is served as it is on disk)."""
        rules = _rules(rel, path, self.root)
        if not rules or rel in self._plain:
            return None
        key = (rel, base)
        with self._lock:
            cached = self._patched.get(key)
        if cached is not None:
            return cached
        data = original = path.read_bytes()
        for pattern, replacement in rules:
            data = pattern.sub(replacement(base.encode()), data)
        if data == original:
            with self._lock:
                self._plain.add(rel)
            return None
        with self._lock:
            if len(self._patched) > 64:  # a handful of files times a handful of prefixes
                self._patched.clear()
            self._patched[key] = data
        return data


# Root-relative URLs in OHIF's build, by file: (pattern, replacement for a base path).
_WEBPACK_PUBLIC_PATH = (
    re.compile(rb'__webpack_require__\.p = "/";'),
    lambda b: b"__webpack_require__.p = " + json.dumps(b.decode()).encode() + b";",
)
_CSS_URL = (re.compile(rb"url\(/(?!/)"), lambda b: b"url(" + b)
_JSON_PATH = (re.compile(rb'"/(?!/)'), lambda b: b'"' + b)
_MANIFESTS = {"manifest.json", "assets/yandex-browser-manifest.json"}


def _rules(rel: str, path: Path, root: Path) -> list:
    if path.parent == root and path.suffix == ".js":
        return [_WEBPACK_PUBLIC_PATH]
    if path.parent == root and path.suffix == ".css":
        return [_CSS_URL]
    if rel in _MANIFESTS:
        return [_JSON_PATH]
    return []


_files: dict[Path, ViewerFiles] = {}
_files_lock = threading.Lock()


def _viewer_files(runtime) -> ViewerFiles:
    root = runtime.settings.effective_viewer_dir
    with _files_lock:
        if root not in _files:
            _files[root] = ViewerFiles(root)
        return _files[root]


def _base(public_url: str) -> str:
    """Path under which the viewer's files are served, with a trailing slash."""
    return urlsplit(public_url).path + VIEWER_PATH + "/"


def _login_needed(request: Request, runtime) -> Response | None:
    """With ``dicomweb_auth = psc`` the viewer's pages need a principal (a PSC session or a
    share link): otherwise the browser goes to the login (R15). Called from the
    route's worker thread; the resolvers are async."""
    if runtime.settings.dicomweb_auth != "psc":
        return None
    if run_async(principal_or_none, request) is not None:
        return None
    from dicomweb.login import activity_redirect, login_redirect

    return activity_redirect(request) or login_redirect(request)


def _has_login_session(request: Request) -> bool:
    """This browser holds a PSC login session cookie (a share link's patient gets no logout
    link: its session ends with the link)."""
    from dicomweb.session_cookies import SESSION, read_cookie

    return bool(read_cookie(request, SESSION))


def _share_download(request: Request, public_url: str) -> str:
    """The download URL of a share link's study when this browser is in a share session
    (called from the route's worker thread), else ``""``."""
    from dicomweb.download import download_path
    from dicomweb.session_cookies import SHARE, read_cookie

    if not read_cookie(request, SHARE):
        return ""
    principal = run_async(principal_or_none, request)
    if principal is None or principal.kind != "share" or not principal.study_uid:
        return ""
    return public_url + download_path(principal.study_uid)


def _consumer_patient(request: Request) -> list[tuple[str, str, str]]:
    """The strict INS traits of this PSC session's current appel contextuel (consumer role),
    audited as a consumer view (``consumer_view``, reason ``viewer_banner``); ``[]`` without
    one. Called from the route's worker thread."""
    from dicomweb.session_cookies import SESSION, read_cookie, sessions
    from gateway.access.audit import ALLOWED, AccessRecord, record_access
    from gateway.access.principal import Principal

    raw = read_cookie(request, SESSION)
    contexts = getattr(request.app.state, "consumer_contexts", None)
    if not raw or contexts is None:
        return []
    info = sessions(request).find(raw)
    if info is None or info.kind != "practitioner":
        return []
    current = contexts.current(raw)
    if current is None:
        return []
    p = current.patient
    from dicomweb.urls import client_address

    record_access(request.app.state.runtime.index, AccessRecord(
        Principal(kind="practitioner", subject=info.subject, activity=info.activity or None,
                  via="session"),
        "consumer_view", ALLOWED, "viewer_banner", patient_ins=p.ins,
        client_address=client_address(request)))
    return [("birth-name", "Nom de naissance", p.birth_name),
            ("first-given-name", "Premier prénom de naissance", p.first_given_name),
            ("birth-date", "Date de naissance", p.birth_date_label),
            ("gender", "Sexe", p.gender_label),
            ("birthplace", "Lieu de naissance (code INSEE)", p.birthplace)]


@router.get(VIEWER_PATH, include_in_schema=False)
def viewer_entry(request: Request, runtime: RuntimeDep, public_url: PublicURLDep) -> Response:
    if (login := _login_needed(request, runtime)) is not None:
        return login
    files = _viewer_files(runtime)
    if not files.available():
        return PlainTextResponse(_MISSING.format(dir=files.root), 503)
    query = request.url.query
    if "StudyInstanceUIDs=" in query:
        # OHIF's viewer route; /viewer itself is its study list.
        return RedirectResponse(f"{public_url}{VIEWER_PATH}/viewer?{query}", status_code=302)
    return Response(files.index_html(_base(public_url)), media_type=_MEDIA_TYPES[".html"],
                    headers=_NO_CACHE)


@router.get(VIEWER_PATH + "/{rel:path}", include_in_schema=False)
def viewer_file(rel: str, request: Request, runtime: RuntimeDep,
                public_url: PublicURLDep) -> Response:
    files = _viewer_files(runtime)
    if not files.available():
        return PlainTextResponse(_MISSING.format(dir=files.root), 503)
    base = _base(public_url)
    if rel == "app-config.js":
        settings = runtime.settings
        logout = settings.dicomweb_auth == "psc" and _has_login_session(request)
        patient = _consumer_patient(request) if settings.consumer_enabled else []
        return Response(app_config_js(public_url, logout, settings.consumer_enabled,
                                      settings.source_enabled, settings.institution_name,
                                      _share_download(request, public_url), patient),
                        media_type=_MEDIA_TYPES[".js"],
                        headers={**_NO_CACHE, "Cache-Control": "no-store"} if patient
                        else _NO_CACHE)
    if rel in ("", "index.html") or (files.file(rel) is None and not PurePosixPath(rel).suffix):
        if (login := _login_needed(request, runtime)) is not None:
            return login
    if rel in ("", "index.html"):
        return Response(files.index_html(base), media_type=_MEDIA_TYPES[".html"],
                        headers=_NO_CACHE)
    path = files.file(rel)
    if path is None:
        if PurePosixPath(rel).suffix:
            return PlainTextResponse("not found\n", 404)
        # A route of the single-page app (e.g. /viewer/viewer?StudyInstanceUIDs=…).
        return Response(files.index_html(base), media_type=_MEDIA_TYPES[".html"],
                        headers=_NO_CACHE)
    media_type = _MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    patched = files.rewritten(rel, path, base)
    if patched is not None:
        return Response(patched, media_type=media_type, headers=_NO_CACHE)
    return FileResponse(path, media_type=media_type,
                        headers={"X-Content-Type-Options": "nosniff"})
