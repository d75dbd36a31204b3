"""The message service as other services and the delivery tier see it: one object over the use cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.push import Pusher
from services.message import app
from services.message.domain import decode_event
from services.message.ports import Conversation, Inbox, Record, Timeline


@dataclass
class MessageService:
    deps: app.MessageDeps
    inbox: Inbox
    timeline: Timeline
    pusher: Pusher
    sync_limit: int = 100

    async def send(self, cmd: app.SendMessage) -> app.Sent:
        return await app.send_message(cmd, deps=self.deps)

    async def send_many(self, cmds: Sequence[app.SendMessage]) -> list[app.Sent | Exception]:
        return await app.send_many(cmds, deps=self.deps)

    async def sync(
        self, user_id: str, cursors: Mapping[str, int], *, limit: int | None = None
    ) -> list[app.SyncedConversation]:
        return await app.sync(user_id, cursors, limit=limit or self.sync_limit, deps=self.deps)

    async def mark_read(self, conversation_id: str, user_id: str, seq: int) -> int:
        return await app.mark_read(conversation_id, user_id, seq, deps=self.deps, inbox=self.inbox, pusher=self.pusher)

    async def activity(self, user_id: str, conversations: Sequence[Conversation]) -> dict[str, app.Activity]:
        return await app.activity(
            user_id, conversations, store=self.deps.store, inbox=self.inbox, timeline=self.timeline
        )

    async def handle_record(self, record: Record) -> None:
        """The fan-out of one event-log record (the consumer's handler)."""
        event, recipients = record.event or decode_event(record.value)
        large = False
        if recipients is None:  # a large conversation's event (or one of an earlier release): look them up
            conversation = await self.deps.conversations.get(event.conversation_id)
            if conversation is None:
                return  # the conversation is gone; members will not see the event anywhere
            recipients, large = list(conversation.roles), conversation.large
        await app.fan_out(
            event, recipients=recipients, large=large, inbox=self.inbox, timeline=self.timeline, pusher=self.pusher
        )

    async def handle_records(self, records: Sequence[Record]) -> None:
        """The fan-out of records of one conversation, in order (the consumer's ``handle_many``): those that
        carry their recipients together; otherwise (a large conversation) one by one."""
        decoded = [record.event or decode_event(record.value) for record in records]
        small = [(event, recipients) for event, recipients in decoded if recipients is not None]
        if len(small) < len(decoded):
            for record in records:
                await self.handle_record(record)
            return
        await app.fan_out_many(small, inbox=self.inbox, pusher=self.pusher)
