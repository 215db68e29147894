"""Where the tests find the official DRIM-M samples: tests/data/drim-m-samples, a copy of the
files they read (PROVENANCE.md there; ``make samples`` refreshes it from ../shared)."""

from pathlib import Path

SAMPLES = Path(__file__).resolve().parent / "data" / "drim-m-samples"
