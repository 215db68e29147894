"""The console's words, French first, English available: a tiny message catalogue.

The language is ``?lang=fr|en`` (remembered in the ``drimbox-lang`` cookie), else the
cookie, else the browser's ``Accept-Language``, else French.
"""

from __future__ import annotations

from fastapi import Request

LANGUAGES = ("fr", "en")
COOKIE = "drimbox-lang"

MESSAGES: dict[str, tuple[str, str]] = {
    "console": ("Console DRIMbox", "DRIMbox console"),
    "skip": ("Aller au contenu", "Skip to content"),
    "nav": ("Navigation principale", "Main navigation"),
    "home": ("Accueil", "Home"),
    "studies": ("Examens", "Studies"),
    "outbox": ("File de publication", "Publication outbox"),
    "audit": ("Journal d'audit", "Audit trail"),
    "shares": ("Liens de partage", "Share links"),
    "consumer": ("Consommation", "Consumer side"),
    "logout": ("Se déconnecter", "Log out"),
    "signed_in_as": ("Connecté : {who} ({roles})", "Signed in: {who} ({roles})"),
    "dev_mode": ("mode développement sans connexion", "development mode, no login"),
    "language": ("Langue", "Language"),
    # home
    "health": ("État", "Health"),
    "index_ok": ("Index joignable", "Index reachable"),
    "index_down": ("Index injoignable", "Index unreachable"),
    "dmp": ("DMP", "DMP"),
    "configured": ("configuré", "configured"),
    "not_configured": ("non configuré", "not configured"),
    "psc": ("Pro Santé Connect", "Pro Santé Connect"),
    "listeners": ("Écoutes", "Listeners"),
    "listener": ("Écoute", "Listener"),
    "address": ("Adresse", "Address"),
    "tls": ("TLS", "TLS"),
    "roles": ("Rôles de la DRIMbox", "DRIMbox roles"),
    "role_source": ("Source", "Source"),
    "role_consumer": ("Consommatrice", "Consumer"),
    "on": ("actif", "on"),
    "off": ("inactif", "off"),
    "today": ("Aujourd'hui (depuis 00:00 UTC)", "Today (since 00:00 UTC)"),
    "studies_received": ("Examens reçus", "Studies received"),
    "instances_received": ("Instances reçues", "Instances received"),
    "publications_done": ("Publications faites", "Publications done"),
    "publications_refused": ("Publications refusées", "Publications refused"),
    "accesses_allowed": ("Accès autorisés", "Accesses allowed"),
    "accesses_denied": ("Accès refusés", "Accesses denied"),
    "outbox_by_state": ("File de publication par état", "Outbox by state"),
    "last_errors": ("Dernières erreurs", "Last errors"),
    "no_errors": ("Aucune erreur.", "No errors."),
    "live_note": ("Mis à jour automatiquement.", "Updated automatically."),
    # states
    "state": ("État", "State"),
    "pending": ("en attente", "pending"),
    "sending": ("en cours d'envoi", "sending"),
    "done": ("fait", "done"),
    "refused": ("refusé", "refused"),
    "superseded": ("remplacé", "superseded"),
    "retrying": ("nouvel essai prévu", "retrying"),
    "not_publishable": ("non publiable", "not publishable"),
    "error": ("erreur", "error"),
    "count": ("Nombre", "Count"),
    "when": ("Quand", "When"),
    "what": ("Quoi", "What"),
    "detail": ("Détail", "Detail"),
    "study": ("Examen", "Study"),
    # studies
    "search": ("Rechercher", "Search"),
    "search_studies": ("Rechercher des examens", "Search studies"),
    "ins": ("INS (matricule) ou identifiant patient", "INS (matricule) or patient ID"),
    "name": ("Nom du patient", "Patient name"),
    "date_from": ("Date de l'examen, du", "Study date, from"),
    "date_to": ("au", "to"),
    "accession": ("Numéro d'accession", "Accession number"),
    "modality": ("Modalité", "Modality"),
    "results": ("{n} examen(s)", "{n} study(ies)"),
    "latest": ("Derniers examens reçus", "Latest studies received"),
    "no_study": ("Aucun examen.", "No study."),
    "patient": ("Patient", "Patient"),
    "date": ("Date", "Date"),
    "description": ("Description", "Description"),
    "series_instances": ("Séries / instances", "Series / instances"),
    "stable": ("Stable", "Stable"),
    "yes": ("oui", "yes"),
    "no": ("non", "no"),
    "receiving": ("non (réception en cours)", "no (receiving)"),
    "stable_since": ("oui, depuis {at}", "yes, since {at}"),
    "open": ("Ouvrir", "Open"),
    "study_not_found": ("Examen introuvable", "Study not found"),
    "content": ("Contenu", "Content"),
    "received": ("Reçu", "Received"),
    "publishable": ("Publiable", "Publishable"),
    "why_not": ("non : {reason}", "no: {reason}"),
    "report": ("Compte rendu", "Report"),
    "report_none": ("aucun reçu", "none received"),
    "report_line": ("CR {id} ({type}), reçu le {at}", "report {id} ({type}), received {at}"),
    "links": ("Liens", "Links"),
    "open_viewer": ("Ouvrir dans le visualiseur", "Open in the viewer"),
    "r18_link": ("Lien visualiseur du CR (R18)", "Report viewer link (R18)"),
    "no_r18_link": ("pas de lien R18 sans compte rendu", "no R18 link without a report"),
    "publication": ("Publication au DMP", "Publication to the DMP"),
    "pub_state": ("État de la publication", "Publication state"),
    "pub_not published": ("non publié", "not published"),
    "pub_queued": ("en file", "queued"),
    "pub_published": ("publié", "published"),
    "pub_withdrawn": ("retiré", "withdrawn"),
    "pub_refused": ("refusé par le DMP", "refused by the DMP"),
    "current_kos": ("KOS en vigueur", "Current KOS"),
    "entry_uuid": ("entryUUID", "entryUUID"),
    "outbox_rows": ("Lignes de la file", "Outbox rows"),
    "history": ("Historique", "History"),
    "problems": ("Problèmes", "Problems"),
    "mssante_messages": ("Messages MSSanté", "MSSanté messages"),
    "recipient": ("Destinataire", "Recipient"),
    "smtp_answer": ("Réponse du serveur", "Server answer"),
    "kind": ("Type", "Kind"),
    "attempts": ("Essais", "Attempts"),
    "dmp_answer": ("Réponse du DMP", "DMP answer"),
    "actions": ("Actions", "Actions"),
    "publish": ("Publier au DMP", "Publish to the DMP"),
    "unpublish": ("Retirer du DMP", "Withdraw from the DMP"),
    "unpublish_reason": ("Motif du retrait", "Reason for the withdrawal"),
    "share": ("Créer un lien de partage", "Create a share link"),
    "share_days": ("Validité (jours)", "Validity (days)"),
    "revoke": ("Révoquer", "Revoke"),
    "retry": ("Renvoyer", "Retry"),
    "viewer_only": ("Votre rôle (viewer) permet de consulter, pas d'agir.",
                    "Your role (viewer) lets you look, not act."),
    # confirmation and results
    "confirm_title": ("Confirmer : {action}", "Confirm: {action}"),
    "confirm_text": ("Confirmez-vous cette action ? Elle est enregistrée dans le journal d'audit.",
                     "Do you confirm this action? It is recorded in the audit trail."),
    "confirm": ("Confirmer", "Confirm"),
    "cancel": ("Annuler", "Cancel"),
    "done_title": ("Action effectuée", "Done"),
    "failed_title": ("Action non effectuée", "Not done"),
    "queued": ("Ligne #{id} mise en file : {kind} du KOS {kos}.",
               "Row #{id} queued: {kind} of KOS {kos}."),
    "nothing_queued": ("Rien n'a été mis en file : {reason}", "Nothing queued: {reason}"),
    "retried": ("Ligne #{id} : renvoi demandé, elle part maintenant.",
                "Row #{id}: retry requested, it is due now."),
    "revoked_done": ("Lien {id} révoqué : il ne fonctionne plus.",
                "Link {id} revoked: it no longer works."),
    "no_link": ("Lien de partage inconnu : {id}", "Unknown share link: {id}"),
    "share_made": ("Lien de partage créé (montré une seule fois)",
                   "Share link created (shown once)"),
    "share_url": ("Adresse à remettre au patient", "Address to give the patient"),
    "qr_alt": ("QR code du lien de partage", "QR code of the share link"),
    "handout": ("Imprimer la fiche patient", "Print the patient handout"),
    "expires": ("Expire le", "Expires"),
    "back_study": ("Retour à l'examen", "Back to the study"),
    "back": ("Retour", "Back"),
    # outbox
    "filter": ("Filtrer", "Filter"),
    "all": ("tous", "all"),
    "no_rows": ("Aucune ligne.", "No rows."),
    "next_attempt": ("Terminé le / prochain essai", "Finished / next attempt"),
    "last_error": ("Dernière erreur", "Last error"),
    # audit
    "subject": ("Sujet (SubjectNameID, utilisateur, lien)", "Subject (SubjectNameID, user, link)"),
    "study_uid": ("UID de l'examen", "Study UID"),
    "action": ("Action", "Action"),
    "outcome": ("Résultat", "Outcome"),
    "since": ("Depuis le", "Since"),
    "until": ("Jusqu'au (inclus)", "Until (included)"),
    "allowed": ("autorisé", "allowed"),
    "denied": ("refusé", "denied"),
    "reason": ("Motif", "Reason"),
    "client": ("Client", "Client"),
    "downloads": ("Téléchargements", "Downloads"),
    "download_fhir": ("AuditEvents FHIR (JSON)", "FHIR AuditEvents (JSON)"),
    "download_kpi": ("Fichier KPI DRIM-M (CSV)", "DRIM-M KPI file (CSV)"),
    "events": ("{n} événement(s), les plus récents d'abord", "{n} event(s), newest first"),
    "bad_date": ("Date invalide : {value}", "Invalid date: {value}"),
    # shares
    "created": ("Créé", "Created"),
    "created_by": ("Par", "By"),
    "status": ("Statut", "Status"),
    "active": ("actif", "active"),
    "expired": ("expiré", "expired"),
    "locked": ("bloqué", "locked"),
    "revoked": ("révoqué", "revoked"),
    "no_links": ("Aucun lien de partage.", "No share link."),
    # consumer
    "retrievals": ("Récupérations récentes", "Recent retrievals"),
    "exports": ("Exports vers le PACS", "Exports to the PACS"),
    "size": ("Taille", "Size"),
    "consumer_off": ("Le rôle consommateur n'est pas actif.", "The consumer role is off."),
    "retrieving": ("en cours", "retrieving"),
    "complete": ("complet", "complete"),
    "partial": ("partiel", "partial"),
    "failed": ("échec", "failed"),
    # refusals
    "forbidden_title": ("Accès refusé", "Access denied"),
    "forbidden_text": ("La console est réservée au personnel du centre (rôles viewer ou admin). "
                       "Votre compte n'a pas ces rôles.",
                       "The console is for the centre's staff (roles viewer or admin). "
                       "Your account has neither."),
    "admin_only": ("Cette action est réservée au rôle admin.",
                   "This action needs the admin role."),
    "csrf_title": ("Demande refusée", "Request refused"),
    "csrf_text": ("Cette demande ne vient pas de la console (jeton anti-CSRF absent ou faux). "
                  "Rechargez la page et recommencez.",
                  "This request did not come from the console (anti-CSRF token missing or "
                  "wrong). Reload the page and try again."),
    "not_found": ("Introuvable", "Not found"),
}


def language(request: Request) -> str:
    asked = request.query_params.get("lang", "")
    if asked in LANGUAGES:
        return asked
    kept = request.cookies.get(COOKIE, "")
    if kept in LANGUAGES:
        return kept
    for part in request.headers.get("accept-language", "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return "fr"


class Words:
    """``t("key", name=value)`` in one language; an unknown key is shown as itself."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in LANGUAGES else "fr"
        self._i = LANGUAGES.index(self.lang)

    def __call__(self, key: str, **values: object) -> str:
        pair = MESSAGES.get(key)
        text = pair[self._i] if pair else key
        return text.format(**values) if values else text
