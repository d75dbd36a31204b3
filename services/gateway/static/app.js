// The Courier web chat page: conversation list, history, live messages, typing, receipts, presence
// and files, over the public protocol only (docs/protocol.md). No framework: state lives in plain
// objects and each change re-renders the small part of the page it affects.

import { ApiError, Session } from "./api.js";
import { Connection } from "./socket.js";

const HISTORY_PAGE = 50;
const SYNC_PAGE = 100;
const TYPING_RESEND_MS = 3_000; // repeat "start" while typing so a late joiner sees it
const TYPING_IDLE_MS = 4_000; // no keystroke for this long sends "stop"
const TYPING_SHOWN_MS = 8_000; // a peer's "start" without a "stop" fades after this
const NOTICE_MS = 6_000;
const PRESENCE_BATCH = 200;

const $ = (id) => document.getElementById(id);

const session = new Session();
let socket = null;
let state = freshState();

function freshState() {
  return {
    me: null,
    users: new Map(), // user_id -> {user_id, username, display_name}
    userLookups: new Map(), // user_id -> Promise, so each user is fetched once
    convs: new Map(), // conversation_id -> Conv
    active: null,
    presence: new Map(), // user_id -> {online, last_seen}
    subscribed: new Set(), // presence subscriptions on the current socket
    syncing: null,
    syncAgain: false,
    typing: { conversationId: null, sentAt: 0, timer: null },
    listReload: null,
  };
}

/** A conversation as this page knows it. `cursor` is the highest seq up to which every event is known. */
function newConv(id) {
  return {
    id,
    data: null, // the server's conversation object
    cursor: 0,
    ahead: new Set(), // seqs received beyond a gap
    acked: 0,
    loaded: false, // history fetched; messages below are then kept
    loading: false,
    hasOlder: false,
    messages: new Map(), // seq -> message
    tombstones: new Map(), // target seq -> {recalled, edit: {eventSeq, content}}
    pending: new Map(), // client_msg_id -> outgoing message not yet acknowledged
    peerRead: new Map(), // user_id -> last seq they read (from read_receipt frames)
    typers: new Map(), // user_id -> timer
    readSent: 0,
    lastActivity: 0,
  };
}

function conv(id) {
  let found = state.convs.get(id);
  if (!found) {
    found = newConv(id);
    state.convs.set(id, found);
  }
  return found;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

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

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MB`;
  return `${(bytes / 1024 ** 3).toFixed(1)} GB`;
}

function formatTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  const sameDay = when.toDateString() === new Date().toDateString();
  return sameDay
    ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : when.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function nameOf(userId) {
  const user = state.users.get(userId);
  return user ? user.display_name || user.username : "…";
}

function isVisible() {
  return document.visibilityState === "visible";
}

function newClientMsgId() {
  return `web-${crypto.randomUUID()}`;
}

// ---------------------------------------------------------------------------------------------
// Users

function lookUpUsers(userIds) {
  const missing = [...new Set(userIds)].filter((id) => !state.users.has(id) && !state.userLookups.has(id));
  for (const id of missing) {
    const lookup = session
      .call("GET", `/v1/users/${encodeURIComponent(id)}`)
      .then((user) => {
        state.users.set(id, user);
        renderList();
        if (state.active) renderPane();
      })
      .catch(() => state.userLookups.delete(id)); // asked again on the next render that needs it
    state.userLookups.set(id, lookup);
  }
}

function peerOf(c) {
  if (!c.data || c.data.type !== "direct") return null;
  return c.data.members.find((m) => m.user_id !== state.me.user_id)?.user_id ?? null;
}

function titleOf(c) {
  if (!c.data) return "…";
  if (c.data.type === "direct") {
    const peer = peerOf(c);
    return peer ? nameOf(peer) : "Just you";
  }
  return c.data.title || "Group";
}

// ---------------------------------------------------------------------------------------------
// Conversations

async function loadConversations() {
  const { conversations } = await session.call("GET", "/v1/conversations");
  const memberIds = [];
  for (const data of conversations) {
    const c = conv(data.conversation_id);
    const first = c.data === null;
    c.data = { ...data };
    if (first) {
      // Everything up to max_seq is summarized by the list; the socket syncs from there on.
      jumpCursor(c, data.max_seq);
      c.readSent = Math.max(c.readSent, data.read_seq);
    } else {
      c.data.max_seq = Math.max(data.max_seq, c.cursor);
    }
    c.lastActivity = Math.max(
      c.lastActivity,
      Date.parse(data.last_message?.created_at ?? data.created_at) || 0,
    );
    memberIds.push(...data.members.map((m) => m.user_id));
  }
  lookUpUsers(memberIds);
  subscribePresence();
  renderList();
  if (state.active) renderPane();
}

/** Several membership frames in a row cause one reload. */
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

function sortedConvs() {
  return [...state.convs.values()]
    .filter((c) => c.data)
    .sort((a, b) => b.lastActivity - a.lastActivity);
}

function previewOf(message) {
  if (!message) return "No messages yet";
  const content = message.content ?? {};
  const own = message.sender_id === state.me.user_id ? "You: " : "";
  switch (content.type) {
    case "text":
      return own + content.text;
    case "file":
      return `${own}File: ${content.name ?? "file"}`;
    case "call":
      return `${own}Call ${content.state}`;
    case "recall":
    case "recalled":
      return "Message recalled";
    case "edit":
      return `${own}${content.content?.text ?? "Message edited"}`;
    default:
      return "New message";
  }
}

async function openConversation(id) {
  stopTyping();
  state.active = id;
  const c = conv(id);
  renderList();
  renderPane({ toBottom: true });
  $("message-input").focus();
  if (!c.loaded && !c.loading) {
    c.loading = true;
    try {
      const page = await session.call("GET", `/v1/conversations/${encodeURIComponent(id)}/messages?limit=${HISTORY_PAGE}`);
      mergeHistory(c, page.messages);
      c.hasOlder = page.has_more;
      c.loaded = true;
    } catch (exc) {
      notice(`Could not load the messages: ${describe(exc)}`);
    } finally {
      c.loading = false;
    }
    if (state.active === id) renderPane({ toBottom: true });
  }
  markRead(c);
}

async function loadOlder() {
  const c = state.convs.get(state.active);
  if (!c || !c.loaded) return;
  const oldest = Math.min(...c.messages.keys());
  const scroller = $("message-scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  try {
    const page = await session.call(
      "GET",
      `/v1/conversations/${encodeURIComponent(c.id)}/messages?before_seq=${oldest}&limit=${HISTORY_PAGE}`,
    );
    mergeHistory(c, page.messages);
    c.hasOlder = page.has_more;
  } catch (exc) {
    notice(`Could not load older messages: ${describe(exc)}`);
  }
  renderPane();
  scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep the reader's place
}

function mergeHistory(c, messages) {
  for (const m of messages) {
    if (isTombstone(m)) recordTombstone(c, m.content, m.seq);
    else if (!c.messages.has(m.seq)) c.messages.set(m.seq, { ...m });
    if (m.sender_id === state.me.user_id) c.pending.delete(m.client_msg_id);
  }
  // Recalls and edits seen live while the page was loading win over the older copy in the page.
  for (const target of c.tombstones.keys()) applyTombstone(c, target);
}

// ---------------------------------------------------------------------------------------------
// Events: messages, recalls and edits, from pushes, sync and our own send_acks

function isTombstone(m) {
  const type = m.content?.type;
  return type === "recall" || type === "edit";
}

function recordTombstone(c, content, eventSeq) {
  const target = content.target_seq;
  const entry = c.tombstones.get(target) ?? { recalled: false, edit: null };
  if (content.type === "recall") entry.recalled = true;
  else if (!entry.edit || entry.edit.eventSeq < eventSeq) entry.edit = { eventSeq, content: content.content };
  c.tombstones.set(target, entry);
  applyTombstone(c, target);
}

function applyTombstone(c, target) {
  const message = c.messages.get(target);
  const entry = c.tombstones.get(target);
  if (!message || !entry) return;
  if (entry.recalled) {
    message.recalled = true;
    message.content = { type: "recalled" };
  } else if (entry.edit) {
    message.edited = true;
    message.content = entry.edit.content;
  }
}

/** Skip ahead to a seq known from elsewhere (the conversation list), without a message for each. */
function jumpCursor(c, seq) {
  if (seq <= c.cursor) return;
  c.cursor = seq;
  for (const ahead of c.ahead) if (ahead <= seq) c.ahead.delete(ahead);
  while (c.ahead.delete(c.cursor + 1)) c.cursor += 1;
}

/** Record one stored event; returns false when it was already known (a retransmission, say). */
function applyEvent(c, m) {
  const seq = m.seq;
  if (seq <= c.cursor || c.ahead.has(seq)) return false;
  if (seq === c.cursor + 1) {
    c.cursor = seq;
    while (c.ahead.delete(c.cursor + 1)) c.cursor += 1;
  } else {
    c.ahead.add(seq);
  }
  if (isTombstone(m)) {
    recordTombstone(c, m.content, seq);
  } else if (c.loaded || c.loading) {
    c.messages.set(seq, { ...m });
    applyTombstone(c, seq);
  }
  if (m.sender_id === state.me.user_id) c.pending.delete(m.client_msg_id);
  else c.typers.delete(m.sender_id);
  if (c.data) {
    c.data.max_seq = Math.max(c.data.max_seq, seq);
    if (m.sender_id === state.me.user_id) c.data.read_seq = Math.max(c.data.read_seq, seq);
    c.data.unread_count = Math.max(0, c.data.max_seq - c.data.read_seq);
    if (!c.data.last_message || c.data.last_message.seq < seq) c.data.last_message = m;
  }
  c.lastActivity = Math.max(c.lastActivity, Date.parse(m.created_at) || Date.now());
  return true;
}

function onPushedEvent(cid, event) {
  const c = conv(cid);
  if (!c.data) reloadConversationsSoon(); // a conversation we did not know yet
  const gap = event.seq > c.cursor + 1;
  const fresh = applyEvent(c, event);
  acknowledge(c, { again: !fresh }); // a retransmission means our last ack was lost: send it again
  if (gap) syncSoon();
  afterEvents([c]);
}

/** Ack cumulatively up to the contiguous cursor: acking past a gap would drop the missing event. */
function acknowledge(c, { again = false } = {}) {
  if (c.cursor > 0 && (again || c.cursor > c.acked) && socket?.send({ type: "ack", conversation_id: c.id, seq: c.cursor })) {
    c.acked = c.cursor;
  }
}

function afterEvents(changed) {
  renderList();
  if (changed.some((c) => c.id === state.active)) {
    renderPane();
    markRead(state.convs.get(state.active));
  }
}

// ---------------------------------------------------------------------------------------------
// Sync: after every (re)connect, and whenever a gap shows

/** Start a sync, or ask the running one to go again; resolves once no sync is left to do. */
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
      // A sync cut short by a reconnect is followed by the new connection's own sync.
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
    const cursors = {};
    for (const c of state.convs.values()) cursors[c.id] = c.cursor;
    const answer = await socket.request({ type: "sync", cursors, limit: SYNC_PAGE });
    if (answer.type === "error") throw new ApiError(0, answer.code, answer.message);
    const changed = [];
    let more = false;
    for (const entry of answer.conversations) {
      const c = conv(entry.conversation_id);
      if (!c.data) reloadConversationsSoon();
      // A page starts right after our cursor; anything we held beyond a gap is now contiguous.
      for (const m of entry.messages) applyEvent(c, m);
      acknowledge(c);
      changed.push(c);
      more ||= entry.has_more;
    }
    afterEvents(changed);
    if (!more) return;
  }
}

// ---------------------------------------------------------------------------------------------
// Sending

function sendText(c, text) {
  const content = { type: "text", text };
  const pending = { clientMsgId: newClientMsgId(), content, status: "sending", createdAt: new Date().toISOString() };
  c.pending.set(pending.clientMsgId, pending);
  transmit(c, pending);
  renderPane({ toBottom: true });
}

async function transmit(c, pending) {
  if (!socket?.isOpen) {
    pending.status = "queued"; // sent again after the next sync
    return;
  }
  pending.status = "sending";
  let answer;
  try {
    answer = await socket.request({
      type: "send",
      conversation_id: c.id,
      client_msg_id: pending.clientMsgId,
      content: pending.wire ?? pending.content,
    });
  } catch {
    pending.status = "queued";
    renderIfActive(c);
    return;
  }
  if (answer.type === "error") {
    if (answer.code === "rate_limited" || answer.code === "unavailable") {
      pending.status = "queued";
      setTimeout(() => c.pending.has(pending.clientMsgId) && transmit(c, pending), 3_000);
    } else {
      pending.status = "failed";
      pending.error = answer.message;
    }
    renderIfActive(c);
    return;
  }
  if (!c.pending.has(pending.clientMsgId)) return; // already seen through sync
  const message = {
    message_id: answer.message_id,
    conversation_id: c.id,
    seq: answer.seq,
    sender_id: state.me.user_id,
    sender_device_id: session.deviceId,
    client_msg_id: pending.clientMsgId,
    content: pending.content,
    created_at: answer.created_at,
    recalled: false,
    edited: false,
  };
  const gap = answer.seq > c.cursor + 1;
  applyEvent(c, message);
  c.pending.delete(pending.clientMsgId);
  if (gap) syncSoon();
  afterEvents([c]);
}

function resendPending() {
  for (const c of state.convs.values()) {
    for (const pending of c.pending.values()) {
      if (pending.status === "queued" || pending.status === "sending") transmit(c, pending);
    }
  }
}

function renderIfActive(c) {
  if (c.id === state.active) renderPane();
}

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function sendFile(c, file) {
  const content = {
    type: "file",
    name: file.name,
    size: file.size,
    content_type: file.type || "application/octet-stream",
  };
  const pending = {
    clientMsgId: newClientMsgId(),
    content,
    status: "uploading",
    progress: 0,
    file,
    createdAt: new Date().toISOString(),
  };
  c.pending.set(pending.clientMsgId, pending);
  renderPane({ toBottom: true });
  try {
    const fileId = await upload(file, content, (progress) => {
      pending.progress = progress;
      renderIfActive(c);
    });
    content.file_id = fileId;
    pending.wire = { type: "file", file_id: fileId };
    delete pending.file;
    await transmit(c, pending);
  } catch (exc) {
    pending.status = "failed";
    pending.error = `upload failed: ${describe(exc)}`;
  }
  renderIfActive(c);
}

/** The protocol's multipart upload; returns the file id. `content.content_type` may be corrected. */
async function upload(file, content, onProgress) {
  const bytes = await file.arrayBuffer();
  const sha256 = await sha256Hex(bytes);
  const start = (contentType) =>
    session.call("POST", "/v1/files/uploads", { name: file.name, size: file.size, content_type: contentType, sha256 });
  let started;
  try {
    started = await start(content.content_type);
  } catch (exc) {
    // The server accepts a list of media types; anything else can still travel as plain bytes.
    if (!(exc instanceof ApiError && exc.code === "invalid_request" && /content_type/.test(exc.message))) throw exc;
    content.content_type = "application/octet-stream";
    started = await start(content.content_type);
  }
  if (started.deduplicated) return started.file_id; // these bytes are stored already
  const done = new Set(started.uploaded_parts ?? []);
  for (const part of started.parts) {
    if (done.has(part.part_number)) continue;
    const from = (part.part_number - 1) * started.part_size;
    const body = bytes.slice(from, Math.min(from + started.part_size, bytes.byteLength));
    let response;
    try {
      response = await fetch(part.url, { method: "PUT", body }); // a presigned URL: no bearer
    } catch (exc) {
      throw new ApiError(0, "unavailable", `cannot reach the server (${exc.message})`);
    }
    if (!response.ok) throw new ApiError(response.status, "upload_failed", `part ${part.part_number}: HTTP ${response.status}`);
    done.add(part.part_number);
    onProgress(done.size / started.parts.length);
  }
  const completed = await session.call("POST", `/v1/files/uploads/${encodeURIComponent(started.upload_id)}/complete`);
  return completed.file_id;
}

async function download(content) {
  try {
    // The redirect goes to a short-lived presigned URL on the same origin; fetch follows it.
    const response = await session.fetch("GET", `/v1/files/${encodeURIComponent(content.file_id)}`);
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: content.name || "download" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (exc) {
    notice(`Download failed: ${describe(exc)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Read receipts, typing, presence

function markRead(c) {
  if (!c || c.id !== state.active || !isVisible() || !c.data) return;
  const seq = Math.max(c.cursor, ...c.messages.keys());
  if (seq <= c.readSent) {
    if (c.data.unread_count) {
      c.data.unread_count = 0;
      renderList();
    }
    return;
  }
  c.readSent = seq;
  c.data.read_seq = Math.max(c.data.read_seq, seq);
  c.data.unread_count = Math.max(0, c.data.max_seq - c.data.read_seq);
  if (!socket?.send({ type: "read", conversation_id: c.id, seq })) {
    session.call("POST", `/v1/conversations/${encodeURIComponent(c.id)}/read`, { seq }).catch(() => {
      c.readSent = Math.min(c.readSent, seq - 1); // try again on the next occasion
    });
  }
  renderList();
}

function onReadReceipt(frame) {
  const c = conv(frame.conversation_id);
  if (frame.user_id === state.me.user_id) {
    // Read on another device of ours.
    c.readSent = Math.max(c.readSent, frame.seq);
    if (c.data) {
      c.data.read_seq = Math.max(c.data.read_seq, frame.seq);
      c.data.unread_count = Math.max(0, c.data.max_seq - c.data.read_seq);
    }
    renderList();
    return;
  }
  c.peerRead.set(frame.user_id, Math.max(c.peerRead.get(frame.user_id) ?? 0, frame.seq));
  renderIfActive(c);
}

function onInput() {
  const c = state.convs.get(state.active);
  if (!c) return;
  const typing = state.typing;
  if (!$("message-input").value.trim()) {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (typing.conversationId !== c.id || now - typing.sentAt > TYPING_RESEND_MS) {
    if (typing.conversationId && typing.conversationId !== c.id) stopTyping();
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

function onTyping(frame) {
  if (frame.user_id === state.me.user_id) return;
  const c = conv(frame.conversation_id);
  clearTimeout(c.typers.get(frame.user_id));
  if (frame.state === "start") {
    lookUpUsers([frame.user_id]);
    c.typers.set(
      frame.user_id,
      setTimeout(() => {
        c.typers.delete(frame.user_id);
        renderList();
        renderIfActive(c);
      }, TYPING_SHOWN_MS),
    );
  } else {
    c.typers.delete(frame.user_id);
  }
  renderList();
  renderIfActive(c);
}

function typingText(c) {
  const names = [...c.typers.keys()].map(nameOf);
  if (!names.length) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return "Several people are typing…";
}

function subscribePresence() {
  if (!socket?.isOpen) return;
  const peers = sortedConvs()
    .map(peerOf)
    .filter((id) => id && !state.subscribed.has(id));
  for (let i = 0; i < peers.length; i += PRESENCE_BATCH) {
    const batch = [...new Set(peers.slice(i, i + PRESENCE_BATCH))];
    if (socket.send({ type: "presence_subscribe", user_ids: batch })) batch.forEach((id) => state.subscribed.add(id));
  }
}

function presenceText(userId) {
  const p = state.presence.get(userId);
  if (!p) return "";
  if (p.online) return "online";
  return p.last_seen ? `last seen ${formatTime(p.last_seen)}` : "offline";
}

// ---------------------------------------------------------------------------------------------
// The socket

function wsUrl(token) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/v1/ws?access_token=${encodeURIComponent(token)}`;
}

function connect() {
  socket = new Connection(async () => {
    await session.ensureFresh();
    return wsUrl(session.accessToken);
  });
  socket.addEventListener("state", (event) => {
    if (event.detail.state === "replaced") session.setActive(false);
    else if (event.detail.state === "open") session.setActive(true);
    renderConnection(event.detail);
  });
  socket.addEventListener("open", async () => {
    state.subscribed.clear();
    subscribePresence();
    await syncSoon(); // catch up first, so resent messages do not overtake what we missed
    resendPending();
    markRead(state.convs.get(state.active));
  });
  socket.addEventListener("unauthorized", async () => {
    try {
      await session.refresh();
      socket.start();
    } catch {
      // session.refresh ended the session when the server refused it: signed-out follows
      if (session.signedIn) setTimeout(() => socket?.start(), 5_000);
    }
  });
  socket.addEventListener("frame", (event) => onFrame(event.detail));
  socket.start();
}

function onFrame(frame) {
  switch (frame.type) {
    case "message":
      onPushedEvent(frame.conversation_id, frame);
      break;
    case "recalled":
    case "edited": {
      // Tombstone events take a seq of their own (event_seq); `seq` names the changed message.
      const content =
        frame.type === "recalled"
          ? { type: "recall", target_seq: frame.seq }
          : { type: "edit", target_seq: frame.seq, content: frame.content };
      onPushedEvent(frame.conversation_id, {
        seq: frame.event_seq ?? frame.seq,
        conversation_id: frame.conversation_id,
        sender_id: frame.by,
        content,
        created_at: frame.created_at,
      });
      break;
    }
    case "read_receipt":
      onReadReceipt(frame);
      break;
    case "typing":
      onTyping(frame);
      break;
    case "presence":
      state.presence.set(frame.user_id, { online: frame.online, last_seen: frame.last_seen });
      renderList();
      if (state.active) renderPaneHeader(state.convs.get(state.active));
      break;
    case "member_added":
    case "member_removed":
    case "member_role_changed":
      if (frame.type === "member_removed" && frame.user_id === state.me.user_id) {
        state.convs.delete(frame.conversation_id);
        if (state.active === frame.conversation_id) state.active = null;
        renderList();
        renderPane();
      }
      reloadConversationsSoon();
      break;
    case "error":
      if (frame.ref == null) notice(frame.message);
      break;
    default:
      break; // calls and frames added later are not shown here
  }
}

// ---------------------------------------------------------------------------------------------
// Rendering

function renderConnection({ state: connection, delay, reason }) {
  const box = $("connection-status");
  const retry = $("connection-retry");
  box.hidden = false;
  box.dataset.state = connection;
  retry.hidden = connection !== "replaced";
  const text = {
    connecting: "Connecting…",
    open: "Connected",
    waiting: delay ? `Reconnecting in ${Math.ceil(delay / 1000)} s…` : `Reconnecting… ${reason ?? ""}`,
    replaced: "This session is open in another tab.",
    stopped: "Offline",
  }[connection];
  $("connection-text").textContent = text ?? connection;
  box.title = reason ?? "";
}

function renderList() {
  if (!state.me) return;
  const list = $("conversation-list");
  const convs = sortedConvs();
  const missing = [];
  list.replaceChildren(
    ...convs.map((c) => {
      const peer = peerOf(c);
      if (peer && !state.users.has(peer)) missing.push(peer);
      const typing = typingText(c);
      const presence = peer ? state.presence.get(peer) : null;
      const unread = c.id === state.active && isVisible() ? 0 : c.data.unread_count;
      return el(
        "li",
        {},
        el(
          "button",
          {
            type: "button",
            class: "conversation",
            "aria-current": c.id === state.active ? "true" : null,
            dataset: { testid: "conversation", conversationId: c.id, title: titleOf(c) },
            onclick: () => openConversation(c.id),
          },
          peer
            ? el("span", {
                class: "presence-dot",
                title: presenceText(peer) || "offline",
                dataset: { testid: "presence", online: String(Boolean(presence?.online)) },
              })
            : el("span", { class: "group-mark", "aria-hidden": "true" }, "#"),
          el("span", { class: "conversation-title" }, titleOf(c)),
          unread > 0
            ? el("span", { class: "badge", dataset: { testid: "unread-badge" }, "aria-label": `${unread} unread` }, String(unread))
            : null,
          typing
            ? el("span", { class: "preview typing-preview", dataset: { testid: "conversation-typing" } }, typing)
            : el("span", { class: "preview", dataset: { testid: "conversation-preview" } }, previewOf(c.data.last_message)),
        ),
      );
    }),
  );
  $("conversation-empty").hidden = convs.length > 0;
  if (missing.length) lookUpUsers(missing);
}

function renderPaneHeader(c) {
  if (!c) return;
  $("conversation-title").textContent = titleOf(c);
  const peer = peerOf(c);
  const presence = $("conversation-presence");
  if (peer) {
    presence.textContent = presenceText(peer);
    presence.dataset.online = String(Boolean(state.presence.get(peer)?.online));
  } else {
    presence.textContent = c.data ? `${c.data.members.length} members` : "";
    delete presence.dataset.online;
  }
}

function renderPane({ toBottom = false } = {}) {
  const c = state.active ? state.convs.get(state.active) : null;
  $("pane-empty").hidden = Boolean(c);
  $("pane-body").hidden = !c;
  if (!c) return;
  const scroller = $("message-scroller");
  const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  renderPaneHeader(c);
  $("load-older").hidden = !c.hasOlder;
  const messages = [...c.messages.values()].sort((a, b) => a.seq - b.seq);
  const seen = seenMarker(c, messages);
  const isGroup = c.data?.type === "group";
  const senders = [];
  const items = messages.map((m) => {
    if (!state.users.has(m.sender_id)) senders.push(m.sender_id);
    return messageItem(m, { isGroup, seen: seen?.seq === m.seq ? seen.text : null });
  });
  for (const pending of c.pending.values()) items.push(pendingItem(c, pending));
  if (c.loading && !messages.length) items.push(el("li", { class: "loading" }, "Loading…"));
  $("messages").replaceChildren(...items);
  $("typing-indicator").textContent = typingText(c);
  if (senders.length) lookUpUsers(senders);
  if (toBottom || nearBottom) scroller.scrollTop = scroller.scrollHeight;
}

/** "Seen" goes under our newest message that the peer (or, in a group, anyone) has read. */
function seenMarker(c, messages) {
  if (!c.peerRead.size) return null;
  const own = messages.filter((m) => m.sender_id === state.me.user_id);
  for (let i = own.length - 1; i >= 0; i -= 1) {
    const readers = [...c.peerRead].filter(([, seq]) => seq >= own[i].seq).map(([userId]) => userId);
    if (readers.length) {
      const text = c.data?.type === "direct" ? "Seen" : `Seen by ${readers.map(nameOf).join(", ")}`;
      return { seq: own[i].seq, text };
    }
  }
  return null;
}

function messageBody(content, message) {
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
          "aria-label": `Download ${content.name}`,
          onclick: () => download(content),
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

function messageItem(m, { isGroup, seen }) {
  const own = m.sender_id === state.me.user_id;
  return el(
    "li",
    {
      class: `message ${own ? "own" : "theirs"}${m.recalled ? " recalled" : ""}`,
      dataset: { testid: "message", seq: String(m.seq), sender: m.sender_id, clientMsgId: m.client_msg_id, status: "sent" },
    },
    el(
      "div",
      { class: "bubble" },
      isGroup && !own ? el("span", { class: "sender" }, nameOf(m.sender_id)) : null,
      messageBody(m.content ?? {}, m),
      el(
        "span",
        { class: "meta" },
        el("time", { datetime: m.created_at }, formatTime(m.created_at)),
        m.edited && !m.recalled ? el("span", { dataset: { testid: "message-edited" } }, " · edited") : null,
      ),
    ),
    seen ? el("span", { class: "seen", dataset: { testid: "seen" } }, seen) : null,
  );
}

function pendingItem(c, pending) {
  const status = {
    uploading: `Uploading… ${Math.round((pending.progress ?? 0) * 100)} %`,
    sending: "Sending…",
    queued: "Waiting for connection…",
    failed: `Not sent: ${pending.error ?? "error"}`,
  }[pending.status];
  const retry = () => {
    if (pending.file) {
      c.pending.delete(pending.clientMsgId);
      sendFile(c, pending.file);
    } else {
      transmit(c, pending).then(() => renderIfActive(c));
      renderIfActive(c);
    }
  };
  return el(
    "li",
    {
      class: `message own pending${pending.status === "failed" ? " failed" : ""}`,
      dataset: { testid: "message", clientMsgId: pending.clientMsgId, status: pending.status },
    },
    el(
      "div",
      { class: "bubble" },
      messageBody(pending.content, null),
      el("span", { class: "meta" }, status),
      pending.status === "failed"
        ? el("button", { type: "button", class: "link-button", dataset: { testid: "retry" }, onclick: retry }, "Retry")
        : null,
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Search and new conversations

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
    let users = [];
    try {
      ({ users } = await session.call("GET", `/v1/users?prefix=${encodeURIComponent(prefix)}&limit=10`));
    } catch (exc) {
      notice(`Search failed: ${describe(exc)}`);
    }
    if (asked !== searchSeq) return; // a newer search is under way
    const others = users.filter((u) => u.user_id !== state.me.user_id);
    others.forEach((u) => state.users.set(u.user_id, u));
    $("user-results").replaceChildren(
      ...(others.length
        ? others.map((u) =>
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
          )
        : [el("li", { class: "hint" }, "No matching users")]),
    );
  }, 200);
}

async function startDirect(user) {
  try {
    const data = await session.call("POST", "/v1/conversations", { type: "direct", peer_id: user.user_id });
    await adoptConversation(data);
    $("user-search").value = "";
    $("user-results").replaceChildren();
  } catch (exc) {
    notice(`Could not start the conversation: ${describe(exc)}`);
  }
}

async function adoptConversation(data) {
  const c = conv(data.conversation_id);
  if (!c.data) {
    jumpCursor(c, data.max_seq);
    c.readSent = Math.max(c.readSent, data.read_seq);
    c.lastActivity = Date.now();
  }
  c.data = { ...data };
  lookUpUsers(data.members.map((m) => m.user_id));
  subscribePresence();
  await openConversation(c.id);
}

async function createGroup(event) {
  event.preventDefault();
  const title = $("group-title").value.trim();
  const names = $("group-members").value.split(/[\s,]+/).filter(Boolean);
  try {
    const memberIds = [];
    for (const name of names) {
      const { users } = await session.call("GET", `/v1/users?prefix=${encodeURIComponent(name)}&limit=100`);
      const match = users.find((u) => u.username.toLowerCase() === name.toLowerCase());
      if (!match) throw new Error(`no user named ${name}`);
      state.users.set(match.user_id, match);
      if (match.user_id !== state.me.user_id) memberIds.push(match.user_id);
    }
    const data = await session.call("POST", "/v1/conversations", { type: "group", title, member_ids: memberIds });
    $("group-form").reset();
    $("group-panel").open = false;
    await adoptConversation(data);
  } catch (exc) {
    notice(`Could not create the group: ${describe(exc)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Signing in and out

function showAuth() {
  $("auth-view").hidden = false;
  $("chat-view").hidden = true;
  $("account").hidden = true;
  $("connection-status").hidden = true;
  $("login-username").focus();
}

async function enterChat() {
  $("auth-view").hidden = true;
  $("chat-view").hidden = false;
  state = freshState();
  try {
    state.me = await session.call("GET", "/v1/users/me");
  } catch (exc) {
    if (!session.signedIn) return; // signed-out already showed the form
    notice(`Could not reach the server: ${describe(exc)}`);
    setTimeout(() => session.signedIn && enterChat(), 5_000);
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
  renderPane();
  connect();
}

function leaveChat() {
  socket?.stop();
  socket = null;
  stopTyping();
  clearTimeout(state.listReload);
  for (const c of state.convs.values()) c.typers.forEach((timer) => clearTimeout(timer));
  state = freshState();
  $("conversation-list").replaceChildren();
  $("messages").replaceChildren();
  showAuth();
}

async function onLogin(event) {
  event.preventDefault();
  const button = $("login-submit");
  button.disabled = true;
  try {
    await session.login($("login-username").value.trim(), $("login-password").value);
    $("login-form").reset();
    await enterChat();
  } catch (exc) {
    notice(`Log in failed: ${describe(exc)}`);
  } finally {
    button.disabled = false;
  }
}

async function onRegister(event) {
  event.preventDefault();
  const button = $("register-submit");
  const username = $("register-username").value.trim();
  const password = $("register-password").value;
  button.disabled = true;
  try {
    await session.register(username, password, $("register-display-name").value.trim());
    await session.login(username, password);
    $("register-form").reset();
    await enterChat();
  } catch (exc) {
    notice(`Registration failed: ${describe(exc)}`);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

function wire() {
  $("login-form").addEventListener("submit", onLogin);
  $("register-form").addEventListener("submit", onRegister);
  $("logout-button").addEventListener("click", async () => {
    leaveChat();
    await session.logout();
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
  input.addEventListener("input", onInput);
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
  });
  $("file-input").addEventListener("change", (event) => {
    const c = state.convs.get(state.active);
    const [file] = event.target.files;
    event.target.value = "";
    if (c && file) sendFile(c, file);
  });
  document.addEventListener("visibilitychange", () => {
    if (!isVisible() || !state.me) return;
    session.ensureFresh().catch(() => {});
    markRead(state.convs.get(state.active));
    renderList();
  });
}

wire();
if (session.signedIn) enterChat();
else showAuth();
