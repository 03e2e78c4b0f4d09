// The dashboard's JSON API on the admin listener (same origin, so the browser sends the Basic
// credentials it was given for the page).

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** GETs `path` as JSON; rejects with an ApiError carrying the server's `error` text. */
export async function getJson(path, { signal } = {}) {
  let response;
  try {
    response = await fetch(path, { headers: { accept: 'application/json' }, signal });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'the server cannot be reached');
  }
  return answer(response);
}

/** POSTs `body` as JSON to `path`; resolves with the JSON answer. */
export async function postJson(path, body) {
  let response;
  try {
    response = await fetch(path, {
      method: 'POST',
      headers: { accept: 'application/json', 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'the server cannot be reached');
  }
  return answer(response);
}

async function answer(response) {
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, body?.error ?? `HTTP ${response.status}`);
  }
  return body;
}

/** The URL of report `name` with `params` (undefined values left out). */
export function reportUrl(name, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') query.set(key, String(value));
  }
  return `/api/reports/${encodeURIComponent(name)}?${query}`;
}
