// Warren's dashboard: one page over the management API, nothing else. Every action here is
// a documented /api call, so a script can do whatever the page does. No framework and no
// build step: the file is embedded in the binary as written.
"use strict";

const $ = (sel) => document.querySelector(sel);
const enc = encodeURIComponent;
let auth = sessionStorage.getItem("warren-auth"); // "Basic ..." for this tab only
let timer = null; // the current view's refresh
const samples = []; // overview samples for the chart: {t, publish, deliver}

// Basic auth over UTF-8 (btoa alone only takes Latin-1).
function basic(user, pass) {
  const bytes = new TextEncoder().encode(user + ":" + pass);
  return "Basic " + btoa(String.fromCharCode(...bytes));
}

async function api(method, path, body, headers) {
  const res = await fetch("/api" + path, {
    method,
    // X-Requested-With: the 401 for a wrong password comes without WWW-Authenticate, so the
    // browser does not open its own password dialog over the page's.
    headers: Object.assign({ Authorization: auth, "Content-Type": "application/json",
      "X-Requested-With": "XMLHttpRequest" }, headers),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) { logout("Login failed or session expired."); throw new Error("401"); }
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) throw new Error((data && (data.reason || data.error)) || res.statusText);
  return data;
}

// Builds an element; strings become text nodes, so names from the broker are never HTML.
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== false && v !== undefined && v !== null) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

const num = (n) => (n === undefined || n === null ? "" : Number(n).toLocaleString("en"));
const rate = (o, k) => (o && o[k + "_details"] ? o[k + "_details"].rate.toFixed(1) + "/s" : "");

// cols: [{label, get(row) -> node|string, num?, sort?}]; onSort(key) makes headers clickable.
function table(cols, rows, onSort) {
  return el("table", {},
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", {
      class: c.num ? "num" : null, "data-sort": c.sort && onSort ? c.sort : null,
      onclick: c.sort && onSort ? () => onSort(c.sort) : undefined,
    }, c.label)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, cols.map((c) => el("td", { class: c.num ? "num" : null }, c.get(r)))))));
}

// A form whose submit runs `fn(values)` and then re-renders the view; errors are shown.
function form(id, fields, label, fn) {
  const f = el("form", { id, class: "inline" }, fields, el("button", { type: "submit" }, label));
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const values = Object.fromEntries(new FormData(f));
    for (const c of f.querySelectorAll("input[type=checkbox]")) values[c.name] = c.checked;
    try { await fn(values); showError(""); route(); } catch (e) { showError(e.message); }
  });
  return f;
}
const input = (name, label, attrs) => el("label", {}, label + " ", el("input", Object.assign({ name }, attrs)));
async function vhostSelect() {
  const vs = await api("GET", "/vhosts");
  return el("label", {}, "vhost ", el("select", { name: "vhost" }, vs.map((v) => el("option", {}, v.name))));
}
function showError(msg) { $("#error").textContent = msg; }
async function act(fn) { try { await fn(); showError(""); route(); } catch (e) { showError(e.message); } }
const confirmThen = (what, fn) => () => { if (confirm(what)) act(fn); };

// ---- views ---------------------------------------------------------------------------

async function overview(view) {
  const [ov, nodes] = await Promise.all([api("GET", "/overview"), api("GET", "/nodes")]);
  const ms = ov.message_stats || {};
  samples.push({ t: Date.now(), publish: ms.publish_details ? ms.publish_details.rate : 0,
    deliver: ms.deliver_get_details ? ms.deliver_get_details.rate : 0 });
  if (samples.length > 120) samples.shift();
  const t = ov.object_totals || {}, q = ov.queue_totals || {};
  const alarms = (ov.alarms || []).concat(nodes.flatMap((n) =>
    (n.mem_alarm ? ["memory on " + n.name] : []).concat(n.disk_free_alarm ? ["disk on " + n.name] : [])));
  const canvas = el("canvas", { id: "rates", width: 720, height: 180 });
  view.replaceChildren(
    el("h2", {}, "Overview"),
    el("p", {}, `${ov.product_name || "Warren"} ${ov.product_version || ""} on ${ov.node}`),
    [...new Set(alarms)].length
      ? el("p", { class: "alarm", id: "alarms" }, "Alarms in effect: " + [...new Set(alarms)].join(", "))
      : el("p", { class: "ok", id: "alarms" }, "No alarms."),
    el("div", { class: "totals" }, [
      ["Connections", t.connections], ["Channels", t.channels], ["Queues", t.queues],
      ["Consumers", t.consumers], ["Exchanges", t.exchanges], ["Messages", q.messages],
      ["Ready", q.messages_ready], ["Unacked", q.messages_unacknowledged],
    ].map(([k, v]) => el("div", {}, k, el("b", {}, num(v))))),
    el("h3", {}, "Message rates (publish ", el("span", { style: "color:#e07b24" }, "■"),
      ", deliver ", el("span", { style: "color:#2f6fcb" }, "■"), ")"),
    canvas,
    el("h3", {}, "Listeners"),
    table([{ label: "Protocol", get: (l) => l.protocol }, { label: "Address", get: (l) => l.ip_address },
      { label: "Port", get: (l) => l.port, num: true }], ov.listeners || []));
  drawChart(canvas);
}

// Two lines over the samples kept since the page opened, scaled to the largest rate.
function drawChart(canvas) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 30;
  g.fillStyle = "#fff"; g.fillRect(0, 0, w, h);
  const max = Math.max(1, ...samples.map((s) => Math.max(s.publish, s.deliver)));
  g.fillStyle = "#667"; g.font = "11px sans-serif";
  g.fillText(max.toFixed(0) + "/s", 2, 12); g.fillText("0", 2, h - pad + 4);
  g.strokeStyle = "#dde"; g.beginPath(); g.moveTo(pad, h - pad); g.lineTo(w, h - pad); g.stroke();
  for (const [key, color] of [["publish", "#e07b24"], ["deliver", "#2f6fcb"]]) {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    samples.forEach((s, i) => {
      const x = pad + (w - pad) * (samples.length === 1 ? 1 : i / (samples.length - 1));
      const y = h - pad - (h - 2 * pad) * (s[key] / max);
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  }
}

const qstate = { page: 1, size: 20, sort: "name", reverse: false };
async function queues(view) {
  const p = await api("GET", `/queues?page=${qstate.page}&page_size=${qstate.size}` +
    `&sort=${enc(qstate.sort)}&sort_reverse=${qstate.reverse}`);
  const sortBy = (k) => { qstate.reverse = qstate.sort === k ? !qstate.reverse : false; qstate.sort = k; route(); };
  const go = (n) => () => { qstate.page = n; route(); };
  view.replaceChildren(
    el("h2", {}, "Queues"),
    form("declare-queue", [await vhostSelect(), input("name", "Name", { required: true }),
      el("label", {}, "Type ", el("select", { name: "type" }, el("option", {}, "classic"), el("option", {}, "stream"))),
      el("label", {}, el("input", { type: "checkbox", name: "durable", checked: true }), " durable")],
    "Add queue", (v) => api("PUT", `/queues/${enc(v.vhost)}/${enc(v.name)}`,
      { durable: v.durable || v.type === "stream", auto_delete: false, arguments: { "x-queue-type": v.type } })),
    table([
      { label: "Virtual host", get: (q) => q.vhost, sort: "vhost" },
      { label: "Name", get: (q) => el("a", { href: `#queue/${enc(q.vhost)}/${enc(q.name)}` }, q.name), sort: "name" },
      { label: "Type", get: (q) => q.type },
      { label: "Messages", get: (q) => el("span", { "data-queue": q.name, "data-field": "messages" }, num(q.messages)), num: true, sort: "messages" },
      { label: "Ready", get: (q) => num(q.messages_ready), num: true, sort: "messages_ready" },
      { label: "Unacked", get: (q) => num(q.messages_unacknowledged), num: true, sort: "messages_unacknowledged" },
      { label: "Consumers", get: (q) => num(q.consumers), num: true, sort: "consumers" },
      { label: "Publish", get: (q) => rate(q.message_stats, "publish"), num: true },
      { label: "Deliver", get: (q) => rate(q.message_stats, "deliver_get"), num: true },
    ], p.items, sortBy),
    el("p", { class: "pager" }, `Page ${p.page} of ${Math.max(1, p.page_count)} (${num(p.filtered_count)} queues) `,
      el("button", { type: "button", disabled: p.page <= 1, onclick: go(p.page - 1) }, "‹ Previous"), " ",
      el("button", { type: "button", disabled: p.page >= p.page_count, onclick: go(p.page + 1) }, "Next ›")));
}

async function queue(view, vhost, name) {
  const path = `/queues/${enc(vhost)}/${enc(name)}`;
  const [q, bindings] = await Promise.all([api("GET", path), api("GET", path + "/bindings")]);
  const out = el("div", { id: "got" });
  const getForm = form("get-messages", [input("count", "Messages", { type: "number", value: 1, min: 1 }),
    el("label", {}, "Ack mode ", el("select", { name: "ackmode" }, el("option", { value: "ack_requeue_true" }, "requeue"),
      el("option", { value: "ack_requeue_false" }, "remove")))], "Get messages", async (v) => {
    const got = await api("POST", path + "/get", { count: Number(v.count), ackmode: v.ackmode, encoding: "auto", truncate: 50000 });
    sessionStorage.setItem("warren-got", JSON.stringify(got));
  });
  const kept = sessionStorage.getItem("warren-got");
  sessionStorage.removeItem("warren-got");
  if (kept) out.append(table([{ label: "Routing key", get: (m) => m.routing_key },
    { label: "Redelivered", get: (m) => String(m.redelivered) }, { label: "Payload", get: (m) => el("pre", {}, m.payload) }], JSON.parse(kept)));
  view.replaceChildren(
    el("h2", {}, `Queue ${q.name}`, el("small", {}, ` in ${q.vhost}`)),
    el("p", {}, `Type ${q.type}, ${q.durable ? "durable" : "transient"}; `,
      el("b", { id: "queue-depth" }, num(q.messages)), " messages (",
      num(q.messages_ready), " ready, ", num(q.messages_unacknowledged), " unacked), ",
      num(q.consumers), " consumers."),
    el("h3", {}, "Publish a message"),
    form("publish", [el("label", {}, "Payload ", el("textarea", { name: "payload" })),
      input("headers", "Properties (JSON)", { value: "{}" })], "Publish", async (v) => {
      const r = await api("POST", `/exchanges/${enc(vhost)}/amq.default/publish`,
        { properties: JSON.parse(v.headers || "{}"), routing_key: name, payload: v.payload, payload_encoding: "string" });
      if (!r.routed) throw new Error("The message was not routed.");
    }),
    el("h3", {}, "Get messages"), getForm, out,
    el("h3", {}, "Bindings"),
    table([{ label: "From", get: (b) => b.source || "(default exchange)" }, { label: "Routing key", get: (b) => b.routing_key }], bindings),
    el("h3", {}, "Danger zone"),
    el("button", { type: "button", id: "purge", onclick: confirmThen(`Purge ${name}?`, () => api("DELETE", path + "/contents")) }, "Purge"), " ",
    el("button", { type: "button", id: "delete-queue", onclick: confirmThen(`Delete ${name}?`, async () => {
      await api("DELETE", path); location.hash = "#queues"; }) }, "Delete"));
}

async function exchanges(view) {
  const [xs, bs] = await Promise.all([api("GET", "/exchanges?page=1&page_size=200"), api("GET", "/bindings")]);
  view.replaceChildren(
    el("h2", {}, "Exchanges"),
    form("declare-exchange", [await vhostSelect(), input("name", "Name", { required: true }),
      el("label", {}, "Type ", el("select", { name: "type" }, ["direct", "fanout", "topic", "headers"].map((t) => el("option", {}, t)))),
      el("label", {}, el("input", { type: "checkbox", name: "durable", checked: true }), " durable")],
    "Add exchange", (v) => api("PUT", `/exchanges/${enc(v.vhost)}/${enc(v.name)}`, { type: v.type, durable: v.durable })),
    table([{ label: "Virtual host", get: (x) => x.vhost }, { label: "Name", get: (x) => x.name || "(AMQP default)" },
      { label: "Type", get: (x) => x.type }, { label: "Durable", get: (x) => String(x.durable) },
      { label: "", get: (x) => x.name && !x.name.startsWith("amq.") ? el("button", { type: "button",
        onclick: confirmThen(`Delete exchange ${x.name}?`, () => api("DELETE", `/exchanges/${enc(x.vhost)}/${enc(x.name)}`)) }, "Delete") : "" }],
    xs.items),
    el("h2", {}, "Bindings"),
    form("add-binding", [await vhostSelect(), input("source", "From exchange", { required: true }),
      input("queue", "To queue", { required: true }), input("key", "Routing key")], "Bind",
    (v) => api("POST", `/bindings/${enc(v.vhost)}/e/${enc(v.source)}/q/${enc(v.queue)}`, { routing_key: v.key, arguments: {} })),
    table([{ label: "Virtual host", get: (b) => b.vhost }, { label: "From", get: (b) => b.source || "(default)" },
      { label: "To", get: (b) => `${b.destination_type} ${b.destination}` }, { label: "Routing key", get: (b) => b.routing_key },
      { label: "", get: (b) => b.source ? el("button", { type: "button", onclick: confirmThen("Remove this binding?", () => api("DELETE",
        `/bindings/${enc(b.vhost)}/e/${enc(b.source)}/${b.destination_type === "queue" ? "q" : "e"}/${enc(b.destination)}/${enc(b.properties_key)}`)) }, "Unbind") : "" }],
    bs));
}

async function connections(view) {
  const [cs, chs] = await Promise.all([api("GET", "/connections"), api("GET", "/channels")]);
  view.replaceChildren(
    el("h2", {}, "Connections"),
    table([{ label: "Name", get: (c) => c.name }, { label: "User", get: (c) => c.user }, { label: "Virtual host", get: (c) => c.vhost },
      { label: "State", get: (c) => c.state }, { label: "TLS", get: (c) => (c.ssl ? "yes" : "no") },
      { label: "Channels", get: (c) => num(c.channels), num: true },
      { label: "", get: (c) => el("button", { type: "button", onclick: confirmThen(`Close ${c.name}?`,
        () => api("DELETE", `/connections/${enc(c.name)}`, undefined, { "X-Reason": "Closed from the Warren dashboard" })) }, "Close") }],
    cs),
    el("h2", {}, "Channels"),
    table([{ label: "Channel", get: (c) => c.name }, { label: "User", get: (c) => c.user },
      { label: "Prefetch", get: (c) => num(c.prefetch_count), num: true },
      { label: "Unacked", get: (c) => num(c.messages_unacknowledged), num: true },
      { label: "Consumers", get: (c) => num(c.consumer_count), num: true }], chs));
}

async function access(view) {
  const [us, vs, ps] = await Promise.all([api("GET", "/users"), api("GET", "/vhosts"), api("GET", "/permissions")]);
  const del = (what, path) => el("button", { type: "button", onclick: confirmThen(`Delete ${what}?`, () => api("DELETE", path)) }, "Delete");
  view.replaceChildren(
    el("h2", {}, "Users"),
    form("add-user", [input("name", "Name", { required: true }), input("password", "Password", { type: "password" }),
      input("tags", "Tags", { placeholder: "administrator" })], "Add user",
    (v) => api("PUT", `/users/${enc(v.name)}`, { password: v.password, tags: v.tags })),
    table([{ label: "Name", get: (u) => u.name }, { label: "Tags", get: (u) => [].concat(u.tags).join(", ") },
      { label: "", get: (u) => del(`user ${u.name}`, `/users/${enc(u.name)}`) }], us),
    el("h2", {}, "Virtual hosts"),
    form("add-vhost", [input("name", "Name", { required: true })], "Add vhost", (v) => api("PUT", `/vhosts/${enc(v.name)}`, {})),
    table([{ label: "Name", get: (v) => v.name }, { label: "Messages", get: (v) => num(v.messages), num: true },
      { label: "", get: (v) => del(`vhost ${v.name}`, `/vhosts/${enc(v.name)}`) }], vs),
    el("h2", {}, "Permissions"),
    form("set-permission", [el("label", {}, "vhost ", el("select", { name: "vhost" }, vs.map((v) => el("option", {}, v.name)))),
      el("label", {}, "user ", el("select", { name: "user" }, us.map((u) => el("option", {}, u.name)))),
      input("configure", "Configure", { value: ".*" }), input("write", "Write", { value: ".*" }), input("read", "Read", { value: ".*" })],
    "Set permission", (v) => api("PUT", `/permissions/${enc(v.vhost)}/${enc(v.user)}`, { configure: v.configure, write: v.write, read: v.read })),
    table([{ label: "User", get: (p) => p.user }, { label: "Virtual host", get: (p) => p.vhost },
      { label: "Configure", get: (p) => p.configure }, { label: "Write", get: (p) => p.write }, { label: "Read", get: (p) => p.read },
      { label: "", get: (p) => del(`${p.user}'s permissions in ${p.vhost}`, `/permissions/${enc(p.vhost)}/${enc(p.user)}`) }], ps));
}

async function definitions(view) {
  const defs = await api("GET", "/definitions");
  const text = JSON.stringify(defs, null, 2);
  const link = el("a", { href: URL.createObjectURL(new Blob([text], { type: "application/json" })), download: "definitions.json" }, "Download definitions.json");
  view.replaceChildren(
    el("h2", {}, "Export"), el("p", {}, link), el("pre", {}, text),
    el("h2", {}, "Import"),
    form("import-definitions", [el("label", {}, "Definitions JSON ", el("textarea", { name: "json", required: true }))],
      "Import", (v) => api("POST", "/definitions", JSON.parse(v.json))));
}

// ---- routing and login ---------------------------------------------------------------

const views = { overview, queues, queue, exchanges, connections, access, definitions };
async function route() {
  clearTimeout(timer);
  if (!auth) return;
  const [name, ...args] = (location.hash.slice(1) || "overview").split("/").map(decodeURIComponent);
  const view = views[name] ? name : "overview";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.hash === "#" + view || (view === "queue" && a.hash === "#queues"));
  try { await views[view]($("#view"), ...args); } catch (e) { if (e.message !== "401") showError(e.message); }
  // Lists refresh themselves; pages with forms being filled in do not.
  if (["overview", "queues", "connections"].includes(view)) timer = setTimeout(route, 5000);
}

function logout(msg) {
  auth = null; sessionStorage.removeItem("warren-auth");
  $("#nav").hidden = true; $("#view").hidden = true; $("#login").hidden = false;
  $("#login-error").textContent = msg || "";
}

function loggedIn() { $("#login").hidden = true; $("#nav").hidden = false; $("#view").hidden = false; route(); }

$("#login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  auth = basic(f.get("user"), f.get("pass"));
  try {
    await api("GET", "/whoami");
    sessionStorage.setItem("warren-auth", auth);
    loggedIn();
  } catch (e) {
    if (e.message !== "401") logout(e.message);
  }
});
$("#logout").addEventListener("click", () => logout());
window.addEventListener("hashchange", route);
if (auth) loggedIn();
