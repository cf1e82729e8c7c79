// The Hangar console's terminal page: ask for a ticket with the user's API key, attach to the
// terminal websocket (hangar.terminal.v1, specs/asyncapi/terminal.yaml) and render it with xterm.js.
//
// The key: typed into the page, kept in this tab's sessionStorage only if the user asks, sent
// only as the Authorization header of the ticket request; never in a URL, never a cookie.
// Every websocket message is binary: byte 0 is the channel, the rest the payload.
// tests/unit/terminal/test_console_page.py checks these numbers against the AsyncAPI document.
(function () {
  "use strict";

  const SUBPROTOCOL = "hangar.terminal.v1";
  const CHANNEL = { stdin: 0, stdout: 1, exit: 3, resize: 4, auth: 5 };
  const CLOSE_MESSAGES = {
    4400: "the gateway refused a malformed frame",
    4401: "the ticket was missing, wrong, expired or already used",
    4404: "the session does not exist",
    4408: "the session was idle for too long",
    4409: "the instance is not running",
    4410: "the session reached its maximum duration",
    4429: "the organization has too many terminal sessions open",
    4499: "the instance stopped",
  };
  const KEY_STORAGE = "hangar.console.apiKey";

  const root = document.getElementById("console");
  const instanceId = root.dataset.instanceId;
  const form = document.getElementById("key-form");
  const keyInput = document.getElementById("api-key");
  const remember = document.getElementById("remember");
  const forget = document.getElementById("forget");
  const statusLine = document.getElementById("status");
  const container = document.getElementById("terminal");
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  const term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace",
    fontSize: 14,
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(container);
  fit.fit();

  // What a test (or a curious user in the devtools) can read: the terminal and the session's state.
  const state = { term: term, phase: "idle", exitCode: null, closeCode: null, reason: null, sessionId: null };
  window.hangarConsole = state;

  let socket = null;
  let listeners = [];

  function show(text, kind) {
    statusLine.textContent = text;
    statusLine.className = kind || "";
  }

  function frame(channel, payload) {
    const bytes = typeof payload === "string" ? encoder.encode(payload) : payload;
    const out = new Uint8Array(bytes.length + 1);
    out[0] = channel;
    out.set(bytes, 1);
    return out;
  }

  function send(channel, payload) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(frame(channel, payload));
    }
  }

  function binaryString(text) {
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i) & 0xff;
    return bytes;
  }

  function detach() {
    listeners.forEach((listener) => listener.dispose());
    listeners = [];
  }

  async function problemText(response) {
    try {
      const problem = await response.json();
      const head = `${problem.title || "Error"} (${problem.status || response.status})`;
      return problem.detail ? `${head}: ${problem.detail}` : head;
    } catch (error) {
      return `HTTP ${response.status}`;
    }
  }

  async function connect(apiKey) {
    detach();
    if (socket) socket.close(1000);
    state.phase = "ticket";
    state.exitCode = state.closeCode = state.reason = null;
    fit.fit();
    show("Asking for a ticket…");
    const headers = { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json" };
    if (window.crypto && crypto.randomUUID) headers["Idempotency-Key"] = crypto.randomUUID();
    let response;
    try {
      response = await fetch(`/v1/instances/${encodeURIComponent(instanceId)}/terminal-sessions`, {
        method: "POST",
        headers: headers,
        body: JSON.stringify({ cols: term.cols, rows: term.rows }),
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (error) {
      state.phase = "failed";
      show(`Cannot reach the Hangar API: ${error.message}`, "error");
      return;
    }
    if (!response.ok) {
      state.phase = "failed";
      show(`Cannot open a terminal: ${await problemText(response)}`, "error");
      return;
    }
    const session = await response.json();
    state.sessionId = session.id;
    show("Connecting…");
    const ws = new WebSocket(session.url, SUBPROTOCOL);
    ws.binaryType = "arraybuffer";
    socket = ws;

    ws.onopen = () => {
      if (ws.protocol !== SUBPROTOCOL) {
        ws.close(1002, "subprotocol");
        return;
      }
      // The ticket goes in the first frame, never in the URL.
      ws.send(frame(CHANNEL.auth, JSON.stringify({ ticket: session.ticket, cols: term.cols, rows: term.rows })));
      state.phase = "attached";
      show("Connected. The session ends when its shell exits.");
      form.hidden = true;
      term.focus();
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") return; // the protocol is binary only
      const data = new Uint8Array(event.data);
      if (data.length === 0) return;
      const payload = data.subarray(1);
      if (data[0] === CHANNEL.stdout) {
        term.write(payload);
      } else if (data[0] === CHANNEL.exit) {
        try {
          const exit = JSON.parse(decoder.decode(payload));
          state.exitCode = exit.exit_code;
          state.reason = exit.reason || null;
        } catch (error) {
          state.reason = "malformed exit frame";
        }
      }
    };
    ws.onclose = (event) => {
      if (socket !== ws) return; // an older session, replaced by a reconnect
      detach();
      state.closeCode = event.code;
      state.phase = "ended";
      form.hidden = false;
      if (state.exitCode !== null && state.exitCode !== undefined) {
        show(`Session ended: exit code ${state.exitCode}${state.reason && state.reason !== "exited" ? ` (${state.reason})` : ""}.`, "ended");
      } else {
        const known = CLOSE_MESSAGES[event.code];
        const why = known || (event.code === 1006 ? "the connection was lost" : `closed with code ${event.code}`);
        const detail = state.reason || event.reason;
        show(`Session ended: ${why}${detail ? ` (${detail})` : ""}.`, "error");
      }
    };

    listeners.push(term.onData((text) => send(CHANNEL.stdin, text)));
    listeners.push(term.onBinary((text) => send(CHANNEL.stdin, binaryString(text))));
    listeners.push(term.onResize((size) => send(CHANNEL.resize, JSON.stringify({ cols: size.cols, rows: size.rows }))));
  }

  window.addEventListener("resize", () => fit.fit());

  const stored = sessionStorage.getItem(KEY_STORAGE);
  if (stored) {
    keyInput.value = stored;
    remember.checked = true;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const apiKey = keyInput.value.trim();
    if (!apiKey) return;
    if (remember.checked) {
      sessionStorage.setItem(KEY_STORAGE, apiKey);
    } else {
      sessionStorage.removeItem(KEY_STORAGE);
    }
    connect(apiKey);
  });

  forget.addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    keyInput.value = "";
    remember.checked = false;
    show("The key is forgotten.");
  });
})();
