"""Where the copied fixtures live (tests/fixtures/, see tests/fixtures/dsocr/README.md)."""

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = FIXTURES / "models"
PAGES = ["doc_1500x1000", "doc_600x800", "doc_2000x659", "doc_700x2100", "doc_1280x1280", "doc_620x560"]


def fixture_dir(source: str, version: str, page: str) -> Path:
    """`source` is "llamacpp" or "hf"; `version` is "v1", "v2" or e.g. "v1-q8_0"."""
    return FIXTURES / "dsocr" / source / version / page
