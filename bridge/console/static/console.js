// The ops console: one page, plain ES module, no framework. Every figure comes from /admin/api with the
// token signed in (kept in sessionStorage, sent as a bearer token, never put in a URL). Text from the API is
// always set as text, never parsed as HTML.

const KEY = "ticketbridge.token";
const main = document.getElementById("main");
const statusBox = document.getElementById("status");
let refreshTimer = null;
let signedIn = null; // {name, role} of the token signed in, as the overview reports it

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const badge = (text) => h("span", { class: `badge ${text}` }, String(text).replace("_", " "));
// What an operator must know of unknown outcomes: an earlier send may have made a ticket (in doubt), or a
// resend after one may have made a second (possible duplicate).
const doubtFlags = (d) => [
  d.in_doubt_since_ms ? [" ", h("span", { class: "badge doubt", title: `in doubt since ${when(d.in_doubt_since_ms)}` }, "in doubt")] : null,
  d.duplicates ? [" ", h("span", { class: "badge duplicate" }, `possible duplicate ×${d.duplicates}`)] : null,
  d.ticket_missing ? [" ", h("span", { class: "badge missing", title: "the vendor made a ticket but named none" }, "no ticket id")] : null];
const SETTLED = ["success", "reconciled", "marked"]; // attempt classifications whose note is no failure
const ticketRefs = (d) => [d.ticket_key ? `key ${d.ticket_key}` : null, d.ticket_uuid ? `uuid ${d.ticket_uuid}` : null].filter(Boolean).join(", ");
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "—");
// The query of a view's address (`#/deliveries?status=dead`): all that follows its first "?".
const hashQuery = () => { const at = location.hash.indexOf("?"); return new URLSearchParams(at < 0 ? "" : location.hash.slice(at + 1)); };
const deliveriesHref = (params) => { const p = new URLSearchParams(params).toString(); return p ? `#/deliveries?${p}` : "#/deliveries"; };
// A delivery's kind in its conversation: create or follow-up once sent; waiting behind an earlier message; queued.
const kindOf = (d) => (d.waiting ? "waiting" : d.role ? d.role.replace("_", " ") : d.conversation ? "queued" : "—");
// A conversation's id (`mapping|key`, from what senders wrote) as a link filtering the deliveries to it: shown by
// its key, cut short; the whole id is its title.
function conversationLink(id) {
  const key = id.slice(id.indexOf("|") + 1) || id;
  return h("a", { href: deliveriesHref({ conversation: id }), class: "conversation", title: `Only conversation ${id}` },
    key.length > 40 ? `${key.slice(0, 39)}…` : key);
}
const iso = (s) => (s ? new Date(s).toLocaleString() : "—");
const json = (v) => h("pre", {}, JSON.stringify(v, null, 2));
function say(text) { statusBox.textContent = text; setTimeout(() => { if (statusBox.textContent === text) statusBox.textContent = ""; }, 4000); }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = "GET", body, params } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
  const resp = await fetch(url, {
    method,
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await resp.json().catch(() => ({ error: `HTTP ${resp.status}` }));
  if (resp.status === 401) { sessionStorage.removeItem(KEY); signedIn = null; throw new ApiError(401, data.error); }
  if (!resp.ok) throw new ApiError(resp.status, data.error || `HTTP ${resp.status}`);
  return data;
}

function table(headers, rows, caption) {
  return h("div", { class: "table-wrap" }, h("table", {},
    caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, headers.map(([t, cls]) => h("th", { scope: "col", class: cls }, t)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "Nothing here.")))));
}

function page(title, ...content) {
  main.replaceChildren(h("h1", {}, title), ...content.filter((c) => c !== null && c !== undefined && c !== false && c !== ""));
  document.title = `${title} · ticketbridge console`;
}

async function caller() {
  if (!signedIn) signedIn = (await api("/admin/api/overview")).caller;
  return signedIn;
}

function markDialog(d, how = {
  question: `Record that delivery ${d.id} reached ${d.destination} as the ticket below? It will not be sent again.`,
  submit: "Mark succeeded" }) {
  // The operator's word about the ticket the delivery made at the vendor (id required): that it reached the vendor
  // (mark succeeded), or which ticket a create whose answer named none made (set ticket).
  return new Promise((resolve) => {
    const input = (id, label, attrs) => h("label", { for: id }, label, h("input", { id, name: id, autocomplete: "off", ...attrs }));
    let answer = null;
    const form = h("form", { onsubmit: (e) => {
      e.preventDefault();
      const value = (id) => form.querySelector(`#${id}`).value.trim();
      answer = { ticket_id: value("mark-ticket-id") };
      if (value("mark-ticket-key")) answer.ticket_key = value("mark-ticket-key");
      if (value("mark-note")) answer.note = value("mark-note");
      dlg.close();
    } },
    input("mark-ticket-id", "Ticket id at the vendor", { required: true, maxlength: 200 }),
    input("mark-ticket-key", "Ticket key (optional)", { maxlength: 200 }),
    input("mark-note", "Note (optional, kept in the audit log)", { maxlength: 500 }),
    h("div", { class: "row" },
      h("button", { type: "button", class: "secondary", onclick: () => dlg.close() }, "Cancel"),
      h("button", { type: "submit" }, how.submit)));
    const dlg = h("dialog", { "aria-labelledby": "mark-q" }, h("p", { id: "mark-q" }, how.question), form);
    document.body.append(dlg);
    dlg.addEventListener("close", () => { dlg.remove(); resolve(answer); });
    dlg.showModal();
  });
}

function confirmDialog(question, confirmText) {
  return new Promise((resolve) => {
    const dlg = h("dialog", { "aria-labelledby": "confirm-q" },
      h("p", { id: "confirm-q" }, question),
      h("div", { class: "row" },
        h("button", { type: "button", class: "secondary", onclick: () => { dlg.close(); resolve(false); } }, "Cancel"),
        h("button", { type: "button", onclick: () => { dlg.close(); resolve(true); } }, confirmText)));
    document.body.append(dlg);
    dlg.addEventListener("close", () => { dlg.remove(); resolve(false); });
    dlg.showModal();
  });
}

// -- views -----------------------------------------------------------------------------------------------

function signIn(message) {
  document.getElementById("nav").hidden = true;
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password", required: true });
  const err = h("p", { class: "error", role: "alert" }, message || "");
  const form = h("form", { class: "signin card", onsubmit: async (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    signedIn = null;
    // The view asked for (a link shared, a view whose token lapsed) once signed in; the overview when none was.
    try { signedIn = (await api("/admin/api/overview")).caller; if (!location.hash.startsWith("#/")) location.hash = "#/overview"; route(); }
    catch (x) { sessionStorage.removeItem(KEY); err.textContent = x.status === 401 ? "That token is not known to this server." : x.message; }
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "Use admin.token (changes) or a read token from admin.read_tokens. It is kept for this tab only."),
  h("label", { for: "token" }, "Admin token", input), err, h("button", { type: "submit" }, "Sign in"));
  main.replaceChildren(form);
  input.focus();
}

function laneRows(lanes) {
  return lanes.map((d) => h("tr", {},
    h("td", {}, d.name), h("td", { class: "hide-narrow" }, d.vendor),
    h("td", {}, badge(d.breaker), d.paused ? [" ", badge("paused")] : null),
    h("td", {}, d.backlog), h("td", {}, d.counts.dead),
    h("td", { class: "hide-narrow" }, d.oldest_pending_age_s === null ? "—" : `${Math.round(d.oldest_pending_age_s)} s`),
    h("td", { class: "hide-narrow" }, `${d.in_flight}/${d.max_in_flight}`)));
}
const LANE_HEAD = [["Destination"], ["Vendor", "hide-narrow"], ["Health"], ["Backlog"], ["Dead"],
  ["Oldest pending", "hide-narrow"], ["In flight", "hide-narrow"]];

let lastCounters = null;
async function overview() {
  const o = await api("/admin/api/overview");
  signedIn = o.caller;
  const now = Date.now();
  const accepted = o.counters["intake.accepted"] || 0;
  let rate = "—";
  if (lastCounters && now > lastCounters.at) rate = `${((accepted - lastCounters.accepted) / ((now - lastCounters.at) / 1000)).toFixed(1)}/s`;
  lastCounters = { at: now, accepted };
  const card = (n, l) => h("div", { class: "card" }, h("div", { class: "n" }, n), h("div", { class: "l" }, l));
  page("Overview",
    h("div", { class: "cards" },
      card(accepted, "events accepted"), card(rate, "intake rate"),
      card(o.deliveries.pending + o.deliveries.in_flight, "deliveries waiting"),
      card(o.deliveries.succeeded, "delivered"), card(o.dead, "dead letters"),
      card(o.reload.last_result || "none yet", "last mapping reload")),
    o.store_problem ? h("p", { class: "error", role: "alert" }, `Store: ${o.store_problem}`) : null,
    o.reload.last_error ? h("p", { class: "error" }, `Last reload error: ${o.reload.last_error}`) : null,
    h("h2", {}, "Destinations"), table(LANE_HEAD, laneRows(o.destinations)),
    h("p", { class: "muted" }, `Version ${o.version}, mappings ${o.mappings_version}.`));
}

const THREAD_PAGE = 500; // a conversation's messages a page lists (the most the API gives), unless the address says `limit`
const EXACT_FILTERS = ["status", "destination", "mapping", "source"];

// Whether the other filters match a delivery of a conversation, as the deliveries API matches them.
function matches(d, p) {
  const text = (p.q || "").toLowerCase();
  return EXACT_FILTERS.every((k) => !p[k] || d[k] === p[k])
    && (!text || [d.id, d.event_id, d.ticket_id, d.ticket_key, d.ticket_uuid, d.last_error].some((v) => (v || "").toLowerCase().includes(text)));
}
const shellQuoted = (text) => `'${text.replaceAll("'", "'\\''")}'`;
// The address's parameters without `from`: a conversation's first page.
const withoutFrom = (p) => Object.fromEntries(Object.entries(p).filter(([k]) => k !== "from"));

// A page of the conversations of a key (`from`: a cursor, the page after or before one of them; "last": each one's
// last page), or null.
async function findConversation(id, from, limit) {
  if (id === "." || id === "..") return null; // a URL reads such a path segment as a step: no key is one
  try { return await api(`/admin/api/conversations/${encodeURIComponent(id)}`, { params: { limit: limit || THREAD_PAGE, cursor: from } }); }
  catch (x) { if (x.status === 404) return null; throw x; }
}

// A conversation: its ticket once known, then a page of its messages in the order they are sent in, numbered from
// its first, with links to the older and newer pages (a cursor each, kept in the address as `from`) and to the
// oldest (no `from`) and the newest (`from=last`), as a thread's latest reply is what an operator most often wants.
function conversationSection(v, p) {
  const c = v.conversation;
  const shown = v.deliveries.map((d, i) => [v.offset + i + 1, d]).filter(([, d]) => matches(d, p));
  const pageLink = (cursor, rel, text) => h("a", { href: deliveriesHref(cursor ? { ...p, from: cursor } : withoutFrom(p)), rel, class: "button secondary" }, text);
  const paged = v.prev_cursor || v.more;
  const pages = () => h("nav", { class: "row pages", "aria-label": `Pages of conversation ${c.id}` },
    v.prev_cursor ? [pageLink(null, "first", "⇤ Oldest"), pageLink(v.prev_cursor, "prev", "← Older messages")] : null,
    v.deliveries.length ? h("span", { class: "muted" }, `Messages ${v.offset + 1}–${v.offset + v.deliveries.length}`) : null,
    v.more && v.next_cursor ? [pageLink(v.next_cursor, "next", "Newer messages →"), pageLink("last", "last", "Newest ⇥")] : null);
  const rows = shown.map(([n, d]) => h("tr", {},
    h("td", {}, n), h("td", {}, h("a", { href: `#/delivery/${d.id}` }, d.id)),
    h("td", {}, badge(d.status), doubtFlags(d)), h("td", {}, kindOf(d)), h("td", { class: "wrap" }, d.ticket_id || "—"),
    h("td", { class: "hide-narrow" }, d.attempts), h("td", { class: "hide-narrow" }, when(d.created_at_ms)),
    h("td", { class: "wrap hide-narrow" }, d.last_error || "")));
  const refs = ticketRefs(c);
  return h("section", { class: "conversation card", "aria-label": `Conversation ${c.id}` },
    h("h2", {}, "Conversation ", h("code", {}, c.id)),
    h("p", {}, `${c.mapping} → ${c.destination} · `, c.ticket_id
      ? h("strong", { class: "ticket" }, `Ticket ${c.ticket_id}${refs ? ` (${refs})` : ""}`, c.ticket_at_ms ? `, since ${when(c.ticket_at_ms)}` : "")
      : h("span", { class: "ticket muted" }, "No ticket yet: its first message sent makes it; the later ones wait for it.")),
    h("p", { class: "muted" }, `${c.messages} message(s) since ${when(c.started_at_ms)}, the last at ${when(c.last_message_at_ms)}.`,
      shown.length < v.deliveries.length ? ` ${shown.length} of the ${v.deliveries.length} listed match the other filters.` : ""),
    paged ? pages() : null,
    table([["#"], ["Delivery"], ["Status"], ["Kind"], ["Ticket"], ["Attempts", "hide-narrow"], ["Created", "hide-narrow"],
      ["Last error", "hide-narrow"]], rows, "In the order they are sent in"),
    paged ? pages() : null,
    v.more ? h("p", { class: "muted" }, "More follow; ", h("code", {}, `ticketbridge conversations show ${shellQuoted(c.id)} --all`),
      " prints them all.") : null);
}

async function deliveries() {
  const q = hashQuery();
  const conversation = q.get("conversation") || "";
  const field = (name, label, opts, attrs = {}) => {
    const input = opts
      ? h("select", { name, id: `f-${name}` }, h("option", { value: "" }, "any"), opts.map((o) => h("option", { value: o, selected: q.get(name) === o }, o)))
      : h("input", { name, id: `f-${name}`, value: q.get(name) || "", type: "search", ...attrs });
    return h("label", { for: `f-${name}` }, label, input);
  };
  const live = h("input", { type: "checkbox", id: "live", checked: sessionStorage.getItem("live") !== "off" });
  const withoutConversation = new URLSearchParams(q);
  withoutConversation.delete("conversation");
  withoutConversation.delete("cursor"); // a page of the conversation's deliveries, not of the others'
  withoutConversation.delete("from"); // a page of that conversation's messages
  withoutConversation.delete("limit");
  const form = h("form", { class: "filters", role: "search", onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) {
      const value = k === "conversation" ? v.trim() : v; // an id pasted with the spaces around it
      if (value) p.set(k, value);
    }
    location.hash = deliveriesHref(p);
  } },
  field("status", "Status", ["pending", "in_flight", "succeeded", "dead"]), field("destination", "Destination"),
  field("mapping", "Mapping"), field("source", "Source"),
  field("conversation", "Conversation", null, { maxlength: 2000, placeholder: "mapping|key", autocomplete: "off" }),
  field("q", "Text"),
  h("button", { type: "submit" }, "Filter"),
  conversation ? h("a", { href: deliveriesHref(withoutConversation), id: "clear-conversation", class: "button secondary" }, "Clear conversation filter") : null,
  [...withoutConversation.keys()].length ? h("a", { href: "#/deliveries", id: "clear-filters", class: "button secondary" }, "Clear filters") : null,
  h("label", { for: "live", class: "row" }, "Live refresh", live));
  const body = h("div", {});
  const params = Object.fromEntries(q);
  page("Deliveries", form, body);
  live.addEventListener("change", () => sessionStorage.setItem("live", live.checked ? "on" : "off"));
  const list = async () => {
    const data = await api("/admin/api/deliveries", { params: { ...params, limit: 50 } });
    const rows = data.items.map((d) => h("tr", {},
      h("td", {}, h("a", { href: `#/delivery/${d.id}` }, d.id)),
      h("td", {}, badge(d.status), doubtFlags(d)), h("td", {}, d.destination), h("td", { class: "hide-narrow" }, d.mapping),
      h("td", { class: "hide-narrow" }, d.source), h("td", { class: "wrap hide-narrow" }, d.conversation ? conversationLink(d.conversation) : "—"),
      h("td", {}, d.attempts), h("td", { class: "hide-narrow" }, when(d.created_at_ms)), h("td", { class: "wrap hide-narrow" }, d.last_error || "")));
    const more = data.next_cursor ? h("p", {}, h("a", { href: deliveriesHref({ ...params, cursor: data.next_cursor }) }, "Older deliveries →")) : null;
    return [table([["Delivery"], ["Status"], ["Destination"], ["Mapping", "hide-narrow"], ["Source", "hide-narrow"],
      ["Conversation", "hide-narrow"], ["Attempts"], ["Created", "hide-narrow"], ["Last error", "hide-narrow"]], rows), more || ""];
  };
  const load = async () => {
    if (!conversation) { body.replaceChildren(...await list()); return; }
    const found = await findConversation(conversation, q.get("from"), q.get("limit"));
    if (found) { body.replaceChildren(...found.items.map((v) => conversationSection(v, params))); return; }
    body.replaceChildren(h("p", { class: "warn", id: "no-conversation" }, "No conversation with this key or id is kept (retention removes one a while ",
      "after its last message). Deliveries that name it, newest first:"), ...await list());
  };
  await load();
  refreshTimer = setInterval(() => { if (live.checked) load().catch(() => {}); }, 3000);
}

async function delivery(id) {
  const v = await api(`/admin/api/deliveries/${encodeURIComponent(id)}`);
  const d = v.delivery;
  const admin = (await caller()).role === "admin";
  const busy = d.status === "pending" || d.status === "in_flight";
  // The operator's ticket for this delivery, asked for in `markDialog` (`how`), posted to its `action` route.
  const giveTicket = (action, done, how) => async () => {
    const given = await markDialog(d, how);
    if (!given) return;
    try {
      await api(`/admin/api/deliveries/${encodeURIComponent(d.id)}/${action}`, { method: "POST", body: given });
      say(done(given.ticket_id));
      await route();
    } catch (x) { say(x.message); }
  };
  const mark = giveTicket("mark-succeeded", (t) => `Marked succeeded with ticket ${t}.`);
  const setTicket = giveTicket("set-ticket", (t) => `Ticket ${t} set.`, {
    question: `Which ticket did delivery ${d.id} make at ${d.destination}? Its answer named none; the ticket below ` +
      (d.conversation ? "becomes its conversation's too (if it has none yet), so the conversation's next message follows up on it."
        : "is kept on the delivery."),
    submit: "Set ticket" });
  const replay = async (rerender) => {
    const what = rerender ? "Re-render this delivery with the mappings in force and send it again?" : "Send this delivery again?";
    if (!(await confirmDialog(what, rerender ? "Re-render and send" : "Replay"))) return;
    try {
      const r = await api("/admin/api/replay", { method: "POST", body: { ids: [d.id], rerender } });
      say(r.replayed.length ? "Queued to send again." : `Not replayed: ${r.refused.map((x) => x.reason).join("; ")}`);
      await route();
    } catch (x) { say(x.message); }
  };
  const attempts = v.attempts.map((a) => h("li", {},
    h("div", {}, h("strong", {}, `Attempt ${a.n}`), " ", badge(a.classification), " ",
      a.http_status ? `HTTP ${a.http_status}` : "no answer", ` · ${Math.round(a.duration_ms)} ms · ${when(a.started_at_ms)}`),
    a.error ? h("div", { class: SETTLED.includes(a.classification) ? "muted" : "error" }, a.error) : null,
    a.exchange ? h("details", {}, h("summary", {}, "Request as sent"), json(a.exchange.request)) : null,
    a.response_excerpt ? h("details", {}, h("summary", {}, "Vendor answer"), h("pre", {}, a.response_excerpt),
      a.exchange && a.exchange.response_headers ? json(a.exchange.response_headers) : null) : null));
  page(`Delivery ${d.id}`,
    h("div", { class: "row" }, badge(d.status), doubtFlags(d), ` to ${d.destination} (${d.action}) by mapping ${d.mapping}, `,
      `${d.attempts} attempt(s)`, d.ticket_id ? ` · ticket ${d.ticket_id}${ticketRefs(d) ? ` (${ticketRefs(d)})` : ""}` : ""),
    d.conversation ? h("p", { id: "conversation" }, "Conversation ", conversationLink(d.conversation), ` · ${kindOf(d)}`,
      d.waiting ? " (an earlier message of it is not sent yet)" : "") : null,
    d.in_doubt_since_ms ? h("p", { class: "warn", id: "in-doubt" }, `In doubt since ${when(d.in_doubt_since_ms)}: `,
      d.role === "follow_up"
        ? [`${d.unknowns} send(s) of this follow-up had an unknown outcome, so its ticket may already hold it (no `,
          "vendor lets ticketbridge find a reply again). Check the ticket at the vendor, then replay it (send it) or ",
          "mark it succeeded (it is there)."]
        : [`${d.unknowns} send(s) had an unknown outcome, so the vendor may hold its ticket. Check at the vendor, then `,
          "replay it (send again) or mark it succeeded with the ticket found."]) : null,
    d.duplicates ? h("p", { class: "warn", id: "duplicates" }, `Possible duplicate: sent again ${d.duplicates} time(s) after an `,
      "unknown outcome; the vendor may hold more than one ticket for it.") : null,
    d.ticket_missing ? h("p", { class: "warn", id: "ticket-missing" }, "No ticket id: the vendor took it but its answer ",
      "named no ticket, so ", d.conversation ? "the conversation has none, and its next message is sent as a new ticket."
        : "this delivery cannot name the ticket it made.", " Found the ticket at the vendor? Set it here (Set ticket).") : null,
    d.status === "pending" && v.destination && v.destination.paused ? h("p", {}, "The destination is paused: this waits until it is resumed.") : null,
    d.last_error ? h("p", { class: d.status === "succeeded" ? "muted" : "error" }, d.last_error) : null,
    h("div", { class: "row" },
      h("button", { type: "button", id: "replay", onclick: () => replay(false), disabled: !admin || busy || !v.body }, "Replay"),
      h("button", { type: "button", class: "secondary", id: "rerender", onclick: () => replay(true), disabled: !admin || busy }, "Re-render and replay"),
      d.status === "pending" || d.status === "dead"
        ? h("button", { type: "button", class: "secondary", id: "mark-succeeded", onclick: mark, disabled: !admin }, "Mark succeeded") : null,
      d.status === "succeeded" && !d.ticket_id && d.role !== "follow_up" && (d.ticket_missing || d.role === "create")
        ? h("button", { type: "button", class: "secondary", id: "set-ticket", onclick: setTicket, disabled: !admin }, "Set ticket") : null,
      h("a", { href: `#/event/${d.event_id}` }, "Event and mapping decisions")),
    admin ? null : h("p", { class: "muted", id: "read-only" }, "This token is read-only: replaying, marking succeeded and setting a ticket need the admin token."),
    h("h2", {}, "Attempts"), v.attempts.length ? h("ol", { class: "timeline" }, attempts) : h("p", { class: "muted" }, "No attempt yet."),
    h("div", { class: "grid2" },
      h("section", {}, h("h2", {}, "Rendered body"), json(v.body)),
      h("section", {}, h("h2", {}, "Event payload"), json(v.event.payload))));
  if (d.status === "pending" || d.status === "in_flight") refreshTimer = setInterval(() => route().catch(() => {}), 2000);
}

function decisionsList(decisions) {
  return decisions.map((x) => h("section", { class: "card" },
    h("h3", {}, x.mapping, " ", badge(x.decision)),
    h("p", { class: "muted" }, `→ ${x.destination} ${x.action}`, x.when ? ` · when: ${x.when}` : ""),
    x.error ? h("p", { class: "error" }, x.error) : null,
    x.vendor_body !== null ? h("details", { open: true }, h("summary", {}, "Vendor body"), json(x.vendor_body)) : null,
    h("details", {}, h("summary", {}, "Explain"), h("pre", {}, x.explain))));
}

async function eventView(id) {
  const v = await api(`/admin/api/events/${encodeURIComponent(id)}`);
  page(`Event ${v.event.id}`, h("p", {}, `From ${v.event.source} at ${iso(v.event.received_at)}`),
    h("h2", {}, "Payload"), json(v.event.payload),
    h("h2", {}, `What each mapping makes of it now (mappings ${v.mappings_version})`), decisionsList(v.decisions));
}

async function destinations() {
  const data = await api("/admin/api/destinations");
  const act = async (d, verb) => {
    if (!(await confirmDialog(`${verb === "pause" ? "Pause" : "Resume"} ${d.name}?`, verb === "pause" ? "Pause" : "Resume"))) return;
    try { await api(`/admin/api/destinations/${encodeURIComponent(d.name)}/${verb}`, { method: "POST", body: {} }); say(`${d.name}: ${verb}d.`); await route(); }
    catch (x) { say(x.message); }
  };
  const rows = data.items.map((d) => h("tr", {},
    h("td", {}, d.name), h("td", {}, badge(d.breaker), d.paused ? [" ", badge("paused")] : null,
      d.breaker_reopens_at ? h("div", { class: "muted" }, `probe at ${iso(d.breaker_reopens_at)}`) : null,
      d.paused ? h("div", { class: "muted" }, d.paused_until ? `until ${iso(d.paused_until)}` : "until resumed") : null),
    h("td", {}, d.backlog), h("td", { class: "hide-narrow" }, d.oldest_pending_age_s === null ? "—" : `${Math.round(d.oldest_pending_age_s)} s`),
    h("td", { class: "hide-narrow" }, `${d.in_flight}/${d.max_in_flight}`),
    h("td", { class: "hide-narrow" }, d.rate_limit ? `${d.rate_limit.used}/${d.rate_limit.requests} per ${d.rate_limit.per_seconds} s` : "none"),
    h("td", {}, d.running
      ? h("button", { type: "button", class: d.paused ? "" : "danger", "aria-label": `${d.paused ? "Resume" : "Pause"} ${d.name}`,
        onclick: () => act(d, d.paused ? "resume" : "pause") }, d.paused ? "Resume" : "Pause")
      : h("span", { class: "muted" }, "no workers here"))));
  page("Destinations", table([["Destination"], ["State"], ["Backlog"], ["Oldest pending", "hide-narrow"], ["In flight", "hide-narrow"],
    ["Rate limit use", "hide-narrow"], ["Action"]], rows));
}

async function mappings() {
  const m = await api("/admin/api/mappings");
  const rows = m.mappings.map((x) => h("tr", {}, h("td", {}, x.name), h("td", {}, x.sources.join(", ")),
    h("td", {}, `${x.destination} ${x.action}`), h("td", { class: "hide-narrow" }, x.tests), h("td", { class: "wrap hide-narrow" }, x.file)));
  page("Mappings",
    h("p", {}, `Version ${m.version}, loaded ${iso(m.loaded_at)} from ${m.source === "folder" ? m.folder : "the last good set kept in the store"}.`),
    m.folder_error ? h("pre", { class: "error" }, m.folder_error) : null,
    h("p", {}, `Reloads: ${m.reload.reloads}, failed: ${m.reload.failures}, last: ${m.reload.last_result || "none"}.`),
    m.reload.last_error ? h("section", {}, h("h2", {}, "Last reload error"), h("pre", {}, m.reload.last_error)) : null,
    table([["Mapping"], ["Sources"], ["Sends to"], ["Tests", "hide-narrow"], ["File", "hide-narrow"]], rows));
}

async function playground() {
  const m = await api("/admin/api/mappings");
  const sources = [...new Set(m.mappings.flatMap((x) => x.sources))].sort();
  const source = h("input", { id: "pg-source", name: "source", list: "pg-sources", required: true, value: sources[0] || "" });
  const ctype = h("input", { id: "pg-ctype", name: "ctype", value: "application/json" });
  const body = h("textarea", { id: "pg-body", name: "body", spellcheck: "false" }, '{"title": "Printer on fire"}');
  const verify = h("input", { type: "checkbox", id: "pg-verify" });
  const out = h("div", { id: "pg-result", "aria-live": "polite" });
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault();
    try {
      const r = await api("/admin/api/playground", { method: "POST", body: { source: source.value, body: body.value, headers: { "Content-Type": ctype.value }, verify: verify.checked } });
      out.replaceChildren(
        h("h2", {}, r.outcome === "events" ? `${r.events.length} event(s); nothing was stored or sent` : `${r.outcome}${r.status ? ` (${r.status})` : ""}`),
        r.message ? h("p", { class: "error" }, r.message) : "",
        ...r.events.map((ev) => h("section", {}, h("h2", {}, "Normalised payload"), json(ev.payload), h("h2", {}, "Mappings"), decisionsList(ev.decisions))));
    } catch (x) { out.replaceChildren(h("p", { class: "error", role: "alert" }, x.message)); }
  } },
  h("div", { class: "row" }, h("label", { for: "pg-source" }, "Source", source), h("datalist", { id: "pg-sources" }, sources.map((s) => h("option", { value: s }))),
    h("label", { for: "pg-ctype" }, "Content-Type", ctype), h("label", { for: "pg-verify", class: "row" }, "Check signature", verify)),
  h("label", { for: "pg-body" }, "Raw provider body", body),
  h("p", {}, h("button", { type: "submit", id: "pg-run" }, "Run")));
  page("Playground", h("p", { class: "muted" }, "Runs a provider's raw body through its source's handler and every mapping, with the explanation. Nothing is stored or sent."), form, out);
}

async function audit() {
  const q = hashQuery();
  const data = await api("/admin/api/audit", { params: { cursor: q.get("cursor") || "", limit: 50 } });
  const rows = data.items.map((e) => h("tr", {}, h("td", {}, when(e.at_ms)), h("td", {}, e.actor), h("td", {}, e.action),
    h("td", { class: "wrap" }, e.target), h("td", { class: "wrap hide-narrow" }, JSON.stringify(e.detail))));
  page("Audit log", table([["When"], ["Who"], ["What"], ["On"], ["Detail", "hide-narrow"]], rows),
    data.next_cursor ? h("p", {}, h("a", { href: `#/audit?cursor=${data.next_cursor}` }, "Older entries →")) : "");
}

// -- routing ---------------------------------------------------------------------------------------------

// A Map, not an object literal: `#/constructor` or `#/__proto__` must not find Object's built-ins.
const VIEWS = new Map(Object.entries({ overview, deliveries, destinations, mappings, playground, audit }));

async function route() {
  clearInterval(refreshTimer);
  refreshTimer = null;
  if (!sessionStorage.getItem(KEY)) { signIn(); return; }
  document.getElementById("nav").hidden = false;
  const [name, arg] = (location.hash.replace(/^#\//, "").split("?")[0] || "overview").split("/");
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  try {
    if (name === "delivery") await delivery(decodeURIComponent(arg));
    else if (name === "event") await eventView(decodeURIComponent(arg));
    else await (VIEWS.get(name) || overview)();
  } catch (x) {
    if (x.status === 401) { signIn("Your token is no longer accepted; sign in again."); return; }
    page("Something went wrong", h("p", { class: "error", role: "alert" }, x.message));
  }
}

document.getElementById("sign-out").addEventListener("click", () => { sessionStorage.removeItem(KEY); signedIn = null; location.hash = ""; signIn(); });
window.addEventListener("hashchange", route);
route();
