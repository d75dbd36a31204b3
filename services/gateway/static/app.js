// The Courier web chat page: wires the session (api.js), the socket (socket.js) and each
// conversation's state (timeline.js) to the page. Talks only the public protocol (docs/protocol.md).

import { ApiError, Session } from "./api.js";
import { el, formatSize, formatTime, KeyedList } from "./dom.js";
import { download, upload } from "./files.js";
import { Connection } from "./socket.js";
import * as timeline from "./timeline.js";

const HISTORY_PAGE = 50;
const SYNC_PAGE = 100;
const TYPING_RESEND_MS = 3_000; // "start" again while typing, so the peer's indicator does not fade
const TYPING_IDLE_MS = 4_000; // no keystroke for this long sends "stop"
const TYPING_SHOWN_MS = 8_000; // a peer's "start" without a "stop" fades after this
const RESEND_AFTER_MS = 3_000;
const LOOKUP_RETRY_MS = 30_000;
const NOTICE_MS = 6_000;
const PRESENCE_BATCH = 200;

const $ = (id) => document.getElementById(id);

const session = new Session();
let socket = null;
let state = freshState();
let conversationList;
let messageList;

function freshState() {
  return {
    me: null,
    users: new Map(), // user_id -> {user_id, username, display_name}
    userLookups: new Set(), // user ids being fetched
    convs: new Map(), // conversation_id -> timeline.newConversation()
    active: null,
    presence: new Map(), // user_id -> {online, last_seen}
    subscribed: new Set(), // presence subscriptions on the current socket
    syncing: null,
    syncAgain: false,
    typing: { conversationId: null, sentAt: 0, timer: null },
    listReload: null,
  };
}

function conv(id) {
  let found = state.convs.get(id);
  if (!found) {
    found = timeline.newConversation(id);
    state.convs.set(id, found);
  }
  return found;
}

function me() {
  return state.me?.user_id;
}

function notice(message) {
  const box = $("notice");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => {
    box.hidden = true;
  }, NOTICE_MS);
}

function describe(exc) {
  return exc instanceof ApiError ? exc.message : String(exc?.message ?? exc);
}

function isVisible() {
  return document.visibilityState === "visible";
}

// ---------------------------------------------------------------------------------------------
// Users and titles

/** Every render asks for the users it names; each is fetched once (a failure is retried later). */
function lookUpUsers(userIds) {
  for (const id of new Set(userIds)) {
    if (state.users.has(id) || state.userLookups.has(id)) continue;
    state.userLookups.add(id);
    const asked = state;
    session
      .call("GET", `/v1/users/${encodeURIComponent(id)}`)
      .then((user) => {
        if (asked !== state) return; // signed out meanwhile
        state.users.set(id, user);
        render();
      })
      .catch(() => setTimeout(() => asked.userLookups.delete(id), LOOKUP_RETRY_MS));
  }
}

function nameOf(userId) {
  const user = state.users.get(userId);
  return user ? user.display_name || user.username : "…";
}

function peerOf(c) {
  if (c.data?.type !== "direct") return null;
  return c.data.members.find((m) => m.user_id !== me())?.user_id ?? null;
}

function titleOf(c) {
  if (!c.data) return "…";
  if (c.data.type === "group") return c.data.title || "Group";
  const peer = peerOf(c);
  return peer ? nameOf(peer) : "Just you";
}

function presenceText(userId) {
  const p = state.presence.get(userId);
  if (!p) return "";
  if (p.online) return "online";
  return p.last_seen ? `last seen ${formatTime(p.last_seen)}` : "offline";
}

// ---------------------------------------------------------------------------------------------
// Conversations

async function loadConversations() {
  const [asked, askedAt] = [state, performance.now()];
  const { conversations } = await session.call("GET", "/v1/conversations");
  if (asked !== state) return; // signed out meanwhile: this list is someone else's
  const listed = new Set();
  for (const data of conversations) {
    adopt(data);
    listed.add(data.conversation_id);
  }
  for (const c of [...state.convs.values()]) {
    // Not listed any more (removed while away), unless we learned of it after asking.
    if (c.data && !listed.has(c.id) && c.adoptedAt < askedAt) forget(c.id);
  }
  subscribePresence();
  render(); // asks for the names it shows: direct peers, senders, typists
}

function adopt(data) {
  const c = conv(data.conversation_id);
  timeline.adoptSummary(c, data);
  c.adoptedAt = performance.now();
  return c;
}

function forget(id) {
  const c = state.convs.get(id);
  c?.typers.forEach((timer) => clearTimeout(timer));
  state.convs.delete(id);
  if (state.active === id) state.active = null;
}

/** Membership frames often come in bursts: one reload for a burst. */
function reloadConversationsSoon() {
  if (state.listReload) return;
  state.listReload = setTimeout(async () => {
    state.listReload = null;
    try {
      await loadConversations();
    } catch (exc) {
      notice(`Could not refresh the conversation list: ${describe(exc)}`);
    }
  }, 150);
}

function listedConvs() {
  return [...state.convs.values()].filter((c) => c.data).sort((a, b) => b.lastActivity - a.lastActivity);
}

async function openConversation(id) {
  if (state.typing.conversationId !== id) stopTyping();
  state.active = id;
  const c = conv(id);
  render({ toBottom: true });
  $("message-input").focus();
  if (!c.loaded && !c.loading) {
    c.loading = true;
    try {
      const page = await session.call("GET", `${messagesPath(c)}?limit=${HISTORY_PAGE}`);
      timeline.mergeHistory(c, page.messages, me());
      c.hasOlder = page.has_more;
      c.loaded = true;
    } catch (exc) {
      notice(`Could not load the messages: ${describe(exc)}`);
    } finally {
      c.loading = false;
    }
    if (state.active === id) render({ toBottom: true });
  }
  markRead(c);
}

function messagesPath(c) {
  return `/v1/conversations/${encodeURIComponent(c.id)}/messages`;
}

async function loadOlder() {
  const c = state.convs.get(state.active);
  if (!c?.loaded || !c.messages.size) return;
  const scroller = $("message-scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  try {
    const oldest = Math.min(...c.messages.keys());
    const page = await session.call("GET", `${messagesPath(c)}?before_seq=${oldest}&limit=${HISTORY_PAGE}`);
    timeline.mergeHistory(c, page.messages, me());
    c.hasOlder = page.has_more;
  } catch (exc) {
    notice(`Could not load older messages: ${describe(exc)}`);
  }
  renderPane();
  scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep the reader's place
}

async function startDirect(user) {
  const asked = state;
  try {
    const data = await session.call("POST", "/v1/conversations", { type: "direct", peer_id: user.user_id });
    if (asked !== state) return;
    $("user-search").value = "";
    $("user-results").replaceChildren();
    await adoptConversation(data);
  } catch (exc) {
    notice(`Could not start the conversation: ${describe(exc)}`);
  }
}

async function createGroup(event) {
  event.preventDefault();
  const title = $("group-title").value.trim();
  const usernames = $("group-members").value.split(/[\s,]+/).filter(Boolean);
  const asked = state;
  try {
    const memberIds = [];
    for (const username of usernames) {
      const found = await findUser(username);
      if (found.user_id !== me()) memberIds.push(found.user_id);
    }
    const data = await session.call("POST", "/v1/conversations", { type: "group", title, member_ids: memberIds });
    if (asked !== state) return;
    $("group-form").reset();
    $("group-panel").open = false;
    await adoptConversation(data);
  } catch (exc) {
    notice(`Could not create the group: ${describe(exc)}`);
  }
}

async function findUser(username) {
  const { users } = await session.call("GET", `/v1/users?prefix=${encodeURIComponent(username)}&limit=100`);
  const found = users.find((u) => u.username.toLowerCase() === username.toLowerCase());
  if (!found) throw new Error(`there is no user named ${username}`);
  state.users.set(found.user_id, found);
  return found;
}

async function adoptConversation(data) {
  const c = adopt(data);
  c.lastActivity = Math.max(c.lastActivity, Date.now());
  subscribePresence();
  await openConversation(c.id);
}

// ---------------------------------------------------------------------------------------------
// Events from the socket: stored events, receipts, typing, presence, membership

function onFrame(frame) {
  switch (frame.type) {
    case "message":
      onStoredEvent(frame);
      break;
    case "recalled":
    case "edited":
      onStoredEvent(timeline.tombstoneOf(frame));
      break;
    case "read_receipt":
      onReadReceipt(frame);
      break;
    case "typing":
      onTyping(frame);
      break;
    case "presence":
      state.presence.set(frame.user_id, { online: frame.online, last_seen: frame.last_seen });
      render();
      break;
    case "member_added":
    case "member_removed":
    case "member_role_changed":
      if (frame.type === "member_removed" && frame.user_id === me()) {
        forget(frame.conversation_id);
        render();
      }
      reloadConversationsSoon();
      break;
    case "error":
      if (frame.ref == null) notice(frame.message);
      break;
    default:
      break; // call signalling and frames added later have no place on this page
  }
}

function onStoredEvent(event) {
  const c = conv(event.conversation_id);
  if (!c.data) reloadConversationsSoon(); // a conversation we have not listed yet
  const { fresh, gap } = timeline.applyEvent(c, event, me());
  acknowledge(c, { again: !fresh }); // a retransmission means our ack was lost: send it again
  if (gap && c.data) syncSoon(); // for an unlisted one, the list's max_seq will stand for the gap
  afterEvents([c]);
}

/** Cumulative ack up to the contiguous cursor: acking past a gap would drop the missing event. */
function acknowledge(c, { again = false } = {}) {
  if (c.cursor === 0 || !(again || c.cursor > c.acked)) return;
  if (socket?.send({ type: "ack", conversation_id: c.id, seq: c.cursor })) c.acked = c.cursor;
}

function afterEvents(changed) {
  render();
  if (changed.some((c) => c.id === state.active)) markRead(state.convs.get(state.active));
}

function onReadReceipt(frame) {
  const c = conv(frame.conversation_id);
  if (frame.user_id === me()) {
    // Read on another device of ours.
    c.readSent = Math.max(c.readSent, frame.seq);
    if (c.data) {
      c.data.read_seq = Math.max(c.data.read_seq, frame.seq);
      c.data.unread_count = Math.max(0, c.data.max_seq - c.data.read_seq);
    }
  } else {
    c.peerRead.set(frame.user_id, Math.max(c.peerRead.get(frame.user_id) ?? 0, frame.seq));
  }
  render();
}

function onTyping(frame) {
  if (frame.user_id === me()) return;
  const c = conv(frame.conversation_id);
  clearTimeout(c.typers.get(frame.user_id));
  if (frame.state === "start") {
    const forget = () => {
      c.typers.delete(frame.user_id);
      render();
    };
    c.typers.set(frame.user_id, setTimeout(forget, TYPING_SHOWN_MS));
  } else {
    c.typers.delete(frame.user_id);
  }
  render();
}

// ---------------------------------------------------------------------------------------------
// Sync: after every (re)connect, and whenever a gap shows

/** Start a sync, or ask the running one to go again; resolves once nothing is left to sync. */
function syncSoon() {
  if (state.syncing) {
    state.syncAgain = true;
    return state.syncing;
  }
  state.syncing = runSyncs().finally(() => {
    state.syncing = null;
  });
  return state.syncing;
}

async function runSyncs() {
  for (;;) {
    state.syncAgain = false;
    try {
      await syncAll();
    } catch (exc) {
      // A sync cut short by a reconnect is redone by the new connection.
      if (!state.syncAgain) {
        if (socket?.isOpen) notice(`Sync failed: ${describe(exc)}`);
        return;
      }
    }
    if (!state.syncAgain) return;
  }
}

async function syncAll() {
  for (;;) {
    const cursors = Object.fromEntries([...state.convs.values()].map((c) => [c.id, c.cursor]));
    const answer = await socket.request({ type: "sync", cursors, limit: SYNC_PAGE });
    if (answer.type === "error") throw new ApiError(0, answer.code, answer.message);
    const changed = answer.conversations.map((entry) => {
      const c = conv(entry.conversation_id);
      for (const event of entry.messages) timeline.applyEvent(c, event, me());
      acknowledge(c);
      return c;
    });
    if (changed.some((c) => !c.data)) {
      // New to us, so synced from 0: list it first, and its cursor jumps to its newest seq instead
      // of paging through its whole history (fetched page by page when opened).
      await loadConversations().catch(() => reloadConversationsSoon());
    }
    afterEvents(changed);
    if (!answer.conversations.some((entry) => entry.has_more)) return;
  }
}

// ---------------------------------------------------------------------------------------------
// Sending: text and files, pending until the server's send_ack

function addPending(c, content, extra = {}) {
  const pending = {
    clientMsgId: `web-${crypto.randomUUID()}`,
    content,
    status: "sending",
    createdAt: new Date().toISOString(),
    ...extra,
  };
  c.pending.set(pending.clientMsgId, pending);
  return pending;
}

function sendText(c, text) {
  const pending = addPending(c, { type: "text", text });
  renderPane({ toBottom: true });
  transmit(c, pending);
}

/** Send over the socket; without one the message waits and goes after the next sync. */
async function transmit(c, pending) {
  if (!socket?.isOpen) {
    pending.status = "queued";
    renderPane();
    return;
  }
  pending.status = "sending";
  let answer;
  try {
    answer = await socket.request({
      type: "send",
      conversation_id: c.id,
      client_msg_id: pending.clientMsgId, // the same id again is idempotent on the server
      content: pending.wire ?? pending.content,
    });
  } catch {
    pending.status = "queued";
    if (socket?.isOpen) retryLater(c, pending); // no answer in time on a live socket
    renderPane();
    return;
  }
  if (answer.type === "error") {
    if (answer.code === "rate_limited" || answer.code === "unavailable") {
      pending.status = "queued";
      retryLater(c, pending);
    } else {
      pending.status = "failed";
      pending.error = answer.message;
    }
    renderPane();
    return;
  }
  if (!c.pending.has(pending.clientMsgId)) return; // sync brought it first
  const { gap } = timeline.applyEvent(
    c,
    {
      message_id: answer.message_id,
      conversation_id: c.id,
      seq: answer.seq,
      sender_id: me(),
      sender_device_id: session.deviceId,
      client_msg_id: pending.clientMsgId,
      content: pending.content,
      created_at: answer.created_at,
      recalled: false,
      edited: false,
    },
    me(),
  );
  c.pending.delete(pending.clientMsgId);
  if (gap) syncSoon();
  afterEvents([c]);
}

function retryLater(c, pending) {
  setTimeout(() => {
    if (c.pending.get(pending.clientMsgId) === pending && pending.status === "queued") transmit(c, pending);
  }, RESEND_AFTER_MS);
}

function resendPending() {
  for (const c of state.convs.values()) {
    for (const pending of c.pending.values()) {
      if (pending.status === "queued" || pending.status === "sending") transmit(c, pending);
    }
  }
}

async function sendFile(c, file) {
  const content = { type: "file", name: file.name, size: file.size, content_type: file.type || "" };
  const pending = addPending(c, content, { status: "uploading", progress: 0, file });
  renderPane({ toBottom: true });
  try {
    const stored = await upload(session, file, (progress) => {
      pending.progress = progress;
      renderPane();
    });
    Object.assign(content, { file_id: stored.file_id, content_type: stored.content_type });
    pending.wire = { type: "file", file_id: stored.file_id };
    delete pending.file;
    await transmit(c, pending);
  } catch (exc) {
    pending.status = "failed";
    pending.error = `upload failed: ${describe(exc)}`;
    renderPane();
  }
}

function retry(c, pending) {
  if (pending.file) {
    c.pending.delete(pending.clientMsgId);
    sendFile(c, pending.file); // uploads are deduplicated by sha256: a second try is cheap
  } else {
    transmit(c, pending);
  }
}

async function saveFile(content) {
  try {
    await download(session, content);
  } catch (exc) {
    notice(`Download failed: ${describe(exc)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Read receipts, typing, presence subscriptions

function markRead(c) {
  if (!c?.data || c.id !== state.active || !isVisible()) return;
  const seq = timeline.readableSeq(c);
  c.data.read_seq = Math.max(c.data.read_seq, seq);
  c.data.unread_count = Math.max(0, c.data.max_seq - c.data.read_seq);
  if (seq > c.readSent) {
    c.readSent = seq;
    if (!socket?.send({ type: "read", conversation_id: c.id, seq })) {
      session.call("POST", `/v1/conversations/${encodeURIComponent(c.id)}/read`, { seq }).catch(() => {
        c.readSent = Math.min(c.readSent, seq - 1); // try again on the next occasion
      });
    }
  }
  renderList();
}

function onComposerInput() {
  const input = $("message-input");
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight + 2}px`; // grow with the text, up to the CSS max-height
  const c = state.convs.get(state.active);
  if (!c) return;
  if (!input.value.trim()) {
    stopTyping();
    return;
  }
  const typing = state.typing;
  const now = Date.now();
  if (typing.conversationId !== c.id || now - typing.sentAt > TYPING_RESEND_MS) {
    if (socket?.send({ type: "typing", conversation_id: c.id, state: "start" })) {
      typing.conversationId = c.id;
      typing.sentAt = now;
    }
  }
  clearTimeout(typing.timer);
  typing.timer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  const typing = state.typing;
  clearTimeout(typing.timer);
  if (typing.conversationId) socket?.send({ type: "typing", conversation_id: typing.conversationId, state: "stop" });
  typing.conversationId = null;
  typing.sentAt = 0;
}

function subscribePresence() {
  if (!socket?.isOpen) return;
  const peers = [...new Set(listedConvs().map(peerOf))].filter((id) => id && !state.subscribed.has(id));
  for (let i = 0; i < peers.length; i += PRESENCE_BATCH) {
    const batch = peers.slice(i, i + PRESENCE_BATCH);
    if (socket.send({ type: "presence_subscribe", user_ids: batch })) batch.forEach((id) => state.subscribed.add(id));
  }
}

// ---------------------------------------------------------------------------------------------
// The socket

function connect() {
  socket = new Connection(async () => {
    await session.ensureFresh();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.host}/v1/ws?access_token=${encodeURIComponent(session.accessToken)}`;
  });
  socket.addEventListener("state", (event) => {
    // Only the tab holding the device's socket refreshes tokens on a timer; see api.js.
    if (event.detail.state === "replaced") session.setActive(false);
    else if (event.detail.state === "open") session.setActive(true);
    renderConnection(event.detail);
  });
  let reconnected = false;
  socket.addEventListener("open", async () => {
    state.subscribed.clear();
    if (reconnected) {
      // Membership and read state changed while away are not replayed: read them again.
      await loadConversations().catch((exc) => notice(`Could not refresh the conversations: ${describe(exc)}`));
    }
    reconnected = true;
    subscribePresence();
    await syncSoon(); // catch up first, so what waited to be sent does not overtake what we missed
    resendPending();
    markRead(state.convs.get(state.active));
  });
  socket.addEventListener("unauthorized", async () => {
    // The backoff still applies: a server that keeps refusing fresh tokens is not hammered.
    try {
      await session.refresh();
    } catch {
      if (!session.signedIn) return; // the refresh token was refused: signed-out shows the form
    }
    socket?.reconnect("signed in again");
  });
  socket.addEventListener("frame", (event) => onFrame(event.detail));
  socket.start();
}

// ---------------------------------------------------------------------------------------------
// Rendering

function render(options = {}) {
  renderList();
  renderPane(options);
}

function renderConnection({ state: connection, delay, reason }) {
  const box = $("connection-status");
  box.hidden = false;
  box.dataset.state = connection;
  box.title = reason ?? "";
  $("connection-retry").hidden = connection !== "replaced";
  const text = {
    connecting: "Connecting…",
    open: "Connected",
    waiting: delay ? `Reconnecting in ${Math.ceil(delay / 1000)} s…` : "Reconnecting…",
    replaced: "This session is open in another tab.",
    stopped: "Offline",
  }[connection];
  $("connection-text").textContent = text ?? connection;
}

function renderList() {
  if (!state.me) return;
  const convs = listedConvs();
  lookUpUsers(convs.flatMap((c) => [peerOf(c), ...c.typers.keys()]).filter(Boolean));
  let unreadTotal = 0;
  conversationList.render(
    convs.map((c) => {
      const peer = peerOf(c);
      const view = {
        title: titleOf(c),
        active: c.id === state.active,
        online: peer ? Boolean(state.presence.get(peer)?.online) : null,
        presence: peer ? presenceText(peer) : null,
        unread: c.id === state.active && isVisible() ? 0 : c.data.unread_count,
        typing: timeline.typingLine([...c.typers.keys()].map(nameOf)),
        preview: timeline.preview(c.data.last_message, me()),
      };
      unreadTotal += view.unread;
      return { key: c.id, signature: JSON.stringify(view), build: () => conversationItem(c, view) };
    }),
  );
  $("conversation-empty").hidden = convs.length > 0;
  document.title = unreadTotal ? `(${unreadTotal}) Courier` : "Courier";
}

function conversationItem(c, view) {
  return el(
    "li",
    {},
    el(
      "button",
      {
        type: "button",
        class: "conversation",
        "aria-current": view.active ? "true" : null,
        dataset: { testid: "conversation", conversationId: c.id, title: view.title },
        onclick: () => openConversation(c.id),
      },
      view.online === null
        ? el("span", { class: "group-mark", "aria-hidden": "true" }, "#")
        : el(
            "span",
            { class: "presence-dot", title: view.presence || "offline", dataset: { testid: "presence", online: String(view.online) } },
            el("span", { class: "visually-hidden" }, view.online ? "online" : "offline"),
          ),
      el("span", { class: "conversation-title" }, view.title),
      view.unread > 0
        ? el(
            "span",
            { class: "badge", dataset: { testid: "unread-badge", count: String(view.unread) } },
            String(view.unread),
            el("span", { class: "visually-hidden" }, " unread"),
          )
        : null,
      view.typing
        ? el("span", { class: "preview typing-preview", dataset: { testid: "conversation-typing" } }, view.typing)
        : el("span", { class: "preview", dataset: { testid: "conversation-preview" } }, view.preview),
    ),
  );
}

function renderPane({ toBottom = false } = {}) {
  const c = state.active ? state.convs.get(state.active) : null;
  $("pane-empty").hidden = Boolean(c);
  $("pane-body").hidden = !c;
  if (!c) {
    messageList.clear();
    return;
  }
  const scroller = $("message-scroller");
  const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;

  $("conversation-title").textContent = titleOf(c);
  const peer = peerOf(c);
  const presence = $("conversation-presence");
  presence.textContent = peer ? presenceText(peer) : c.data ? `${c.data.members.length} members` : "";
  presence.dataset.online = String(Boolean(peer && state.presence.get(peer)?.online));
  $("load-older").hidden = !c.hasOlder;
  $("typing-indicator").textContent = timeline.typingLine([...c.typers.keys()].map(nameOf));

  const seen = timeline.seen(c, me());
  const seenText = seen && (c.data?.type === "group" ? `Seen by ${seen.readers.map(nameOf).join(", ")}` : "Seen");
  const group = c.data?.type === "group";
  const items = timeline.orderedMessages(c).map((m) => {
    const view = {
      own: m.sender_id === me(),
      sender: group && m.sender_id !== me() ? nameOf(m.sender_id) : null,
      content: m.content,
      recalled: m.recalled,
      edited: m.edited,
      at: m.created_at,
      seen: seen?.seq === m.seq ? seenText : null,
    };
    return { key: `s${m.seq}`, signature: JSON.stringify(view), build: () => messageItem(m, view) };
  });
  for (const pending of c.pending.values()) {
    const view = { content: pending.content, status: pending.status, progress: pending.progress, error: pending.error };
    items.push({
      key: `p${pending.clientMsgId}`,
      signature: JSON.stringify(view),
      build: () => pendingItem(c, pending, view),
    });
  }
  if (c.loading && !items.length) {
    items.push({ key: "loading", signature: "", build: () => el("li", { class: "loading" }, "Loading…") });
  }
  messageList.render(items);
  lookUpUsers([...c.messages.values()].map((m) => m.sender_id).concat(seen?.readers ?? []));
  if (toBottom || nearBottom) scroller.scrollTop = scroller.scrollHeight;
}

function messageBody(content) {
  switch (content.type) {
    case "text":
      return el("p", { class: "text", dataset: { testid: "message-text" } }, content.text);
    case "file":
      return el(
        "button",
        {
          type: "button",
          class: "file-link",
          dataset: { testid: "file-link", fileId: content.file_id ?? "" },
          disabled: !content.file_id,
          "aria-label": `Download ${content.name} (${formatSize(content.size ?? 0)})`,
          onclick: () => saveFile(content),
        },
        el("span", { class: "icon icon-clip", "aria-hidden": "true" }),
        el("span", { class: "file-name" }, content.name ?? "file"),
        el("span", { class: "file-size" }, `· ${formatSize(content.size ?? 0)}`),
      );
    case "call":
      return el("p", { class: "text system" }, `Call ${content.state}`);
    case "recalled":
      return el("p", { class: "text system", dataset: { testid: "message-recalled" } }, "This message was recalled");
    default:
      return el("p", { class: "text system" }, `Unsupported message (${content.type ?? "unknown"})`);
  }
}

function messageItem(m, view) {
  return el(
    "li",
    {
      class: `message ${view.own ? "own" : "theirs"}${m.recalled ? " recalled" : ""}`,
      dataset: { testid: "message", seq: String(m.seq), sender: m.sender_id, status: "sent" },
    },
    el(
      "div",
      { class: "bubble" },
      view.sender ? el("span", { class: "sender" }, view.sender) : null,
      messageBody(m.content ?? {}),
      el(
        "span",
        { class: "meta" },
        el("time", { datetime: m.created_at }, formatTime(m.created_at)),
        m.edited && !m.recalled ? el("span", { dataset: { testid: "message-edited" } }, " · edited") : null,
      ),
    ),
    view.seen ? el("span", { class: "seen", dataset: { testid: "seen" } }, view.seen) : null,
  );
}

function pendingItem(c, pending, view) {
  const status = {
    uploading: `Uploading… ${Math.round((view.progress ?? 0) * 100)} %`,
    sending: "Sending…",
    queued: "Waiting for the connection…",
    failed: `Not sent: ${view.error ?? "error"}`,
  }[view.status];
  return el(
    "li",
    {
      class: `message own pending${view.status === "failed" ? " failed" : ""}`,
      dataset: { testid: "message", clientMsgId: pending.clientMsgId, status: view.status },
    },
    el(
      "div",
      { class: "bubble" },
      messageBody(view.content),
      el("span", { class: "meta" }, status),
      view.status === "failed"
        ? el("button", { type: "button", class: "link-button", dataset: { testid: "retry" },
            onclick: () => retry(c, pending) }, "Retry")
        : null,
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Finding people

let searchTimer = null;
let searchSeq = 0;

function onSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const prefix = $("user-search").value.trim();
    const asked = ++searchSeq;
    if (!prefix) {
      $("user-results").replaceChildren();
      return;
    }
    let users;
    try {
      ({ users } = await session.call("GET", `/v1/users?prefix=${encodeURIComponent(prefix)}&limit=10`));
    } catch (exc) {
      notice(`Search failed: ${describe(exc)}`);
      return;
    }
    if (asked !== searchSeq || !state.me) return; // a newer search is under way, or signed out
    const others = users.filter((u) => u.user_id !== me());
    others.forEach((u) => state.users.set(u.user_id, u));
    $("user-results").replaceChildren(
      ...others.map((u) =>
        el(
          "li",
          {},
          el(
            "button",
            {
              type: "button",
              class: "user-result",
              dataset: { testid: "user-result", username: u.username },
              onclick: () => startDirect(u),
            },
            el("span", {}, u.display_name || u.username),
            el("span", { class: "hint" }, ` @${u.username}`),
          ),
        ),
      ),
    );
    if (!others.length) $("user-results").append(el("li", { class: "hint" }, "No matching users"));
  }, 200);
}

// ---------------------------------------------------------------------------------------------
// Signing in and out

function showAuth() {
  $("auth-view").hidden = false;
  $("chat-view").hidden = true;
  $("account").hidden = true;
  $("connection-status").hidden = true;
  document.title = "Courier";
  $("login-username").focus();
}

async function enterChat() {
  $("auth-view").hidden = true;
  $("chat-view").hidden = false;
  state = freshState();
  try {
    state.me = await session.call("GET", "/v1/users/me");
  } catch (exc) {
    if (!session.signedIn) return; // the signed-out handler shows the form
    notice(`Could not reach the server: ${describe(exc)}`);
    setTimeout(() => session.signedIn && !state.me && enterChat(), 5_000);
    return;
  }
  state.users.set(state.me.user_id, state.me);
  $("me-name").textContent = state.me.display_name || state.me.username;
  $("account").hidden = false;
  try {
    await loadConversations();
  } catch (exc) {
    notice(`Could not load conversations: ${describe(exc)}`);
  }
  render();
  connect();
}

function leaveChat() {
  socket?.stop();
  stopTyping();
  socket = null;
  clearTimeout(state.listReload);
  for (const c of state.convs.values()) c.typers.forEach((timer) => clearTimeout(timer));
  state = freshState();
  conversationList.clear();
  messageList.clear();
  $("user-results").replaceChildren();
  showAuth();
}

async function submitting(form, work) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await work();
    form.reset();
  } finally {
    button.disabled = false;
  }
}

async function onLogin(event) {
  event.preventDefault();
  try {
    await submitting(event.target, () => session.login($("login-username").value.trim(), $("login-password").value));
  } catch (exc) {
    notice(`Log in failed: ${describe(exc)}`);
    return;
  }
  await enterChat();
}

async function onRegister(event) {
  event.preventDefault();
  const username = $("register-username").value.trim();
  const password = $("register-password").value;
  const displayName = $("register-display-name").value.trim();
  try {
    await submitting(event.target, async () => {
      await session.register(username, password, displayName);
      await session.login(username, password);
    });
  } catch (exc) {
    notice(`Registration failed: ${describe(exc)}`);
    return;
  }
  await enterChat();
}

// ---------------------------------------------------------------------------------------------
// Wiring

function wire() {
  conversationList = new KeyedList($("conversation-list"));
  messageList = new KeyedList($("messages"));
  $("login-form").addEventListener("submit", onLogin);
  $("register-form").addEventListener("submit", onRegister);
  $("logout-button").addEventListener("click", () => {
    leaveChat();
    session.logout();
  });
  session.addEventListener("signed-out", (event) => {
    leaveChat();
    notice(`You are signed out (${event.detail.reason}); please log in again.`);
  });
  $("connection-retry").addEventListener("click", () => socket?.start());
  $("user-search").addEventListener("input", onSearch);
  $("group-form").addEventListener("submit", createGroup);
  $("load-older").addEventListener("click", loadOlder);

  const input = $("message-input");
  input.addEventListener("input", onComposerInput);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const c = state.convs.get(state.active);
    const text = input.value.trim();
    if (!c || !text) return;
    stopTyping();
    sendText(c, text);
    input.value = "";
    input.style.height = "";
  });
  $("file-input").addEventListener("change", (event) => {
    const c = state.convs.get(state.active);
    const [file] = event.target.files;
    event.target.value = ""; // choosing the same file again still sends it
    if (c && file) sendFile(c, file);
  });
  document.addEventListener("visibilitychange", () => {
    if (!isVisible() || !state.me) return;
    session.ensureFresh().catch(() => {});
    markRead(state.convs.get(state.active));
  });
}

wire();
if (session.signedIn) enterChat();
else showAuth();
