"""HTTP routes of the conversation service (PROTOCOL.md ``/v1/conversations*``): HTTP in, use cases, JSON out."""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures at runtime, and
# the ``Caller`` dependency refers to ``auth``, a local of ``build_router``.

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Response, status
from pydantic import BaseModel, Field, StringConstraints

from services.common.clock import rfc3339
from services.common.push import Pusher
from services.common.tokens import Principal
from services.common.web import Authenticate, TextRoute
from services.conversation import app
from services.conversation.domain import MAX_ID_LENGTH, Activity, Conversation, Role
from services.conversation.ports import ActivityReader, ConversationStore, UserDirectory

# Bounds one request's work; larger groups are built with several additions.
MAX_USERS_PER_REQUEST = 1000

UserId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]


class DirectRequest(BaseModel):
    type: Literal["direct"]
    peer_id: UserId


class GroupRequest(BaseModel):
    type: Literal["group"]
    title: str = Field(description="1 to 100 characters after trimming.")
    member_ids: list[UserId] = Field(default_factory=list, max_length=MAX_USERS_PER_REQUEST)


class AddMembersRequest(BaseModel):
    user_ids: list[UserId] = Field(min_length=1, max_length=MAX_USERS_PER_REQUEST)


class ChangeRoleRequest(BaseModel):
    role: Literal["admin", "member"]


class MemberOut(BaseModel):
    user_id: str
    role: Literal["owner", "admin", "member"]


class ConversationOut(BaseModel):
    conversation_id: str
    type: Literal["direct", "group"]
    title: str | None
    members: list[MemberOut]
    max_seq: int
    read_seq: int
    unread_count: int
    last_message: dict[str, Any] | None
    large: bool
    created_at: str


class ConversationListOut(BaseModel):
    conversations: list[ConversationOut]


def conversation_wire(conversation: Conversation, activity: Activity) -> dict[str, Any]:
    return {
        "conversation_id": conversation.conversation_id,
        "type": conversation.type.value,
        "title": conversation.title,
        "members": [{"user_id": user_id, "role": role.value} for user_id, role in conversation.members.items()],
        "max_seq": activity.max_seq,
        "read_seq": activity.read_seq,
        "unread_count": activity.unread_count,
        "last_message": None if activity.last_message is None else dict(activity.last_message),
        "large": conversation.large,
        "created_at": rfc3339(conversation.created_at),
    }


@dataclass(frozen=True)
class Dependencies:
    store: ConversationStore
    users: UserDirectory
    activity: ActivityReader
    pusher: Pusher
    large_group_threshold: int


def build_router(deps: Dependencies, *, auth: Authenticate) -> APIRouter:
    router = APIRouter(tags=["conversations"], route_class=TextRoute)
    Caller = Annotated[Principal, Depends(auth)]

    async def answer(user_id: str, conversation: Conversation) -> dict[str, Any]:
        return conversation_wire(conversation, await app.activity_of(user_id, conversation, activity=deps.activity))

    @router.post("/v1/conversations", status_code=status.HTTP_201_CREATED, response_model=ConversationOut)
    async def create_conversation(
        body: Annotated[DirectRequest | GroupRequest, Body(discriminator="type")],
        response: Response,
        caller: Caller,
    ) -> dict[str, Any]:
        """A direct conversation (200 with the existing one for the same pair) or a group."""
        if isinstance(body, DirectRequest):
            conversation, created = await app.create_direct(
                app.CreateDirect(creator_id=caller.user_id, peer_id=body.peer_id),
                store=deps.store,
                users=deps.users,
                pusher=deps.pusher,
                large_group_threshold=deps.large_group_threshold,
            )
            if not created:
                response.status_code = status.HTTP_200_OK
        else:
            conversation = await app.create_group(
                app.CreateGroup(creator_id=caller.user_id, title=body.title, member_ids=tuple(body.member_ids)),
                store=deps.store,
                users=deps.users,
                pusher=deps.pusher,
                large_group_threshold=deps.large_group_threshold,
            )
        return await answer(caller.user_id, conversation)

    @router.get("/v1/conversations", response_model=ConversationListOut)
    async def list_conversations(caller: Caller) -> dict[str, Any]:
        """The caller's conversations, newest activity first."""
        listed = await app.list_conversations(
            app.ListConversations(user_id=caller.user_id), store=deps.store, activity=deps.activity
        )
        return {"conversations": [conversation_wire(c, a) for c, a in listed]}

    @router.get("/v1/conversations/{conversation_id}", response_model=ConversationOut)
    async def get_conversation(conversation_id: str, caller: Caller) -> dict[str, Any]:
        """404 for non-members, exactly as for a conversation that does not exist."""
        conversation, activity = await app.get_conversation(
            app.GetConversation(user_id=caller.user_id, conversation_id=conversation_id),
            store=deps.store,
            activity=deps.activity,
        )
        return conversation_wire(conversation, activity)

    @router.post("/v1/conversations/{conversation_id}/members", response_model=ConversationOut)
    async def add_members(conversation_id: str, body: AddMembersRequest, caller: Caller) -> dict[str, Any]:
        """Owner and admins add users to a group; users already in it are ignored."""
        conversation = await app.add_members(
            app.AddMembers(actor_id=caller.user_id, conversation_id=conversation_id, user_ids=tuple(body.user_ids)),
            store=deps.store,
            users=deps.users,
            pusher=deps.pusher,
            large_group_threshold=deps.large_group_threshold,
        )
        return await answer(caller.user_id, conversation)

    @router.delete(
        "/v1/conversations/{conversation_id}/members/{user_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
    )
    async def remove_member(conversation_id: str, user_id: str, caller: Caller) -> Response:
        """Admins remove members, the owner removes admins, anyone leaves (their own user_id)."""
        await app.remove_member(
            app.RemoveMember(actor_id=caller.user_id, conversation_id=conversation_id, user_id=user_id),
            store=deps.store,
            pusher=deps.pusher,
            large_group_threshold=deps.large_group_threshold,
        )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.patch("/v1/conversations/{conversation_id}/members/{user_id}", response_model=ConversationOut)
    async def change_role(
        conversation_id: str, user_id: str, body: ChangeRoleRequest, caller: Caller
    ) -> dict[str, Any]:
        """Extension: the owner makes a member an admin, or an admin a member again."""
        conversation = await app.change_role(
            app.ChangeRole(
                actor_id=caller.user_id, conversation_id=conversation_id, user_id=user_id, role=Role(body.role)
            ),
            store=deps.store,
            pusher=deps.pusher,
        )
        return await answer(caller.user_id, conversation)

    return router
