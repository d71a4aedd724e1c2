// The sidecar's /v1 API with the reviewer's token (sessionStorage), and the token dialog shown on a 401.

import { state } from "./util.js";

const TOKEN_KEY = "fpmon.token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    askToken(
      state.token
        ? "The sidecar refused this token (401): enter a valid read or write token."
        : "This sidecar requires a token (401).",
    );
    throw new ApiError(401, data.detail || "unauthorized");
  }
  if (!resp.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail ?? resp.statusText);
    throw new ApiError(resp.status, detail);
  }
  return data;
}

// A file download (the run's export) with the token: fetched, then saved from a blob URL. Resolves to the
// saved file's name; rejects with an ApiError (e.g. 404 when this sidecar has no export endpoint).
export async function download(path, filename) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const resp = await fetch(path, { headers });
  if (!resp.ok) {
    const data = await resp.json().catch(() => ({}));
    throw new ApiError(resp.status, typeof data.detail === "string" ? data.detail : resp.statusText);
  }
  const url = URL.createObjectURL(await resp.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return filename;
}

export function askToken(message = "") {
  const dialog = document.getElementById("token-dialog");
  document.getElementById("token-error").textContent = message;
  if (!dialog.open) dialog.showModal();
  document.getElementById("token-input").focus();
}

// Wires the token form and the "Change token" button; ``onChange`` re-renders the current view.
export function initToken(onChange) {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = document.getElementById("token-input").value.trim();
    if (!token) return;
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    document.getElementById("token-input").value = "";
    document.getElementById("token-dialog").close();
    onChange();
  });
  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    onChange();
  });
}
