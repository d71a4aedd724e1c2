// Shared helpers of the review page: DOM building (texts always as text, never HTML), number formats, pills,
// and the page's mutable state (token, timers, charts and cleanups of the current view).

export const view = document.getElementById("view");
export const state = { token: sessionStorage.getItem("fpmon.token"), timers: [], charts: [], cleanups: [] };

export const ALERT_STATUSES = ["open", "acknowledged", "confirmed", "dismissed"];
export const ALERT_TYPES = ["POTENTIAL_REWARD_HACKING", "PHASE_TRANSITION"];
//: the colour of an alert marker per review status (charts, legend; app.css uses the same ones)
export const STATUS_COLOURS = {
  open: "#d6336c",
  acknowledged: "#3860e0",
  confirmed: "#a61e4d",
  dismissed: "#9aa4b2",
};

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function fmt(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

export function axisLabel(value) {
  if (value === null || value === undefined) return "";
  if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) return value.toExponential(1);
  return Number(value.toPrecision(4)).toString();
}

export function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

export function pill(text, kind) {
  return h("span", { class: `pill pill-${kind}` }, text);
}

export function typeLabel(type) {
  return type === "POTENTIAL_REWARD_HACKING" ? "reward hacking?" : type === "PHASE_TRANSITION" ? "phase transition" : type;
}

export function typePill(type) {
  return pill(typeLabel(type), type === "POTENTIAL_REWARD_HACKING" ? "hack" : "phase");
}

export function setTitle(...parts) {
  document.title = [...parts, "fpmon review"].join(" · ");
}

// Keys typed into a form field are the field's, not the page's shortcuts.
export function typing(event) {
  const tag = (event.target && event.target.tagName) || "";
  return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (event.target && event.target.isContentEditable);
}

export function onKey(handler) {
  document.addEventListener("keydown", handler);
  state.cleanups.push(() => document.removeEventListener("keydown", handler));
}
