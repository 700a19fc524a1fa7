"""bridge/reply_markers.py: how surely one line (or a wrapped few) frames quoted history."""

from __future__ import annotations

import pytest

from bridge.reply_markers import STRONG, WEAK, attribution, footer, forward, header_key, separator


@pytest.mark.parametrize("line", [
    "On Mon, 3 Jun 2024 at 10:15, Acme Support <support@acme.test> wrote:",
    "Am Mo., 3. Juni 2024 um 10:15 Uhr schrieb Acme Support <support@acme.test>:",
    "Le lun. 3 juin 2024 à 10:15, Acme Support <support@acme.test> a écrit :",
    "Op ma 3 jun. 2024 om 10:15 schreef Acme Support <support@acme.test>:",
    "man. 3. jun. 2024 kl. 10:15 skrev Acme Support <support@acme.test>:",
    "3 июня 2024 г., в 10:15, Acme Support <support@acme.test> написал(а):",
    "pon., 3 cze 2024 o 10:15 Acme Support <support@acme.test> napisał(a):",
    "Vào Th 2, 3 thg 6, 2024 vào lúc 10:15 Acme Support <support@acme.test> đã viết:",
    "On 03/06/2024 10:15, Acme Support wrote:",
    "--- On Mon, 6/3/24, Acme Support <support@acme.test> wrote:",
    "---- Acme Support wrote ----",
    "2014-10-17 11:28 GMT+03:00 Acme Support <support@acme.test>:",
    "пн, 3 июн. 2024 г. в 10:15, Acme Support <support@acme.test>:",
    "On Mon, 3 Jun 2024 at 10:15, Acme Support <support@acme.test> sent:",
])
def test_dated_attributions_are_strong(line: str) -> None:
    """An attribution with a date and an opener or an address, or in a dashed frame, starts history on its own."""
    assert attribution(line, wrapped=False) == STRONG


@pytest.mark.parametrize("line", ["Acme Support wrote:", "Acme Support <support@acme.test> wrote:",
                                  "Here is what I wrote:", "On Monday I wrote:"])
def test_undated_attributions_are_weak(line: str) -> None:
    """"X wrote:" without a date is history only if a quote follows it."""
    assert attribution(line, wrapped=False) == WEAK


@pytest.mark.parametrize("line", [
    "On your remote host you can run:",
    "Meeting at 10:30 with Dana <dana@example.com>:",
    "Here is what I sent:",
    "The invoice (2024) says:",
    "On Monday the router died.",
])
def test_prose_is_not_an_attribution(line: str) -> None:
    """A sentence ending in a colon, even with a time or an address in it, is not an attribution."""
    assert attribution(line, wrapped=False) == 0


def test_a_wrapped_candidate_must_open_like_an_attribution() -> None:
    """Lines joined from a wrap count only when the first opens with a date or an opener."""
    assert attribution("Acme Support <support@acme.test> wrote:", wrapped=True) == 0
    assert attribution("On Mon, 3 Jun 2024 at 10:15, Acme Support <support@acme.test> wrote:", wrapped=True) == STRONG


@pytest.mark.parametrize(("line", "key"), [
    ("From: Acme <a@acme.test>", "from"), ("*Sent:* Monday", "date"), ("De\u00a0: Acme", "from"),
    ("Betreff: Rechnung", "subject"), ("Кому: Ольга", "other"), ("Note: bring the receipt", None),
    ("no colon here at all", None),
])
def test_header_keys_in_many_languages(line: str, key: str | None) -> None:
    """Header names are recognised in many languages, bold or with a no-break space; other keys are not."""
    assert header_key(line) == key


@pytest.mark.parametrize(("line", "expected"), [
    ("Sent from my iPhone", True), ("Get Outlook for Android<https://aka.ms/ghei36>", True),
    ("Von meinem iPhone gesendet", True), ("Отправлено с iPhone", True), ("Sendt fra min iPhone", True),
    ("Sent from my iPad the photos never upload, from the laptop they do and I do not know why", False),
    ("Sent the form yesterday", False),
])
def test_footers(line: str, expected: bool) -> None:
    """A mail app's footer line is recognised in several languages; a sentence that starts alike is not."""
    assert footer(line) is expected


def test_forward_and_separator_markers() -> None:
    """Forwarded-message markers and reply separators are told apart, in several languages."""
    assert forward("---------- Forwarded message ---------")
    assert forward("Begin forwarded message:")
    assert forward("-------- Weitergeleitete Nachricht --------")
    assert not forward("-----Original Message-----")
    assert separator("-----Original Message-----")
    assert separator("-----Исходное сообщение-----")
    assert separator("##- Please type your reply above this line -##")
    assert not separator("---------- Forwarded message ---------")
