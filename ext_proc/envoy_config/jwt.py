"""Envoy verifies JWTs (its `jwt_authn` filter) before the route stage maps their claims to an identity.

Decisions worth knowing before changing this file:
- The filter sits right before the route stage and writes each verified payload as dynamic metadata (namespace
  `envoy.filters.http.jwt_authn`, key `babelgate.<issuer name>`); the route stage's ext_proc filter forwards that
  namespace. Metadata, not `claim_to_headers`: a request without a token would keep whatever claim headers its
  client wrote, while dynamic metadata is written by Envoy's filters alone.
- Only a bearer token shaped like a JWT (three base64url parts, the third possibly empty) is Envoy's to verify: the
  requirement rule matches those and requires one of the issuers, so an expired, unsigned (`alg: none`), tampered,
  foreign (wrong `iss`) or misaddressed (wrong `aud`) token is refused by Envoy. Every other request passes untouched
  (`allow_missing` for a request without a token): virtual keys (`bg-...`, no dots) in the same `Authorization`
  header still reach the route stage, which authenticates them. Tokens are read from `Authorization: Bearer` only
  (never the `access_token` query parameter Envoy would also read by default: URLs end up in logs).
- Envoy answers a wrong audience with 403; `filters.local_reply_config` turns every `jwt_authn` refusal into a 401
  (RFC 6750's `invalid_token`), OpenAI-shaped like the gateway's other errors.
- Tokens must carry `exp` (`require_expiration`): a token that never expires is refused.
- Envoy's extractor matches `value_prefix` case-sensitively: `bearer <jwt>` would be a missing token to it, and
  `allow_missing` would let the request on. So the rule matches `Bearer ` exactly too, and such a request reaches the
  route stage with no verified payload, where its token is no virtual key: a 401 as well.
- A refusal is Envoy's local reply, and still goes through the route stage's response-headers message (when that
  stage asks for them): the route stage sees a 401 for a request it never saw the headers of.
- A JWKS file is read here, at render time, and inlined (`local_jwks`): the rendered config works wherever Envoy runs
  (an Istio gateway has no such file). A `jwks_uri` gets a cluster of its own, kept static beside the ext_proc one
  (`babelgate up` never swaps it with the routes), fetched when Envoy starts (the listener waits for the first fetch)
  and again when `cache_duration` runs out.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import timedelta
from urllib.parse import urlsplit

from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterDnsLookupFamily
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    HttpUri,
    SocketAddress,
    TransportSocket,
)
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy_data_plane.envoy.config.route.v3 import HeaderMatcher, RouteMatch
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn.v3 import (
    JwksAsyncFetch,
    JwtAuthentication,
    JwtHeader,
    JwtProvider,
    JwtRequirement,
    JwtRequirementOrList,
    RemoteJwks,
    RequirementRule,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.type.matcher.v3 import RegexMatcher, StringMatcher
from envoy_data_plane.google.protobuf import Any, Empty

from .. import constants
from ..config.loading import ConfigError
from ..config.models import Config, JwtIssuer

SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
JWT_SHAPED = r"^Bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$"
"""An `Authorization` value Envoy verifies as a JWT (RE2); an empty signature (`alg: none`) still matches, and is
refused. Written as Envoy's extractor reads it (`Bearer ` exactly): another spelling of the scheme reaches the route
stage as an unknown virtual key, a 401 too."""
_FETCH_TIMEOUT = timedelta(seconds=5)


class JwksFileError(ConfigError):
    """A configured JWKS file can't be read or is no JWKS: rendering stops and says which."""


def payload_key(issuer_name: str) -> str:
    return constants.JWT_PAYLOAD_KEY_PREFIX + issuer_name


def jwks_cluster_name(issuer_name: str) -> str:
    return constants.JWKS_CLUSTER_PREFIX + issuer_name


def jwt_filter(config: Config, unchecked: tuple[str, ...] = ()) -> HttpFilter | None:
    """The `jwt_authn` filter for the configured issuers; None when there are none. `unchecked`: path prefixes whose
    bearer tokens are no JWTs of these issuers (the admin API's, which checks its own credential)."""
    issuers = config.jwt.issuers
    if not issuers:
        return None
    rules = [RequirementRule(match=RouteMatch(prefix=prefix)) for prefix in unchecked]
    requirement = JwtRequirement(requires_any=JwtRequirementOrList(requirements=[
        *(JwtRequirement(provider_name=issuer.name) for issuer in issuers), JwtRequirement(allow_missing=Empty())]))
    jwt_shaped = RouteMatch(prefix="/", headers=[HeaderMatcher(
        name="authorization", string_match=StringMatcher(safe_regex=RegexMatcher(regex=JWT_SHAPED)))])
    authentication = JwtAuthentication(
        providers={issuer.name: _provider(issuer) for issuer in issuers},
        rules=[*rules, RequirementRule(match=jwt_shaped, requires=requirement)])
    return HttpFilter(name=constants.JWT_FILTER, typed_config=Any.pack(authentication))


def _provider(issuer: JwtIssuer) -> JwtProvider:
    provider = JwtProvider(
        issuer=issuer.issuer, audiences=list(issuer.audiences), forward=issuer.forward,
        from_headers=[JwtHeader(name="authorization", value_prefix="Bearer ")],
        payload_in_metadata=payload_key(issuer.name), require_expiration=True)
    if issuer.jwks_uri is not None:
        provider.remote_jwks = RemoteJwks(
            http_uri=HttpUri(uri=issuer.jwks_uri, cluster=jwks_cluster_name(issuer.name), timeout=_FETCH_TIMEOUT),
            cache_duration=timedelta(seconds=issuer.cache_duration),
            async_fetch=JwksAsyncFetch(fast_listener=False))
    else:
        provider.local_jwks = DataSource(inline_string=read_jwks(issuer))
    return provider


def read_jwks(issuer: JwtIssuer) -> str:
    """The issuer's JWKS file, checked to be a JWKS, as compact JSON."""
    assert issuer.jwks_file is not None
    try:
        document = json.loads(issuer.jwks_file.read_text())
    except (OSError, ValueError) as exc:
        raise JwksFileError(f"jwt issuer {issuer.name!r}: can't read the JWKS file {str(issuer.jwks_file)!r}: "
                            f"{exc}") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and "kty" in k for k in keys):
        raise JwksFileError(f"jwt issuer {issuer.name!r}: {str(issuer.jwks_file)!r} is no JWKS (a JSON object "
                            "whose `keys` lists public keys, each with its `kty`)")
    if any("d" in key for key in keys):
        raise JwksFileError(f"jwt issuer {issuer.name!r}: {str(issuer.jwks_file)!r} holds a private key; give the "
                            "public keys only")
    return json.dumps(document, separators=(",", ":"))


def jwks_clusters(config: Config) -> list[Cluster]:
    """One cluster per issuer whose JWKS Envoy fetches."""
    return [_jwks_cluster(issuer, issuer.jwks_uri) for issuer in config.jwt.issuers if issuer.jwks_uri is not None]


def _jwks_cluster(issuer: JwtIssuer, uri: str) -> Cluster:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    tls = parts.scheme == "https"
    name = jwks_cluster_name(issuer.name)
    cluster = Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if _is_ip(host) else ClusterDiscoveryType.LOGICAL_DNS,
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=timedelta(seconds=5),
        load_assignment=ClusterLoadAssignment(cluster_name=name, endpoints=[LocalityLbEndpoints(lb_endpoints=[
            LbEndpoint(endpoint=Endpoint(address=Address(socket_address=SocketAddress(
                address=host, port_value=parts.port or (443 if tls else 80))), hostname=host))])]))
    if tls:
        cluster.transport_socket = _tls(host, str(issuer.jwks_ca_file) if issuer.jwks_ca_file else SYSTEM_CA_BUNDLE)
    return cluster


def _tls(host: str, ca_file: str) -> TransportSocket:
    context = UpstreamTlsContext(
        sni=host,
        common_tls_context=CommonTlsContext(validation_context=CertificateValidationContext(
            trusted_ca=DataSource(filename=ca_file),
            match_typed_subject_alt_names=[SubjectAltNameMatcher(
                san_type=SubjectAltNameMatcherSanType.DNS, matcher=StringMatcher(exact=host))])))
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=Any.pack(context))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
