"""Verified JWT claims -> the identity a request runs as (the `KeyInfo` a virtual key yields).

Envoy's `jwt_authn` filter verifies tokens (signature, `iss`, `aud`, `exp`; see `envoy_config/jwt.py`) and hands the
payload of a valid one to the route stage as dynamic metadata: namespace `envoy.filters.http.jwt_authn`, key
`babelgate.<issuer name>`. Only Envoy's filters write dynamic metadata (a client's headers never become it), and the
key says which configured issuer verified the token, so its claims are believed as they are. A request whose token
Envoy refused never gets here; a request without one has no payload and is authenticated by its virtual key.

The identity: id `jwt:<issuer name>:<subject>` (limits count per subject, under the issuer's `limits`; telemetry
and stored Responses name it), team from the team claim (else the issuer's `team`), the end user from the user
claim (else the subject), and the models the models claim names, within the issuer's `models`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.struct_pb2 import Value

from .. import constants
from ..config.models import Config, JwtIssuer
from ..errors import Unauthorized
from ..wire.base_pb2 import Metadata
from .virtual_keys import KeyInfo, authenticate, bearer_token

MAX_CLAIM_CHARS = 256
"""A subject, team or user names limiter counters and request-log rows: bounded like a client's user id."""
MAX_MODEL_NAMES = 1000
"""Model names read from one token's models claim, at most."""


@dataclass(frozen=True, slots=True)
class IssuerInfo:
    """An issuer's claim mapping, compiled from `JwtIssuer`."""

    name: str
    payload_key: str
    subject_claim: str
    team_claim: str | None
    user_claim: str
    models_claim: str | None
    team: str | None
    models: frozenset[str] | None
    """Route model names the issuer allows; None for every model."""
    asserts_users: bool
    model_names: Mapping[str, str]
    """Every model name and alias -> its route's model name (a models claim may name either)."""


def compile_issuers(config: Config) -> tuple[IssuerInfo, ...]:
    names = config.model_names()
    return tuple(_issuer(issuer, names) for issuer in config.jwt.issuers)


def _issuer(issuer: JwtIssuer, names: Mapping[str, str]) -> IssuerInfo:
    claims = issuer.claims
    return IssuerInfo(
        name=issuer.name, payload_key=constants.JWT_PAYLOAD_KEY_PREFIX + issuer.name,
        subject_claim=claims.subject, team_claim=claims.team, user_claim=claims.user or claims.subject,
        models_claim=claims.models, team=issuer.team,
        models=None if "*" in issuer.models else frozenset(issuer.models),
        asserts_users=issuer.asserts_users, model_names=names)


def verified_identity(issuers: tuple[IssuerInfo, ...], context: Metadata) -> KeyInfo | None:
    """The identity of the token Envoy verified for this request; None when it verified none."""
    verified = context.filter_metadata.get(constants.JWT_METADATA_NAMESPACE)
    if verified is None:
        return None
    for issuer in issuers:
        payload = verified.fields.get(issuer.payload_key)
        if payload is not None:
            fields = payload.struct_value.fields
            wanted = (issuer.subject_claim, issuer.team_claim, issuer.user_claim, issuer.models_claim)
            return identity(issuer, {claim: _plain(fields[claim]) for claim in wanted
                                     if claim is not None and claim in fields})
    return None


def identity(issuer: IssuerInfo, claims: Mapping[str, object]) -> KeyInfo:
    """Map one verified payload (as plain JSON values) to an identity."""
    subject = _text(claims, issuer.subject_claim, issuer.name)
    if subject is None:
        raise Unauthorized(f"The token of issuer {issuer.name!r} has no {issuer.subject_claim!r} claim naming who "
                           "sends it.", code="invalid_token")
    team = (_text(claims, issuer.team_claim, issuer.name) if issuer.team_claim is not None else None) or issuer.team
    user = _text(claims, issuer.user_claim, issuer.name) or subject
    return KeyInfo(id=f"{constants.JWT_ID_PREFIX}{issuer.name}:{subject}", team=team, models=_models(issuer, claims),
                   expires_at=None, user=user, asserts_users=issuer.asserts_users)


def _models(issuer: IssuerInfo, claims: Mapping[str, object]) -> frozenset[str] | None:
    """The issuer's models, narrowed to those the models claim names (a list, or a space-separated string); a token
    without the claim may use none. Names that are no model of this gateway (other OAuth scopes) are ignored."""
    if issuer.models_claim is None:
        return issuer.models
    value = claims.get(issuer.models_claim)
    if isinstance(value, str):
        named = value.split()
    elif isinstance(value, list):
        named = [item for item in value if isinstance(item, str)]
    else:
        named = []
    named = named[:MAX_MODEL_NAMES]
    if "*" in named:
        return issuer.models
    wanted = {issuer.model_names[name] for name in named if name in issuer.model_names}
    return frozenset(wanted) if issuer.models is None else frozenset(wanted & issuer.models)


def _text(claims: Mapping[str, object], claim: str, issuer: str) -> str | None:
    value = claims.get(claim)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else str(value)
    if not isinstance(value, str) or not value:
        return None
    if len(value) > MAX_CLAIM_CHARS:
        raise Unauthorized(f"The {claim!r} claim of issuer {issuer!r}'s token is longer than {MAX_CLAIM_CHARS} "
                           "characters.", code="invalid_token")
    return value


def _plain(value: Value) -> object:
    """A protobuf `Value` as a plain JSON value (objects as far as claims need them: not at all)."""
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind in ("string_value", "number_value", "bool_value"):
        return getattr(value, kind)
    return None


def identify(issuers: tuple[IssuerInfo, ...], keys: dict[str, KeyInfo], headers: Mapping[str, str],
             context: Metadata | None) -> KeyInfo:
    """Who sends this request: the subject of the token Envoy verified, else the virtual key's holder.

    A request carries one credential: a verified token and a virtual key in `x-api-key` too is a 401, rather than
    one of them silently winning (they may name different identities, limits and models). The token came in
    `Authorization`, so a key can't share that header with it; Envoy removed the token once verified (unless the
    issuer's `forward` keeps it), so this stage never takes it for a virtual key."""
    verified = verified_identity(issuers, context) if issuers and context is not None else None
    if verified is None:
        return authenticate(keys, bearer_token(headers.get("authorization")) or headers.get("x-api-key"))
    if headers.get("x-api-key"):
        raise Unauthorized("The request carries both a token and a virtual key (`x-api-key`); send one of them.",
                           code="ambiguous_credentials")
    return verified
