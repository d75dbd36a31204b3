// What this device knows of one conversation: its stored events, deduplicated by seq, with gaps
// detected and recalls and edits applied. Pure: no DOM, no network, so the rules can be checked
// on their own (tests/browser/test_timeline.py).

/** A conversation as the page knows it; `data` is the server's conversation object once known. */
export function newConversation(id) {
  return {
    id,
    data: null,
    cursor: 0, // every event up to this seq is known
    ahead: new Set(), // seqs received beyond a gap
    acked: 0,
    loaded: false, // history fetched: from then on messages are kept in `messages`
    loading: false,
    hasOlder: false,
    messages: new Map(), // seq -> message
    tombstones: new Map(), // target seq -> {recalled, edit: {eventSeq, content}}
    pending: new Map(), // client_msg_id -> an outgoing message not yet acknowledged
    peerRead: new Map(), // user_id -> the last seq they read (from read_receipt frames)
    typers: new Map(), // user_id -> the timer that forgets a silent typist
    readSent: 0,
    lastActivity: 0,
  };
}

/** Recall and edit events: stored with a seq of their own, they change the message they name. */
export function isTombstone(message) {
  const type = message.content?.type;
  return type === "recall" || type === "edit";
}

/** Adopt the server's summary (conversation list) when the conversation is first seen. */
export function adoptSummary(c, data) {
  const first = c.data === null;
  c.data = { ...data };
  if (first) {
    jumpCursor(c, data.max_seq); // the list stands for everything up to max_seq; sync goes on from there
    c.readSent = Math.max(c.readSent, data.read_seq);
  } else {
    c.data.max_seq = Math.max(data.max_seq, c.cursor);
  }
  const at = Date.parse(data.last_message?.created_at ?? data.created_at) || 0;
  c.lastActivity = Math.max(c.lastActivity, at);
}

/** Skip ahead to a seq known from elsewhere, without an event for each seq. */
export function jumpCursor(c, seq) {
  if (seq <= c.cursor) return;
  c.cursor = seq;
  for (const ahead of c.ahead) if (ahead <= seq) c.ahead.delete(ahead);
  advance(c);
}

function advance(c) {
  while (c.ahead.delete(c.cursor + 1)) c.cursor += 1;
}

/**
 * Record one stored event (message, or recall/edit tombstone in its stored form).
 * Returns {fresh: false} for an event already known, and `gap: true` when events are missing
 * before it (the caller syncs).
 */
export function applyEvent(c, event, me) {
  const seq = event.seq;
  if (seq <= c.cursor || c.ahead.has(seq)) return { fresh: false, gap: false };
  const gap = seq > c.cursor + 1;
  c.ahead.add(seq);
  advance(c);
  if (isTombstone(event)) {
    recordTombstone(c, event.content, seq);
  } else if (c.loaded || c.loading) {
    c.messages.set(seq, { ...event });
    applyTombstone(c, seq);
  }
  if (event.sender_id === me) c.pending.delete(event.client_msg_id);
  else c.typers.delete(event.sender_id); // whoever sent has stopped typing
  if (c.data) {
    c.data.max_seq = Math.max(c.data.max_seq, seq);
    if (event.sender_id === me) c.data.read_seq = Math.max(c.data.read_seq, seq);
    c.data.unread_count = Math.max(0, c.data.max_seq - c.data.read_seq);
    if (!c.data.last_message || c.data.last_message.seq < seq) c.data.last_message = event;
  }
  c.lastActivity = Math.max(c.lastActivity, Date.parse(event.created_at) || Date.now());
  return { fresh: true, gap };
}

/** A page of history (GET .../messages): messages are kept, tombstones only applied. */
export function mergeHistory(c, messages, me) {
  for (const m of messages) {
    if (isTombstone(m)) recordTombstone(c, m.content, m.seq);
    else if (!c.messages.has(m.seq)) c.messages.set(m.seq, { ...m });
    if (m.sender_id === me) c.pending.delete(m.client_msg_id);
  }
  // A recall or edit seen live while the page was loading wins over the older copy in the page.
  for (const target of c.tombstones.keys()) applyTombstone(c, target);
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

/** The stored form of a pushed `recalled` / `edited` frame (whose `seq` names the target). */
export function tombstoneOf(frame) {
  const content =
    frame.type === "recalled"
      ? { type: "recall", target_seq: frame.seq }
      : { type: "edit", target_seq: frame.seq, content: frame.content };
  return {
    seq: frame.event_seq ?? frame.seq,
    conversation_id: frame.conversation_id,
    sender_id: frame.by,
    client_msg_id: null,
    content,
    created_at: frame.created_at,
  };
}

/** The highest seq a reader of the open conversation has seen. */
export function readableSeq(c) {
  return Math.max(c.cursor, ...c.messages.keys());
}

/** Messages in seq order. */
export function orderedMessages(c) {
  return [...c.messages.values()].sort((a, b) => a.seq - b.seq);
}

/** Our newest message that someone else has read, and who: {seq, readers} or null. */
export function seen(c, me) {
  const own = orderedMessages(c).filter((m) => m.sender_id === me);
  for (let i = own.length - 1; i >= 0; i -= 1) {
    const readers = [...c.peerRead].filter(([, seq]) => seq >= own[i].seq).map(([userId]) => userId);
    if (readers.length) return { seq: own[i].seq, readers };
  }
  return null;
}

/** One line for the conversation list. */
export function preview(message, me) {
  if (!message) return "No messages yet";
  const content = message.content ?? {};
  const own = message.sender_id === me ? "You: " : "";
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
      return own + (content.content?.text ?? "Message edited");
    default:
      return "New message";
  }
}

export function typingLine(names) {
  if (!names.length) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return "Several people are typing…";
}
