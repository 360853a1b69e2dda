"""Entra ID bearer tokens: what a real Azure deployment uses instead of shared keys.

With ENTRA_ISSUER, ENTRA_AUDIENCE and ENTRA_JWKS_URL set, `Authorization: Bearer <JWT>` is verified
with PyJWT: the signature against the issuer's published keys (JWKS, fetched once and cached, fetched
again for an unknown `kid`), and `exp`, `nbf`, `aud` and `iss`. The caller's tenant is the token's
`tid` mapped through ENTRA_TENANTS (an unmapped directory is refused), its role the highest of our
roles in the `roles` claim (the app roles assigned in Entra ID).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shared.settings import Settings

ROLES = ("submitter", "operator", "admin")
ALGORITHMS = ["RS256"]


@dataclass(frozen=True)
class TokenClaims:
    tenant: str
    role: str
    subject: str


class InvalidToken(Exception):
    """The token is not one this deployment accepts; the message says why (for the log, not the caller)."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        assert settings.entra_issuer and settings.entra_audience and settings.entra_jwks_url
        # Imported here: PyJWT's RSA support loads cryptography (about 10 MB), which only a
        # deployment that accepts Entra ID tokens should carry.
        import jwt

        self.issuer = settings.entra_issuer
        self.audience = settings.entra_audience
        self.tenants = settings.entra_tenants
        self._jwks = jwt.PyJWKClient(settings.entra_jwks_url, cache_keys=True, lifespan=3600, timeout=5)
        self._lock = threading.Lock()

    @staticmethod
    def configured(settings: Settings) -> bool:
        return bool(settings.entra_issuer and settings.entra_audience and settings.entra_jwks_url)

    def verify(self, token: str) -> TokenClaims:
        import jwt

        try:
            with self._lock:  # one JWKS fetch at a time; the client caches what it fetched
                signing_key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                signing_key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud", "tid"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
        tenant = self.tenants.get(str(claims["tid"]))
        if tenant is None:
            raise InvalidToken(f"directory {claims['tid']} is not mapped in ENTRA_TENANTS")
        granted = [r for r in claims.get("roles") or [] if r in ROLES]
        if not granted:
            raise InvalidToken("the token carries none of the roles submitter, operator, admin")
        role = max(granted, key=ROLES.index)
        return TokenClaims(tenant=tenant, role=role, subject=str(claims.get("oid") or claims.get("sub") or "?"))
