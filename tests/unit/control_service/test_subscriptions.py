"""SubscriptionManager decisions against in-memory stores: who sees what, validation of every field, and
that every change is announced."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

import pytest

from control_service.subscriptions import Caller, Draft, Rules, SubscriptionManager
from switchboard import errors
from switchboard.model.subscriptions import Attempt, Delivery, DeliveryStatus, Subscription, SubscriptionStatus

RULES = Rules(
    sources=["shop", "gh"],
    event_types={"shop": ["invoice.paid", "invoice.created", "charge.succeeded"], "gh": []},
    allow_networks=("127.0.0.0/8",),
    allow_http_hosts=("127.0.0.1",),
)
URL = "https://127.0.0.1:9999/hook"
ALICE, BOB = Caller("alice", via_edge=True), Caller("bob", via_edge=True)
INTERNAL = Caller(None)


@dataclass
class Memory:
    subs: dict[str, Subscription] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)

    async def put(self, s: Subscription) -> None:
        self.subs[s.id] = s

    async def replace(self, s: Subscription, read_updated_us: int) -> bool:
        """As the store's lightweight transaction: only if the row is still as it was read."""
        stored = self.subs.get(s.id)
        if stored is None or stored.updated_us // 1000 != read_updated_us // 1000:
            return False
        self.subs[s.id] = s
        return True

    async def get(self, subscription_id: str) -> Subscription | None:
        return self.subs.get(subscription_id)

    async def delete(self, s: Subscription) -> None:
        self.subs.pop(s.id, None)

    async def page(self, client_id: str | None, after: str, limit: int) -> tuple[list[Subscription], str]:
        mine = sorted(
            (s for s in self.subs.values() if client_id is None or s.client_id == client_id), key=lambda s: s.id
        )
        page = [s for s in mine if s.id > after][:limit]
        return page, page[-1].id if len(page) == limit else ""


class Notices:
    def __init__(self, memory: Memory) -> None:
        self.memory = memory

    async def changed(self, subscription_id: str) -> None:
        self.memory.changed.append(subscription_id)


class NoDeliveries:
    async def by_event(self, source: str, event_id: str) -> list[Delivery]:
        return []

    async def page(self, *args: object) -> tuple[list[Delivery], None]:
        return [], None

    async def attempts_of(self, delivery_id: str) -> list[Attempt]:
        return []

    async def attempts_page(self, *args: object) -> tuple[list[Attempt], None]:
        return [], None


@pytest.fixture
def memory() -> Memory:
    return Memory()


@pytest.fixture
def manager(memory: Memory) -> SubscriptionManager:
    return SubscriptionManager(RULES, memory, NoDeliveries(), Notices(memory))


async def test_a_client_creates_and_sees_only_its_own(manager: SubscriptionManager, memory: Memory) -> None:
    created = await manager.create(ALICE, Draft(callback_url=URL, event_types=("invoice.*",), sources=("shop",)))
    s = created.subscription
    assert (s.client_id, s.event_types, s.status) == ("alice", ("invoice.*",), SubscriptionStatus.ENABLED)
    assert created.secret.startswith("whsec_") and s.secret == created.secret
    assert memory.changed == [s.id]
    assert (await manager.get(ALICE, s.id)).id == s.id
    with pytest.raises(errors.NotFound) as other:
        await manager.get(BOB, s.id)
    assert other.value.reason == "SUBSCRIPTION_NOT_FOUND"  # not PERMISSION_DENIED: no hint that it exists
    with pytest.raises(errors.NotFound):
        await manager.delete(BOB, s.id)
    assert (await manager.list_subscriptions(BOB, 10, ""))[0] == []
    assert [x.id for x in (await manager.list_subscriptions(INTERNAL, 10, ""))[0]] == [s.id]


async def test_through_the_edge_without_a_client_is_unauthenticated(manager: SubscriptionManager) -> None:
    with pytest.raises(errors.Unauthenticated):
        await manager.create(Caller(None, via_edge=True), Draft(callback_url=URL))
    with pytest.raises(errors.Unauthenticated):
        await manager.list_subscriptions(Caller("", via_edge=True), 10, "")


async def test_a_client_named_as_the_internal_tools_owner_is_refused(manager: SubscriptionManager) -> None:
    """Subscriptions made by internal tools without a client belong to "internal": a token whose subject is
    "internal" used to see and change them all, secrets included."""
    made = await manager.create(INTERNAL, Draft(callback_url=URL, event_types=("invoice.*",), sources=("shop",)))
    assert made.subscription.client_id == "internal"
    posing = Caller("internal", via_edge=True)
    with pytest.raises(errors.PermissionDenied) as refused:
        await manager.get(posing, made.subscription.id)
    assert refused.value.reason == "CLIENT_RESERVED"
    with pytest.raises(errors.PermissionDenied):
        await manager.list_subscriptions(posing, 10, "")


def spki_pem(curve_oid: str) -> str:
    """A PEM SubjectPublicKeyInfo of an EC key on the curve ``curve_oid`` (hex DER of the OID)."""

    def tlv(tag: int, body: bytes) -> bytes:
        return bytes([tag, len(body)]) + body

    algorithm = tlv(0x30, tlv(6, bytes.fromhex("2a8648ce3d0201")) + tlv(6, bytes.fromhex(curve_oid)))
    der = tlv(0x30, algorithm + tlv(3, b"\x00\x04" + b"\x01" * 28))
    return "-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(der).decode() + "-----END PUBLIC KEY-----\n"


@pytest.mark.parametrize(
    ("draft", "reason"),
    [
        (Draft(callback_url="http://example.com/x"), "CALLBACK_URL_INVALID"),
        (Draft(callback_url="https://10.1.2.3/x"), "CALLBACK_URL_FORBIDDEN"),
        (Draft(callback_url="https://169.254.169.254/latest"), "CALLBACK_URL_FORBIDDEN"),
        (Draft(callback_url=URL, sources=("nope",)), "SOURCE_UNKNOWN"),
        (Draft(callback_url=URL, sources=("shop",), event_types=("customer.*",)), "EVENT_TYPE_UNKNOWN"),
        (Draft(callback_url=URL, trigger_conditions="event.data.object.amount >"), "TRIGGER_CONDITION_INVALID"),
        (Draft(callback_url=URL, trigger_conditions="other.amount > 1"), "TRIGGER_CONDITION_INVALID"),
        (Draft(callback_url=URL, retry_set=True, retry_schedule_s=(0.1,)), "RETRY_POLICY_INVALID"),
        (Draft(callback_url=URL, rate_limit_per_second=10**7), "FIELD_INVALID"),
        (Draft(callback_url=URL, max_in_flight=10**4), "FIELD_INVALID"),
        (Draft(callback_url=URL, public_key="not a key"), "FIELD_INVALID"),
        (Draft(callback_url=URL, public_key='{"a":' + "[" * 5000), "FIELD_INVALID"),  # nested past the parser
        (Draft(callback_url=URL, public_key=spki_pem("2b81040006")), "FIELD_INVALID"),  # secp112r1: it was a 500
        (Draft(callback_url=URL, public_key=spki_pem("2b0601040182370a0301")), "FIELD_INVALID"),  # no such algorithm
        (Draft(callback_url=URL, metadata={f"k{i}": "v" for i in range(40)}), "FIELD_INVALID"),
        (Draft(), "FIELD_INVALID"),
    ],
)
async def test_bad_fields_are_invalid_arguments_naming_the_field(
    manager: SubscriptionManager, memory: Memory, draft: Draft, reason: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as bad:
        await manager.create(ALICE, draft)
    assert bad.value.reason == reason
    assert "field" in bad.value.metadata
    assert memory.subs == {} and memory.changed == []


async def test_an_update_that_names_event_types_with_none_takes_every_type_again(
    manager: SubscriptionManager,
) -> None:
    """Like sources; the old globs were kept (found in review)."""
    s = (
        await manager.create(ALICE, Draft(callback_url=URL, event_types=("invoice.*",), sources=("shop",)))
    ).subscription
    kept = await manager.update(ALICE, s.id, Draft(description="d"), ["description"])
    assert kept.event_types == ("invoice.*",)
    every = await manager.update(ALICE, s.id, Draft(event_types=None), ["event_types"])
    assert every.event_types == ("*",)


async def test_a_source_that_declares_no_types_accepts_any_glob(manager: SubscriptionManager) -> None:
    created = await manager.create(ALICE, Draft(callback_url=URL, sources=("gh",), event_types=("push", "pull_*")))
    assert created.subscription.event_types == ("push", "pull_*")


async def test_an_update_that_names_a_limit_or_the_retry_policy_without_a_value_takes_the_default_again(
    manager: SubscriptionManager,
) -> None:
    """Found in review: 0 means "the platform's default" in the API, but an update naming these fields with
    0 (or no policy) answered OK and kept the old values, so a subscription could never follow the
    configured default again."""
    draft = Draft(callback_url=URL, rate_limit_per_second=10, max_in_flight=2, retry_set=True, max_attempts=3)
    s = (await manager.create(ALICE, draft)).subscription
    assert (s.rate_limit_per_second, s.max_in_flight, s.retry is not None) == (10, 2, True)
    kept = await manager.update(ALICE, s.id, Draft(description="unmasked"), [])  # not named: kept
    assert (kept.rate_limit_per_second, kept.max_in_flight, kept.retry) == (10, 2, s.retry)
    reset = await manager.update(ALICE, s.id, Draft(), ["rate_limit_per_second", "max_in_flight", "retry_policy"])
    assert (reset.rate_limit_per_second, reset.max_in_flight, reset.retry) == (0, 0, None)


async def test_a_policy_without_a_timeout_keeps_following_the_platforms_default(manager: SubscriptionManager) -> None:
    """Found in review: a policy that set only its attempts stored the default timeout of the day it was made,
    so a later change of delivery.timeout_seconds never reached it. 0 is stored: the default when each attempt
    is sent (the delivery worker's ``Defaults.timeout_ms``)."""
    only_attempts = Draft(callback_url=URL, retry_set=True, max_attempts=3)
    s = (await manager.create(ALICE, only_attempts)).subscription
    assert s.retry is not None and (s.retry.max_attempts, s.retry.timeout_ms) == (3, 0)
    own = (await manager.create(ALICE, Draft(callback_url=URL, retry_set=True, timeout_ms=5_000))).subscription
    assert own.retry is not None and own.retry.timeout_ms == 5_000


class SlowProber:
    """Says what a HEAD got; records whether the subscription was stored when it was asked."""

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self.stored_when_probed: list[int] = []

    async def probe(self, url: str) -> str:
        self.stored_when_probed.append(len(self.memory.subs))
        return "HEAD answered 200 in 3 ms"


async def test_a_create_probes_the_endpoint_before_storing_anything(memory: Memory) -> None:
    """Found in review: probed after the subscription was stored, a create that ran out of time in the probe
    left a subscription whose one-time secret its client never saw (and a retry made a second one)."""
    prober = SlowProber(memory)
    manager = SubscriptionManager(RULES, memory, NoDeliveries(), Notices(memory), prober)
    created = await manager.create(ALICE, Draft(callback_url=URL), check_reachable=True)
    assert created.reachability == "HEAD answered 200 in 3 ms"
    assert prober.stored_when_probed == [0] and list(memory.subs) == [created.subscription.id]


async def test_update_changes_only_the_named_fields_and_is_announced(
    manager: SubscriptionManager, memory: Memory
) -> None:
    s = (await manager.create(ALICE, Draft(callback_url=URL, description="first"))).subscription
    memory.changed.clear()
    updated = await manager.update(ALICE, s.id, Draft(description="second", callback_url="ignored"), ["description"])
    assert (updated.description, updated.callback_url) == ("second", URL)
    assert memory.changed == [s.id]
    limited = await manager.update(ALICE, s.id, Draft(max_in_flight=4, description="third"), ["max_in_flight"])
    assert (limited.max_in_flight, limited.description) == (4, "second")
    with pytest.raises(errors.InvalidRequest) as bad:
        await manager.update(ALICE, s.id, Draft(), ["client_id"])
    assert bad.value.reason == "UPDATE_MASK_INVALID"
    with pytest.raises(errors.InvalidRequest):
        await manager.update(ALICE, s.id, Draft(status=SubscriptionStatus.AUTO_DISABLED), ["status"])
    disabled = await manager.update(ALICE, s.id, Draft(status=SubscriptionStatus.DISABLED), [])
    assert disabled.status is SubscriptionStatus.DISABLED and not disabled.enabled


async def test_rotation_keeps_the_previous_secret_signing_for_the_overlap(manager: SubscriptionManager) -> None:
    created = await manager.create(ALICE, Draft(callback_url=URL))
    new, until = await manager.rotate_secret(ALICE, created.subscription.id, 60_000_000)
    s = await manager.get(ALICE, created.subscription.id)
    assert new != created.secret and s.secret == new and s.previous_secret == created.secret
    assert s.signing_secrets(until - 1) == [new, created.secret]
    assert s.signing_secrets(until) == [new]


async def test_listing_deliveries_or_attempts_over_a_reversed_range_is_an_invalid_argument(
    manager: SubscriptionManager,
) -> None:
    created = await manager.create(ALICE, Draft(callback_url=URL, event_types=("invoice.*",), sources=("shop",)))
    common: dict[str, object] = {"start_us": 2_000_000, "end_us": 1_000_000, "page_size": 10, "page_token": ""}
    with pytest.raises(errors.InvalidRequest) as deliveries:
        await manager.list_deliveries(ALICE, created.subscription.id, status=None, source="", event_id="", **common)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequest) as attempts:  # (it answered an empty page)
        await manager.list_attempts(ALICE, created.subscription.id, delivery_id="", **common)  # type: ignore[arg-type]
    assert deliveries.value.metadata == attempts.value.metadata == {"field": "start_time"}
    # The reason every other listing gives (it was FIELD_INVALID here).
    assert deliveries.value.reason == attempts.value.reason == "TIME_RANGE_INVALID"


class PagedDeliveries(NoDeliveries):
    """Two pages of deliveries and of attempts: the first call of each gives a cursor, the next one ends."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    async def page(self, *args: object) -> tuple[list[Delivery], Any]:
        _, start, end, _, cursor = args
        self.ranges.append((int(start), int(end)))  # type: ignore[call-overload]
        return [], (None if cursor else (1, 2, "dlv_1"))

    async def attempts_page(self, *args: object) -> tuple[list[Attempt], Any]:
        _, start, end, _, cursor = args
        self.ranges.append((int(start), int(end)))  # type: ignore[call-overload]
        return [], (None if cursor else (1, 2, "dlv_1", 1, "run"))


async def test_deliveries_and_attempts_without_a_time_range_page_on_in_the_range_the_first_page_pinned(
    memory: Memory,
) -> None:
    """The next page of a listing without start or end time used to be refused (PAGE_TOKEN_MISMATCH): its
    default range, ending "now", had moved with the clock."""
    store = PagedDeliveries()
    manager = SubscriptionManager(RULES, memory, store, Notices(memory))
    s = (
        await manager.create(ALICE, Draft(callback_url=URL, event_types=("invoice.*",), sources=("shop",)))
    ).subscription
    common: dict[str, Any] = {"start_us": None, "end_us": None, "page_size": 10}
    _, token = await manager.list_deliveries(ALICE, s.id, status=None, source="", event_id="", page_token="", **common)
    await asyncio.sleep(0.002)
    _, last = await manager.list_deliveries(
        ALICE, s.id, status=None, source="", event_id="", page_token=token, **common
    )
    _, token = await manager.list_attempts(ALICE, s.id, delivery_id="", page_token="", **common)
    await asyncio.sleep(0.002)
    _, end = await manager.list_attempts(ALICE, s.id, delivery_id="", page_token=token, **common)
    assert token and last == end == ""
    assert store.ranges[0] == store.ranges[1] and store.ranges[2] == store.ranges[3]


class Interleaving(Memory):
    """Reads yield to the loop, so that changes running at once read the same row before either writes."""

    async def get(self, subscription_id: str) -> Subscription | None:
        found = await super().get(subscription_id)
        for _ in range(3):
            await asyncio.sleep(0)
        return found


async def test_changes_made_at_once_are_all_kept_a_rotated_secret_included() -> None:
    """A rotation, a description change and a URL change at once: each read the row and wrote it whole, so the
    last write undid the others (the client then held a secret that signed nothing)."""
    memory = Interleaving()
    manager = SubscriptionManager(RULES, memory, NoDeliveries(), Notices(memory))
    s = (
        await manager.create(ALICE, Draft(callback_url=URL, event_types=("invoice.*",), sources=("shop",)))
    ).subscription
    (secret, _), described, moved = await asyncio.gather(
        manager.rotate_secret(ALICE, s.id, None),
        manager.update(ALICE, s.id, Draft(description="billing"), ["description"]),
        manager.update(ALICE, s.id, Draft(callback_url=URL + "/v2"), ["callback_url"]),
    )
    stored = memory.subs[s.id]
    assert (stored.secret, stored.description, stored.callback_url) == (secret, "billing", URL + "/v2")
    assert described.description == "billing" and moved.callback_url == URL + "/v2"
    assert memory.changed.count(s.id) == 4  # created, and each change announced once


class SlowFirstRead(Memory):
    """The next read takes a while: a delete that starts after it is done before it returns."""

    slow = False

    async def get(self, subscription_id: str) -> Subscription | None:
        found = await super().get(subscription_id)
        if self.slow:
            self.slow = False
            for _ in range(10):
                await asyncio.sleep(0)
        return found


async def test_a_change_that_meets_a_delete_does_not_bring_the_subscription_back() -> None:
    """The update reads, the delete reads and deletes, then the update writes: it used to write the whole row
    back, and the deleted subscription was there again, deliveries and all."""
    memory = SlowFirstRead()
    manager = SubscriptionManager(RULES, memory, NoDeliveries(), Notices(memory))
    s = (
        await manager.create(ALICE, Draft(callback_url=URL, event_types=("invoice.*",), sources=("shop",)))
    ).subscription
    memory.slow = True
    changed, deleted = await asyncio.gather(
        manager.update(ALICE, s.id, Draft(description="late"), ["description"]),
        manager.delete(ALICE, s.id),
        return_exceptions=True,
    )
    assert isinstance(changed, errors.NotFound) and deleted is None
    assert s.id not in memory.subs


class ManyDeliveries(NoDeliveries):
    """400 deliveries newest first, a millisecond apart, every 20th FAILED; pages and cursors as the store
    gives them."""

    def __init__(self) -> None:
        now = 1_700_000_000_000_000
        self.rows = [
            Delivery(
                f"dlv_{i:04}", "sub", "shop", f"evt_{i}", "invoice.paid",
                DeliveryStatus.FAILED if i % 20 == 0 else DeliveryStatus.DELIVERED, created_us=now - i * 1000,
            )
            for i in range(400)
        ]  # fmt: skip
        self.asked: list[int] = []

    async def page(self, *args: object) -> tuple[list[Delivery], Any]:
        _, _, _, limit, after = args
        assert isinstance(limit, int)
        self.asked.append(limit)
        rows = [d for d in self.rows if after is None or (d.created_us // 1000, d.id) < (after[1], after[2])]  # type: ignore[index]
        page = rows[:limit]
        last = page[-1] if len(page) == limit else None
        return page, (last and (last.created_us // 86_400_000_000, last.created_us // 1000, last.id))


async def test_a_status_filter_reads_whole_pages_and_its_pages_neither_skip_nor_repeat(memory: Memory) -> None:
    """Asking for the matches still missing, a status that took 1 delivery in 20 read one row (two round
    trips) a call once a page was nearly full."""
    store = ManyDeliveries()
    manager = SubscriptionManager(RULES, memory, store, Notices(memory))
    s = (
        await manager.create(ALICE, Draft(callback_url=URL, event_types=("invoice.*",), sources=("shop",)))
    ).subscription
    common: dict[str, Any] = {"start_us": 0, "end_us": 2_000_000_000_000_000, "page_size": 3}
    seen: list[str] = []
    token = ""
    while True:
        page, token = await manager.list_deliveries(
            ALICE, s.id, status=DeliveryStatus.FAILED, source="", event_id="", page_token=token, **common
        )
        seen += [d.id for d in page]
        if not token:
            break
    assert seen == [f"dlv_{i:04}" for i in range(0, 400, 20)]
    assert min(store.asked) >= 100


async def test_a_client_id_longer_than_its_index_key_takes_is_refused_before_anything_is_written(
    manager: SubscriptionManager, memory: Memory
) -> None:
    """An internal tool's client_id of 70,000 characters passed the subscription's row and was refused by the
    client index's (its partition key), after the row was written: a subscription nobody could list."""
    with pytest.raises(errors.InvalidRequest) as refused:
        await manager.create(INTERNAL, Draft(callback_url=URL, client_id="c" * 256))
    assert refused.value.reason == "CLIENT_INVALID" and memory.subs == {}
    with pytest.raises(errors.InvalidRequest):
        await manager.create(Caller("é" * 128, via_edge=True), Draft(callback_url=URL))  # 256 bytes
    made = await manager.create(INTERNAL, Draft(callback_url=URL, client_id="c" * 255))
    assert made.subscription.client_id == "c" * 255


async def test_an_update_naming_the_callback_url_or_the_status_without_a_value_is_refused(
    manager: SubscriptionManager, memory: Memory
) -> None:
    """Every other field named and left empty goes back to its default; these two have none, and the update
    answered OK with nothing changed."""
    s = (await manager.create(ALICE, Draft(callback_url=URL))).subscription
    for field_name in ("callback_url", "status"):
        with pytest.raises(errors.InvalidRequest) as refused:
            await manager.update(ALICE, s.id, Draft(), [field_name])
        assert (refused.value.reason, refused.value.metadata["field"]) == ("FIELD_INVALID", field_name)
    disabled = await manager.update(ALICE, s.id, Draft(status=SubscriptionStatus.DISABLED), ["status"])
    assert disabled.status is SubscriptionStatus.DISABLED


async def test_a_subscription_naming_more_sources_than_its_filter_takes_is_refused() -> None:
    """With 70 sources configured, naming them all was accepted; the delivery cache's filter refused the list
    (at most 64) and the subscription matched nothing, without a word."""
    names = [f"src{i}" for i in range(70)]
    rules = Rules(sources=names, event_types={}, allow_networks=("127.0.0.0/8",), allow_http_hosts=("127.0.0.1",))
    memory = Memory()
    manager = SubscriptionManager(rules, memory, NoDeliveries(), Notices(memory))
    with pytest.raises(errors.InvalidRequest) as refused:
        await manager.create(ALICE, Draft(callback_url=URL, sources=tuple(names)))
    assert refused.value.reason == "SOURCES_INVALID" and memory.subs == {}
    made = await manager.create(ALICE, Draft(callback_url=URL, sources=tuple(names[:64])))
    assert len(made.subscription.sources) == 64


class LargeAttempts(NoDeliveries):
    """Twelve attempts of ~1 MiB (a response excerpt and headers), newest first, in pages as the store gives."""

    def __init__(self) -> None:
        self.rows = [
            Attempt(
                f"dlv_{i:02}",
                "sub",
                "shop",
                f"evt_{i}",
                1,
                2_000_000_000_000_000 - i * 1000,
                5,
                response_body=b"b" * 4096,
                response_headers={"server": "s" * (1024 * 1024)},
                run_id=f"run{i}",
            )
            for i in range(12)
        ]

    async def attempts_page(self, *args: Any) -> tuple[list[Attempt], Any]:
        _, _, _, limit, after = args
        rows = [a for a in self.rows if after is None or (a.started_us // 1000, a.delivery_id) < (after[1], after[2])]
        page = rows[:limit]
        last = page[-1] if len(page) == limit else None
        cursor = last and (last.started_us // 86_400_000_000, last.started_us // 1000, last.delivery_id, 1, last.run_id)
        return page, cursor


async def test_large_attempts_and_subscriptions_are_listed_in_pages_a_default_client_takes(memory: Memory) -> None:
    """A page of 1,000 attempts (4 KB excerpts, headers a receiver chose) or of subscriptions (public keys,
    conditions, metadata) could pass the 4 MiB a gRPC client takes by default; a page now ends at ~3 MiB and
    its token goes on after its last item, so that every item is listed once."""
    store = LargeAttempts()
    manager = SubscriptionManager(RULES, memory, store, Notices(memory))
    s = (await manager.create(ALICE, Draft(callback_url=URL))).subscription
    seen: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        page, token = await manager.list_attempts(
            ALICE, s.id, delivery_id="", start_us=0, end_us=2_100_000_000_000_000, page_size=1000, page_token=token
        )
        seen += [a.delivery_id for a in page]
        sizes.append(len(page))
        if not token:
            break
    assert seen == [a.delivery_id for a in store.rows] and sizes == [2, 2, 2, 2, 2, 2]
    for i in range(7):
        await manager.create(ALICE, Draft(callback_url=URL, description=f"{i}"))
    for sub in memory.subs.values():  # ~1 MiB each, as a subscription read back could be
        sub.public_key = "p" * (1024 * 1024)
    listed: list[str] = []
    pages = 0
    token = ""
    while True:
        subs, token = await manager.list_subscriptions(ALICE, 1000, token)
        listed += [x.id for x in subs]
        pages += 1
        assert len(subs) <= 2
        if not token:
            break
    assert sorted(listed) == sorted(memory.subs) and len(listed) == 8 and pages == 4
