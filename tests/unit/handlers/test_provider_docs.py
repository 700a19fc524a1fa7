"""docs/providers/: the committed pages are exactly what tests/fixtures/provider_docs.py generates."""

from __future__ import annotations

from handlers.registry import HANDLERS
from tests.fixtures.provider_docs import DOCS, SAMPLES, main, pages


def test_every_registered_kind_has_a_documented_sample() -> None:
    """Each source kind in the registry has at least one sample body on its page."""
    assert sorted(k for k in HANDLERS if not SAMPLES.get(k)) == []


def test_committed_pages_equal_the_generated_ones() -> None:
    """A page that differs from what the script writes (a handler's output changed, a fixture changed) fails
    here: run `python -m tests.fixtures.provider_docs` and commit the pages."""
    expected = pages()
    committed = {p.name: p.read_text(encoding="utf-8") for p in DOCS.glob("*.md")}
    assert sorted(committed) == sorted(expected)
    stale = [name for name, text in expected.items() if committed[name] != text]
    assert stale == [], f"run `python -m tests.fixtures.provider_docs`: {stale} differ"
    assert main(["--check"]) == 0


def test_email_pages_show_the_raw_message_and_its_attachments() -> None:
    """Every email kind's page shows the raw thread normalised, the attached message listed as message/rfc822."""
    for kind, cls in HANDLERS.items():
        if cls.channel == "email":
            text = (DOCS / f"{kind}.md").read_text(encoding="utf-8")
            assert '"name": "forwarded.eml"' in text and '"content_type": "message/rfc822"' in text, kind
