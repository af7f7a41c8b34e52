// kichat status page: polls /stats and /readyz, draws events/s, builds overlay URLs.
// Values from the gateway reach the page as text nodes only. <html data-state> is "loading",
// "live" (the last poll worked) or "unreachable", for tests.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("kichat-config").textContent);
  const root = new URL(config.root, location.href);
  const token = new URLSearchParams(location.search).get("token");
  const headers = token ? { "X-API-Key": token } : {};
  const POLL_MS = 2000; // /stats is rate limited with the REST API: 30 requests a minute
  const SAMPLES = 90; // 3 minutes of rates
  const SLUG_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
  const $ = (id) => document.getElementById(id);
  const history = []; // [{eventsIn, deliveries}] per poll, as rates per second
  let previous = null; // {time, eventsIn, deliveries}

  $("version").textContent = `v${config.version}`;

  function text(id, value) {
    $(id).textContent = value === undefined || value === null ? "\u2013" : String(value);
  }

  function num(value) {
    return typeof value === "number" ? value.toLocaleString("en-US") : "\u2013";
  }

  function rate(value) {
    return value >= 100 ? Math.round(value).toLocaleString("en-US") : value.toFixed(1);
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${m} min`;
    return m ? `${m} min ${s % 60} s` : `${s % 60} s`;
  }

  function cell(row, value) {
    const td = document.createElement("td");
    td.textContent = value === undefined || value === null ? "" : String(value);
    row.append(td);
    return td;
  }

  function pairs(obj) {
    const entries = Object.entries(obj || {});
    return entries.length ? entries.map(([k, v]) => `${k}: ${v}`).join(", ") : "none";
  }

  function banner(message) {
    $("banner").textContent = message || "";
    $("banner").hidden = !message;
  }

  // -- rendering ---------------------------------------------------------------------------------

  function render(stats) {
    const clients = stats.clients || {};
    const relay = stats.relay || {};
    const sio = stats.sio || {};
    const upstream = stats.upstream || {};
    text("connections", num(clients.connections));
    $("transports").textContent = pairs(clients.connections_by_transport);
    text("chatrooms", num(relay.active_rooms));
    $("rooms").textContent =
      `${num(clients.rooms)} Socket.IO rooms, ${num(relay.upstream_channels)} Pusher channels`;
    $("events-total").textContent = `${num(relay.events_in)} in total`;
    $("deliveries-total").textContent = `${num(sio.deliveries)} in total`;
    text("lag", typeof stats.event_loop_lag_seconds === "number"
      ? stats.event_loop_lag_seconds.toFixed(3) : null);
    if (typeof stats.uptime_seconds === "number") {
      $("uptime").textContent = `up ${duration(stats.uptime_seconds)}`;
    }

    const conns = Array.isArray(upstream.connections) ? upstream.connections : [];
    const connected = conns.filter((c) => c.state === "connected").length;
    text("upstream", upstream.fatal ? "refused" : `${connected}/${conns.length} up`);
    $("upstream-detail").textContent = upstream.fatal
      ? String(upstream.fatal_error || "")
      : `reconnects: ${pairs(upstream.reconnects)}`;
    const rows = conns.map((c) => {
      const tr = document.createElement("tr");
      cell(tr, `#${c.id}`);
      cell(tr, c.state).className = `state state-${String(c.state).replace(/[^a-z]/g, "")}`;
      cell(tr, c.channels);
      cell(tr, num(c.events_received));
      cell(tr, c.last_close_code);
      cell(tr, pairs(c.reconnects));
      return tr;
    });
    $("pusher-rows").replaceChildren(...rows);
    const kick = stats.kick_api || {};
    $("kick-api").textContent = `Kick REST API: ${kick.state || "unknown"}; cache ` +
      `${num(kick.cache_hits)} hits, ${num(kick.cache_misses)} misses; requests ${pairs(kick.requests)}`;

    const top = Array.isArray(stats.top_chatrooms) ? stats.top_chatrooms : [];
    $("top-rows").replaceChildren(...top.map((room) => {
      const tr = document.createElement("tr");
      cell(tr, room.channelName);
      cell(tr, room.chatroomId);
      cell(tr, num(room.clients));
      const link = document.createElement("a");
      link.textContent = "overlay";
      link.href = overlayUrl({ channel: String(room.channelName), chatroomId: String(room.chatroomId) });
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      cell(tr, "").append(link);
      return tr;
    }));

    // A cluster section exists only when the gateway reports one.
    const cluster = stats.cluster;
    $("cluster").hidden = !cluster || typeof cluster !== "object";
    if (cluster && typeof cluster === "object") {
      $("cluster-items").replaceChildren(...Object.entries(cluster).flatMap(([k, v]) => {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = typeof v === "object" ? JSON.stringify(v) : String(v);
        return [dt, dd];
      }));
    }
  }

  function renderReady(ok, reasons) {
    const el = $("ready");
    el.textContent = ok ? "ready" : `not ready: ${reasons.join("; ") || "unknown"}`;
    el.className = `pill ${ok ? "ok" : "bad"}`;
  }

  function record(stats) {
    const now = performance.now();
    const sample = {
      time: now,
      eventsIn: (stats.relay && stats.relay.events_in) || 0,
      deliveries: (stats.sio && stats.sio.deliveries) || 0,
    };
    // A counter that went down means the gateway restarted: start the rates over.
    if (previous && sample.eventsIn >= previous.eventsIn && sample.deliveries >= previous.deliveries) {
      const seconds = Math.max(0.001, (now - previous.time) / 1000);
      history.push({
        eventsIn: (sample.eventsIn - previous.eventsIn) / seconds,
        deliveries: (sample.deliveries - previous.deliveries) / seconds,
      });
      if (history.length > SAMPLES) history.shift();
      const last = history[history.length - 1];
      text("events-rate", rate(last.eventsIn));
      text("deliveries-rate", rate(last.deliveries));
      draw();
    }
    previous = sample;
  }

  // Two lines on one SVG, each scaled to its own maximum.
  function draw() {
    const svg = $("chart");
    const ns = "http://www.w3.org/2000/svg";
    const width = 600, height = 140, top = 24, bottom = 10; // labels above the lines
    const axis = document.createElementNS(ns, "line");
    for (const [k, v] of [["x1", 0], ["x2", width], ["y1", height - bottom], ["y2", height - bottom]]) {
      axis.setAttribute(k, String(v));
    }
    axis.setAttribute("class", "axis");
    const nodes = [axis];
    for (const [key, cls] of [["eventsIn", "line-in"], ["deliveries", "line-out"]]) {
      const values = history.map((h) => h[key]);
      const max = Math.max(1, ...values);
      const points = values.map((v, i) => {
        const x = width - (values.length - 1 - i) * (width / (SAMPLES - 1));
        const y = height - bottom - (v / max) * (height - top - bottom);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", points.join(" "));
      line.setAttribute("class", cls);
      nodes.push(line);
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", cls === "line-in" ? "4" : String(width - 4));
      label.setAttribute("y", "12");
      label.setAttribute("class", `label ${cls}`);
      label.textContent = `max ${rate(max)}/s`;
      nodes.push(label);
    }
    svg.replaceChildren(...nodes);
  }

  // -- polling -----------------------------------------------------------------------------------

  async function poll() {
    let wait = POLL_MS;
    try {
      const [statsRes, readyRes] = await Promise.all([
        fetch(new URL("stats", root), { headers, cache: "no-store" }),
        fetch(new URL("readyz", root), { cache: "no-store" }),
      ]);
      const ready = await readyRes.json().catch(() => ({}));
      renderReady(readyRes.ok, Array.isArray(ready.reasons) ? ready.reasons.map(String) : []);
      if (statsRes.status === 401) {
        banner("This gateway requires an API key: open this page as /?token=<key>.");
      } else if (statsRes.status === 429) {
        wait = 1000 * Math.max(2, Number(statsRes.headers.get("Retry-After")) || 10);
        banner(`Rate limited by the gateway; polling again in ${wait / 1000} s.`);
      } else if (statsRes.ok) {
        const stats = await statsRes.json();
        render(stats);
        record(stats);
        banner("");
        document.documentElement.dataset.state = "live";
      } else {
        banner(`/stats answered HTTP ${statsRes.status}.`);
      }
    } catch (err) {
      document.documentElement.dataset.state = "unreachable";
      renderReady(false, ["the gateway does not answer"]);
      banner("The gateway does not answer; retrying.");
      previous = null;
    }
    setTimeout(poll, wait);
  }

  // -- the overlay URL builder -------------------------------------------------------------------

  const form = $("overlay-form");

  function overlayUrl(values) {
    const url = new URL(`overlay/${encodeURIComponent(values.channel.toLowerCase())}`, root);
    const defaults = { theme: "transparent", fontSize: "18", limit: "50", fade: "0" };
    if (values.chatroomId) url.searchParams.set("chatroomId", values.chatroomId);
    for (const key of Object.keys(defaults)) {
      if (values[key] !== undefined && values[key] !== "" && values[key] !== defaults[key]) {
        url.searchParams.set(key, values[key]);
      }
    }
    if (values.hideCommands) url.searchParams.set("hideCommands", "1");
    if (values.hideBots) url.searchParams.set("hideBots", "1");
    if (values.badges === false) url.searchParams.set("badges", "0");
    if (values.bots) url.searchParams.set("bots", values.bots);
    if (token) url.searchParams.set("token", token);
    return url.href;
  }

  function formValues() {
    const f = form.elements;
    return {
      channel: f.channel.value.trim(),
      chatroomId: f.chatroomId.value.trim(),
      theme: f.theme.value,
      fontSize: f.fontSize.value.trim(),
      limit: f.limit.value.trim(),
      fade: f.fade.value.trim(),
      hideCommands: f.hideCommands.checked,
      hideBots: f.hideBots.checked,
      badges: f.badges.checked,
      bots: f.bots.value.split(",").map((s) => s.trim()).filter(Boolean).join(","),
    };
  }

  function formError(message) {
    $("form-error").textContent = message || "";
    $("form-error").hidden = !message;
  }

  function updateUrl() {
    const values = formValues();
    const preview = $("preview");
    let problem = "";
    if (values.channel && !SLUG_RE.test(values.channel)) {
      problem = "A channel name is 1-64 letters, digits, '_' or '-' (as in kick.com/<name>).";
    } else if (values.chatroomId && !/^\d{1,12}$/.test(values.chatroomId)) {
      problem = "A chatroom id is a number (chatroom.id of /api/v2/channels/<name>).";
    }
    formError(problem);
    if (!values.channel || problem) {
      $("overlay-url").value = "";
      preview.hidden = true;
      preview.removeAttribute("href");
      return;
    }
    const url = overlayUrl(values);
    $("overlay-url").value = url;
    preview.href = url;
    preview.hidden = false;
  }

  async function lookUp() {
    const channel = form.elements.channel.value.trim();
    if (!SLUG_RE.test(channel)) {
      formError("Enter a channel name first.");
      return;
    }
    formError("Looking up\u2026");
    try {
      const res = await fetch(new URL(`api/v2/channels/${encodeURIComponent(channel)}`, root),
        { headers });
      const body = await res.json().catch(() => null);
      const id = body && body.chatroom && body.chatroom.id;
      if (res.ok && Number.isInteger(id)) {
        form.elements.chatroomId.value = String(id);
        formError("");
        updateUrl();
      } else if (res.status === 404) {
        formError(`Kick has no channel named "${channel}".`);
      } else {
        const msg = body && body.error && body.error.message;
        formError(`The lookup failed (HTTP ${res.status}${msg ? `: ${msg}` : ""}). ` +
          "The overlay can still look it up later, or enter the id by hand.");
      }
    } catch (err) {
      formError("The gateway does not answer.");
    }
  }

  form.addEventListener("input", updateUrl);
  form.addEventListener("change", updateUrl);
  form.addEventListener("submit", (e) => e.preventDefault());
  $("lookup").addEventListener("click", lookUp);
  $("copy").addEventListener("click", async () => {
    const field = $("overlay-url");
    if (!field.value) return;
    try {
      await navigator.clipboard.writeText(field.value);
    } catch (err) {
      field.select(); // no clipboard API on plain http: leave it selected for Ctrl+C
    }
  });

  updateUrl();
  poll();
})();
