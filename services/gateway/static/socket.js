// The WebSocket side of the Courier protocol: one connection to /v1/ws that reconnects with jittered
// exponential backoff, honours the server's close codes and `reconnect` frames, and matches answers
// to requests by `ref`.

export const CLOSE_UNAUTHORIZED = 4001;
export const CLOSE_RATE_LIMITED = 4008;
export const CLOSE_REPLACED = 4009;

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const RATE_LIMITED_MIN_MS = 10_000;
const STABLE_AFTER_MS = 10_000; // a connection that lived this long resets the backoff
const PING_EVERY_MS = 25_000; // well inside the server's idle timeout and presence heartbeat
const ANSWER_TIMEOUT_MS = 20_000;

/**
 * Events: "state" (detail: {state, delay?, reason?}), "open", "frame" (detail: the frame),
 * "unauthorized" (the server refused the token: refresh it and call start() again).
 * States: connecting, open, waiting (to reconnect), replaced (another tab took this device), stopped.
 */
export class Connection extends EventTarget {
  #url;
  #ws = null;
  #state = "stopped";
  #attempt = 0;
  #timer = null;
  #pingTimer = null;
  #openedAt = 0;
  #nextId = 1;
  #waiting = new Map(); // frame id -> {resolve, reject, timer}
  #retryAfterMs = 0;
  #onOnline = () => {
    if (this.#state === "waiting") this.#connectNow(); // the network is back: no need to wait
  };

  /** `url` is an async function giving the URL to connect to (it carries a fresh access token). */
  constructor(url) {
    super();
    this.#url = url;
    window.addEventListener("online", this.#onOnline);
  }

  get state() {
    return this.#state;
  }

  get isOpen() {
    return this.#state === "open";
  }

  start() {
    if (this.#state === "open" || this.#state === "connecting") return;
    this.#attempt = 0;
    this.#connectNow();
  }

  stop() {
    this.#setState("stopped");
    clearTimeout(this.#timer);
    window.removeEventListener("online", this.#onOnline);
    this.#drop(1000, "signed out");
  }

  /** Connect again after the usual backoff (after a refused token was refreshed, say). */
  reconnect(reason) {
    if (this.#state === "waiting") this.#retry(reason);
  }

  /** Send a frame if the socket is open; false otherwise (the caller keeps it for later). */
  send(frame) {
    if (this.#state !== "open") return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  /** Send a frame with a fresh id; resolves with the answer or the error frame carrying it as `ref`. */
  request(frame) {
    return new Promise((resolve, reject) => {
      const id = `w${this.#nextId++}`;
      if (!this.send({ ...frame, id })) {
        reject(new Error("not connected"));
        return;
      }
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        reject(new Error("no answer in time"));
      }, ANSWER_TIMEOUT_MS);
      this.#waiting.set(id, { resolve, reject, timer });
    });
  }

  async #connectNow() {
    clearTimeout(this.#timer);
    this.#setState("connecting");
    let url;
    try {
      url = await this.#url();
    } catch (exc) {
      if (this.#state === "connecting") this.#retry(`cannot prepare the connection: ${exc.message}`);
      return;
    }
    if (this.#state !== "connecting") return; // stopped meanwhile
    const ws = new WebSocket(url);
    this.#ws = ws;
    ws.addEventListener("open", () => {
      if (this.#ws !== ws) return;
      this.#openedAt = Date.now();
      this.#setState("open");
      this.#pingTimer = setInterval(() => this.#ping(), PING_EVERY_MS);
      this.dispatchEvent(new Event("open"));
    });
    ws.addEventListener("message", (event) => {
      if (this.#ws === ws) this.#receive(event.data);
    });
    ws.addEventListener("close", (event) => {
      if (this.#ws === ws) this.#closed(event.code, event.reason);
    });
  }

  #receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === "error" && frame.retry_after) this.#retryAfterMs = frame.retry_after * 1000;
    if (frame.ref != null && this.#waiting.has(frame.ref)) {
      const waiter = this.#waiting.get(frame.ref);
      this.#waiting.delete(frame.ref);
      clearTimeout(waiter.timer);
      waiter.resolve(frame);
      if (frame.type === "pong") return;
    }
    if (frame.type === "reconnect") {
      // This node no longer owns us: go where the ring now points, after the server's jittered delay.
      this.#drop(1000, "reconnect requested");
      this.#setState("waiting", { delay: frame.after_ms ?? 0, reason: "the server moved this connection" });
      this.#timer = setTimeout(() => this.#connectNow(), frame.after_ms ?? 0);
      return;
    }
    this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
  }

  async #ping() {
    try {
      await this.request({ type: "ping" });
    } catch {
      // No pong: the connection is dead without a close event (a sleeping laptop, a lost route).
      if (this.#state === "open") {
        this.#drop(4000, "no pong");
        this.#retry("the connection stopped answering");
      }
    }
  }

  #closed(code, reason) {
    this.#cleanup();
    if (this.#state === "stopped") return;
    if (code === CLOSE_UNAUTHORIZED) {
      this.#setState("waiting", { reason: "signing in again" });
      this.dispatchEvent(new Event("unauthorized"));
    } else if (code === CLOSE_REPLACED) {
      // Reconnecting would just push the other tab off again: wait for the person to choose.
      this.#setState("replaced", { reason });
    } else if (code === CLOSE_RATE_LIMITED) {
      const delay = Math.max(this.#retryAfterMs, RATE_LIMITED_MIN_MS, this.#backoff());
      this.#retryAfterMs = 0;
      this.#setState("waiting", { delay, reason: "rate limited" });
      this.#timer = setTimeout(() => this.#connectNow(), delay);
    } else {
      this.#retry(reason || `closed (${code})`);
    }
  }

  #retry(reason) {
    const delay = this.#backoff();
    this.#setState("waiting", { delay, reason });
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#connectNow(), delay);
  }

  #backoff() {
    if (this.#openedAt && Date.now() - this.#openedAt > STABLE_AFTER_MS) this.#attempt = 0;
    this.#openedAt = 0;
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.#attempt);
    this.#attempt += 1;
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2); // jitter spreads a reconnect storm
  }

  #drop(code, reason) {
    const ws = this.#ws;
    this.#cleanup();
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
  }

  #cleanup() {
    this.#ws = null;
    clearInterval(this.#pingTimer);
    for (const waiter of this.#waiting.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error("connection closed"));
    }
    this.#waiting.clear();
  }

  #setState(state, detail = {}) {
    this.#state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }
}
