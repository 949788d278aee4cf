// The fineport console: a single-page app in plain JavaScript, served by
// `fineport serve` at /console (crates/server/src/console/). It signs in
// with the admin token (POST /console/session: an HttpOnly cookie plus a
// CSRF token kept in this page's memory only) and then calls the admin API
// (/admin/v1/...) with `X-CSRF-Token` on every request. No framework, no
// build step, nothing from another origin; every text from the server is
// put in the page as text (never as HTML). Pages are routed by the URL's
// hash: #/services, #/services/<id>, #/services/<id>/tokens, ...
"use strict";

(() => {
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const notice = document.getElementById("notice");
  const signOutButton = document.getElementById("sign-out");

  /** The session's CSRF token (null when signed out). */
  let csrf = null;
  /** The server's timezone names, once read. */
  let timezones = null;

  // ---------------------------------------------------------------- DOM

  /** An element: h("p", {class: "x"}, "text", child, ...). Attributes
   *  starting with "on" are event listeners; strings are text nodes. */
  function h(tag, attrs, ...children) {
    const svg = ["svg", "rect", "line", "text", "title", "g", "polyline", "path"].includes(tag);
    const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  let ids = 0;
  /** A labelled form field: its input gets an id and the label points to it. */
  function field(label, input, hint, cls) {
    const id = input.id || `f${++ids}`;
    input.id = id;
    let hintEl = null;
    if (hint) {
      hintEl = h("span", { class: "hint", id: `${id}-hint` }, hint);
      input.setAttribute("aria-describedby", hintEl.id);
    }
    if (input.type === "checkbox" || input.type === "radio") {
      const kind = input.type === "radio" ? "check choice" : "check";
      return h("div", { class: `field ${kind} ${cls || ""}` }, input, h("label", { for: id }, label), hintEl);
    }
    return h("div", { class: `field ${cls || ""}` }, h("label", { for: id }, label), input, hintEl);
  }

  function table(headers, rows, caption) {
    return h("div", { class: "table-wrap" },
      h("table", {},
        caption ? h("caption", { class: "visually-hidden" }, caption) : null,
        h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", class: x.num ? "num" : null }, x.label || x)))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "Nothing yet.")))));
  }

  function say(message, isError) {
    notice.textContent = message;
    notice.className = isError ? "notice error" : "notice";
  }

  function show(title, ...content) {
    main.replaceChildren(h("h1", {}, title), ...content.filter((c) => c != null));
    document.title = `${title} · fineport console`;
  }

  /** Moves focus to the page after navigation, for keyboard and screen-reader users. */
  function focusMain() {
    main.focus({ preventScroll: true });
  }

  /** A secret shown once, with a copy button. */
  function secret(label, value, note) {
    const input = h("input", { type: "text", readonly: true, value, class: "mono", spellcheck: "false" });
    const copy = h("button", {
      type: "button", class: "secondary",
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(value);
          say(`${label} copied.`);
        } catch {
          input.select();
          say("Copying was not allowed; the token is selected: press Ctrl+C.", true);
        }
      },
    }, "Copy");
    return h("div", { class: "secret", role: "group", "aria-label": label },
      field(label, input, note || "Shown this once: copy it now, it cannot be shown again."), copy);
  }

  function fmtTime(s) {
    if (!s) return "—";
    const d = new Date(s);
    return isNaN(d) ? s : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }
  function fmtDate(s) {
    if (!s) return "—";
    const d = new Date(s);
    return isNaN(d) ? s : d.toLocaleDateString(undefined, { dateStyle: "long" });
  }
  function fmtNum(n) {
    return n === null || n === undefined ? "—" : Number(n).toLocaleString();
  }

  // ---------------------------------------------------------------- API

  /** An endpoint this server does not have (an older or newer fineport). */
  class Missing extends Error {}
  /** An admin API error: {error, detail}. */
  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.detail ? body.detail : `HTTP ${status}`);
      this.status = status;
      this.code = body && body.error;
    }
  }

  /** Calls the admin API within the session. Resolves to the parsed JSON
   *  (or the Response with raw: true); rejects with Missing, ApiError, or
   *  signs out on 401. */
  async function api(method, path, body, opts) {
    const headers = { "X-CSRF-Token": csrf || "" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (opts && opts.raw && resp.ok) return resp;
    let data = null;
    const text = await resp.text();
    try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
    if (resp.status === 401 && path.startsWith("/admin/")) {
      csrf = null;
      signInPage("Your session has ended; sign in again.");
      throw new ApiError(401, data);
    }
    if (resp.status === 404 && data && data.error === "not_found" && /^no endpoint /.test(data.detail || "")) {
      throw new Missing(`This server has no ${method} ${path.split("?")[0]} (HTTP 404): it is a fineport without this part of the console.`);
    }
    if (!resp.ok) {
      if (data && data.message && data.result === "fail") throw new ApiError(resp.status, { detail: `${data.message}${data.detail ? `: ${data.detail}` : ""}` });
      throw new ApiError(resp.status, data);
    }
    return data;
  }

  /** A box saying what failed, for a page or a part of one. */
  function problem(e) {
    if (e instanceof Missing) return h("p", { class: "missing", role: "note" }, e.message);
    return h("p", { class: "error", role: "alert" }, e.message || String(e));
  }

  // ---------------------------------------------------------------- session

  async function restoreSession() {
    const resp = await fetch("/console/session", { credentials: "same-origin", cache: "no-store" });
    if (resp.ok) {
      csrf = (await resp.json()).csrf_token;
      return true;
    }
    return false;
  }

  function signInPage(message) {
    csrf = null;
    nav.hidden = true;
    signOutButton.hidden = true;
    const token = h("input", { type: "password", name: "token", autocomplete: "off", required: true, spellcheck: "false" });
    const error = h("p", { class: "error", role: "alert" });
    const form = h("form", {
      class: "card signin", "aria-labelledby": "signin-title",
      onsubmit: async (ev) => {
        ev.preventDefault();
        error.textContent = "";
        const button = form.querySelector("button");
        button.disabled = true;
        try {
          const resp = await fetch("/console/session", {
            method: "POST", credentials: "same-origin",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ token: token.value }),
          });
          const data = await resp.json().catch(() => ({}));
          if (!resp.ok) {
            error.textContent = resp.status === 401 ? "That is not the admin token." : (data.detail || `HTTP ${resp.status}`);
            token.focus();
            return;
          }
          csrf = data.csrf_token;
          token.value = "";
          say("Signed in.");
          if (!location.hash || location.hash === "#/" || location.hash === "#/signin") location.hash = "#/services";
          else route();
        } catch (e) {
          error.textContent = `The server could not be reached: ${e.message}`;
        } finally {
          button.disabled = false;
        }
      },
    },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("p", { class: "muted" }, "Use the admin token (FINEPORT_ADMIN_TOKEN). The browser keeps only a session cookie, never the token."),
    field("Admin token", token),
    error,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")));
    main.replaceChildren(form);
    document.title = "Sign in · fineport console";
    if (message) say(message, true);
    token.focus();
  }

  signOutButton.addEventListener("click", async () => {
    try {
      await fetch("/console/session", { method: "DELETE", credentials: "same-origin", headers: { "X-CSRF-Token": csrf || "" } });
    } finally {
      signInPage();
      say("Signed out.");
    }
  });

  // ---------------------------------------------------------------- navigation

  const PAGES = [
    ["", "Settings"], ["tokens", "Tokens"], ["taxonomy", "Taxonomy"],
    ["audiences", "Audiences"], ["export", "Export"], ["requests", "Request log"],
  ];

  function renderNav(service, page) {
    nav.hidden = false;
    signOutButton.hidden = false;
    const link = (href, text, current) => h("a", { href, "aria-current": current ? "page" : null }, text);
    const items = [link("#/services", "Services", !service)];
    if (service) {
      items.push(h("span", { class: "service-name" }, service));
      for (const [p, label] of PAGES) {
        items.push(link(`#/services/${encodeURIComponent(service)}${p ? `/${p}` : ""}`, label, page === p));
      }
    }
    nav.replaceChildren(...items);
  }

  async function route() {
    if (!csrf && !(await restoreSession())) {
      signInPage();
      return;
    }
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    if (parts[0] !== "services") parts.splice(0, parts.length, "services");
    const service = parts[1] || null;
    const page = parts[2] || "";
    renderNav(service, page);
    main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    try {
      if (!service) await servicesPage();
      else if (page === "") await settingsPage(service);
      else if (page === "tokens") await tokensPage(service);
      else if (page === "taxonomy") await taxonomyPage(service);
      else if (page === "audiences") await audiencesPage(service);
      else if (page === "export") await exportPage(service);
      else if (page === "requests") await requestsPage(service);
      else show("Not found", h("p", {}, "There is no such page."));
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      show("Something went wrong", problem(e));
    }
    focusMain();
  }

  window.addEventListener("hashchange", () => { say(""); route(); });

  // ---------------------------------------------------------------- services

  async function loadTimezones() {
    if (timezones) return timezones;
    try {
      timezones = (await api("GET", "/admin/v1/timezones")).timezones;
      timezones.missing = false;
    } catch (e) {
      if (!(e instanceof Missing)) throw e;
      timezones = (Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : ["Asia/Seoul"]).concat(["UTC"]).sort();
      timezones.missing = true;
    }
    return timezones;
  }

  /** A searchable timezone field: an input with the server's names as
   *  suggestions (a native datalist: type to filter, arrows to pick). */
  function timezoneField(value, zones) {
    const listId = `tz${++ids}`;
    const input = h("input", { type: "text", name: "timezone", list: listId, value: value || "", autocomplete: "off", required: true, spellcheck: "false" });
    input.addEventListener("change", () => {
      input.setCustomValidity(zones.includes(input.value) ? "" : "Pick a timezone from the list.");
    });
    const hint = zones.missing
      ? "The server cannot list its timezones; these are your browser's."
      : `Type to search ${zones.length} IANA names, e.g. Asia/Seoul.`;
    return [field("Timezone", input, hint), h("datalist", { id: listId }, zones.map((z) => h("option", { value: z })))];
  }

  const LIMITS = [
    ["export_per_hour", "Exports per hour"],
    ["export_concurrency", "Exports at once"],
    ["events_per_minute", "Events per minute"],
    ["identities_per_minute", "Identity calls per minute"],
    ["profiles_per_minute", "Profile updates per minute"],
  ];

  function limitFields(limits) {
    return h("fieldset", {}, h("legend", {}, "Limits"),
      h("div", { class: "row" }, LIMITS.map(([k, label]) =>
        field(label, h("input", { type: "number", name: `limit_${k}`, min: 1, step: 1, value: limits ? limits[k] : "", inputmode: "numeric" }), null, "narrow"))));
  }

  function readLimits(form) {
    const limits = {};
    for (const [k] of LIMITS) {
      const v = form.elements[`limit_${k}`].value;
      if (v !== "") limits[k] = Number(v);
    }
    return limits;
  }

  async function servicesPage() {
    const [{ services }, zones] = await Promise.all([api("GET", "/admin/v1/services"), loadTimezones()]);
    const rows = services.map((s) => h("tr", {},
      h("td", {}, h("a", { href: `#/services/${encodeURIComponent(s.service_id)}` }, s.service_id)),
      h("td", {}, s.name), h("td", {}, s.timezone),
      h("td", { class: "num" }, s.export_lookback_days === 0 ? "unlimited" : `${s.export_lookback_days} days`),
      h("td", {}, s.auto_register ? "yes" : "no"),
      h("td", {}, fmtTime(s.created_at))));
    const created = h("div", { "aria-live": "polite" });
    const error = h("div");
    const form = h("form", {
      class: "card", "aria-labelledby": "create-title",
      onsubmit: async (ev) => {
        ev.preventDefault();
        error.replaceChildren();
        const f = form.elements;
        if (!knownTimezone(f.timezone, zones, error, ": pick one from the list.")) return;
        const body = { timezone: f.timezone.value, export_lookback_days: Number(f.lookback.value), auto_register: f.auto.checked };
        if (f.service_id.value) body.service_id = f.service_id.value;
        if (f.name.value) body.name = f.name.value;
        const limits = readLimits(form);
        if (Object.keys(limits).length) body.limits = limits;
        try {
          const s = await api("POST", "/admin/v1/services", body);
          say(`Service ${s.service_id} created.`);
          await servicesPage();
          main.querySelector("[data-created]").replaceChildren(
            h("h2", {}, `Tokens of ${s.service_id}`),
            secret("Import token (access_token)", s.import_token),
            secret("Export token (Authorization: Bearer)", s.export_token),
            h("p", {}, h("a", { href: `#/services/${encodeURIComponent(s.service_id)}` }, `Open ${s.service_id}`)));
          main.querySelector("[data-created] input").focus();
        } catch (e) {
          error.replaceChildren(problem(e));
        }
      },
    },
    h("h2", { id: "create-title" }, "Create a service"),
    h("div", { class: "row" },
      field("Service id", h("input", { name: "service_id", pattern: "[a-z0-9_]{1,64}", autocomplete: "off", spellcheck: "false" }),
        "1 to 64 lowercase letters, digits or _; empty: generated."),
      field("Name", h("input", { name: "name", autocomplete: "off" }), "Empty: the id."),
      timezoneField("Asia/Seoul", zones),
      field("Look-back days", h("input", { type: "number", name: "lookback", min: 0, max: 36500, value: 30, required: true, inputmode: "numeric" }),
        "How far back an export may start; 0 = unlimited.", "narrow"),
      field("Register unknown names on import", h("input", { type: "checkbox", name: "auto" }))),
    limitFields(null),
    error,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create service")));
    created.setAttribute("data-created", "");
    show("Services",
      table(["Id", "Name", "Timezone", { label: "Look-back", num: true }, "Auto-register", "Created"], rows, "Every service"),
      created, form);
  }

  /** True when `input` holds one of `zones`; else shows why in `error` and focuses it. */
  function knownTimezone(input, zones, error, hint) {
    if (zones.includes(input.value)) return true;
    error.replaceChildren(problem(new Error(`Unknown timezone "${input.value}"${hint || "."}`)));
    input.focus();
    return false;
  }

  async function settingsPage(id) {
    const [s, zones] = await Promise.all([api("GET", `/admin/v1/services/${encodeURIComponent(id)}`), loadTimezones()]);
    const error = h("div");
    const form = h("form", {
      class: "card", "aria-labelledby": "settings-title",
      onsubmit: async (ev) => {
        ev.preventDefault();
        error.replaceChildren();
        const f = form.elements;
        if (!knownTimezone(f.timezone, zones, error, "")) return;
        const body = {
          name: f.name.value, timezone: f.timezone.value,
          export_lookback_days: Number(f.lookback.value), auto_register: f.auto.checked, limits: readLimits(form),
        };
        try {
          await api("PATCH", `/admin/v1/services/${encodeURIComponent(id)}`, body);
          say("Settings saved.");
        } catch (e) {
          error.replaceChildren(problem(e));
        }
      },
    },
    h("h2", { id: "settings-title" }, "Settings"),
    h("div", { class: "row" },
      field("Name", h("input", { name: "name", value: s.name, required: true })),
      timezoneField(s.timezone, zones),
      field("Look-back days", h("input", { type: "number", name: "lookback", min: 0, max: 36500, value: s.export_lookback_days, required: true }),
        "0 = unlimited.", "narrow"),
      field("Register unknown names on import", h("input", { type: "checkbox", name: "auto", checked: s.auto_register }))),
    limitFields(s.limits),
    error,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save settings")));
    show(`Service ${s.service_id}`,
      h("p", { class: "muted" }, `Created ${fmtTime(s.created_at)}. Days are calendar days in ${s.timezone}.`),
      form);
  }

  // ---------------------------------------------------------------- tokens

  async function tokensPage(id) {
    const base = `/admin/v1/services/${encodeURIComponent(id)}/tokens`;
    let list;
    try {
      list = table(["Token id", "Kind", "State", "Created", "Valid until", "Reason"],
        (await api("GET", base)).tokens.map((t) => h("tr", {},
          h("td", { class: "mono" }, t.token_id), h("td", {}, t.kind),
          h("td", {}, h("span", { class: `badge ${t.state}` }, t.state)),
          h("td", {}, fmtTime(t.created_at)),
          h("td", {}, t.valid_until && t.state !== "revoked" ? fmtDate(t.valid_until) : "—"),
          h("td", {}, t.reason || ""))), "The service's tokens");
    } catch (e) {
      if (!(e instanceof Missing)) throw e;
      list = problem(e);
    }
    const kindCard = (kind) => {
      const out = h("div", { "aria-live": "polite" });
      const reason = h("input", { name: "reason", maxlength: 500, autocomplete: "off" });
      const confirm = h("div", { class: "confirm", hidden: true, role: "group", "aria-label": `Confirm revoking the ${kind} token` },
        h("p", {}, `Revoke the ${kind} token? The current token and any previous one in its grace period stop working at once. A new one can be issued only once the reissue cool-down (24 hours by default) has passed since the last reissue.`),
        h("div", { class: "actions" },
          h("button", {
            type: "button", class: "danger",
            onclick: async () => {
              try {
                const r = await api("DELETE", `${base}/${kind}`);
                say(`${r.revoked} ${kind} token(s) revoked.`);
                await tokensPage(id);
              } catch (e) { out.replaceChildren(problem(e)); }
            },
          }, `Yes, revoke the ${kind} token`),
          h("button", { type: "button", class: "secondary", onclick: () => { confirm.hidden = true; revoke.focus(); } }, "Cancel")));
      const revoke = h("button", { type: "button", class: "danger", onclick: () => { confirm.hidden = false; confirm.querySelector("button").focus(); } }, `Revoke ${kind} token…`);
      const form = h("form", {
        class: "card", "aria-labelledby": `${kind}-title`,
        onsubmit: async (ev) => {
          ev.preventDefault();
          out.replaceChildren();
          if (reason.value.length > 500) { out.replaceChildren(problem(new Error("The reason is at most 500 characters."))); return; }
          try {
            const body = reason.value ? { reason: reason.value } : undefined;
            const r = await api("POST", `${base}/${kind}/reissue`, body);
            const grace = r.previous_valid_until
              ? `The previous ${kind} token keeps working until ${fmtDate(r.previous_valid_until)} (${fmtTime(r.previous_valid_until)}), the 14-day grace period.`
              : "There was no previous token.";
            await tokensPage(id);
            const slot = main.querySelector(`[data-new="${kind}"]`);
            slot.replaceChildren(secret(`New ${kind} token`, r.token), h("p", {}, grace));
            slot.querySelector("input").focus();
            say(`A new ${kind} token was issued.`);
          } catch (e) { out.replaceChildren(problem(e)); }
        },
      },
      h("h2", { id: `${kind}-title` }, `${kind[0].toUpperCase()}${kind.slice(1)} token`),
      h("div", { "data-new": kind }),
      h("div", { class: "row" }, field("Reason for reissuing", reason, "Kept with the new token; at most 500 characters.")),
      out,
      h("div", { class: "actions" }, h("button", { type: "submit" }, `Reissue ${kind} token`), revoke),
      confirm);
      return form;
    };
    show(`Tokens of ${id}`,
      h("p", { class: "muted" }, "Token values are shown once, when issued; here are only their ids and states."),
      list, kindCard("import"), kindCard("export"));
  }

  // ---------------------------------------------------------------- taxonomy

  const TYPES = ["String", "Long", "Double", "Boolean", "Datetime", "Date", "Array of String", "Array of Long", "Array of Double"];
  const SCOPES = [
    ["events", "Event"], ["event_properties", "Event property"],
    ["item_properties", "Item property"], ["user_properties", "User property"],
  ];

  async function taxonomyPage(id) {
    const path = `/admin/v1/services/${encodeURIComponent(id)}/taxonomy`;
    const tax = await api("GET", path);
    const entries = [];
    for (const [scope, label] of SCOPES) {
      for (const e of tax[scope] || []) {
        const name = typeof e === "string" ? e : e.name;
        entries.push({ scope: label, name, type: typeof e === "string" ? "" : e.type });
      }
    }
    const body = h("tbody");
    const count = h("p", { class: "muted", "aria-live": "polite" });
    const search = h("input", { type: "search", name: "q", autocomplete: "off" });
    const render = () => {
      const q = search.value.trim().toLowerCase();
      const shown = entries.filter((e) => !q || `${e.scope} ${e.name} ${e.type}`.toLowerCase().includes(q));
      body.replaceChildren(...shown.map((e) => h("tr", {}, h("td", {}, e.scope), h("td", { class: "mono" }, e.name), h("td", {}, e.type))));
      count.textContent = `${shown.length} of ${entries.length} names.`;
    };
    search.addEventListener("input", render);
    render();

    const error = h("div");
    const scope = h("select", { name: "scope" }, SCOPES.map(([k, l]) => h("option", { value: k }, l)));
    const type = h("select", { name: "type" }, TYPES.map((t) => h("option", { value: t }, t)));
    const name = h("input", { name: "name", required: true, autocomplete: "off", spellcheck: "false", pattern: "[A-Za-z][A-Za-z0-9_]{0,127}" });
    const syncType = () => { type.disabled = scope.value === "events"; };
    scope.addEventListener("change", syncType);
    syncType();
    const form = h("form", {
      class: "card", "aria-labelledby": "add-title",
      onsubmit: async (ev) => {
        ev.preventDefault();
        error.replaceChildren();
        const n = name.value.trim();
        if (!/^[A-Za-z][A-Za-z0-9_]{0,127}$/.test(n) || n.startsWith("df_")) {
          error.replaceChildren(problem(new Error("A name is 1 to 128 letters, digits or _, starts with a letter and does not start with df_.")));
          name.focus();
          return;
        }
        const known = entries.find((e) => e.name === n && SCOPES.find(([k]) => k === scope.value)[1] === e.scope);
        if (known && known.type && known.type !== type.value) {
          error.replaceChildren(problem(new Error(`${n} is already registered (${known.scope.toLowerCase()}) with the type ${known.type}.`)));
          return;
        }
        const doc = {};
        doc[scope.value] = scope.value === "events" ? [n] : [{ name: n, type: type.value }];
        try {
          const r = await api("POST", path, doc);
          const added = Object.values(r.added).reduce((a, l) => a + l.length, 0);
          await taxonomyPage(id);
          say(added ? `${n} added.` : `${n} was already registered with that type.`);
        } catch (e) { say(""); error.replaceChildren(problem(e)); }
      },
    },
    h("h2", { id: "add-title" }, "Add a name"),
    h("div", { class: "row" }, field("Kind", scope), field("Name", name), field("Type", type, "Not for events.")),
    error,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Add")));
    show(`Taxonomy of ${id}`,
      form,
      h("h2", {}, "Registered names"),
      h("div", { class: "row" }, field("Search names", search, "By kind, name or type.")),
      count,
      h("div", { class: "table-wrap" }, h("table", {},
        h("caption", { class: "visually-hidden" }, "Registered names"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Kind"), h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Type"))),
        body)));
  }

  // ---------------------------------------------------------------- audiences

  function todayIn(tz) {
    // en-CA formats as yyyy-MM-dd.
    return new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date());
  }
  function addDays(day, n) {
    const d = new Date(`${day}T00:00:00Z`);
    d.setUTCDate(d.getUTCDate() + n);
    return d.toISOString().slice(0, 10);
  }

  async function audiencesPage(id) {
    const base = `/admin/v1/services/${encodeURIComponent(id)}/audiences`;
    const [{ audiences }, tax, svc] = await Promise.all([
      api("GET", base), api("GET", `/admin/v1/services/${encodeURIComponent(id)}/taxonomy`),
      api("GET", `/admin/v1/services/${encodeURIComponent(id)}`)]);
    const sizeKnown = audiences.some((a) => a.size !== undefined);
    const rows = audiences.map((a) => {
      const confirm = h("span", { hidden: true },
        " ", h("button", {
          type: "button", class: "danger",
          onclick: async () => {
            try {
              await api("DELETE", `${base}/${encodeURIComponent(a.id)}`);
              say(`Audience ${a.id} deleted.`);
              await audiencesPage(id);
            } catch (e) { say(e.message, true); }
          },
        }, `Yes, delete ${a.id}`), " ",
        h("button", { type: "button", class: "secondary", onclick: () => { confirm.hidden = true; del.focus(); } }, "Cancel"));
      const del = h("button", { type: "button", class: "secondary", onclick: () => { confirm.hidden = false; confirm.querySelector("button").focus(); } }, `Delete ${a.id}…`);
      const what = a.external_ids ? `static list of ${a.external_ids.length}` :
        (a.rule ? a.rule.all.map((c) => c.event ? `${c.event} ≥ ${c.min_count}× ${c.from_date}…${c.to_date}` : `${c.property} = ${JSON.stringify(c.equals)}`).join(" and ") : "");
      return h("tr", {}, h("td", { class: "mono" }, a.id), h("td", {}, a.name), h("td", {}, what),
        h("td", { class: "num" }, a.size === undefined ? "—" : fmtNum(a.size)), h("td", {}, del, confirm));
    });

    const error = h("div");
    const kindStatic = h("input", { type: "radio", name: "kind", value: "static", checked: true });
    const kindRule = h("input", { type: "radio", name: "kind", value: "rule" });
    const idsArea = h("textarea", { name: "external_ids", spellcheck: "false" });
    const staticPart = h("div", {}, field("External ids", idsArea, "One a line."));
    const conditions = h("div");
    const today = todayIn(svc.timezone);
    const eventNames = (tax.events || []);
    const userProps = (tax.user_properties || []);
    const addCondition = (kind) => {
      const remove = h("button", { type: "button", class: "secondary", onclick: () => { row.remove(); } }, "Remove condition");
      let row;
      if (kind === "event") {
        row = h("fieldset", { "data-kind": "event" }, h("legend", {}, "Did an event"),
          h("div", { class: "row" },
            field("Event", h("select", { name: "event" }, eventNames.map((e) => h("option", { value: e }, e)))),
            field("At least (times)", h("input", { type: "number", name: "min_count", min: 1, value: 1 }), null, "narrow"),
            field("From", h("input", { type: "date", name: "from_date", value: addDays(today, -29), max: today })),
            field("To", h("input", { type: "date", name: "to_date", value: today, max: today })),
            remove));
      } else {
        row = h("fieldset", { "data-kind": "property" }, h("legend", {}, "Has a user property value"),
          h("div", { class: "row" },
            field("User property", h("select", { name: "property" }, userProps.map((p) => h("option", { value: p.name, "data-type": p.type }, `${p.name} (${p.type})`)))),
            field("Equals", h("input", { name: "equals", autocomplete: "off" }), "Numbers, true/false and [arrays] as JSON; else text."),
            remove));
      }
      conditions.append(row);
      row.querySelector("select").focus();
    };
    const rulePart = h("div", { hidden: true },
      h("p", { class: "muted" }, "A user is in the audience when every condition holds."),
      conditions,
      h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary", onclick: () => addCondition("event") }, "Add event condition"),
        h("button", { type: "button", class: "secondary", onclick: () => addCondition("property") }, "Add property condition")));
    const syncKind = () => { staticPart.hidden = !kindStatic.checked; rulePart.hidden = kindStatic.checked; };
    kindStatic.addEventListener("change", syncKind);
    kindRule.addEventListener("change", syncKind);
    const form = h("form", {
      class: "card", "aria-labelledby": "aud-title",
      onsubmit: async (ev) => {
        ev.preventDefault();
        error.replaceChildren();
        const f = form.elements;
        const body = { name: f.aname.value };
        if (f.aid.value) body.id = f.aid.value;
        if (kindStatic.checked) {
          body.external_ids = idsArea.value.split("\n").map((s) => s.trim()).filter(Boolean);
        } else {
          const all = [];
          for (const fs of conditions.querySelectorAll("fieldset")) {
            const q = (n) => fs.querySelector(`[name="${n}"]`).value;
            if (fs.dataset.kind === "event") {
              all.push({ event: q("event"), min_count: Number(q("min_count")), from_date: q("from_date"), to_date: q("to_date") });
            } else {
              let equals = q("equals");
              const type = fs.querySelector("select").selectedOptions[0]?.dataset.type || "String";
              if (type !== "String" && type !== "Date" && type !== "Datetime") {
                try { equals = JSON.parse(equals); } catch {
                  error.replaceChildren(problem(new Error(`${q("property")} is a ${type}: write its value as JSON.`)));
                  return;
                }
              }
              all.push({ property: q("property"), equals });
            }
          }
          if (!all.length) { error.replaceChildren(problem(new Error("Add at least one condition."))); return; }
          body.rule = { all };
        }
        try {
          const a = await api("POST", base, body);
          await audiencesPage(id);
          say(`Audience ${a.id} created.`);
        } catch (e) { error.replaceChildren(problem(e)); }
      },
    },
    h("h2", { id: "aud-title" }, "Create an audience"),
    h("div", { class: "row" },
      field("Name", h("input", { name: "aname", required: true, autocomplete: "off" })),
      field("Id", h("input", { name: "aid", pattern: "[a-z0-9]{6}", autocomplete: "off", spellcheck: "false" }), "6 lowercase letters or digits; empty: generated.", "narrow")),
    h("fieldset", {}, h("legend", {}, "Members"),
      h("div", { class: "row" },
        field("A static list of external ids", kindStatic),
        field("Everyone matching rules", kindRule))),
    staticPart, rulePart, error,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create audience")));
    show(`Audiences of ${id}`,
      sizeKnown || !audiences.length ? null : h("p", { class: "missing", role: "note" }, "This server does not report audience sizes."),
      table(["Id", "Name", "Members", { label: "Size", num: true }, ""], rows, "The service's audiences"),
      form);
  }

  // ---------------------------------------------------------------- export

  /** Parses CSV text (RFC 4180: quotes, doubled quotes, CRLF or LF). */
  function parseCsv(text) {
    const rows = [];
    let row = [], cell = "", quoted = false;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (quoted) {
        if (c === '"') {
          if (text[i + 1] === '"') { cell += '"'; i++; } else quoted = false;
        } else cell += c;
      } else if (c === '"') quoted = true;
      else if (c === ",") { row.push(cell); cell = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i++;
        row.push(cell); rows.push(row); row = []; cell = "";
      } else cell += c;
    }
    if (cell !== "" || row.length) { row.push(cell); rows.push(row); }
    return rows;
  }

  /** A shell word, quoted when it needs to be. */
  function sh(s) {
    return /^[A-Za-z0-9_./:=@,-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
  }

  async function exportPage(id) {
    const enc = encodeURIComponent(id);
    const [svc, tax] = await Promise.all([api("GET", `/admin/v1/services/${enc}`), api("GET", `/admin/v1/services/${enc}/taxonomy`)]);
    const today = todayIn(svc.timezone);
    const earliest = svc.export_lookback_days ? addDays(today, -svc.export_lookback_days) : null;
    const events = tax.events || [];
    // Event property columns, then `df_items` (every item column) and each
    // item column `df_items_<prop>` (SPEC §2.1).
    const properties = (tax.event_properties || []).map((p) => p.name).filter((n) => n !== "df_items");
    if ((tax.item_properties || []).length) {
      properties.push("df_items", ...tax.item_properties.map((p) => `df_items_${p.name}`));
    }

    const condition = (name, legend) => h("fieldset", {}, h("legend", {}, legend),
      h("div", { class: "row" }, ["all", "include", "exclude"].map((v) =>
        field(v === "all" ? "All" : v === "include" ? "Only those checked" : "All but those checked",
          h("input", { type: "radio", name, value: v, checked: v === "all" })))));
    const checklist = (name, names, label) => h("fieldset", {}, h("legend", {}, label),
      names.length ? h("div", { class: "checklist" }, names.map((n) =>
        h("label", {}, h("input", { type: "checkbox", name, value: n }), h("span", { class: "mono" }, n))))
        : h("p", { class: "muted" }, "None registered."));
    const from = h("input", { type: "date", name: "from", value: addDays(today, -6) < (earliest || "0") ? earliest : addDays(today, -6), min: earliest, max: today, required: true });
    const to = h("input", { type: "date", name: "to", value: today, min: earliest, max: today, required: true });
    const curl = h("pre", { class: "command", id: "curl-command", tabindex: 0, "aria-label": "curl command" });
    const cli = h("pre", { class: "command", id: "cli-command", tabindex: 0, "aria-label": "fineport export command" });
    const preview = h("div", { "aria-live": "polite" });
    const error = h("div");

    const form = h("form", { class: "card", "aria-labelledby": "exp-title", onsubmit: (ev) => { ev.preventDefault(); runPreview(); } },
      h("h2", { id: "exp-title" }, "What to export"),
      condition("events_condition_type", "Events"),
      checklist("events", events, "Event names"),
      condition("properties_condition_type", "Property columns"),
      checklist("properties", properties, "Properties"),
      h("div", { class: "row" },
        field("From", from, earliest ? `No earlier than ${earliest} (the ${svc.export_lookback_days}-day look-back).` : "Any day (no look-back limit)."),
        field("To", to, `Days in ${svc.timezone}; today is ${today}.`)),
      error,
      h("div", { class: "actions" },
        h("button", { type: "submit" }, "Preview 20 rows"),
        h("button", { type: "button", class: "secondary", onclick: () => download() }, "Download CSV")));

    const body = () => {
      const f = form.elements;
      const b = { events_condition_type: f.events_condition_type.value };
      const ev = [...form.querySelectorAll('input[name="events"]:checked')].map((x) => x.value);
      const pr = [...form.querySelectorAll('input[name="properties"]:checked')].map((x) => x.value);
      if (b.events_condition_type !== "all") b.events = ev;
      b.properties_condition_type = f.properties_condition_type.value;
      if (b.properties_condition_type !== "all") b.properties = pr;
      b.from_date = from.value;
      b.to_date = to.value;
      return b;
    };
    const check = () => {
      const b = body();
      if (!b.from_date || !b.to_date) return "Pick both dates.";
      if (earliest && b.from_date < earliest) return `From is before ${earliest}, the look-back limit.`;
      if (b.to_date < b.from_date) return "To is before From.";
      if (b.to_date > today) return `To is after today (${today}).`;
      if (b.events && !b.events.length && b.events_condition_type === "include") return "Check at least one event, or choose All.";
      if (b.properties && !b.properties.length && b.properties_condition_type === "include") return "Check at least one property, or choose All.";
      return null;
    };
    const update = () => {
      const b = body();
      const origin = location.origin;
      curl.textContent = `curl -sS -X POST '${origin}/api/v1/export/event?service_id=${id}' \\\n` +
        "  -H 'Authorization: Bearer <export token>' \\\n" +
        "  -H 'Content-Type: application/json' \\\n" +
        `  -d ${sh(JSON.stringify(b))} \\\n  -o ${sh(`${id}_events_${b.from_date}_${b.to_date}.csv`)}`;
      const args = ["FINEPORT_EXPORT_TOKEN='<export token>'", "fineport", "export", "--base-url", origin, "--service", id,
        "--from", b.from_date, "--to", b.to_date];
      if (b.events_condition_type === "include" && b.events.length) args.push("--events", b.events.join(","));
      if (b.events_condition_type === "exclude" && b.events.length) args.push("--exclude-events", b.events.join(","));
      if (b.properties_condition_type === "include" && b.properties.length) args.push("--properties", b.properties.join(","));
      if (b.properties_condition_type === "exclude" && b.properties.length) args.push("--exclude-properties", b.properties.join(","));
      args.push("-o", `${id}_events_${b.from_date}_${b.to_date}.csv`);
      cli.textContent = args.map((a, i) => (i === 0 || i === 1 ? a : sh(a))).join(" ");
    };
    form.addEventListener("input", update);
    form.addEventListener("change", update);

    const exportPath = (limit) => `/admin/v1/services/${enc}/export/event${limit ? `?limit=${limit}` : ""}`;
    async function runPreview() {
      error.replaceChildren();
      const why = check();
      if (why) { error.replaceChildren(problem(new Error(why))); return; }
      preview.replaceChildren(h("p", { class: "muted" }, "Reading the first rows…"));
      try {
        const resp = await api("POST", exportPath(20), body(), { raw: true });
        const rows = parseCsv(await resp.text());
        const [header, ...data] = rows;
        preview.replaceChildren(
          h("h2", {}, "Preview"),
          h("p", { class: "muted" }, `${data.length} row(s) shown, at most 20.`),
          header ? table(header, data.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))), "The first rows of the export") : h("p", {}, "No rows."));
      } catch (e) { preview.replaceChildren(problem(e)); }
    }
    async function download() {
      error.replaceChildren();
      const why = check();
      if (why) { error.replaceChildren(problem(new Error(why))); return; }
      say("Exporting…");
      try {
        const b = body();
        const resp = await api("POST", exportPath(0), b, { raw: true });
        const blob = await resp.blob();
        const a = h("a", { href: URL.createObjectURL(blob), download: `${id}_events_${b.from_date}_${b.to_date}.csv`, hidden: true });
        document.body.append(a);
        a.click();
        setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
        say(`Downloaded ${fmtNum(blob.size)} bytes.`);
      } catch (e) { say(""); error.replaceChildren(problem(e)); }
    }
    update();
    show(`Export from ${id}`, form,
      h("section", { class: "card", "aria-labelledby": "cmd-title" },
        h("h2", { id: "cmd-title" }, "The same export elsewhere"),
        h("p", {}, h("strong", {}, "curl"), " against the Export API:"), curl,
        h("p", {}, h("strong", {}, "fineport export"), " (resumable, per day, with progress):"), cli),
      preview);
  }

  // ---------------------------------------------------------------- request log

  const OUTCOMES = ["ok", "invalid_parameter", "exceed_date_range_limit", "unauthorized_token", "too_many_api_requests",
    "query_error", "unknown_error", "client_connection_closed", "20000", "40000", "40001", "40101", "40201", "40401", "40402", "40403", "50000"];

  /** A bar chart as an SVG picture: one bar per point, labels under some. */
  function barChart(title, points, label, series, unit) {
    const W = 600, H = 200, left = 44, bottom = 34, top = 10;
    const max = Math.max(1, ...points.map((p) => p.value));
    const n = Math.max(points.length, 1);
    const bw = (W - left - 6) / n;
    const y = (v) => top + (H - top - bottom) * (1 - v / max);
    const total = points.reduce((a, p) => a + p.value, 0);
    const desc = `${title}: ${fmtNum(total)} ${unit} in all over ${points.length} bars; the most in one is ${fmtNum(max)}.`;
    const every = Math.ceil(n / 8);
    const svg = h("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": desc, class: "bars" },
      h("title", {}, desc),
      h("line", { class: "axis", x1: left, y1: H - bottom, x2: W, y2: H - bottom }),
      h("line", { class: "axis", x1: left, y1: top, x2: left, y2: H - bottom }),
      h("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, fmtNum(max)),
      h("text", { x: left - 4, y: H - bottom, "text-anchor": "end" }, "0"),
      points.map((p, i) => h("rect", {
        class: series, x: left + i * bw + 1, width: Math.max(bw - 2, 1),
        y: y(p.value), height: Math.max(H - bottom - y(p.value), 0),
      }, h("title", {}, `${label(p)}: ${fmtNum(p.value)} ${unit}`))),
      points.map((p, i) => (i % every === 0 ? h("text", { x: left + i * bw + bw / 2, y: H - bottom + 14, "text-anchor": "middle" }, label(p)) : null)));
    return h("div", { class: "chart card" }, h("figure", {}, h("figcaption", {}, title), svg,
      h("details", {}, h("summary", {}, "As a table"),
        table(["When", { label: unit, num: true }], points.map((p) => h("tr", {}, h("td", {}, label(p)), h("td", { class: "num" }, fmtNum(p.value)))), title))));
  }

  async function requestsPage(id, outcome) {
    const enc = encodeURIComponent(id);
    const q = new URLSearchParams({ limit: "100" });
    if (outcome) q.set("outcome", outcome);
    const outcomeInput = h("input", { name: "outcome", list: "outcomes", value: outcome || "", autocomplete: "off", spellcheck: "false" });
    const filter = h("form", {
      class: "card", role: "search", "aria-label": "Filter the request log",
      onsubmit: (ev) => { ev.preventDefault(); requestsPage(id, outcomeInput.value.trim()).then(focusMain); },
    },
    h("div", { class: "row" },
      field("Outcome", outcomeInput, "A message (ok, invalid_parameter, …) or an import code (40001, …); empty: all."),
      h("datalist", { id: "outcomes" }, OUTCOMES.map((o) => h("option", { value: o }))),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Filter"),
        h("button", { type: "button", class: "secondary", onclick: () => requestsPage(id, "").then(focusMain) }, "Show all"))));

    let log;
    try {
      const { requests } = await api("GET", `/admin/v1/services/${enc}/requests?${q}`);
      const shown = outcome ? requests.filter((r) => r.message === outcome) : requests;
      log = h("div", {},
        h("p", { class: "muted", "aria-live": "polite" }, `The newest ${shown.length} request(s)${outcome ? ` with outcome ${outcome}` : ""}.`),
        table(["Time", { label: "Status", num: true }, "Message", "Endpoint", { label: "Rows", num: true }, { label: "Bytes", num: true },
          { label: "ms", num: true }, "IP", "User agent"],
        shown.map((r) => h("tr", {},
          h("td", {}, fmtTime(r.time)), h("td", { class: "num" }, r.status),
          h("td", {}, h("span", { class: `badge ${r.message === "ok" || r.message === "20000" ? "ok" : "fail"}` }, r.message)),
          h("td", { class: "mono" }, r.endpoint), h("td", { class: "num" }, fmtNum(r.rows)), h("td", { class: "num" }, fmtNum(r.bytes)),
          h("td", { class: "num" }, fmtNum(r.duration_ms)), h("td", { class: "mono" }, r.ip), h("td", {}, r.user_agent))), "The request log"));
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 400 || !outcome) throw e;
      log = problem(new Error(`This server cannot filter by outcome: ${e.message}`));
    }

    let charts;
    try {
      const stats = await api("GET", `/admin/v1/services/${enc}/stats?hours=48&days=30`);
      const hourLabel = (p) => { const d = new Date(p.hour); return `${String(d.getHours()).padStart(2, "0")}:00 ${d.getDate()}/${d.getMonth() + 1}`; };
      charts = h("div", { class: "charts" },
        barChart("Requests per hour (last 48 hours)", stats.hourly.map((x) => ({ hour: x.hour, value: x.requests })), hourLabel, "s1", "requests"),
        barChart("Exported rows per hour (last 48 hours)", stats.hourly.map((x) => ({ hour: x.hour, value: x.export_rows })), hourLabel, "s2", "rows"),
        barChart("Events stored per day (last 30 days)", stats.daily.map((x) => ({ day: x.day, value: x.events })), (p) => p.day.slice(5), "s3", "events"));
    } catch (e) {
      if (!(e instanceof Missing)) throw e;
      charts = problem(e);
    }
    show(`Request log of ${id}`, h("h2", {}, "Activity"), charts, h("h2", {}, "Requests"), filter, log);
  }

  route();
})();
