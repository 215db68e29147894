"""The outside world: DMP, PSC, INSi, PACS/Orthanc, MSSante, the ANS whitelist."""
