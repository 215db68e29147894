"""The centre's PACS as a DIMSE peer: C-FIND and C-MOVE (R2)."""
