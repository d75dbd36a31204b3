"""``fanout``: one group of G members, all online, one sender; for each message the time until the
last member has it, and the latency percentiles over every (message, member). Groups above the
server's large-group threshold (500 by default) take its read-diffusion path."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from bench.client import Acker, Socket
from bench.payload import sent_at, stamped
from bench.report import Result
from bench.sampling import Sampler, cpu_percent
from bench.scenarios import Context, close_all, close_codes, ramp, rate_limit_note
from bench.stats import Summary
from bench.users import BenchUser

MEMBERS_PER_REQUEST = 1000
GAP_S = 0.5


async def group_of(ctx: Context, users: list[BenchUser]) -> str:
    """The pool's group of exactly these users, reused across runs (creating 10,000 members takes a
    while); ``users[0]`` owns it. Created while nobody is connected, so no ``member_added`` storm."""
    owner, members = users[0], users[1:]
    key = f"fanout-{len(users)}"
    cached = ctx.pool.cache.conversations.get(key)
    if cached is not None:
        found = await ctx.http.conversation(owner.access_token, cached)
        if found is not None and len(found["members"]) == len(users):
            return cached
    ids = [m.user_id for m in members]
    cid = await ctx.http.group(owner.access_token, f"bench fanout {len(users)}", ids[: MEMBERS_PER_REQUEST - 1])
    for start in range(MEMBERS_PER_REQUEST - 1, len(ids), MEMBERS_PER_REQUEST):
        ctx.progress.show(f"fanout: adding members {start:,}/{len(ids):,}")
        await ctx.http.add_members(owner.access_token, cid, ids[start : start + MEMBERS_PER_REQUEST])
    ctx.pool.cache.conversations[key] = cid
    ctx.pool.cache.save()
    return cid


async def run(ctx: Context) -> Result:
    options, target = ctx.options, ctx.target
    g = options.members
    result = Result(
        "fanout",
        target.name,
        {"members": g, "messages": options.group_messages, "timeout_s": options.group_timeout_s, "gap_s": GAP_S},
        sample_label="per-member latency (ms)",
    )
    users = await ctx.pool.users(options.pool, g, valid_for_s=600.0)
    cid = await group_of(ctx, users)
    found = await ctx.http.conversation(users[0].access_token, cid)
    result.parameters["large"] = bool(found and found.get("large"))
    arrivals: dict[int, list[float]] = {}  # seq -> latency (s) of each member
    samples: list[tuple[float, float]] = []
    ackers: dict[int, Acker] = {}
    origin = time.time()

    def handler(index: int) -> Any:
        def handle(frame: dict[str, Any], arrived: float) -> None:
            if frame.get("type") != "message" or frame.get("conversation_id") != cid:
                return
            seq = int(frame["seq"])
            acker = ackers.get(index)
            if acker is not None:
                acker.note(cid, seq)
            sent = sent_at((frame.get("content") or {}).get("text"))
            if sent is not None and not frame.get("redelivered"):
                arrivals.setdefault(seq, []).append(arrived - sent)
                samples.append((arrived - origin, (arrived - sent) * 1000.0))

        return handle

    # The sender first: a gateway at its limit of open files refuses whoever comes last (docs/design.md 7.3).
    sender = await Socket.open_retrying(target.ws_url, users[0].access_token, deflate=options.deflate)
    receivers = await ramp(ctx, users[1:], handler, what="members")
    ack_tasks = []
    for index, socket in enumerate(receivers.sockets):
        if socket is not None:
            ackers[index], task = Acker.start(socket)
            ack_tasks.append(task)
    online = len(receivers.opened)
    tag = secrets.token_hex(4)
    to_last: list[float] = []
    complete = 0
    sampler = Sampler(target.pids, every_s=0.5)
    started = time.monotonic()
    async with sampler.running():
        for number in range(options.group_messages):
            answer = await sender.request(
                {
                    "type": "send",
                    "conversation_id": cid,
                    "client_msg_id": f"f{tag}-{number}",
                    "content": {"type": "text", "text": stamped(options.text_size)},
                }
            )
            if answer.get("type") != "send_ack":
                result.errors[f"send: {answer.get('code')}"] += 1
                continue
            seq = int(answer["seq"])
            deadline = time.monotonic() + options.group_timeout_s
            while time.monotonic() < deadline and len(arrivals.get(seq, ())) < online:
                have = len(arrivals.get(seq, ()))
                ctx.progress.show(f"fanout: message {number + 1}/{options.group_messages}: {have:,}/{online:,} members")
                await asyncio.sleep(0.01)
            got = arrivals.get(seq, [])
            if len(got) >= online:
                complete += 1
                to_last.append(max(got))
            else:
                result.errors["members missing a message at the timeout"] += online - len(got)
            await asyncio.sleep(GAP_S)
    ctx.progress.clear()
    for task in ack_tasks:
        task.cancel()
    result.errors += receivers.errors + close_codes(receivers.sockets)
    await close_all([*receivers.sockets, sender])
    result.duration_s = time.monotonic() - started
    result.samples = samples
    per_member = Summary.of(lat for lats in arrivals.values() for lat in lats).scaled(1000.0)
    last = Summary.of(to_last).scaled(1000.0)
    result.add("members", "group members", g)
    result.add("online", "members online (receiving)", online)
    result.add("complete", "messages every online member got", complete)
    result.add("to_last_p50_ms", "time to the last member, P50 of messages", last.p50, "ms")
    result.add(
        "to_last_max_ms", "time to the last member, worst message", last.max, "ms", "< 2,000 ms for 10,000 members"
    )
    result.add_latency("member_latency", "per-member latency", per_member)
    shares = cpu_percent(sampler.readings[0], sampler.readings[-1])
    result.parameters["cpu_percent"] = {k: round(v, 1) for k, v in shares.items()}
    result.notes += rate_limit_note(result.errors)
    return result
