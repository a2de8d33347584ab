"""PII masking (`pii`): e-mail addresses and public IPv4 addresses replaced by fixed strings.

The rules are those of datatrove's `PIIFormatter` (itself dolma's regex PII tagger), so that the
same text gives the same output (tests/test_curate_pii.py checks it document by document):

* e-mails: the common RFC 5322 pattern — a local part of atext runs joined by single dots, '@',
  then either dotted domain labels (letters, digits, inner hyphens; at least two labels, so
  `user@localhost` stays) or a bracketed literal. The match starts at a word boundary. No check
  beyond the pattern.
* IPs: four dotted decimal octets 0–255 (leading zeros allowed by the pattern, no word
  boundaries: `1.2.3.45678` matches `1.2.3.45`), kept unless Python's `ipaddress` parses the
  match (it refuses leading zeros) and, with `only_public_ips`, calls it global — private,
  loopback, link-local and reserved ranges stay. Version strings like `1.2.3.4` are global
  addresses and are masked, as datatrove masks them.
* e-mails are replaced first, then IPs in the result.

Replacement strings are not chosen at random, by datatrove nor here: each kind cycles through
its list in order. datatrove keeps the position in the formatter object, so it carries from one
document to the next of whatever stream that object sees — which depends on how documents are
spread over tasks. Here the cycle restarts with every document (first e-mail → first
replacement, second → second, …), so a document's output is a function of its text alone and
the same however the pipeline is sharded or parallelised. That equals datatrove's output for a
`PIIFormatter` used on that document alone, exactly; against one datatrove formatter streamed
over many documents it differs only in which replacement string stands at a masked place (and
not at all when a list has one string).

Per document the step records `emails` and `ips` (how many were replaced) and `changed`; it
never removes a document.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from lmforge.config import Config, require
from lmforge.curate.steps import CurateDocument, DocumentStep, Verdict, register_step

# datatrove's defaults. example.com / example.org are reserved for examples; the IPs are a list
# that did not answer pings when datatrove's authors drew it.
DEFAULT_EMAIL_REPLACEMENT = ["email@example.com", "firstname.lastname@example.org"]
DEFAULT_IP_REPLACEMENT = ["22.214.171.124", "126.96.36.199", "188.8.131.52", "184.108.40.206", "220.127.116.11",
                          "18.104.22.168"]  # fmt: skip

# -- the patterns, built from their parts --------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"  # 0-255, alternatives in this order
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"  # RFC 5322 atom characters
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"  # a domain label: no hyphen at either end
_LOCAL = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_DOMAIN = rf"(?:{_LABEL}\.)+{_LABEL}"
# a bracketed literal: three octets and dots, then an octet or a tag ending in ':' (sic)
_LITERAL = rf"\[(?:{_OCTET}\.){{3}}(?:{_OCTET}|[A-Za-z0-9-]*[A-Za-z0-9]:)\]"
EMAIL = re.compile(rf"\b{_LOCAL}@(?:{_DOMAIN}|{_LITERAL})")
IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


def is_maskable_ip(text: str, only_public: bool = True) -> bool:
    """Whether an IPv4-looking match is an address to mask: `ipaddress` parses it (no leading
    zeros), and it is global unless `only_public` is off."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return address.is_global or not only_public


@dataclass(kw_only=True)
class PIIConfig(Config):
    """Mask e-mail addresses and public IPv4 addresses (datatrove's `PIIFormatter` rules)."""

    emails: bool = True
    """Replace e-mail addresses (datatrove: `remove_emails`)."""
    ips: bool = True
    """Replace IPv4 addresses (datatrove: `remove_ips`)."""
    only_public_ips: bool = True
    """Replace only global addresses; private, loopback, link-local and reserved ones stay
    (datatrove: `only_remove_public_ips`)."""
    email_replacement: list[str] = field(default_factory=lambda: list(DEFAULT_EMAIL_REPLACEMENT))
    """Strings put in place of e-mails, used in turn within each document (one string: always it)."""
    ip_replacement: list[str] = field(default_factory=lambda: list(DEFAULT_IP_REPLACEMENT))
    """Strings put in place of IPs, used in turn within each document."""

    def validate(self) -> None:
        require(self.emails or self.ips, "emails", "emails and ips are both false: the step would do nothing")
        require(len(self.email_replacement) > 0, "email_replacement", "give at least one replacement string")
        require(len(self.ip_replacement) > 0, "ip_replacement", "give at least one replacement string")


class _Masker:
    """One `re.sub` callback for one document: replaces valid matches in turn, counting them."""

    __slots__ = ("replacements", "check", "count")

    def __init__(self, replacements: list[str], check=None):
        self.replacements = replacements
        self.check = check
        self.count = 0

    def __call__(self, match: re.Match) -> str:
        found = match.group(0)
        if self.check is not None and not self.check(found):
            return found
        replacement = self.replacements[self.count % len(self.replacements)]
        self.count += 1
        return replacement


def mask_pii(text: str, config: PIIConfig) -> tuple[str, int, int]:
    """(masked text, e-mails replaced, IPs replaced). Texts without '@' skip the e-mail scan and
    texts without '.' the IP scan (both are a C-speed `in`)."""
    emails = ips = 0
    if config.emails and "@" in text:
        masker = _Masker(config.email_replacement)
        text = EMAIL.sub(masker, text)
        emails = masker.count
    if config.ips and "." in text:
        only_public = config.only_public_ips
        masker = _Masker(config.ip_replacement, lambda s: is_maskable_ip(s, only_public))
        text = IPV4.sub(masker, text)
        ips = masker.count
    return text, emails, ips


@register_step("pii")
class PIIMask(DocumentStep[PIIConfig]):
    """Rewrites e-mails and public IPs in the text; never removes a document."""

    Config = PIIConfig
    counted_values = ("changed", "emails", "ips")  # totals in stats.json

    def __call__(self, doc: CurateDocument) -> Verdict:
        text, emails, ips = mask_pii(doc.text, self.config)
        changed = text != doc.text  # (a replacement may equal what it replaces)
        if changed:
            doc.text = text
        return Verdict.keep(changed=int(changed), emails=emails, ips=ips)
