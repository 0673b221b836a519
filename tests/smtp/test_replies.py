"""Reply formatting: enhanced codes, no CR/LF injection from backend or rule text."""

from __future__ import annotations

from gateway.smtp.replies import format_reply, has_enhanced_code, translate


def test_backend_text_cannot_inject_lines():
    reply = format_reply(550, "5.1.1 no\r\n250 2.0.0 fake ok\x00")
    assert reply == "550-5.1.1 no\r\n550 250 2.0.0 fake ok"


def test_missing_enhanced_code_is_added_by_class():
    assert format_reply(451, "try later") == "451 4.0.0 try later"
    assert format_reply(550, "") == "550 5.0.0"
    assert format_reply(250, "2.0.0 fine") == "250 2.0.0 fine"


def test_stock_aiosmtpd_replies_are_translated():
    assert translate("552 Error: Too much mail data").startswith("552 5.3.4")
    assert translate('500 Error: command "FOO" not recognized') == (
        '500 5.5.2 command "FOO" not recognized'
    )
    assert translate("250 HELP") == "250 HELP"
    assert translate("220 mx Mailmoat ESMTP") == "220 mx Mailmoat ESMTP"
    assert translate("354 End data with <CR><LF>.<CR><LF>").startswith("354 ")
    assert translate("451 4.4.1 kept") == "451 4.4.1 kept"


def test_has_enhanced_code():
    assert has_enhanced_code("550 5.7.1 no")
    assert not has_enhanced_code("550 no")
