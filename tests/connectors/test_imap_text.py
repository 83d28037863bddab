"""An email's text as a person reads it: HTML as text, and a reply split into its parts."""

from __future__ import annotations

from connectors.imap_text import Reply, html_to_text, split_reply


def test_html_keeps_paragraphs_lists_and_breaks_and_drops_scripts_and_styles() -> None:
    html = ("<html><head><title>t</title><style>p{}</style></head><body>"
            "<h1>Order&nbsp;&amp; refund</h1><p>Line one<br>line two</p>"
            "<script>alert(1)</script><ol><li>first</li><li>second</li></ol>"
            "<table><tr><td>a</td><td>b</td></tr></table></body></html>")
    assert html_to_text(html) == ("Order & refund\nLine one\nline two\n\n- first\n- second\n\n"
                                  "a b")


def test_an_html_block_quote_is_quoted_text() -> None:
    html = ("<div>Sounds good.</div><div class='gmail_quote'>On Tue, Bo wrote:"
            "<blockquote>Can we meet?<br>Friday?</blockquote></div>")
    text = html_to_text(html)
    assert split_reply(text) == Reply("Sounds good.", "On Tue, Bo wrote:\n> Can we meet?\n"
                                      "> Friday?", "")


def test_preformatted_html_keeps_its_lines() -> None:
    assert html_to_text("<pre>a  b\n  c</pre>") == "a  b\n  c"


def test_an_outlook_header_block_starts_the_quote() -> None:
    text = ("Approved.\n\nFrom: Ana Lopez <ana@acme.example>\nSent: Monday, 2 November 2026\n"
            "To: Support\nSubject: Refund\n\nPlease refund invoice 1042.")
    reply = split_reply(text)
    assert reply.body == "Approved."
    assert reply.quoted.startswith("From: Ana Lopez") and reply.quoted.endswith("1042.")


def test_original_message_separator_starts_the_quote() -> None:
    reply = split_reply("See below.\n-----Original Message-----\nFrom: x\nold text")
    assert (reply.body, reply.quoted) == ("See below.", "-----Original Message-----\n"
                                                        "From: x\nold text")


def test_an_attribution_wrapped_over_two_lines_is_found() -> None:
    text = ("Yes, Friday works.\n\nOn Mon, 2 Nov 2026 at 10:00, Bo Berg <bo@bigco.example>\n"
            "wrote:\n> Friday?")
    reply = split_reply(text)
    assert reply.body == "Yes, Friday works."
    assert reply.quoted.startswith("On Mon, 2 Nov 2026")


def test_a_mobile_signature_is_the_signature() -> None:
    assert split_reply("On my way.\n\nSent from my iPhone") == Reply("On my way.", "",
                                                                    "Sent from my iPhone")


def test_an_inline_quote_followed_by_new_text_stays_in_the_body() -> None:
    text = "> Can you refund?\nYes, done today.\n> And the fee?\nWaived."
    assert split_reply(text) == Reply(text, "", "")


def test_text_without_quotes_or_signature_is_all_body() -> None:
    assert split_reply("Just a note.\n") == Reply("Just a note.", "", "")
