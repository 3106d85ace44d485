from __future__ import annotations

import pytest

from processor_service.operations import Operation, OperationContext, SkipOperation, load_operation
from switchboard import errors
from switchboard.config import OperationConfig
from switchboard.model.events import EntitySnapshot, InboundEvent, Outcome
from tests.unit.factories import event


async def test_operations_match_globs_and_record_outcomes() -> None:
    async def ok(e: InboundEvent) -> None:
        return None

    async def skip(e: InboundEvent) -> None:
        raise SkipOperation("not interesting")

    async def boom(e: InboundEvent) -> None:
        raise ValueError("nope")

    async def slow(e: InboundEvent) -> None:
        import asyncio

        await asyncio.sleep(5)

    op = Operation("ok", ok, event_types=("invoice.*",), sources=("shop",))
    assert op.matches(event()) and not op.matches(event(event_type="charge.succeeded"))
    assert not op.matches(event(source="other"))
    assert (await op.run(event(), attempt=1))[0].outcome is Outcome.OK
    skipped, _ = await Operation("s", skip).run(event(), attempt=2)
    assert (skipped.outcome, skipped.error, skipped.attempt) == (Outcome.SKIPPED, "not interesting", 2)
    failed, _ = await Operation("b", boom).run(event(), attempt=1)
    assert (failed.outcome, failed.error) == (Outcome.FAILED, "ValueError: nope")
    timed_out, _ = await Operation("t", slow, timeout_seconds=0.05).run(event(), attempt=1)
    assert timed_out.outcome is Outcome.FAILED and "timed out" in timed_out.error
    first, again = (await op.run(event(), attempt=1))[0], (await op.run(event(), attempt=1))[0]
    assert first.run_id != again.run_id  # two runs are two records, never one overwritten row


async def test_operation_context_stages_effects_only_when_the_operation_succeeds() -> None:
    async def snapshot_then_fail(e: InboundEvent, ctx: OperationContext) -> None:
        ctx.save_entity_state(e)
        if ctx.attempt == 1:
            raise RuntimeError("downstream down")

    op = load_operation(OperationConfig("snap", "processor_service.builtin:record_entity"))
    assert op.takes_context
    result, effects = await op.run(event(), attempt=3)
    assert result.outcome is Outcome.OK
    assert effects == [EntitySnapshot("shop", "in_1", 7, "evt_1", "invoice.paid", "application/json", b"\x00\xff{}")]
    no_entity, effects = await op.run(event(entity_id=""), attempt=1)
    assert (no_entity.outcome, effects) == (Outcome.SKIPPED, [])
    flaky = Operation("flaky", snapshot_then_fail, takes_context=True)
    failed, effects = await flaky.run(event(), attempt=1)
    assert (failed.outcome, effects) == (Outcome.FAILED, [])  # a failed run's staged effects are dropped
    ok, effects = await flaky.run(event(), attempt=2)
    assert ok.outcome is Outcome.OK and len(effects) == 1


def test_operations_are_loaded_from_config_and_checked() -> None:
    assert not load_operation(OperationConfig("log", "processor_service.builtin:log_event")).takes_context
    with pytest.raises(errors.ConfigError, match="cannot load"):
        load_operation(OperationConfig("x", "processor_service.builtin:nope"))
    with pytest.raises(errors.ConfigError, match="async function"):
        load_operation(OperationConfig("x", "switchboard.model.events:now_us"))


def test_an_operation_runs_when_stale_if_it_says_so_or_its_configuration_does() -> None:
    """``run_when_stale`` unset takes the callable's ``runs_when_stale``; set, it decides either way."""
    from processor_service.fanout import CALL, FanOut

    fan_out = FanOut.__new__(FanOut)  # the declaration is on the class; no cache or publisher is needed
    bound = {CALL: fan_out}
    assert load_operation(OperationConfig("deliver", CALL), bound).runs_when_stale
    assert not load_operation(OperationConfig("deliver", CALL, run_when_stale=False), bound).runs_when_stale
    log_event = OperationConfig("log", "processor_service.builtin:log_event")
    assert not load_operation(log_event).runs_when_stale
    assert load_operation(OperationConfig("log", log_event.call, run_when_stale=True)).runs_when_stale


async def test_a_cancelled_error_leaked_by_an_operation_is_its_failure_but_a_cancel_of_the_processor_is_not() -> None:
    """An operation awaiting a future its own library cancelled raises CancelledError while nothing cancels the
    processor: let through, it ended the batch's task with nothing acked and nothing logged."""
    import asyncio

    async def leaks(e: InboundEvent) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    failed, effects = await Operation("leaky", leaks).run(event(), attempt=1)
    assert (failed.outcome, failed.error, effects) == (
        Outcome.FAILED,
        "CancelledError: raised inside the operation",
        [],
    )

    async def waits(e: InboundEvent) -> None:
        await asyncio.sleep(5)

    running = asyncio.create_task(Operation("slow", waits).run(event(), attempt=1))
    await asyncio.sleep(0.01)
    running.cancel()  # the processor stopping
    with pytest.raises(asyncio.CancelledError):
        await running
