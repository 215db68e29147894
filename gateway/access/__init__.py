"""Access: who may see what, and the trail of who saw it (R10, R15, R22).

Owns the access policy (:mod:`.policy`: R10, pure decisions over the index's manifests), who
is asking (:mod:`.principal`), server-side sessions (:mod:`.sessions`), patient share links
and their handout (:mod:`.share_links`, :mod:`.handout`), the audit trail and its exports
(:mod:`.audit`, :mod:`.audit_export`).

May import: the index, the domain. Never a face: :mod:`dicomweb` builds a
:class:`~gateway.access.principal.Principal` and asks the policy.
"""
