"""AckTracker: acks go out in delivery order, many per frame, and never cover a message still held."""

from __future__ import annotations

from dataclasses import dataclass, field

from switchboard.queue.acks import AckTracker


@dataclass
class Channel:
    frames: list[tuple[int, bool]] = field(default_factory=list)  # (delivery tag, multiple)

    def acked(self) -> set[int]:
        """Delivery tags the broker considers acked after these frames (``multiple`` covers every lower tag)."""
        out: set[int] = set()
        for tag, multiple in self.frames:
            out |= set(range(1, tag + 1)) if multiple else {tag}
        return out


@dataclass
class Raw:
    channel: Channel
    tag: int

    async def ack(self, multiple: bool = False) -> None:
        self.channel.frames.append((self.tag, multiple))


def tracker(n: int, channel: Channel, max_waiting: int = 64) -> AckTracker:
    t = AckTracker(max_waiting=max_waiting)
    for tag in range(1, n + 1):
        t.delivered(tag, Raw(channel, tag))
    return t


async def test_a_settled_prefix_is_acked_in_one_frame() -> None:
    channel = Channel()
    t = tracker(5, channel)
    await t.settle([2, 1, 3])
    assert channel.frames == [(3, True)]
    await t.settle([5])
    assert channel.frames == [(3, True)]  # 4 is still held: 5 waits behind it
    await t.settle([4])
    assert channel.frames == [(3, True), (5, True)] and len(t) == 0


async def test_a_held_message_is_never_covered_by_another_ones_ack() -> None:
    channel = Channel()
    t = tracker(10, channel, max_waiting=3)
    await t.settle([2, 3, 4, 5])  # 1 is held (running): more than max_waiting wait behind it
    assert 1 not in channel.acked() and channel.acked() == {2, 3, 4, 5}
    assert all(not multiple for _, multiple in channel.frames)
    await t.settle([6])
    await t.flush()
    assert channel.acked() == {2, 3, 4, 5, 6}
    await t.settle([1])
    assert channel.acked() == set(range(1, 7)) and 7 not in channel.acked()


async def test_a_forgotten_delivery_no_longer_blocks_the_prefix() -> None:
    channel = Channel()
    t = tracker(3, channel)
    t.forget(1)  # nacked elsewhere (returned to the queue)
    await t.settle([2, 3])
    assert channel.frames == [(3, True)]


async def test_concurrent_settles_never_ack_a_delivery_twice() -> None:
    import asyncio

    channel = Channel()

    class SlowRaw(Raw):
        async def ack(self, multiple: bool = False) -> None:
            await asyncio.sleep(0)  # the driver yields while it writes the frame
            await super().ack(multiple)

    t = AckTracker(max_waiting=2)
    for tag in range(1, 21):
        t.delivered(tag, SlowRaw(channel, tag))
    # 1 is held; the others finish in two batches at once: more than max_waiting wait behind 1.
    await asyncio.gather(t.settle(range(2, 11)), t.settle(range(11, 21)))
    singles = [tag for tag, multiple in channel.frames if not multiple]
    assert sorted(singles) == list(range(2, 21)) and len(singles) == len(set(singles))
    await t.settle([1])
    assert channel.acked() == set(range(1, 21))
