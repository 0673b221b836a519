"""The rule language's schema: what a rule file may say (exported as JSON Schema for editors)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.types import Action

NAME_PATTERN = r"^[A-Z][A-Z0-9_]{2,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(Strict):
    """How to compare a text: exactly one of the keys (case-insensitive unless regex says)."""

    equals: str | None = None
    contains: str | None = None
    starts_with: str | None = None
    ends_with: str | None = None
    regex: str | None = None
    any_of: list[str] | None = Field(default=None, alias="in")
    in_list: str | None = None
    lookalike_of: str | None = Field(
        default=None, description="a named list of domains: true for near-misses, not for equals"
    )

    @model_validator(mode="after")
    def _one_key(self) -> Match:
        given = [k for k, v in self.__dict__.items() if v is not None]
        if len(given) != 1:
            keys = "equals, contains, starts_with, ends_with, regex, in, in_list, lookalike_of"
            raise ValueError(f"a match needs exactly one of {keys} (got {given or 'none'})")
        return self


MatchSpec = str | Match


class Number(Strict):
    """Numeric comparison: any of gt, ge, lt, le, eq."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    eq: float | None = None

    @model_validator(mode="after")
    def _some(self) -> Number:
        if all(v is None for v in self.__dict__.values()):
            raise ValueError("give at least one of gt, ge, lt, le, eq")
        return self


class HeaderTest(Strict):
    """A header field: exists, or its (decoded) values match, or how often it occurs."""

    name: str
    exists: bool | None = None
    match: MatchSpec | None = None
    count: Number | None = None


class SymbolTest(Strict):
    """A symbol another check (or an earlier rule) emitted, optionally with detail values."""

    name: str
    details: dict[str, MatchSpec] = Field(default_factory=dict)


class IpTest(Strict):
    """The client IP in networks (CIDR) or a named list of them."""

    cidr: list[str] | None = None
    in_list: str | None = None


LEAVES: dict[str, str] = {
    "header": "a header field (HeaderTest)",
    "from_address": "the From address",
    "from_name": "the From display name",
    "from_domain": "the From domain",
    "sender": "the envelope sender (MAIL FROM)",
    "verified_sender": "the envelope sender, only when SPF passed for its domain",
    "verified_from": "the From address, only with an aligned DKIM pass or a DMARC pass",
    "user_allowed": "every recipient allowed the proven sender from their quarantine (true/false)",
    "sender_domain": "the envelope sender's domain",
    "recipient": "any envelope recipient",
    "recipient_domain": "any envelope recipient's domain",
    "client_ip": "the client IP (IpTest)",
    "helo": "the HELO/EHLO name",
    "tls": "whether the client used STARTTLS (true/false)",
    "size": "the message size in bytes (Number)",
    "subject": "the decoded Subject",
    "body": "the decoded text of the body (text parts, HTML as text)",
    "url": "any URL in the body",
    "url_domain": "any URL's domain",
    "attachment_name": "any attachment's file name",
    "attachment_type": "any attachment's declared content type",
    "attachment_true_type": "any attachment's true type (content check)",
    "archive_member": "any archive member path (content check)",
    "symbol": "a symbol found by a check (name or SymbolTest)",
    "spam_probability": "the model's spam probability (Number)",
}


class Condition(Strict):
    """One of: all, any, not, or one leaf test."""

    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(default=None, alias="not")
    header: HeaderTest | None = None
    from_address: MatchSpec | None = None
    from_name: MatchSpec | None = None
    from_domain: MatchSpec | None = None
    sender: MatchSpec | None = None
    verified_sender: MatchSpec | None = None
    verified_from: MatchSpec | None = None
    user_allowed: bool | None = None
    sender_domain: MatchSpec | None = None
    recipient: MatchSpec | None = None
    recipient_domain: MatchSpec | None = None
    client_ip: IpTest | None = None
    helo: MatchSpec | None = None
    tls: bool | None = None
    size: Number | None = None
    subject: MatchSpec | None = None
    body: MatchSpec | None = None
    url: MatchSpec | None = None
    url_domain: MatchSpec | None = None
    attachment_name: MatchSpec | None = None
    attachment_type: MatchSpec | None = None
    attachment_true_type: MatchSpec | None = None
    archive_member: MatchSpec | None = None
    symbol: str | SymbolTest | None = None
    spam_probability: Number | None = None

    @model_validator(mode="after")
    def _one_key(self) -> Condition:
        given = [k for k, v in self.__dict__.items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"a condition has exactly one key: all, any, not, or a test "
                f"({', '.join(LEAVES)}); got {[g.rstrip('_') for g in given] or 'none'}"
            )
        return self

    @property
    def kind(self) -> str:
        """The one key this condition uses ('not' for not_)."""
        return next(k for k, v in self.__dict__.items() if v is not None).rstrip("_")

    @property
    def value(self) -> Any:
        """The value under that key."""
        return next(v for v in self.__dict__.values() if v is not None)


class Rule(Strict):
    """One rule: who owns it, when it fires, and what it does."""

    name: str = Field(pattern=NAME_PATTERN, description="UPPER_SNAKE, unique across files")
    description: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    mode: Literal["active", "monitor"] = Field(
        default="monitor", description="monitor: evaluated and logged, never acts"
    )
    domains: list[str] = Field(
        default_factory=list, description="only for mail to these recipient domains (empty: all)"
    )
    when: Condition
    score: float | None = None
    action: Action | None = Field(
        default=None, description="force this action over the thresholds (strictest force wins)"
    )
    least: Action | None = Field(
        default=None, description="raise the action to at least this; no allow rule lowers it"
    )
    reply: str | None = Field(default=None, max_length=200)

    @field_validator("reply")
    @classmethod
    def _no_injection(cls, value: str | None) -> str | None:
        if value is not None and any(c in value for c in "\r\n\x00"):
            raise ValueError("reply text must not contain CR, LF or NUL (SMTP reply injection)")
        return value

    @model_validator(mode="after")
    def _effect(self) -> Rule:
        if self.score is None and self.action is None and self.least is None:
            raise ValueError("a rule needs a score, an action, or both")
        if self.reply is not None and self.action is None and self.least is None:
            raise ValueError("reply only makes sense with an action")
        return self


class RuleFile(Strict):
    """A rules/*.yaml file."""

    rules: list[Rule]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a rule file (``mailmoat rules schema``)."""
    schema = RuleFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Mailmoat rule file"
    return schema
