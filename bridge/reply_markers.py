"""What the lines that frame a reply look like, in the languages and clients customers write from: the
attribution before a quote ("On … wrote:"), separators, header blocks, forwarded-message markers and the
footers mail apps add ("Sent from my iPhone").

Each test looks at one line, or at most three short lines joined, and at a bounded number of characters,
so classifying a whole body costs time in proportion to its length whatever the body holds."""

from __future__ import annotations

import re

# Chinese and Japanese clients end an attribution or a header key with a full-width colon.
COLONS = (":", "\uff1a")
# An attribution longer than this is prose; mail clients write a date, a name and an address.
ATTRIBUTION_MAX = 400
# Separators, forwarded-message markers and footers are short lines; longer ones are prose.
_MARKER_MAX = 120

# -- attributions -----------------------------------------------------------------------------------------

# Verbs that end an attribution: "On …, Asha <a@b> wrote:", "Le … a écrit :", "… napisał(a):".
_VERBS_AT_END = (
    "wrote", "sent", "writes", "schrieb", "schreibt", "a écrit", "escribió", "escreveu", "schreef", "skrev",
    "написал", "написала", "написал(а)", "пишет", "đã viết", "napisał", "napisała", "napisał(a)",
    "ha scritto", "scrisse", "napsal", "napsala", "napsal(a)", "kirjoitti", "írta", "yazdı", "geschreven",
)
# Chinese and Korean write the verb straight after the date or name: "…10:15写道：", "…>님이 작성:".
_CJK_VERBS_AT_END = ("写道", "寫道", "작성")
# Verbs that come before the name or the date: "Am … schrieb Asha <a@b>:", "Den … skrev Asha <a@b>:",
# "Wiadomość napisana przez Asha <a@b> w dniu …:", "Asha <a@b> ezt írta (időpont: …):".
_VERB_BEFORE_NAME = re.compile(r"(?:^|\s)(?:schrieb|schreef|skrev|kirjoitti|napisana|írta)\s")
# Words an attribution opens with: "On", "Am", "Le", "El", "Em", "Op", "Den", "Il giorno", "W dniu", "Vào".
_OPENER = re.compile(r"(?:on|am|le|el|em|op|den|il|dnia|dne|på|vào|w dniu|no dia|el día)\s")
_TIME = re.compile(r"\d{1,2}[:.]\d{2}")
_DIGIT = re.compile(r"\d")
_YEAR = re.compile(r"(?:19|20)\d\d")
_ADDRESS = re.compile(r"[(<\[]?[^\s@<>()\[\]]+@[^\s@<>()\[\]]+[)>\]]?")

WEAK, STRONG = 1, 2


def opens_attribution(line: str) -> bool:
    """Whether a line could be the first of an attribution wrapped over several lines: it opens like one
    and carries the date ("On Mon, 3 Jun 2024 at 10:15, Acme Support <")."""
    text = line.lstrip()
    if len(text) > ATTRIBUTION_MAX:
        return False
    opens = text[:1].isdigit() or text.startswith("-") or bool(_OPENER.match(text[:12].lower()))
    return opens and bool(_DIGIT.search(text))


def attribution(candidate: str, *, wrapped: bool) -> int:
    """How surely `candidate` (one line, or up to three joined) introduces quoted history: STRONG when it
    is framed in dashes or carries a date with an opener or an address; WEAK for "Asha wrote:" alone
    (history only when a quote follows); 0 when it is not an attribution. `wrapped` lines must open like one."""
    text = candidate.strip()
    dashed = text.startswith("-")
    if dashed:
        text = text.lstrip("-").lstrip()
    if dashed and text.endswith("-"):  # Android: "---- Asha wrote ----"
        text = text.rstrip("-").rstrip()
    elif text.endswith(COLONS):
        text = text[:-1].rstrip()
    else:
        return 0
    low = text.lower()
    has_address = "@" in text
    verb = _verb_at_end(low)
    has_verb = (verb is not None and (verb != "sent" or has_address)) or bool(_VERB_BEFORE_NAME.search(low))
    if not (has_verb or has_address):
        return 0
    opens = bool(_OPENER.match(low)) or low[:1].isdigit()
    if wrapped and not (opens or dashed):
        return 0
    dated = bool(_DIGIT.search(text))
    if not has_verb:  # date first, no verb: "2014-10-17 11:28 GMT+03:00 Asha <a@b>:", "пн, 3 июн. 2024 г. …"
        first = low.split(None, 1)[0]
        leads = low[:1].isdigit() or (first.endswith(",") and len(first) <= 5)
        return STRONG if leads and _YEAR.search(text) and _TIME.search(text) and _ends_with_address(text) else 0
    if dashed or (dated and (opens or has_address)):
        return STRONG
    return WEAK


def _verb_at_end(low: str) -> str | None:
    if low.endswith(_CJK_VERBS_AT_END):
        return "wrote"
    if not low.endswith(_VERBS_AT_END):
        return None
    for verb in _VERBS_AT_END:
        if low.endswith(verb):
            before = low[:-len(verb)]
            return verb if not before or not before[-1].isalnum() else None
    return None


def _ends_with_address(text: str) -> bool:
    last = text.rsplit(None, 1)[-1] if text.strip() else ""
    return bool(_ADDRESS.fullmatch(last))


# -- separators and header blocks -------------------------------------------------------------------------

_SEPARATOR = re.compile(
    r"-{2,}\s*(?:original message|reply message|ursprüngliche nachricht|originalnachricht|message d'origine|"
    r"mensaje original|mensagem original|messaggio originale|oorspronkelijk bericht|opprinnelig melding|"
    r"oprindelig meddelelse|ursprungligt meddelande|исходное сообщение|исходное письмо|wiadomość oryginalna|"
    r"původní zpráva|alkuperäinen viesti|eredeti üzenet|tin nhắn gốc)\s*-{2,}",
)
_RULE = re.compile(r"_{10,}|-{20,}")
_HEADER_KEY = re.compile(r"[ \t*]{0,4}([^\W\d_]+(?:[ -][^\W\d_]+)?)[ \t\u00a0*]{0,4}[:：]")
_FROM_KEYS = frozenset({
    "from", "de", "von", "van", "da", "från", "fra", "от", "od", "lähettäjä", "feladó", "kimden", "từ",
    "发件人", "寄件者", "差出人",
})
_DATE_KEYS = frozenset({
    "sent", "date", "envoyé", "gesendet", "datum", "enviado", "enviada", "enviado el", "enviado em", "enviada em",
    "fecha", "verzonden", "sendt", "dato", "skickat", "отправлено", "дата", "data", "wysłano", "inviato",
    "odesláno", "lähetetty", "đã gửi", "ngày gửi", "ngày", "gönderildi", "tarih", "elküldve", "发送时间", "日期",
    "送信日時",
})
_SUBJECT_KEYS = frozenset({
    "subject", "objet", "betreff", "asunto", "assunto", "onderwerp", "emne", "ämne", "тема", "temat", "oggetto",
    "předmět", "aihe", "chủ đề", "konu", "tárgy", "主题", "件名",
})
_OTHER_KEYS = frozenset({
    "to", "cc", "bcc", "reply-to", "à", "an", "para", "aan", "til", "kopi", "till", "kopia", "кому", "копия",
    "do", "dw", "a", "komu", "kopie", "vastaanottaja", "đến", "kime", "címzett", "收件人", "抄送", "宛先",
})


def separator(line: str) -> bool:
    """`-----Original Message-----` and its translations, or a help desk's "reply above this line"."""
    text = line.strip()
    if len(text) > _MARKER_MAX:
        return False
    if text.startswith("-"):
        return bool(_SEPARATOR.fullmatch(text.lower()))
    return "above this line" in text and "reply above this line" in text.lower()


def rule(line: str) -> bool:
    """Outlook's line of underscores above a header block."""
    text = line.strip()
    return text[:1] in ("_", "-") and len(text) <= _MARKER_MAX and bool(_RULE.fullmatch(text))


def header_key(line: str) -> str | None:
    """"from", "date", "subject" or "other" for a `Key: value` line of a quoted message's header block, else
    None."""
    head = line[:40]
    m = _HEADER_KEY.match(head) if ":" in head or COLONS[1] in head else None
    if not m:
        return None
    key = m.group(1).lower()
    if key in _FROM_KEYS:
        return "from"
    if key in _DATE_KEYS:
        return "date"
    if key in _SUBJECT_KEYS:
        return "subject"
    return "other" if key in _OTHER_KEYS else None


# -- forwarded messages ------------------------------------------------------------------------------------

_FORWARD = re.compile(
    r"-{2,}\s*(?:forwarded message|weitergeleitete nachricht|message transféré|mensaje reenviado|"
    r"mensagem encaminhada|doorgestuurd bericht|videresendt (?:melding|meddelelse|besked)|"
    r"vidarebefordrat meddelande|пересылаемое сообщение|przekazana wiadomość|wiadomość przekazana dalej|"
    r"messaggio inoltrato|přeposlaná zpráva|välitetty viesti|tin nhắn đã chuyển tiếp)\s*-{2,}"
    r"|(?:begin forwarded message|anfang der weitergeleiteten nachricht|début du message réexpédié|"
    r"inicio del mensaje reenviado|início da mensagem reencaminhada|begin doorgestuurd bericht|"
    r"videresendt melding|videresendt meddelelse|vidarebefordrat mejl|начало переадресованного сообщения)\s*:"
    r"|-{2,}\s*forwarded by .*",
)


_FORWARD_MIN = len("--forwarded by x")  # no marker above is shorter


def forward(line: str) -> bool:
    """A marker above a forwarded message: its content is what the customer sends, not history."""
    text = line.strip()
    if not _FORWARD_MIN <= len(text) <= _MARKER_MAX or not (text.startswith("-") or text.endswith(COLONS)):
        return False
    return bool(_FORWARD.fullmatch(text.lower()))


# "FW:", "Fwd:", German "WG:", French "TR:", Spanish "RV:", Portuguese "ENC:", Dutch "Doorst:",
# Scandinavian "VS:"/"VB:", Polish "PD:", Russian "Пересл:". Only the first prefix counts: "RE: FW:" is a reply.
_FORWARD_SUBJECT = re.compile(r"\s*(?:fwd?|wg|tr|rv|enc|doorst|vs|vb|pd|пересл)\s*:")


def forward_subject(subject: str | None) -> bool:
    """Whether a subject line says its message is a forward."""
    return isinstance(subject, str) and bool(_FORWARD_SUBJECT.match(subject[:20].lower()))


# -- sign-offs ---------------------------------------------------------------------------------------------

_FOOTER = re.compile(
    r"(?:sent from my|sent from (?:mail|outlook|yahoo mail|gmail|aol|proton ?mail|samsung|windows mail|"
    r"the all new aol app)|get outlook for|download outlook for|envoyé de mon|envoyé depuis mon|"
    r"envoyé depuis (?:outlook|yahoo mail)|obtenir outlook pour|enviado desde mi|enviado desde (?:outlook|yahoo)|"
    r"obtener outlook para|enviado do meu|enviado de meu|enviado do (?:outlook|yahoo)|von meinem|"
    r"gesendet von (?:meinem|outlook|mail|yahoo)|gesendet mit|verstuurd vanaf mijn|verzonden vanaf mijn|"
    r"verzonden met|sendt fra min|sendt fra (?:outlook|mail|yahoo)|hent outlook til|hent outlook for|"
    r"skickat från min|skickat från (?:outlook|e-post|yahoo)|skaffa outlook för|отправлено с|отправлено из|"
    r"wysłano z|inviato da(?:l mio)?|gửi từ|odesláno z|lähetetty)\b.{0,60}",
)


def footer(line: str) -> bool:
    """A line a mail app appends: "Sent from my iPhone", "Get Outlook for Android", "Von meinem iPhone
    gesendet", "Отправлено с iPhone" …"""
    text = line.strip()
    return len(text) <= _MARKER_MAX and bool(_FOOTER.fullmatch(text.lower()))


def signature_delimiter(line: str) -> bool:
    """The `-- ` line above a signature (its trailing space is often lost on the way)."""
    return line.strip() == "--"
