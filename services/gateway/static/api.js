// The HTTP side of the Courier protocol: a signed-in session whose tokens live in sessionStorage and
// are refreshed before they expire, and a fetch wrapper that speaks the protocol's error shape.
//
// A tab opened from this one starts with a copy of its sessionStorage, so both hold the same device
// and refresh token. The server treats a refresh token used twice as stolen and ends the device's
// session, so such tabs refresh one at a time (a Web Lock) and hand each other the new pair (a
// BroadcastChannel); a tab whose socket another tab took over stops refreshing on its own.

const STORAGE_KEY = "courier.session";
const CHANNEL = "courier.session";
const REFRESH_AT = 0.8; // of the access token's lifetime
const FRESH_MARGIN = 0.1; // of the lifetime: a token with less left is refreshed before use
const RETRY_REFRESH_MS = 5_000;

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function errorOf(response) {
  let code = response.status === 401 ? "unauthorized" : "unavailable";
  let message = `the server answered ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch {
    // not the protocol's error body (a proxy page, say): keep the generic message
  }
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, code, message, Number.isFinite(retry) && retry > 0 ? retry : null);
}

async function send(method, path, { body, token, redirect } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      redirect: redirect ?? "follow",
      cache: "no-store",
    });
  } catch (exc) {
    throw new ApiError(0, "unavailable", `cannot reach the server (${exc.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function json(response) {
  return response.status === 204 ? null : response.json();
}

/**
 * The signed-in device. Dispatches "signed-out" (detail: {reason}) when the tokens stop working, so
 * the page can go back to the login form.
 */
export class Session extends EventTarget {
  #storage;
  #data = null;
  #refreshing = null;
  #timer = null;
  #channel = null;
  #active = true;

  constructor(storage = window.sessionStorage) {
    super();
    this.#storage = storage;
    try {
      this.#data = JSON.parse(storage.getItem(STORAGE_KEY) ?? "null");
    } catch {
      this.#data = null;
    }
    if (this.#data) this.#schedule();
    if ("BroadcastChannel" in window) {
      this.#channel = new BroadcastChannel(CHANNEL);
      this.#channel.addEventListener("message", (event) => this.#fromOtherTab(event.data));
    }
  }

  get signedIn() {
    return this.#data !== null;
  }

  get userId() {
    return this.#data?.user_id ?? null;
  }

  get deviceId() {
    return this.#data?.device_id ?? null;
  }

  get accessToken() {
    return this.#data?.access_token ?? null;
  }

  async register(username, password, displayName) {
    const body = { username, password };
    if (displayName) body.display_name = displayName;
    return json(await send("POST", "/v1/auth/register", { body }));
  }

  async login(username, password) {
    const platform = navigator.userAgentData?.platform || navigator.platform || "unknown system";
    const body = { username, password, device_name: `Web browser on ${platform}`.slice(0, 64) };
    const pair = await json(await send("POST", "/v1/auth/login", { body }));
    this.#store(pair);
  }

  /** A new token pair; concurrent callers share one request, since the old refresh token works once. */
  refresh() {
    if (!this.#refreshing) {
      const held = this.#data?.refresh_token;
      const run = () => this.#refresh(held);
      const lockName = `courier.refresh.${this.#data?.device_id}`;
      const locked = this.#data && navigator.locks ? navigator.locks.request(lockName, run) : run();
      this.#refreshing = locked.finally(() => {
        this.#refreshing = null;
      });
    }
    return this.#refreshing;
  }

  async #refresh(held) {
    // A tab that refreshed just before us posted the new pair before releasing the lock: let it land.
    await new Promise((resolve) => setTimeout(resolve, 0));
    if (!this.#data) throw new ApiError(401, "unauthorized", "not signed in");
    if (held && this.#data.refresh_token !== held) return; // another tab of this device rotated it
    const sent = this.#data.refresh_token;
    try {
      const pair = await json(await send("POST", "/v1/auth/refresh", { body: { refresh_token: sent } }));
      this.#store(pair);
    } catch (exc) {
      if (exc.status === 0 || exc.status >= 500 || exc.code === "rate_limited") {
        this.#retryLater();
      } else if (this.#data && this.#data.refresh_token === sent) {
        this.#end("the session expired");
      }
      throw exc;
    }
  }

  /** Whether this tab keeps the tokens fresh on a timer (false while another tab has the device). */
  setActive(active) {
    if (active === this.#active) return;
    this.#active = active;
    if (!this.#data) return;
    if (active) this.#schedule();
    else clearTimeout(this.#timer);
  }

  /** Refresh first when the access token is about to expire (timers sleep in background tabs). */
  async ensureFresh() {
    if (this.#data && this.#data.expires_at - Date.now() < this.#data.lifetime * FRESH_MARGIN) await this.refresh();
  }

  async logout() {
    const token = this.accessToken;
    if (this.#data) this.#channel?.postMessage({ kind: "ended", device_id: this.#data.device_id });
    this.#end(null);
    if (token) {
      try {
        await send("POST", "/v1/auth/logout", { token });
      } catch {
        // the device is forgotten locally either way; the refresh token expires on its own
      }
    }
  }

  /** A protocol call with the bearer token; one refresh and retry on 401. Returns the parsed body. */
  async call(method, path, body) {
    return json(await this.fetch(method, path, { body }));
  }

  /** Like ``call`` but returns the Response (for downloads). */
  async fetch(method, path, options = {}) {
    await this.ensureFresh();
    try {
      return await send(method, path, { ...options, token: this.accessToken });
    } catch (exc) {
      if (exc.status !== 401 || !this.#data) throw exc;
      await this.refresh();
      return send(method, path, { ...options, token: this.accessToken });
    }
  }

  #store(pair) {
    const lifetime = Math.max(1, pair.expires_in) * 1000;
    this.#data = {
      access_token: pair.access_token,
      refresh_token: pair.refresh_token,
      user_id: pair.user_id,
      device_id: pair.device_id,
      expires_at: Date.now() + lifetime,
      lifetime,
      issued_at: Date.now(),
    };
    this.#save();
    this.#channel?.postMessage({ kind: "tokens", device_id: pair.device_id, data: this.#data });
  }

  #save() {
    this.#storage.setItem(STORAGE_KEY, JSON.stringify(this.#data));
    this.#schedule();
  }

  #fromOtherTab(message) {
    if (!this.#data || !message || message.device_id !== this.#data.device_id) return;
    if (message.kind === "ended") {
      this.#end("logged out in another tab"); // the server revoked this device's refresh token
    } else if (message.kind === "tokens" && message.data.issued_at > this.#data.issued_at) {
      this.#data = message.data;
      this.#save();
    }
  }

  #schedule() {
    clearTimeout(this.#timer);
    if (!this.#active) return;
    const { expires_at: expiresAt, lifetime } = this.#data;
    const due = expiresAt - lifetime * (1 - REFRESH_AT) - Date.now();
    this.#timer = setTimeout(() => this.refresh().catch(() => {}), Math.max(1_000, due));
  }

  #retryLater() {
    clearTimeout(this.#timer);
    if (!this.#active) return;
    this.#timer = setTimeout(() => this.refresh().catch(() => {}), RETRY_REFRESH_MS);
  }

  #end(reason) {
    clearTimeout(this.#timer);
    this.#data = null;
    this.#storage.removeItem(STORAGE_KEY);
    if (reason) this.dispatchEvent(new CustomEvent("signed-out", { detail: { reason } }));
  }
}
