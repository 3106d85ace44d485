"""Subscriptions domain: validate, authorise, store, announce changes. No gRPC or driver here.

Who may do what: a request that came through the edge carries the client id Envoy verified in its JWT; that
client sees and changes only its own subscriptions, and another client's id is answered NOT_FOUND (never a
hint that it exists). A request through the edge without a verified client is UNAUTHENTICATED. A request
that reached the internal gRPC port directly (an internal tool on the platform's own network) acts for every
client.

Every change is written to the store and then announced (``ChangeNotices``), so the processors' fan-out and
the delivery workers see it within milliseconds.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from switchboard import pagination
from switchboard.delivery.filters import check_event_types, check_sources, compile_condition
from switchboard.delivery.policy import MAX_TIMEOUT_MS, MIN_TIMEOUT_MS, RetryPolicy
from switchboard.delivery.signing import MAX_OVERLAP_SECONDS, new_secret
from switchboard.delivery.urls import check_url, resolve_and_check
from switchboard.errors import FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, Unauthenticated
from switchboard.model.events import now_us
from switchboard.model.subscriptions import (
    Attempt,
    Delivery,
    DeliveryStatus,
    RetrySchedule,
    Subscription,
    SubscriptionStatus,
    Tier,
)

MAX_PAGE = 1000
# The owner of subscriptions created by internal tools (the CLI, ``listen``) without a client: no client
# coming through the edge may carry that name.
INTERNAL_OWNER = "internal"
# Reads and conditional writes a change makes before it gives up on a subscription that keeps changing.
CHANGE_TRIES = 5
DEFAULT_PAGE = 100
MAX_METADATA = 32
MAX_DESCRIPTION = 1024
# The longest client id (UTF-8): the key of the client index's partition (a 70,000-character one passed the
# subscription's row and was refused by the index's, after the row was written).
MAX_CLIENT_ID_BYTES = 255
MAX_RATE = 100_000
MAX_IN_FLIGHT = 1_000
MAX_RSA_BITS = 8192  # a larger key costs every encryption for nothing (a 96,000-bit one was accepted)
DEFAULT_LISTING_US = 30 * 86_400 * 1_000_000
# The fields a client may change (UpdateSubscription's mask), with their names in the API.
MUTABLE = frozenset(
    {
        "callback_url",
        "description",
        "sources",
        "event_types",
        "trigger_conditions",
        "retry_policy",
        "rate_limit_per_second",
        "max_in_flight",
        "tier",
        "public_key",
        "metadata",
        "status",
    }
)


@dataclass(frozen=True)
class Caller:
    """``client_id`` None: an internal tool on the gRPC port. ``via_edge``: the request came through Envoy."""

    client_id: str | None
    via_edge: bool = False


@dataclass(frozen=True)
class Rules:
    """What the platform's configuration says about subscriptions."""

    sources: Collection[str]
    # Event types each source declares; a source mapped to () declares none (any type is possible).
    event_types: Mapping[str, Collection[str]]
    allow_http_hosts: tuple[str, ...] = ()
    allow_networks: tuple[str, ...] = ()
    # The platform's own ports: no callback on one of them while allow_networks opens internal addresses.
    reserved_ports: frozenset[int] = frozenset()
    default_timeout_ms: int = 10_000
    secret_overlap_us: int = 86_400 * 1_000_000


@dataclass(frozen=True)
class Draft:
    """What a client asks for; None leaves a field as it is (on update) or at its default (on create)."""

    callback_url: str | None = None
    description: str | None = None
    sources: tuple[str, ...] | None = None
    event_types: tuple[str, ...] | None = None
    trigger_conditions: str | None = None
    retry_schedule_s: tuple[float, ...] | None = None
    max_attempts: int | None = None
    timeout_ms: int | None = None
    retry_set: bool = False
    rate_limit_per_second: int | None = None
    max_in_flight: int | None = None
    tier: str | None = None
    public_key: str | None = None
    metadata: Mapping[str, str] | None = None
    status: SubscriptionStatus | None = None
    client_id: str | None = None  # internal tools only: whom a subscription is created for


class SubscriptionRepository(Protocol):
    async def put(self, s: Subscription) -> None: ...
    async def replace(self, s: Subscription, read_updated_us: int) -> bool: ...
    async def get(self, subscription_id: str) -> Subscription | None: ...
    async def delete(self, s: Subscription) -> None: ...
    async def page(self, client_id: str | None, after: str, limit: int) -> tuple[list[Subscription], str]: ...


class DeliveryReader(Protocol):
    async def by_event(self, source: str, event_id: str) -> list[Delivery]: ...
    async def page(
        self, subscription_id: str, start_us: int, end_us: int, limit: int, after: tuple[int, int, str] | None
    ) -> tuple[list[Delivery], tuple[int, int, str] | None]: ...
    async def attempts_of(self, delivery_id: str) -> list[Attempt]: ...
    async def attempts_page(
        self, subscription_id: str, start_us: int, end_us: int, limit: int, after: tuple[int, int, str, int, str] | None
    ) -> tuple[list[Attempt], tuple[int, int, str, int, str] | None]: ...


class Notices(Protocol):
    async def changed(self, subscription_id: str) -> None: ...


class Prober(Protocol):
    async def probe(self, url: str) -> str: ...


@dataclass(frozen=True)
class Created:
    subscription: Subscription
    secret: str
    reachability: str = ""


class SubscriptionManager:
    def __init__(
        self,
        rules: Rules,
        subscriptions: SubscriptionRepository,
        deliveries: DeliveryReader,
        notices: Notices,
        prober: Prober | None = None,
    ) -> None:
        self.rules = rules
        self.subscriptions = subscriptions
        self.deliveries = deliveries
        self.notices = notices
        self.prober = prober

    # -- subscriptions ------------------------------------------------------------------------------------
    async def create(self, caller: Caller, draft: Draft, *, check_reachable: bool = False) -> Created:
        owner = self._owner(caller, draft)
        if not draft.callback_url:
            raise _field_error("callback_url", "is required")
        now = now_us()
        blank = Subscription(id="", client_id=owner, callback_url="", created_us=now, updated_us=now)
        s = await self._apply(blank, draft, set(MUTABLE))
        # Probed before anything is stored: probed after, a create that ran out of time (the probe takes up to
        # 5 s after a DNS check of up to 10) left a subscription whose one-time secret its client never saw.
        reachability = await self.prober.probe(s.callback_url) if check_reachable and self.prober else ""
        s.id = "sub_" + secrets.token_hex(12)
        s.secret = new_secret()
        await self.subscriptions.put(s)
        await self.notices.changed(s.id)
        return Created(s, s.secret, reachability)

    async def get(self, caller: Caller, subscription_id: str) -> Subscription:
        self._check(caller)
        s = await self.subscriptions.get(subscription_id) if subscription_id else None
        if s is None or (caller.client_id is not None and s.client_id != caller.client_id):
            raise NotFound(
                f"no subscription {subscription_id!r}",
                reason="SUBSCRIPTION_NOT_FOUND",
                metadata={"id": subscription_id[:64]},
            )
        return s

    async def list_subscriptions(
        self, caller: Caller, page_size: int, page_token: str
    ) -> tuple[list[Subscription], str]:
        self._check(caller)
        limit = _page_size(page_size)
        after = ""
        if page_token:
            raw = pagination.decode_token(page_token)
            if raw.get("c") != (caller.client_id or ""):
                raise pagination.mismatched_token()
            after = str(raw.get("a", ""))
        subs, cursor = await self.subscriptions.page(caller.client_id, after, limit)
        kept = pagination.fits(subs, _subscription_bytes)  # up to ~3 MiB a page: public keys, conditions, metadata
        if kept < len(subs):
            subs, cursor = subs[:kept], subs[kept - 1].id
        token = pagination.encode_token({"c": caller.client_id or "", "a": cursor}) if cursor else ""
        return subs, token

    async def update(self, caller: Caller, subscription_id: str, draft: Draft, mask: Collection[str]) -> Subscription:
        fields = set(mask) if mask else _set_fields(draft)
        unknown = fields - MUTABLE
        if unknown:
            raise InvalidRequest(
                f"update_mask names fields that cannot be changed: {', '.join(sorted(unknown))}",
                reason="UPDATE_MASK_INVALID",
                metadata={"field": "update_mask"},
            )
        if not fields:
            raise InvalidRequest("nothing to change", reason="UPDATE_MASK_INVALID", metadata={"field": "update_mask"})
        # Named and left empty, these two have no default to go back to: it answered OK and changed nothing.
        if "callback_url" in fields and not draft.callback_url:
            raise _field_error("callback_url", "is required when the update names it")
        if "status" in fields and draft.status is None:
            raise _field_error("status", "must be set when the update names it")
        return await self._change(caller, subscription_id, lambda s: self._apply(s, draft, fields))

    async def delete(self, caller: Caller, subscription_id: str) -> None:
        s = await self.get(caller, subscription_id)
        await self.subscriptions.delete(s)
        await self.notices.changed(s.id)

    async def rotate_secret(self, caller: Caller, subscription_id: str, overlap_us: int | None) -> tuple[str, int]:
        """A new secret; the current one keeps signing beside it for ``overlap_us`` (the configured default
        when None). Returns the new secret and when the previous one stops signing."""
        overlap = self.rules.secret_overlap_us if overlap_us is None else overlap_us
        if not 0 <= overlap <= MAX_OVERLAP_SECONDS * 1_000_000:
            raise _field_error("overlap", "must be between 0 and 30 days")

        async def rotate(s: Subscription) -> Subscription:
            s.previous_secret, s.previous_secret_expires_us = s.secret, now_us() + overlap
            s.secret = new_secret()
            return s

        rotated = await self._change(caller, subscription_id, rotate)
        return rotated.secret, rotated.previous_secret_expires_us

    async def _change(
        self, caller: Caller, subscription_id: str, change: Callable[[Subscription], Awaitable[Subscription]]
    ) -> Subscription:
        """Reads the subscription, ``change``s a copy of it and writes that only if the subscription is still
        as read (nothing changed, disabled or deleted it meanwhile: two concurrent changes each read, change and
        write the whole row, and the later write undid the earlier, a rotated secret or a delete included),
        then announces it; else reads and changes it again, ``CHANGE_TRIES`` times at most."""
        for _ in range(CHANGE_TRIES):
            read = await self.get(caller, subscription_id)
            changed = await change(replace(read, metadata=dict(read.metadata)))
            changed.updated_us = max(now_us(), read.updated_us + 1000)  # the store keeps milliseconds
            if await self.subscriptions.replace(changed, read.updated_us):
                await self.notices.changed(changed.id)
                return changed
        raise _changed_meanwhile(subscription_id)

    # -- deliveries ---------------------------------------------------------------------------------------
    async def list_deliveries(
        self,
        caller: Caller,
        subscription_id: str,
        *,
        status: DeliveryStatus | None,
        start_us: int | None,
        end_us: int | None,
        source: str,
        event_id: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Delivery], str]:
        s = await self.get(caller, subscription_id)
        if event_id or source:
            if not (event_id and source):
                raise _field_error("event_id", "is given with source, or not at all")
            found = [d for d in await self.deliveries.by_event(source, event_id) if d.subscription_id == s.id]
            return [d for d in found if status is None or d.status is status], ""
        limit = _page_size(page_size)
        start, end = pagination.listing_range(start_us, end_us, DEFAULT_LISTING_US)
        query = {"s": s.id, "a": start, "b": end, "st": status.value if status else ""}
        cursor: tuple[int, int, str] | None = None
        if page_token:
            raw = pagination.decode_token(page_token)
            if (raw.get("s"), raw.get("st")) != (query["s"], query["st"]):
                raise pagination.mismatched_token()
            start, end = pagination.pinned_range(raw.get("a"), raw.get("b"), start_us, end_us)
            query.update(a=start, b=end)
            cursor = _cursor3(raw.get("c"))
        out: list[Delivery] = []
        scanned = 0
        while True:  # a status filter scans on until the page is full (at most 5,000 rows per call)
            want = max(limit - len(out), pagination.SCAN_PAGE) if status is not None else limit - len(out)
            batch, cursor = await self.deliveries.page(s.id, start, end, want, cursor)
            scanned += len(batch)
            stop = pagination.take_matches(out, batch, lambda d: status is None or d.status is status, limit)
            if stop is not None:
                cursor = pagination.delivery_cursor(stop.created_us, stop.id)
            if cursor is None or len(out) >= limit or scanned >= 5000:
                break
        token = pagination.encode_token({**query, "c": list(cursor)}) if cursor else ""
        return out, token

    async def list_attempts(
        self,
        caller: Caller,
        subscription_id: str,
        *,
        delivery_id: str,
        start_us: int | None,
        end_us: int | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Attempt], str]:
        s = await self.get(caller, subscription_id)
        if delivery_id:
            return [a for a in await self.deliveries.attempts_of(delivery_id) if a.subscription_id == s.id], ""
        limit = _page_size(page_size)
        start, end = pagination.listing_range(start_us, end_us, DEFAULT_LISTING_US)
        query = {"s": s.id, "a": start, "b": end}
        cursor: tuple[int, int, str, int, str] | None = None
        if page_token:
            raw = pagination.decode_token(page_token)
            if raw.get("s") != s.id:
                raise pagination.mismatched_token()
            start, end = pagination.pinned_range(raw.get("a"), raw.get("b"), start_us, end_us)
            query.update(a=start, b=end)
            cursor = _cursor5(raw.get("c"))
        attempts, cursor = await self.deliveries.attempts_page(s.id, start, end, limit, cursor)
        kept = pagination.fits(attempts, _attempt_bytes)  # up to ~3 MiB a page: 1,000 attempts were up to ~8 MB
        if kept < len(attempts):
            attempts = attempts[:kept]
            cursor = pagination.attempt_cursor(attempts[-1])
        token = pagination.encode_token({**query, "c": list(cursor)}) if cursor else ""
        return attempts, token

    # -- validation ---------------------------------------------------------------------------------------
    def _check(self, caller: Caller) -> None:
        if caller.via_edge and not caller.client_id:
            raise Unauthenticated("no verified client in the request", reason="CLIENT_MISSING")
        if caller.via_edge and caller.client_id == INTERNAL_OWNER:  # would own what internal tools created
            raise PermissionDenied(
                f"a client may not be named {INTERNAL_OWNER!r}: the owner of subscriptions made by internal tools",
                reason="CLIENT_RESERVED",
            )

    def _owner(self, caller: Caller, draft: Draft) -> str:
        self._check(caller)
        owner = caller.client_id if caller.client_id is not None else draft.client_id or INTERNAL_OWNER
        if len(owner.encode()) > MAX_CLIENT_ID_BYTES:
            raise InvalidRequest(
                f"the client id (the token's subject, or client_id from an internal tool) is longer than "
                f"{MAX_CLIENT_ID_BYTES} bytes",
                reason="CLIENT_INVALID",
                metadata={"field": "client_id"},
            )
        return owner

    async def _apply(self, s: Subscription, draft: Draft, fields: set[str]) -> Subscription:
        """``s`` with the draft's values for ``fields``, each validated."""
        r = self.rules
        if "callback_url" in fields and draft.callback_url is not None:
            parsed = check_url(
                draft.callback_url,
                allow_http_hosts=r.allow_http_hosts,
                allow_networks=r.allow_networks,
                reserved_ports=r.reserved_ports,
            )
            if parsed.ip is None:  # the host must resolve, and every address must be allowed
                await resolve_and_check(parsed.host, parsed.port, r.allow_networks, reserved_ports=r.reserved_ports)
            s.callback_url = parsed.url
        if "description" in fields:
            s.description = _text(draft.description or "", "description", MAX_DESCRIPTION)
        if "sources" in fields:
            unknown = sorted(set(draft.sources or ()) - set(r.sources))
            if unknown:
                raise InvalidRequest(
                    f"sources: no source named {unknown[0]!r} is configured",
                    reason="SOURCE_UNKNOWN",
                    metadata={"field": "sources"},
                )
            # As the delivery cache's filter takes them: 70 configured sources named were accepted, and the
            # filter that refused them then matched nothing, without a word (found in review).
            check_sources(draft.sources or ())
            s.sources = tuple(draft.sources or ())
        if "event_types" in fields or "sources" in fields:
            # Named in the change with no globs: every type again (as for sources); kept when not named.
            globs = draft.event_types if "event_types" in fields else s.event_types
            s.event_types = check_event_types(globs or ("*",), self._catalogue(s.sources))
        if "trigger_conditions" in fields:
            expression = (draft.trigger_conditions or "").strip()
            if expression and expression != s.trigger_conditions:  # one stored under older rules may be sent back
                compile_condition(expression)
            s.trigger_conditions = expression
        # Named in the change and left empty (0, unset): back to the platform's default, as the API says 0 means.
        # (It answered OK and kept the old value: no way back to a default that follows the configuration.)
        if "retry_policy" in fields:
            s.retry = self._retry(draft) if draft.retry_set else None
        if "rate_limit_per_second" in fields:
            rate = draft.rate_limit_per_second or 0
            if not 0 <= rate <= MAX_RATE:
                raise _field_error("rate_limit_per_second", f"must be between 0 and {MAX_RATE}")
            s.rate_limit_per_second = rate
        if "max_in_flight" in fields:
            in_flight = draft.max_in_flight or 0
            if not 0 <= in_flight <= MAX_IN_FLIGHT:
                raise _field_error("max_in_flight", f"must be between 0 and {MAX_IN_FLIGHT}")
            s.max_in_flight = in_flight
        if "tier" in fields:
            s.tier = Tier.STANDARD if draft.tier is None else Tier(draft.tier)
        if "public_key" in fields:
            s.public_key = check_public_key(draft.public_key or "")
        if "metadata" in fields:
            s.metadata = _metadata(draft.metadata or {})
        if "status" in fields and draft.status is not None:
            if draft.status is SubscriptionStatus.AUTO_DISABLED:
                raise _field_error("status", "AUTO_DISABLED is set by the platform only")
            s.status = draft.status
            s.status_reason = "" if draft.status is SubscriptionStatus.ENABLED else "disabled by its client"
        return s

    def _catalogue(self, sources: Sequence[str]) -> tuple[str, ...]:
        names = sources or tuple(self.rules.sources)
        declared = [self.rules.event_types.get(n, ()) for n in names]
        if not declared or any(not types for types in declared):
            return ()  # some source declares no types: any glob is possible
        return tuple(sorted({t for types in declared for t in types}))

    def _retry(self, draft: Draft) -> RetrySchedule | None:
        timeout = draft.timeout_ms or self.rules.default_timeout_ms
        if not MIN_TIMEOUT_MS <= timeout <= MAX_TIMEOUT_MS:
            raise _field_error("retry_policy", "timeout must be between 1 s and 60 s")
        policy = RetryPolicy.custom(draft.retry_schedule_s) if draft.retry_schedule_s else RetryPolicy()
        attempts = draft.max_attempts or policy.max_attempts
        if not 1 <= attempts <= policy.max_attempts:
            raise _field_error("retry_policy", f"max_attempts must be between 1 and {policy.max_attempts}")
        if not draft.retry_schedule_s and not draft.max_attempts and not draft.timeout_ms:
            return None
        # A timeout not asked for stays 0, the platform's default when each attempt is sent: stored as today's
        # default, a policy that set only its attempts or delays never saw delivery.timeout_seconds change.
        return RetrySchedule(tuple(round(d * 1000) for d in policy.retry_delays), attempts, draft.timeout_ms or 0)


def check_public_key(value: str) -> str:
    """A PEM public key (RSA of 2048 bits or more, or EC P-256/P-384/P-521) or the same as a JWK; "" passes."""
    text = value.strip()
    if not text:
        return ""
    if len(text) > 16_384:
        raise _field_error("public_key", "is too long")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = _jwk_public_key(json.loads(text)) if text.startswith("{") else load_pem_public_key(text.encode())
    except (ValueError, TypeError, KeyError, RecursionError, UnsupportedAlgorithm):
        # RecursionError: JSON nested past the parser's limit; UnsupportedAlgorithm: a curve or key type the
        # library does not know (it was a 500)
        raise _field_error("public_key", "is not a PEM public key or a public JWK") from None
    if isinstance(key, rsa.RSAPublicKey):
        if not 2048 <= key.key_size <= MAX_RSA_BITS:
            raise _field_error("public_key", f"RSA keys must have 2048 to {MAX_RSA_BITS} bits, not {key.key_size}")
    elif not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        raise _field_error("public_key", "must be an RSA or an EC (P-256, P-384, P-521) key")
    return text


def _jwk_public_key(jwk: object) -> object:
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if not isinstance(jwk, dict) or "d" in jwk:
        raise ValueError("not a public JWK")

    def num(name: str) -> int:
        raw = str(jwk[name])
        return int.from_bytes(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)), "big")

    if jwk.get("kty") == "RSA":
        return rsa.RSAPublicNumbers(num("e"), num("n")).public_key()
    if jwk.get("kty") == "EC":
        curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
        curve = curves[str(jwk["crv"])]
        return ec.EllipticCurvePublicNumbers(num("x"), num("y"), curve).public_key()
    raise ValueError("unsupported kty")


def _set_fields(draft: Draft) -> set[str]:
    fields = {name for name in MUTABLE - {"retry_policy"} if getattr(draft, name) not in (None, "", (), {})}
    if draft.retry_set:
        fields.add("retry_policy")
    return fields


def _subscription_bytes(s: Subscription) -> int:
    """About what ``s`` weighs in a listing's answer (its texts, and ~300 bytes for the rest)."""
    texts = (s.callback_url, s.description, s.trigger_conditions, s.public_key, s.status_reason, s.secret)
    listed = (*s.sources, *s.event_types, *s.metadata.keys(), *s.metadata.values())
    return sum(len(t.encode()) for t in (*texts, *listed)) + 300


def _attempt_bytes(a: Attempt) -> int:
    """About what ``a`` weighs in a listing's answer (its response excerpt, headers and error, ~200 bytes more)."""
    headers = sum(len(k) + len(v.encode()) for k, v in a.response_headers.items())
    return len(a.response_body) + headers + len(a.error.encode()) + 200


def _field_error(field: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {problem}", reason="FIELD_INVALID", metadata={"field": field})


def _text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise _field_error(field, f"is longer than {limit} characters")
    return value


def _metadata(value: Mapping[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA:
        raise _field_error("metadata", f"at most {MAX_METADATA} entries")
    for k, v in value.items():
        if not k or len(k) > 64 or len(v) > 512:
            raise _field_error("metadata", "keys of 1 to 64 characters, values of at most 512")
    return dict(value)


def _changed_meanwhile(subscription_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"subscription {subscription_id!r} kept changing while this change was made: try again",
        reason="CONCURRENT_CHANGE",
    )


def _page_size(page_size: int) -> int:
    if not 0 <= page_size <= MAX_PAGE:
        raise InvalidRequest(f"page_size must be between 0 and {MAX_PAGE}", reason="PAGE_SIZE_INVALID")
    return page_size or DEFAULT_PAGE


def _cursor3(value: object) -> tuple[int, int, str]:
    day, ms, delivery_id = pagination.position(value, "ims")
    return day, ms, delivery_id


def _cursor5(value: object) -> tuple[int, int, str, int, str]:
    day, ms, delivery_id, attempt, run = pagination.position(value, "imsis")
    return day, ms, delivery_id, attempt, run
