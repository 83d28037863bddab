"""The text of an email as a person reads it: HTML turned into text, and a reply split
into what was newly written, the quoted earlier messages and the signature.

Only the standard library: :class:`html.parser.HTMLParser` reads the HTML (entities
decoded, scripts and styles dropped, block elements on lines of their own, list items
as ``- item``, block quotes as ``> `` lines so that the split below finds them).

>>> split_reply("Thanks!\\n\\n-- \\nAna\\n\\nOn Mon, Bo wrote:\\n> the invoice")
Reply(body='Thanks!', quoted='On Mon, Bo wrote:\\n> the invoice', signature='Ana')
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import NamedTuple

_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "div", "dl", "dt", "dd", "fieldset",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
    "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
})
_SKIPPED = frozenset({"script", "style", "head", "title", "template", "noscript"})


class _TextParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._line: list[str] = []
        self._skipping = 0
        self._quote_depth = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skipping += 1
        elif tag == "br":
            self._end_line(keep_empty=True)
        elif tag in ("td", "th") and self._line:
            self._line.append(" ")  # cells of a row side by side
        elif tag in _BLOCKS:
            self._end_line()
            if tag == "blockquote":
                self._quote_depth += 1
            elif tag == "li":
                self._line.append("- ")
            elif tag == "pre":
                self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCKS:
            self._end_line()
            if tag == "blockquote":
                self._quote_depth = max(0, self._quote_depth - 1)
            elif tag == "pre":
                self._pre = max(0, self._pre - 1)
            elif tag in ("p", "div", "table", "ul", "ol") and self.lines and self.lines[-1]:
                self.lines.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._end_line(keep_empty=True)
        elif tag == "hr":
            self._end_line()

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        if self._pre:
            parts = data.split("\n")
            for part in parts[:-1]:
                self._line.append(part)
                self._end_line()
            self._line.append(parts[-1])
            return
        self._line.append(re.sub(r"\s+", " ", data))

    def _end_line(self, *, keep_empty: bool = False) -> None:
        """End the line being written; an empty one only for ``<br>``, and never two."""
        text = "".join(self._line)
        self._line = []
        text = text.strip() if not self._pre else text.rstrip()
        if not text and (not keep_empty or not self.lines or not self.lines[-1]):
            return
        prefix = "> " * self._quote_depth
        self.lines.append(prefix + text if text else "")

    def text(self) -> str:
        self._end_line()
        return "\n".join(self.lines).strip("\n")


def html_to_text(html: str) -> str:
    """The text of an HTML body, as its reader sees it.

    >>> html_to_text("<p>Hello&nbsp;<b>Ana</b></p><ul><li>one</li><li>two</li></ul>")
    'Hello Ana\\n\\n- one\\n- two'
    """
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    return parser.text()


class Reply(NamedTuple):
    """A message's text in three parts; each is ``""`` when the message has none."""

    body: str
    """What the sender newly wrote."""
    quoted: str
    """The earlier messages the reply quotes, from the attribution line (``On … wrote:``)
    or the first quoted line on."""
    signature: str
    """After the ``-- `` delimiter (RFC 3676), or a ``Sent from my …`` line."""


_ATTRIBUTION = re.compile(
    r"^\s*(on\b.{0,300}\bwrote:|le\b.{0,300}\ba écrit\s*:|am\b.{0,300}\bschrieb\b.{0,100}:"
    r"|el\b.{0,300}\bescribió:)\s*$",
    re.IGNORECASE,
)
_FORWARD_OR_ORIGINAL = re.compile(
    r"^\s*(-{2,}\s*(original message|forwarded message)\s*-{2,}|_{10,})\s*$", re.IGNORECASE,
)
_OUTLOOK_HEADER = re.compile(r"^\s*\**from:\**\s", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(r"^\s*\**(sent|date):\**\s", re.IGNORECASE)
_SIGNATURE = re.compile(r"^(-- ?|—)$")
_MOBILE = re.compile(r"^\s*sent from my \w+", re.IGNORECASE)


def split_reply(text: str) -> Reply:
    """Split ``text`` into the new words, the quoted earlier messages and the signature.

    Quotes start at an attribution line (``On … wrote:``, and its French, German and
    Spanish forms, also when the mail client wrapped it over two lines), an Outlook
    ``From:`` / ``Sent:`` header block or ``-----Original Message-----``, or the first
    ``>`` line after which only quoted or blank lines follow. The signature starts at
    a line ``-- `` (or ``--``) before the quotes, or a ``Sent from my …`` line.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    start = _quote_start(lines)
    head, quoted = lines[:start], lines[start:]
    signature: list[str] = []
    for i, line in enumerate(head):
        if _SIGNATURE.match(line.rstrip()) or _MOBILE.match(line):
            head, signature = head[:i], head[i + (1 if _SIGNATURE.match(line.rstrip()) else 0):]
            break
    return Reply(_trimmed(head), _trimmed(quoted), _trimmed(signature))


def _quote_start(lines: list[str]) -> int:
    for i, line in enumerate(lines):
        joined = line + " " + lines[i + 1] if i + 1 < len(lines) else line
        if _ATTRIBUTION.match(line) or (not line.startswith(">") and _ATTRIBUTION.match(joined)):
            return i
        if _FORWARD_OR_ORIGINAL.match(line):
            return i
        if (_OUTLOOK_HEADER.match(line) and i + 1 < len(lines)
                and _OUTLOOK_NEXT.match(lines[i + 1])):
            return i
        if line.startswith(">") and all(not rest.strip() or rest.startswith(">")
                                        for rest in lines[i:]):
            return i
    return len(lines)


def _trimmed(lines: list[str]) -> str:
    return "\n".join(line.rstrip() for line in lines).strip("\n")
