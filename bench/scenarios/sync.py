"""``sync``: a device comes back after K messages were stored while it was away, and pages through
``sync`` from its last seq; sync time, messages per second, and that nothing is missing."""

from __future__ import annotations

import asyncio
import secrets
import time

from bench.client import Socket
from bench.payload import stamped
from bench.report import Result
from bench.scenarios import Context, rate_limit_note
from bench.stats import Summary, rate

PAGE_LIMIT = 1000  # the most a client may ask for; the server caps it (COURIER_DELIVERY__SYNC_PAGE_LIMIT)


async def run(ctx: Context) -> Result:
    options, target = ctx.options, ctx.target
    k = options.backlog
    result = Result(
        "sync",
        target.name,
        {"backlog": k, "send_window": options.backlog_window, "page_limit_asked": PAGE_LIMIT},
        sample_label="sync page latency (ms)",
    )
    # Two users of their own: a device syncs every conversation it is in, so the returning device
    # must be in this one only.
    sender, device = await ctx.pool.users("s", 2, valid_for_s=600.0)
    cid = await ctx.http.direct(sender.access_token, device.user_id)
    tag = secrets.token_hex(4)
    writer = await Socket.open(target.ws_url, sender.access_token, deflate=options.deflate)
    slots = asyncio.Semaphore(options.backlog_window)
    seqs: list[int] = []
    ack_rtts: list[float] = []
    started = time.monotonic()

    async def send(number: int) -> None:
        async with slots:
            begun = time.perf_counter()
            answer = await writer.request(
                {
                    "type": "send",
                    "conversation_id": cid,
                    "client_msg_id": f"s{tag}-{number}",
                    "content": {"type": "text", "text": stamped(options.text_size)},
                }
            )
            if answer.get("type") == "send_ack":
                seqs.append(int(answer["seq"]))
                ack_rtts.append(time.perf_counter() - begun)
            else:
                result.errors[f"send: {answer.get('code')}"] += 1

    async with ctx.progress.ticking(lambda: f"sync: storing the backlog {len(seqs):,}/{k:,}"):
        await asyncio.gather(*(send(n) for n in range(k)))
    write_s = time.monotonic() - started
    await writer.close()
    if not seqs:
        result.notes.append("no message was stored; nothing to sync")
        return result
    first, last = min(seqs), max(seqs)

    began = time.monotonic()
    reader = await Socket.open(target.ws_url, device.access_token, deflate=options.deflate)
    connected = time.monotonic()
    cursor, got, pages, page_times = first - 1, [], 0, []
    while True:
        asked = time.monotonic()
        answer = await reader.request({"type": "sync", "cursors": {cid: cursor}, "limit": PAGE_LIMIT})
        page_times.append((asked - began, (time.monotonic() - asked) * 1000.0))
        if answer.get("type") != "sync_result":
            result.errors[f"sync: {answer.get('code')}"] += 1
            break
        pages += 1
        page = next((c for c in answer["conversations"] if c["conversation_id"] == cid), None)
        if page is None or not page["messages"]:
            break
        got += [int(m["seq"]) for m in page["messages"]]
        cursor = got[-1]
        ctx.progress.show(f"sync: {len(got):,} messages in {pages} pages")
        if not page["has_more"]:
            break
    finished = time.monotonic()
    await reader.close()
    ctx.progress.clear()
    expected = list(range(first, last + 1))
    complete = got[: len(expected)] == expected
    if not complete:
        result.errors["sync: messages missing or out of order"] += 1
    result.samples = page_times
    sync_s = finished - connected
    result.duration_s = finished - started
    result.add("backlog", "messages stored while away", len(seqs))
    result.add("store_rate", "backlog stored (one sender, pipelined)", rate(len(seqs), write_s), "msg/s")
    result.add(
        "send_ack_p99_ms", "send_ack round trip P99 while storing", Summary.of(ack_rtts).scaled(1000.0).p99, "ms"
    )
    result.add("connect_ms", "reconnect (handshake)", (connected - began) * 1000.0, "ms")
    result.add("sync_ms", "sync time, all pages", sync_s * 1000.0, "ms")
    result.add("sync_rate", "sync throughput", rate(len(got), sync_s), "msg/s")
    result.add("pages", "sync pages", pages)
    result.add("page_p99_ms", "sync page P99", Summary.of(ms for _, ms in page_times).p99, "ms")
    result.add("complete", "every message, in order (1 = yes)", int(complete))
    result.notes += rate_limit_note(result.errors)
    return result
