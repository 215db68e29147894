"""The ANS whitelist ("liste blanche", R11): which Source DRIMboxes a consumer may call.

=============  ==========================================================================
source.py      fetch the list: a local file or an https URL
verify.py      XAdES-BASELINE-B (enveloped XMLDSig) signature, signer chain to the
               configured IGC-Santé anchors, signer CN/OU and validity
parse.py       the verified content → :class:`gateway.consumer.trust.Whitelist`
keeper.py      the last good list (memory and ``<data_dir>/whitelist/last-good.xml``),
               refresh, and the daily refresher thread of ``drimbox serve``
=============  ==========================================================================

``drimbox whitelist check`` fetches, verifies and prints a list. See docs/consumer.md.
"""

from adapters.whitelist.keeper import RefreshResult, WhitelistKeeper, WhitelistRefresher
from adapters.whitelist.source import WhitelistUnavailable, fetch
from adapters.whitelist.verify import WhitelistRefused, WhitelistVerifier

__all__ = ["RefreshResult", "WhitelistKeeper", "WhitelistRefresher", "WhitelistRefused",
           "WhitelistUnavailable", "WhitelistVerifier", "fetch"]
