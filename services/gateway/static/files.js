// Files over the protocol: multipart upload to presigned part URLs (with sha256 dedup), and
// downloads through the bearer-authenticated redirect to a short-lived URL.

import { ApiError } from "./api.js";

const FALLBACK_TYPE = "application/octet-stream";

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Upload `file`; resolves with the completed file ({file_id, name, size, content_type, sha256}).
 * `onProgress` gets the fraction of parts stored.
 */
export async function upload(session, file, onProgress = () => {}) {
  const bytes = await file.arrayBuffer();
  const sha256 = await sha256Hex(bytes);
  const start = (contentType) =>
    session.call("POST", "/v1/files/uploads", { name: file.name, size: file.size, content_type: contentType, sha256 });
  let contentType = file.type || FALLBACK_TYPE;
  let started;
  try {
    started = await start(contentType);
  } catch (exc) {
    // The server accepts a list of media types; anything else can still travel as plain bytes.
    const refusedType = exc instanceof ApiError && exc.code === "invalid_request" && /content_type/.test(exc.message);
    if (!refusedType || contentType === FALLBACK_TYPE) throw exc;
    contentType = FALLBACK_TYPE;
    started = await start(contentType);
  }
  if (started.deduplicated) return started; // these bytes are stored already
  const done = new Set(started.uploaded_parts ?? []);
  for (const part of started.parts) {
    if (done.has(part.part_number)) continue;
    const from = (part.part_number - 1) * started.part_size;
    const body = bytes.slice(from, Math.min(from + started.part_size, bytes.byteLength));
    let response;
    try {
      response = await fetch(part.url, { method: "PUT", body }); // presigned: no bearer token
    } catch (exc) {
      throw new ApiError(0, "unavailable", `cannot reach the server (${exc.message})`);
    }
    if (!response.ok) {
      throw new ApiError(response.status, "upload_failed", `part ${part.part_number} was refused (${response.status})`);
    }
    done.add(part.part_number);
    onProgress(done.size / started.parts.length);
  }
  return session.call("POST", `/v1/files/uploads/${encodeURIComponent(started.upload_id)}/complete`);
}

/** Save a file message's bytes under its name. */
export async function download(session, content) {
  // GET /v1/files/{id} needs the bearer token and redirects to a presigned URL on the same
  // origin: fetch follows it, and the bytes are handed to the browser as a blob.
  const response = await session.fetch("GET", `/v1/files/${encodeURIComponent(content.file_id)}`);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = content.name || "download";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000); // the download has started by then
}
