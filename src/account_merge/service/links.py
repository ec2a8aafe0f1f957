"""What recovery needs from the host: a secret key to sign tokens, and the links to send.

:class:`RecoveryOptions` holds the host's ``secret_key`` (as a
:class:`~account_merge.domain.tokens.TokenSigner`) and its ``links``,
the URL templates of the pages behind the notices:

- ``"password_reset"``: the page that takes a new password, with
  ``{token}`` where the token goes;
- ``"email_verification"``: the page that confirms an address, with
  ``{token}``;
- ``"sign_in"`` (optional): the sign-in page, shown in the notices that
  need no token (login reminder, password changed...).

Links are the host's configuration, never built from a request's
``Host`` header (OWASP Forgot Password Cheat Sheet).  A use case that
must send a link checks, before doing anything, that it can
(:meth:`RecoveryOptions.require`): ``invalid_input`` names what is
missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import quote, urlsplit

import attrs

from account_merge.domain.secret import Secret
from account_merge.domain.tokens import TokenPurpose, TokenSigner
from account_merge.exceptions import InvalidInput

__all__ = ["LINK_KINDS", "RecoveryOptions", "check_links"]

#: The links a host may give, and whether each carries a token.
LINK_KINDS: Mapping[str, bool] = MappingProxyType({
    TokenPurpose.PASSWORD_RESET.value: True,
    TokenPurpose.EMAIL_VERIFICATION.value: True,
    "sign_in": False,
})


def check_links(links: object) -> Mapping[str, str]:
    """The host's link templates, checked: known kinds, absolute http(s) URLs, ``{token}`` once."""
    if links is None:
        return MappingProxyType({})
    if not isinstance(links, Mapping):
        raise InvalidInput("links", "must be a mapping of link kinds to URL templates")
    checked: dict[str, str] = {}
    for kind, template in links.items():
        if kind not in LINK_KINDS:
            raise InvalidInput("links", f"unknown link {kind!r}; the known ones are "
                                        + ", ".join(sorted(LINK_KINDS)))
        if not isinstance(template, str):
            raise InvalidInput("links", f"the {kind!r} link must be a string")
        parts = urlsplit(template.replace("{token}", "t"))
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise InvalidInput("links", f"the {kind!r} link must be an absolute http(s) URL")
        wanted = 1 if LINK_KINDS[kind] else 0
        if template.count("{token}") != wanted or template.replace("{token}", "").count("{"):
            raise InvalidInput("links", f"the {kind!r} link must hold {{token}} "
                               + ("exactly once" if wanted else "nowhere")
                               + " and no other braces")
        checked[kind] = template
    return MappingProxyType(checked)


@attrs.frozen
class RecoveryOptions:
    """The host's secret key (as a signer) and link templates; both optional."""

    signer: TokenSigner | None = None
    links: Mapping[str, str] = attrs.field(factory=lambda: MappingProxyType({}),
                                           converter=check_links)

    @classmethod
    def of(cls, secret_key: str | bytes | Secret | None,
           links: Mapping[str, str] | None) -> RecoveryOptions:
        """Options from a host's ``secret_key`` and ``links`` (each may be None)."""
        return cls(TokenSigner(secret_key) if secret_key is not None else None, links)

    def require(self, purpose: TokenPurpose) -> TokenSigner:
        """The signer, if a link for *purpose* can be made; else ``invalid_input``."""
        if self.signer is None:
            raise InvalidInput("secret_key", "is needed to sign the links of notices; "
                                             "give MergeService(secret_key=...)")
        if purpose.value not in self.links:
            raise InvalidInput("links", f"has no {purpose.value!r} link; give MergeService("
                                        f"links={{{purpose.value!r}: 'https://.../{{token}}'}})")
        return self.signer

    def url(self, kind: str, token: str | None = None) -> str | None:
        """The link of *kind* (with *token* in it), or None if the host gave no such link."""
        template = self.links.get(kind)
        if template is None:
            return None
        return template.replace("{token}", quote(token, safe="")) if token else template
