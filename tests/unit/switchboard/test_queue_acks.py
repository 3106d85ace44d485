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

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        """pika's ``Channel.basic_ack``: writes the frame."""
        self.frames.append((delivery_tag, multiple))


def tracker(n: int, channel: Channel, max_waiting: int = 64) -> AckTracker:
    t = AckTracker(channel, max_waiting=max_waiting)
    for tag in range(1, n + 1):
        t.delivered(tag)
    return t


def test_a_settled_prefix_is_acked_in_one_frame() -> None:
    channel = Channel()
    t = tracker(5, channel)
    t.settle([2, 1, 3])
    assert channel.frames == [(3, True)]
    t.settle([5])
    assert channel.frames == [(3, True)]  # 4 is still held: 5 waits behind it
    t.settle([4])
    assert channel.frames == [(3, True), (5, True)] and len(t) == 0


def test_a_held_message_is_never_covered_by_another_ones_ack() -> None:
    channel = Channel()
    t = tracker(10, channel, max_waiting=3)
    t.settle([2, 3, 4, 5])  # 1 is held (running): more than max_waiting wait behind it
    assert 1 not in channel.acked() and channel.acked() == {2, 3, 4, 5}
    assert all(not multiple for _, multiple in channel.frames)
    t.settle([6])
    t.flush()
    assert channel.acked() == {2, 3, 4, 5, 6}
    t.settle([1])
    assert channel.acked() == set(range(1, 7)) and 7 not in channel.acked()


def test_a_returned_delivery_no_longer_blocks_the_prefix() -> None:
    channel = Channel()
    t = tracker(3, channel)
    t.returned(1)  # nacked by the caller (returned to the queue)
    assert channel.frames == []  # nothing settled yet
    t.settle([2, 3])
    assert channel.frames == [(3, True)]


def test_two_batches_settling_behind_a_held_message_ack_each_delivery_once() -> None:
    channel = Channel()
    t = tracker(20, channel, max_waiting=2)
    # 1 is held; the others finish in two batches: more than max_waiting wait behind 1.
    t.settle(range(2, 11))
    t.settle(range(11, 21))
    singles = [tag for tag, multiple in channel.frames if not multiple]
    assert sorted(singles) == list(range(2, 21)) and len(singles) == len(set(singles))
    assert 1 not in channel.acked()
    t.settle([1])
    assert channel.acked() == set(range(1, 21)) and len(t) == 0


def test_a_returned_delivery_lets_the_settled_ones_behind_it_be_acked_at_once() -> None:
    """After a nack, the deliveries already settled behind it stayed unacked until the channel's next settle (on
    a quiet partition, its next hand-over): a crash meanwhile redelivered work already committed (found in
    review)."""
    channel = Channel()
    t = tracker(4, channel)
    t.settle([2, 3])
    assert channel.frames == []  # 1 is held
    t.returned(1)  # the caller nacked it
    assert channel.frames == [(3, True)] and len(t) == 1  # 4 is still held
