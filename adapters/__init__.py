"""The outside world: DMP, PSC, INSi, PACS/Orthanc, MSSante, whitelist (coming in later issues)."""
