// ClawDeploy dashboard script: forms call the JSON API, the chat panel talks to
// /api/instances/me/chat. One file, no build step, no inline handlers (CSP-friendly).
"use strict";

const $ = (sel) => document.querySelector(sel);

class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `Request failed (${status})`);
    this.status = status;
    this.code = (error && error.code) || "HTTP_" + status;
    this.field = error && error.field;
    this.suggestion = error && error.suggestion;
  }
}

// Cookie-authenticated calls carry the CSRF header; `token` (right after signup or login) is
// sent as a bearer token instead.
async function api(method, path, body, token) {
  const headers = { "X-CSRF-Protection": "1", "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers["Authorization"] = "Bearer " + token;
  let resp;
  try {
    resp = await fetch(path, { method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { code: "NETWORK", message: "The server could not be reached; check your connection and try again." });
  }
  if (resp.status === 204) return {};
  let data = {};
  try { data = await resp.json(); } catch (e) { data = {}; }
  if (!resp.ok) throw new ApiError(resp.status, data.error);
  return data;
}

function clearErrors(form) {
  form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  form.querySelectorAll(".field-error").forEach((el) => { el.textContent = ""; });
  const formError = form.querySelector(".form-error");
  if (formError) formError.textContent = "";
}

// Shows an API error next to the field it names (error.field), else in the form's alert.
function showError(form, err, alertEl) {
  // The field itself (`config.NOTION_API_TOKEN`), else its top-level part (`apiKeys.openai`).
  const byName = (name) => form.querySelector(`[data-field="${CSS.escape(name)}"]`);
  const input = err.field && (byName(err.field) || byName(err.field.split(".")[0]));
  // The API names the field for programs (`apiKeys.openai: ...`); people see its label instead.
  let message = err.message;
  if (err.field && message.startsWith(err.field + ": ")) message = message.slice(err.field.length + 2);
  // A taken address: the live check beside the field offers the one suggestion.
  if (err.suggestion && $("#subdomain-status")) {
    message = message.split(";")[0] + ".";
    $("#subdomain").dispatchEvent(new Event("input"));
  }
  if (input) {
    input.setAttribute("aria-invalid", "true");
    const slot = document.getElementById(input.id + "-error");
    if (slot) { slot.textContent = message; input.focus(); return; }
    input.focus();
    const label = input.id && document.querySelector(`label[for="${CSS.escape(input.id)}"]`);
    if (label) message = `${label.textContent.trim()}: ${message}`;
  }
  const target = alertEl || form.querySelector(".form-error");
  if (target) target.textContent = message;
}

// Times in the reader's own zone and language (the page says UTC until this runs).
function localTimes() {
  document.querySelectorAll("time[data-local]").forEach((t) => {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) t.textContent = d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  });
}

function randomId() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function debounce(fn, ms) {
  let t;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

// --- live subdomain check (signup and create) ---
function subdomainCheck() {
  const input = $("#subdomain");
  const status = $("#subdomain-status");
  if (!input || !status) return;
  let seq = 0;
  const check = debounce(async () => {
    const label = input.value.trim().toLowerCase();
    const mine = ++seq;
    if (!label) { status.textContent = ""; return; }
    if (label === input.dataset.current) { status.textContent = "This is your current address."; status.className = "hint"; return; }
    try {
      const r = await api("GET", "/api/subdomains/" + encodeURIComponent(label));
      if (mine !== seq) return;
      // One suggestion, as a button (the message would name it a second time).
      status.textContent = r.suggestion ? `${r.subdomain} is ${r.reason === "reserved" ? "reserved" : "already taken"}.` : r.message;
      status.className = "hint " + (r.available ? "ok" : "bad");
      if (r.suggestion) {
        const b = document.createElement("button");
        b.type = "button"; b.className = "link"; b.textContent = `Use ${r.suggestion}`;
        b.addEventListener("click", () => { input.value = r.suggestion; check(); input.focus(); });
        status.append(" ", b);
      }
    } catch (e) {
      if (mine === seq) { status.textContent = e.message; status.className = "hint bad"; }
    }
  }, 300);
  input.addEventListener("input", check);
  if (input.value) check();
}

// --- signup ---
function signupPage() {
  subdomainCheck();
  const form = $("#signup-form");
  const progress = $("#form-progress");
  const button = $("#deploy");
  let token = null; // kept if the account was created but the instance was not
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    button.disabled = true;
    const keys = {}; keys[form.provider.value] = form.apiKey.value.trim();
    const instance = { subdomain: form.subdomain.value.trim().toLowerCase(), apiKeys: keys, preset: form.preset.value };
    try {
      if (!token) {
        // Everything the instance needs is checked first: a form that fails leaves no account.
        progress.textContent = "Checking…";
        await api("POST", "/api/instances/check", instance);
        progress.textContent = "Creating your account…";
        const reg = await api("POST", "/api/auth/register", {
          email: form.email.value.trim(), password: form.password.value,
          timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || undefined,
        });
        token = reg.token;
        await api("POST", "/api/auth/browser-session", undefined, token);
      }
      progress.textContent = "Deploying your instance…";
      await api("POST", "/api/instances", instance, token);
      progress.textContent = "Ready. Opening your dashboard…";
      window.location.assign("/dashboard");
    } catch (err) {
      progress.textContent = "";
      if (err.field === "timezone") { err.field = null; }
      showError(form, err);
      button.disabled = false;
    }
  });
}

// --- login (with MFA) ---
function loginPage() {
  const form = $("#login-form");
  const mfaField = $("#mfa-field");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const body = { email: form.email.value.trim(), password: form.password.value };
    if (!mfaField.hidden && form.mfaCode.value.trim()) body.mfaCode = form.mfaCode.value.trim();
    try {
      const r = await api("POST", "/api/auth/login", body);
      await api("POST", "/api/auth/browser-session", undefined, r.token);
      window.location.assign("/login/continue?next=" + encodeURIComponent(form.dataset.next || ""));
    } catch (err) {
      if (err.code === "MFA_REQUIRED") {
        mfaField.hidden = false;
        form.mfaCode.focus();
        form.querySelector(".form-error").textContent = "Enter the code from your authenticator app.";
        return;
      }
      showError(form, err);
    }
  });
}

// --- dashboard: progress and chat ---
const STEP = { queued: 1, provisioning: 2, starting: 3, running: 4 };
const STATUS_TEXT = {
  queued: "Waiting for capacity: your instance starts as soon as room frees on this node.",
  provisioning: "Preparing your instance…", starting: "Starting OpenClaw…", running: "Running",
  stopped: "Stopped. Restart it from Settings to chat again.",
  crashed: "Crashed. Restart it from Settings.", deleting: "Cancelled: restore it from Settings.",
};
const STATUS_WORD = {
  queued: "Waiting for room", provisioning: "Preparing", starting: "Starting", running: "Running",
  sleeping: "Asleep", stopped: "Stopped", crashed: "Crashed", deleting: "Cancelled",
};
// What the chat says when the assistant cannot reach a model (the dashboard's warning says it too).
const NO_PROVIDER = "Your assistant has no AI provider key yet, so it cannot answer.";

function dashboardPage() {
  const create = $("#create-form");
  if (create) {
    subdomainCheck();
    create.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(create);
      try {
        await api("POST", "/api/instances", { subdomain: create.subdomain.value.trim().toLowerCase() });
        window.location.reload();
      } catch (err) { showError(create, err); }
    });
    return;
  }
  const box = $("#instance");
  if (!box) return;
  const chat = new ChatPanel();
  const setStatus = (status) => {
    box.dataset.status = status;
    const text = $("#status-text");
    text.textContent = STATUS_TEXT[status] || status;
    text.className = "status status-" + status;
    const step = STEP[status] || 0;
    $("#progress-bar").value = step;
    $("#progress-bar").textContent = `${step} of 4`;
    document.querySelectorAll(".steps li").forEach((li) => {
      const n = Number(li.dataset.step);
      li.classList.toggle("done", n < step || step === 4);
      if (n === step && step < 4) li.setAttribute("aria-current", "step"); else li.removeAttribute("aria-current");
    });
    $("#progress").hidden = status === "running" || step === 0;
  };
  setStatus(box.dataset.status);
  const agentForm = $("#agent-form");
  if (agentForm) agentForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(agentForm);
    try {
      const r = await api("POST", "/api/agents", { task: agentForm.task.value, label: agentForm.label.value || undefined });
      agentForm.reset();
      $("#agent-error").textContent = r.message;
      chat.sessionsChanged();
    } catch (err) { showError(agentForm, err); }
  });
  if (box.dataset.status === "running") { chat.start(); return; }
  // No blank waits: poll until the instance runs, then connect the chat. Quick at first (a warm
  // handover takes a moment), then backing off to 5 s so a slow boot stays within rate limits.
  let wait = 500;
  const poll = async () => {
    try {
      const r = await api("GET", "/api/instances/me");
      setStatus(r.instance.status);
      if (r.instance.status === "running") { chat.start(); return; }
    } catch (e) { $("#chat-status").textContent = e.message; }
    wait = Math.min(wait * 1.5, 5000);
    setTimeout(poll, wait);
  };
  setTimeout(poll, 300);
}

class ChatPanel {
  constructor() {
    this.log = $("#chat-log");
    this.status = $("#chat-status");
    this.form = $("#chat-form");
    this.input = $("#chat-input");
    this.send = $("#chat-send");
    this.ws = null;
    this.ready = false;
    this.delay = 500;
    this.pending = new Map(); // request id -> handler
    this.runs = new Map(); // runId -> <li>
    this.form.addEventListener("submit", (ev) => { ev.preventDefault(); this.submit(); });
    this.input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); this.submit(); }
    });
  }

  start() {
    if (this.ws) return;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    this.status.textContent = "Connecting…";
    const ws = new WebSocket(scheme + location.host + "/api/instances/me/chat");
    this.ws = ws;
    ws.addEventListener("message", (ev) => {
      let frame;
      try { frame = JSON.parse(ev.data); } catch (e) { return; }
      this.onFrame(frame);
    });
    ws.addEventListener("close", async () => {
      this.ws = null;
      this.setReady(false);
      // A session that ended (logout elsewhere, password change) sends the browser to log in.
      try { await api("GET", "/api/account"); } catch (e) {
        if (e.status === 401) { window.location.assign("/login?next=" + encodeURIComponent(location.pathname)); return; }
      }
      // Reconnects by itself, backing off to 10 s.
      this.status.textContent = this.lastError ? `${this.lastError} Reconnecting…` : "Disconnected. Reconnecting…";
      setTimeout(() => this.start(), this.delay);
      this.delay = Math.min(this.delay * 2, 10000);
    });
  }

  setReady(ready) {
    this.ready = ready;
    this.send.disabled = !ready;
  }

  add(role, text) {
    const li = document.createElement("li");
    li.className = role;
    li.textContent = text;
    this.log.append(li);
    this.log.scrollTop = this.log.scrollHeight;
    return li;
  }

  request(method, params, onResponse) {
    const id = randomId();
    if (onResponse) this.pending.set(id, onResponse);
    this.ws.send(JSON.stringify({ type: "req", id, method, params }));
    return id;
  }

  submit() {
    const text = this.input.value.trim();
    if (!text || !this.ready) return;
    this.input.value = "";
    this.add("user", text);
    const li = this.add("assistant pending", "…");
    this.request("chat.send", { sessionKey: "agent:main:main", message: text, idempotencyKey: randomId() }, (res) => {
      if (res.ok) {
        const runId = res.payload && res.payload.runId;
        if (runId && !this.runs.has(runId)) this.runs.set(runId, li);
        li.dataset.run = runId || "";
        return;
      }
      this.showRefusal(li, res.error || {});
    });
  }

  showRefusal(li, error) {
    li.className = "error";
    li.textContent = error.message || "The message was refused.";
    if (error.code === "QUOTA_EXCEEDED") {
      const details = error.details || {};
      const a = document.createElement("a");
      // The refusal passes through the instance's gateway: follow only a path on this site or
      // an http(s) URL, never a javascript: one.
      const url = String(details.upgradeUrl || "");
      a.href = /^(https?:\/\/|\/(?![\/\\]))/.test(url) ? url : "/billing";
      a.textContent = "Upgrade your plan";
      li.append(" ", a);
    }
  }

  // OpenClaw without a model provider answers with a hint for its terminal (`openclaw logs`);
  // people are told where to add a key instead.
  showFailure(li, message) {
    li.className = "error";
    const noKey = document.getElementById("no-provider") || /api key|no provider|provider.*not configured|openclaw logs/i.test(message);
    if (!noKey) { li.textContent = message; return; }
    li.textContent = NO_PROVIDER + " ";
    const a = document.createElement("a");
    a.href = "/settings#keys-h";
    a.textContent = "Add one in Settings → AI providers";
    li.append(a, ", then send your message again.");
  }

  // The conversation so far (a reload keeps it): the main session's transcript from the gateway.
  loadHistory() {
    if (this.log.children.length) return;
    this.request("chat.history", { sessionKey: "agent:main:main", limit: 100 }, (res) => {
      if (!res.ok || this.log.children.length) return;
      const messages = (res.payload && res.payload.messages) || [];
      messages.forEach((m) => {
        const text = this.textOf(m);
        if (text && (m.role === "user" || m.role === "assistant")) this.add(m.role === "user" ? "user" : "assistant final", text);
      });
    });
  }

  textOf(message) {
    if (!message) return "";
    if (typeof message.content === "string") return message.content;
    return (message.content || []).filter((c) => typeof c.text === "string").map((c) => c.text).join("");
  }

  onFrame(frame) {
    if (frame.type === "res") {
      const handler = this.pending.get(frame.id);
      if (handler) { this.pending.delete(frame.id); handler(frame); }
      return;
    }
    if (frame.type !== "event") return;
    const p = frame.payload || {};
    switch (frame.event) {
      case "bridge.ready":
        this.lastError = null;
        this.delay = 500;
        this.status.textContent = `Connected to ${p.instance}.`;
        this.setReady(true);
        this.loadHistory();
        this.loadPanels();
        break;
      case "bridge.error":
        this.lastError = p.message;
        this.status.textContent = p.message;
        break;
      case "bridge.closed":
        this.lastError = p.message;
        break;
      case "sessions.changed":
        // Pushed by the gateway (sessions.subscribe): sub-agents' progress, without polling.
        this.sessionsChanged();
        break;
      case "chat": {
        if (p.sessionKey && p.sessionKey !== "agent:main:main") return;
        let li = this.runs.get(p.runId);
        if (!li) {
          li = this.log.querySelector("li.pending") || this.add("assistant", "");
          this.runs.set(p.runId, li);
        }
        if (p.state === "status" && li.classList.contains("pending")) {
          li.textContent = "Thinking… (" + String(p.phase || "working").replace(/_/g, " ") + ")";
        } else if (p.state === "delta" || p.state === "final") {
          const text = this.textOf(p.message);
          if (text) li.textContent = text;
          if (p.state === "final") { li.className = "assistant final"; this.runs.delete(p.runId); this.afterTurn(); }
        } else if (p.state === "error" || p.state === "aborted") {
          this.showFailure(li, p.errorMessage || "The assistant could not answer.");
        }
        this.log.scrollTop = this.log.scrollHeight;
        break;
      }
      default:
        break;
    }
  }

  loadPanels() {
    this.request("skills.status", {}, (res) => {
      const el = $("#skills");
      if (!res.ok) { el.textContent = "This instance does not report its skills."; return; }
      const skills = (res.payload && (res.payload.skills || res.payload.entries)) || [];
      el.textContent = "";
      if (!skills.length) { el.textContent = "No skills reported."; return; }
      const ready = skills.filter((s) => s.eligible !== false && !s.disabled);
      const p = document.createElement("p");
      p.textContent = `${skills.length} skills, ${ready.length} ready to use.`;
      const ul = document.createElement("ul");
      ready.concat(skills.filter((s) => !ready.includes(s))).slice(0, 15).forEach((s) => {
        const li = document.createElement("li");
        li.textContent = (s.name || s.key || "skill") + (ready.includes(s) ? "" : " (needs setup)");
        ul.append(li);
      });
      el.append(p, ul);
    });
    this.loadSessions();
    this.request("sessions.subscribe", {});
  }

  loadSessions() {
    this.request("sessions.list", {}, (res) => {
      const el = $("#sessions");
      if (!res.ok) { el.textContent = "This instance does not report its sessions."; return; }
      const sessions = (res.payload && res.payload.sessions) || [];
      el.textContent = "";
      if (!sessions.length) { el.textContent = "No sessions yet."; return; }
      const ul = document.createElement("ul");
      sessions.slice(0, 20).forEach((s) => {
        const li = document.createElement("li");
        const key = s.key || s.sessionKey || "session";
        li.textContent = key.includes(":subagent:")
          ? `Sub-agent ${s.label || key}: ${s.status || "started"}`
          : key === "agent:main:main" ? "Main chat (this one)" : s.label || s.displayName || key;
        if (key.includes(":subagent:")) li.dataset.subagent = key;
        ul.append(li);
      });
      el.append(ul);
    });
  }

  // Many events arrive while a run works: the list is read again once they pause.
  sessionsChanged() {
    clearTimeout(this.sessionsTimer);
    this.sessionsTimer = setTimeout(() => { if (this.ready) this.loadSessions(); }, 300);
  }

  // After a turn: the session list and this month's usage may have changed.
  afterTurn() {
    if (this.ready) this.loadSessions();
    refreshUsage();
  }
}

async function refreshUsage() {
  try {
    const r = await api("GET", "/api/instances/me");
    const usage = r.instance.usage || {};
    for (const [id, value] of [["usage-messages", usage.messagesThisMonth], ["usage-tokens", usage.tokensThisMonth]]) {
      const meter = document.getElementById(id);
      if (!meter || typeof value !== "number") continue;
      meter.value = value;
      meter.textContent = `${value} of ${meter.max}`;
      const label = document.querySelector(`label[for="${id}"]`);
      if (label) label.textContent = label.textContent.replace(/: \d+ of/, `: ${value} of`);
    }
  } catch (e) { /* the figures refresh on the next turn */ }
}

// --- settings ---
function settingsPage() {
  const result = (id, text) => { const el = $(id); if (el) el.textContent = text; };
  const soul = $("#soul-form");
  if (soul) soul.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(soul);
    result("#soul-result", "Saving…");
    try {
      const r = await api("PATCH", "/api/instances/me", { soulMd: soul.soulMd.value });
      result("#soul-result", r.message);
    } catch (err) { result("#soul-result", ""); showError(soul, err, $("#soul-error")); }
  });
  const sub = $("#subdomain-form");
  if (sub) {
    subdomainCheck();
    sub.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(sub);
      try {
        const r = await api("PATCH", "/api/instances/me", { subdomain: sub.subdomain.value.trim().toLowerCase() });
        sub.subdomain.dataset.current = r.instance.subdomain;
        result("#instance-result", `Your address is now ${new URL(r.instance.url).host}. ${r.message}`);
      } catch (err) { showError(sub, err, $("#instance-error")); }
    });
  }
  const prefs = $("#prefs-form");
  if (prefs) prefs.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(prefs);
    try {
      const tz = prefs.timezone.value.trim();
      await api("PATCH", "/api/account", { timezone: tz, language: prefs.language.value });
      let msg = "Saved.";
      if ($("#soul-form")) msg = (await api("PATCH", "/api/instances/me", { timezone: tz })).message;
      result("#prefs-result", msg);
    } catch (err) { showError(prefs, err, $("#prefs-error")); }
  });
  const restart = $("#restart");
  if (restart) restart.addEventListener("click", async () => {
    restart.disabled = true;
    result("#instance-error", "");
    const started = Date.now();
    const seconds = () => Math.round((Date.now() - started) / 1000);
    try {
      await api("POST", "/api/instances/me/restart");
      // The restart runs in the background: say what is happening until it runs again.
      for (;;) {
        result("#instance-result", `Restarting… ${seconds()} s`);
        await new Promise((r) => setTimeout(r, 1000));
        const status = (await api("GET", "/api/instances/me")).instance.status;
        $("#instance-status").textContent = STATUS_WORD[status] || status;
        if (status === "running") { result("#instance-result", `Running again after ${seconds()} s.`); break; }
        if (status === "crashed" || status === "stopped") { result("#instance-error", "It did not come back: " + STATUS_TEXT[status]); break; }
      }
    } catch (err) { result("#instance-error", err.message); }
    restart.disabled = false;
  });
  const keyForm = $("#key-form");
  if (keyForm) keyForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(keyForm);
    const body = { key: keyForm.key.value.trim() };
    if (keyForm.baseUrl.value.trim()) body.baseUrl = keyForm.baseUrl.value.trim();
    try {
      await api("PUT", "/api/account/api-keys/" + keyForm.provider.value, body);
      window.location.reload();
    } catch (err) { showError(keyForm, err, $("#key-error")); }
  });
  document.querySelectorAll("[data-delete-key]").forEach((b) => b.addEventListener("click", async () => {
    try { await api("DELETE", "/api/account/api-keys/" + b.dataset.deleteKey); window.location.reload(); }
    catch (err) { $("#key-error").textContent = err.message; }
  }));
  const setup = $("#mfa-setup");
  let secret = null;
  if (setup) setup.addEventListener("click", async () => {
    try {
      const r = await api("POST", "/api/auth/mfa/setup");
      secret = r.secret;
      $("#mfa-secret").textContent = r.secret;
      $("#mfa-uri").href = r.otpauthUrl;
      // Our own server's SVG (a QR code of the otpauth URI): no script, no external reference.
      $("#mfa-qr").innerHTML = r.qrSvg;
      $("#mfa-error").textContent = "";
      $("#mfa-enroll").hidden = false;
      setup.hidden = true;
      $("#mfa-enable-code").focus();
    } catch (err) { $("#mfa-error").textContent = err.message; }
  });
  const enable = $("#mfa-enable-form");
  if (enable) enable.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(enable);
    try {
      const r = await api("POST", "/api/auth/mfa/enable", { secret, code: enable.code.value.trim() });
      $("#mfa-enroll").hidden = true;
      $("#mfa-error").textContent = "";
      $("#mfa-state").replaceChildren("Two-factor authentication is ", Object.assign(document.createElement("strong"), { textContent: "on" }), ".");
      const ul = $("#mfa-codes");
      r.recoveryCodes.forEach((c) => { const li = document.createElement("li"); li.textContent = c; ul.append(li); });
      const text = "ClawDeploy recovery codes (each works once):\n" + r.recoveryCodes.join("\n") + "\n";
      $("#mfa-download").href = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
      $("#mfa-done").hidden = false;
    } catch (err) { showError(enable, err, $("#mfa-error")); }
  });
  const disable = $("#mfa-disable-form");
  if (disable) disable.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(disable);
    try {
      await api("POST", "/api/auth/mfa/disable", { password: disable.password.value, code: disable.code.value.trim() });
      window.location.reload();
    } catch (err) { showError(disable, err, $("#mfa-error")); }
  });
  const del = $("#delete-form");
  if (del) del.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (del.confirm.value.trim() !== "DELETE") { $("#delete-error").textContent = "Type DELETE (in capitals) to confirm."; del.confirm.focus(); return; }
    // The page then says when it happens, with the button that keeps the account.
    try { await api("DELETE", "/api/account"); window.location.reload(); }
    catch (err) { $("#delete-error").textContent = err.message; }
  });
}

// --- custom domains ---
function domainsPage() {
  const form = $("#domain-form");
  if (form) form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    try {
      await api("POST", "/api/domains", { hostname: form.hostname.value.trim().toLowerCase() });
      window.location.reload();
    } catch (err) { showError(form, err, $("#domain-error")); }
  });
  document.querySelectorAll("[data-verify-domain]").forEach((b) => b.addEventListener("click", async () => {
    try { await api("POST", "/api/domains/" + encodeURIComponent(b.dataset.verifyDomain) + "/verify"); window.location.reload(); }
    catch (err) { $("#domain-error").textContent = err.message; }
  }));
  document.querySelectorAll("[data-delete-domain]").forEach((b) => b.addEventListener("click", async () => {
    try { await api("DELETE", "/api/domains/" + encodeURIComponent(b.dataset.deleteDomain)); window.location.reload(); }
    catch (err) { $("#domain-error").textContent = err.message; }
  }));
}

// --- channels ---
function channelsPage() {
  const form = $("#telegram-form");
  if (form) form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const allowFrom = form.allowFrom.value.split(/[\s,]+/).filter((id) => id !== "");
    try {
      await api("PUT", "/api/instances/me/channels/telegram", { botToken: form.botToken.value.trim(), allowFrom });
      window.location.reload();
    } catch (err) { showError(form, err, $("#telegram-error")); }
  });
  const disconnect = $("#telegram-disconnect");
  if (disconnect) disconnect.addEventListener("click", async () => {
    try { await api("DELETE", "/api/instances/me/channels/telegram"); window.location.reload(); }
    catch (err) { $("#telegram-error").textContent = err.message; }
  });
}

// --- skills and presets ---
function skillsPage() {
  const error = $("#skills-error");
  const search = $("#skill-search");
  if (search) search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    document.querySelectorAll("[data-skill]").forEach((li) => { li.hidden = q !== "" && !li.dataset.search.includes(q); });
    document.querySelectorAll(".skill-category").forEach((sec) => {
      sec.hidden = !sec.querySelector("[data-skill]:not([hidden])");
    });
  });
  document.querySelectorAll("form[data-install]").forEach((form) => form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const config = {};
    form.querySelectorAll("input[name]").forEach((i) => { if (i.value !== "") config[i.name] = i.value; });
    try {
      await api("POST", "/api/skills/install", { skillId: form.dataset.install, config });
      window.location.reload();
    } catch (err) { showError(form, err); }
  }));
  document.querySelectorAll("[data-skill-enable]").forEach((b) => b.addEventListener("click", async () => {
    try {
      await api("PATCH", "/api/skills/" + encodeURIComponent(b.dataset.id), { enabled: b.dataset.skillEnable === "true" });
      window.location.reload();
    } catch (err) { error.textContent = err.message; }
  }));
  document.querySelectorAll("[data-skill-uninstall]").forEach((b) => b.addEventListener("click", async () => {
    try { await api("DELETE", "/api/skills/" + encodeURIComponent(b.dataset.skillUninstall)); window.location.reload(); }
    catch (err) { error.textContent = err.message; }
  }));
  const presetForm = $("#preset-form");
  if (presetForm) presetForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = $("#preset-status");
    $("#preset-error").textContent = "";
    const apply = (replaceSoul) => api("POST", "/api/instances/me/preset",
      { preset: presetForm.preset.value, replaceSoul });
    try {
      let done;
      try { done = await apply(undefined); }
      catch (err) {
        if (err.code !== "SOUL_EDITED") throw err;
        // The owner wrote their own SOUL.md: ask before replacing it.
        done = await apply(window.confirm(err.message + "\n\nReplace your SOUL.md with the preset's?"));
      }
      status.textContent = done.message;
      window.location.reload();
    } catch (err) { $("#preset-error").textContent = err.message; }
  });
}

// --- forgotten password ---
function forgotPage() {
  const form = $("#forgot-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    $("#forgot-status").textContent = "";
    try {
      const res = await api("POST", "/api/auth/forgot-password", { email: form.email.value.trim() });
      $("#forgot-status").textContent = res.message + " Check your inbox (and the spam folder).";
    } catch (err) { showError(form, err); }
  });
}

function resetPage() {
  const form = $("#reset-form");
  if (!form) return; // an unusable link: the page says what to do
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    try {
      await api("POST", "/api/auth/reset-password", { token: form.dataset.token, password: form.password.value });
      window.location.assign("/login?reset=done");
    } catch (err) {
      if (err.code === "TOKEN_USED" || err.code === "TOKEN_EXPIRED" || err.code === "INVALID_TOKEN") {
        window.location.reload(); // the page explains and offers a new link
      } else { showError(form, err); }
    }
  });
}

// --- plan and billing ---
function billingPage() {
  const error = $("#billing-error");
  const go = async (call) => {
    error.textContent = "";
    try {
      const res = await call();
      const url = res.checkoutUrl || res.portalUrl;
      if (url) window.location.assign(url);
      else window.location.reload();
    } catch (err) { error.textContent = err.message; }
  };
  document.querySelectorAll("[data-checkout]").forEach((b) => b.addEventListener("click", () => {
    b.disabled = true;
    go(() => api("POST", "/api/billing/checkout", { tier: b.dataset.checkout })).finally(() => { b.disabled = false; });
  }));
  document.querySelectorAll("[data-credits]").forEach((b) => b.addEventListener("click", () =>
    go(() => api("POST", "/api/billing/credits", { pack: b.dataset.credits }))));
  const portal = $("#portal");
  if (portal) portal.addEventListener("click", () => go(() => api("POST", "/api/billing/portal", {})));
  const cancel = $("#cancel");
  if (cancel) cancel.addEventListener("click", () => {
    if (window.confirm("Cancel your plan at the end of the paid period?")) {
      go(() => api("POST", "/api/billing/cancel", { atPeriodEnd: true }));
    }
  });
  const resume = $("#resume");
  if (resume) resume.addEventListener("click", () => go(() => api("POST", "/api/billing/cancel", { atPeriodEnd: false })));
}

// Each cell knows its column's name, which a phone shows beside it (app.css stacks the rows).
function labelTableCells() {
  document.querySelectorAll("table.table").forEach((table) => {
    // A column named only for screen readers ("Actions") gets no visible label either.
    const names = [...table.querySelectorAll("thead th")]
      .map((th) => (th.querySelector(":scope > .visually-hidden:only-child") ? "" : th.textContent.trim()));
    table.querySelectorAll("tbody tr").forEach((tr) => {
      [...tr.children].forEach((cell, i) => { if (names[i] && !cell.hasAttribute("colspan")) cell.dataset.label = names[i]; });
    });
  });
}

function common() {
  localTimes();
  labelTableCells();
  document.querySelectorAll("[data-restore-account]").forEach((b) => b.addEventListener("click", async () => {
    b.disabled = true;
    try { await api("POST", "/api/account/restore"); window.location.reload(); }
    catch (err) { b.disabled = false; b.after(" " + err.message); }
  }));
  const logout = $("#logout");
  if (logout) logout.addEventListener("click", async () => {
    try { await api("POST", "/api/auth/logout"); } catch (e) { /* the session may already be over */ }
    window.location.assign("/login");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  common();
  const page = document.body.dataset.page;
  if (page === "signup") signupPage();
  else if (page === "login") loginPage();
  else if (page === "dashboard") dashboardPage();
  else if (page === "settings") settingsPage();
  else if (page === "domains") domainsPage();
  else if (page === "channels") channelsPage();
  else if (page === "skills") skillsPage();
  else if (page === "billing") billingPage();
  else if (page === "forgot") forgotPage();
  else if (page === "reset") resetPage();
  // Every handler is attached: tests (and nothing else) wait for this before they type and click.
  document.documentElement.dataset.ready = "true";
});
