// The panel's one script: the live parts of each page. The pages are whole HTML without it; if something here
// fails, the banner at the top says so instead of leaving a blank area.
"use strict";

const T = JSON.parse(document.getElementById("i18n").textContent);

function showScriptError(message) {
  const banner = document.querySelector("[data-testid=script-error]");
  if (!banner) return;
  banner.querySelector("span").textContent = message || "";
  banner.hidden = false;
}
window.addEventListener("error", (event) => showScriptError(event.message));
window.addEventListener("unhandledrejection", (event) => showScriptError(String(event.reason && event.reason.message || event.reason)));

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

/** A JSON call to the server's own API: {status, data}; a network failure is status 0. */
async function api(method, path, body, headers = {}) {
  const options = { method, headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  try {
    const response = await fetch(path, options);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    return { status: response.status, data };
  } catch (error) {
    return { status: 0, data: { error: { message: String(error) } } };
  }
}

function errorText(data) {
  const error = data && data.error;
  if (!error) return T.error;
  let text = error.message || error.code || T.error;
  const fields = error.details && error.details.fields;
  if (fields) text += " — " + Object.entries(fields).map(([k, v]) => `${k}: ${v}`).join("; ");
  return text;
}

function money(value) {
  return typeof value === "number" ? `$${value.toFixed(2)}` : "—";
}

function bytes(value) {
  if (typeof value !== "number") return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = value, unit = 0;
  while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit++; }
  return `${n.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function setBadge(node, word) {
  node.textContent = T[word] || word;
  node.className = "badge " + word;
}

// ---- Word when a job ends: the tab's title and icon, and (once asked for, from a click) a notification ----

const FINAL = ["succeeded", "failed", "cancelled", "backend_lost"];
const BASE_TITLE = document.title;
const ICONS = { idle: "/assets/favicon.svg", running: "/assets/favicon-running.svg", done: "/assets/favicon-done.svg", failed: "/assets/favicon-failed.svg" };
const MARKS = { idle: "", running: "▶ ", done: "✓ ", failed: "✗ " };

/** Shows `state` (idle, running, done, failed) in the tab: its icon, and a mark and `detail` before the title. */
function showActivity(state, detail = "") {
  // Only on a change: the browser fetches the icon again each time its address is set, even to the same one.
  const icon = document.querySelector("link[rel=icon]");
  if (icon && icon.getAttribute("href") !== ICONS[state]) icon.setAttribute("href", ICONS[state]);
  document.documentElement.dataset.activity = state;
  document.title = `${MARKS[state]}${detail ? detail + " · " : ""}${BASE_TITLE}`;
}

function notificationsWanted() {
  return "Notification" in window && Notification.permission === "granted" && localStorage.getItem("notify") === "on";
}

/** A notification that `job` ended, when the tab is in the background and the user asked for them. */
function notifyEnded(job) {
  if (!document.hidden || !notificationsWanted()) return;
  const title = job.status === "succeeded" ? T.job_done : T.job_failed;
  const note = new Notification(title, { body: `${job.template || job.backend} · ${job.status}`, tag: job.id });
  note.onclick = () => { window.focus(); window.location.href = `/jobs/${job.id}`; };
}

/** The "notify me" button: asks for permission once, on its click (browsers allow no other way). */
function setupNotifyButton() {
  const button = $("[data-testid=notify-toggle]");
  if (!button) return;
  if (!("Notification" in window)) { button.hidden = true; return; }
  const show = () => {
    const on = notificationsWanted();
    button.textContent = on ? T.notify_on : T.notify_off;
    button.setAttribute("aria-pressed", on ? "true" : "false");
  };
  button.addEventListener("click", async () => {
    if (notificationsWanted()) {
      localStorage.setItem("notify", "off");
    } else {
      const answer = Notification.permission === "granted" ? "granted" : await Notification.requestPermission();
      localStorage.setItem("notify", answer === "granted" ? "on" : "off");
    }
    show();
  });
  show();
}

function every(ms, task) {
  let running = false;
  const tick = async () => {
    if (running || document.hidden) return;
    running = true;
    try { await task(); } finally { running = false; }
  };
  tick();
  return setInterval(tick, ms);
}

/** Reads a server-sent-event response body, calling onEvent(name, data) for each event. */
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}

// ---- Ignite (home and diagnostics) ----

const PHASE_STATE = { checking: "starting", starting: "starting", waiting: "waiting", online: "online", error: "error" };
const STATE_TEXT = { idle: "idle", starting: "starting", waiting: "waiting", online: "ready", error: "failed" };

async function ignite(onProgress) {
  const response = await fetch("/api/system/ignite", { method: "POST", headers: { Accept: "text/event-stream" } });
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    onProgress("error", 0, errorText(data));
    return;
  }
  await readEvents(response, (name, data) => {
    if (name === "progress") onProgress(PHASE_STATE[data.phase] || "starting", data.percent, data.message);
    if (name === "done") {
      if (data.comfy === "online") onProgress("online", 100, "");
      else onProgress("error", 0, data.error || "");
    }
  });
}

function setupIgnite(button, stateNode, bar, afterwards) {
  const show = (state, percent, message) => {
    stateNode.dataset.state = state;
    stateNode.textContent = T[STATE_TEXT[state]] + (message && state === "error" ? `: ${message}` : "");
    if (bar) bar.value = percent;
  };
  button.addEventListener("click", async () => {
    button.disabled = true;
    show("starting", 0, "");
    try { await ignite(show); } finally {
      button.disabled = false;
      if (afterwards) afterwards();
    }
  });
}

// ---- Home ----

function homePage() {
  const strip = {
    overall: $("#strip-overall"), comfy: $("#strip-comfy"), service: $("#strip-service"),
    queue: $("#strip-queue"), budget: $("#strip-budget"),
  };
  let comfyOnline = false;
  const refreshStatus = async () => {
    const { status, data } = await api("GET", "/api/status");
    if (status !== 200 || !data) return;
    setBadge(strip.overall, data.overall);
    setBadge(strip.comfy, data.comfy.status);
    strip.service.textContent = `${T["state_" + data.services.comfy.status] || data.services.comfy.status} (${data.services.comfy.backend})`;
    const queue = data.comfy.queue;
    strip.queue.textContent = queue ? `${queue.running} ${T.running} · ${queue.pending} ${T.pending}` : "—";
    const budget = data.external.flux.budget;
    strip.budget.textContent = budget ? `${money(budget.left)} ${T.left} ${money(budget.limit)}` : "—";
    const wasOnline = comfyOnline;
    comfyOnline = data.comfy.online;
    if (comfyOnline && !wasOnline) loadModels();
    if (!comfyOnline && wasOnline) { models = null; fillPickers(); }
  };
  every(10000, refreshStatus);
  setupIgnite($("[data-testid=ignite-button]"), $("[data-testid=ignite-state]"), $("[data-testid=ignite-progress]"), refreshStatus);

  // The generation form.
  const form = $("[data-testid=generate-form]");
  const message = $("[data-testid=generate-message]");
  const templates = JSON.parse($("#templates-data").textContent || "[]");
  // ComfyUI's model files by folder; null while it is not known to be online.
  let models = null;
  const backendSelect = form.elements.backend;
  const showBackend = () => {
    for (const section of $$("[data-backend]", form)) section.hidden = section.dataset.backend !== backendSelect.value;
    for (const input of $$("[data-backend] [required]", form)) {
      input.disabled = input.closest("[data-backend]").hidden || input.dataset.state === "offline";
    }
  };
  backendSelect.addEventListener("change", showBackend);

  // The template's form, as its manifest lays it out: groups in order (the advanced one folded), each field with
  // its label and help in the page's language, size presets for the model family, a dice for the seed, and model
  // pickers that list what ComfyUI has (or say it is offline) rather than the template's defaults.
  const fieldsBox = $(".template-fields", form);
  const LANG = document.documentElement.lang || "en";
  const GROUPS = ["main", "size", "sampling", "advanced"];
  const localized = (texts, fallback) => (texts && (texts[LANG] || texts.en)) || fallback;
  const groupOf = (name, param) => param.group || (param.required || ["prompt", "negative", "image"].includes(name) ? "main" : "advanced");
  const fillPicker = (select) => {
    const wanted = select.value || select.dataset.default;
    select.replaceChildren();
    if (!models) {
      select.append(el("option", { value: "", text: T.models_offline }));
      select.disabled = true;
      select.dataset.state = "offline";
      return;
    }
    select.disabled = false;
    const files = models[select.dataset.folder] || [];
    if (!files.length) {
      select.append(el("option", { value: "", text: T.models_none }));
      select.dataset.state = "empty";
      return;
    }
    for (const file of files) select.append(el("option", { value: file, text: file }));
    select.value = files.includes(wanted) ? wanted : files[0];
    select.dataset.state = "listed";
  };
  const fillPickers = () => { for (const select of $$("select[data-folder]", form)) fillPicker(select); };
  const control = (name, param) => {
    if (param.type === "string") {
      const input = el("textarea", { name: `p.${name}`, rows: name === "prompt" ? 3 : 1, required: param.required });
      if (param.default !== undefined) input.value = param.default;
      return input;
    }
    if (param.type === "int" || param.type === "float") {
      const input = el("input", { name: `p.${name}`, type: "number", required: param.required, min: param.min, max: param.max,
        step: param.type === "int" ? (param.multiple_of || 1) : "any" });
      if (param.default !== undefined) input.value = param.default;
      if (name !== "seed") return input;
      const dice = el("button", { type: "button", class: "dice", "data-testid": "seed-dice", title: T.seed_random, "aria-label": T.seed_random, text: "🎲" });
      dice.addEventListener("click", () => { input.value = String(Math.floor(Math.random() * 2 ** 32)); });
      return el("span", { class: "with-button" }, input, dice);
    }
    if (param.type === "model") {
      const select = el("select", { name: `p.${name}`, "data-folder": param.folder, "data-default": param.default, required: param.required });
      fillPicker(select);
      return select;
    }
    if (param.type === "image") return el("input", { name: `p.${name}`, type: "file", accept: "image/*", required: param.required });
    const input = el("input", { name: `p.${name}`, required: param.required });
    if (param.default !== undefined) input.value = param.default;
    return input;
  };
  const sizePresets = (manifest, box) => {
    const width = $("[name='p.width']", box), height = $("[name='p.height']", box);
    if (!width || !height || !(manifest.size_presets || []).length) return;
    const select = el("select", { "data-testid": "size-preset" }, el("option", { value: "", text: T.size_custom }),
      ...manifest.size_presets.map(([w, h]) => el("option", { value: `${w}x${h}`, text: `${w} × ${h}` })));
    const sync = () => {
      const value = `${width.value}x${height.value}`;
      select.value = [...select.options].some((o) => o.value === value) ? value : "";
    };
    select.addEventListener("change", () => {
      if (!select.value) return;
      [width.value, height.value] = select.value.split("x");
    });
    width.addEventListener("input", sync);
    height.addEventListener("input", sync);
    box.querySelector("legend").after(el("label", { class: "preset" }, el("span", { class: "label-text", text: T.size_preset }), select));
    sync();
  };
  const renderTemplateFields = () => {
    fieldsBox.replaceChildren();
    const manifest = templates.find((t) => t.name === form.elements.template.value);
    if (!manifest) { fieldsBox.append(el("p", { class: "muted", text: T.no_templates })); return; }
    if (manifest.description) fieldsBox.append(el("p", { class: "muted", text: manifest.description }));
    const boxes = Object.fromEntries(GROUPS.map((group) => [group, group === "advanced"
      ? el("details", { class: "group", "data-group": group }, el("summary", { text: T[`group_${group}`] }))
      : el("fieldset", { class: "group", "data-group": group }, el("legend", { text: T[`group_${group}`] }))]));
    const entries = Object.entries(manifest.params)
      .sort(([an, a], [bn, b]) => (a.order || 0) - (b.order || 0) || an.localeCompare(bn));
    for (const [name, param] of entries) {
      const help = localized(param.help, param.description || "");
      boxes[groupOf(name, param)].append(el("label", { "data-param": name, title: help },
        el("span", { class: "label-text", text: localized(param.label, name) }), control(name, param),
        help ? el("small", { class: "help", text: help }) : ""));
    }
    sizePresets(manifest, boxes.size);
    for (const group of GROUPS) if ($("[data-param]", boxes[group])) fieldsBox.append(boxes[group]);
  };
  const loadModels = async () => {
    const { status, data } = await api("GET", "/api/models");
    if (status === 200 && data) { models = data; fillPickers(); }
  };
  form.elements.template.addEventListener("change", renderTemplateFields);
  // "Use as input" from a job's page: `?template=<one with an image>&input=<an output of this server>`.
  const asked = new URLSearchParams(window.location.search);
  if (templates.some((t) => t.name === asked.get("template"))) form.elements.template.value = asked.get("template");
  renderTemplateFields();
  showBackend();
  const input = asked.get("input");
  const imageField = $(".template-fields input[type=file]", form);
  if (input && input.startsWith("/api/jobs/") && imageField) {
    fetch(input).then((r) => (r.ok ? r.blob() : null)).then((blob) => {
      if (!blob) return;
      const files = new DataTransfer();
      files.items.add(new File([blob], decodeURIComponent(input.split("/").pop()), { type: blob.type }));
      imageField.files = files.files;
      imageField.dataset.from = input;
    });
  }

  const readFile = (file) => new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });

  const fluxBody = () => {
    const model = form.elements.model.value;
    const body = { model, prompt: form.elements.prompt.value };
    if (model === "flux-pro-1.1" || model === "flux-dev" || model.startsWith("flux-2-")) {
      body.width = Number(form.elements.width.value);
      body.height = Number(form.elements.height.value);
    } else {
      if (form.elements.aspect_ratio.value) body.aspect_ratio = form.elements.aspect_ratio.value;
      if (model === "flux-pro-1.1-ultra") body.raw = form.elements.raw.checked;
    }
    return body;
  };

  const modal = paymentModal((data) => {
    if (!data) { message.textContent = T.cancelled; return; }
    message.replaceChildren(T.submitted + " ", el("a", { href: `/jobs/${data.id}`, text: data.id }));
    refreshJobs();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    if (backendSelect.value === "flux") {
      message.textContent = T.pricing;
      const body = fluxBody();
      const { status, data } = await api("POST", "/api/flux/generate", body);
      message.textContent = "";
      if (status !== 200) { message.textContent = errorText(data); return; }
      modal.flux(body, data);
      return;
    }
    const params = {};
    for (const input of $$("[name^='p.']", form)) {
      // A picker with nothing to pick (ComfyUI offline): the template's default applies.
      if (input.disabled) continue;
      const name = input.name.slice(2);
      if (input.type === "file") {
        if (input.files[0]) params[name] = await readFile(input.files[0]);
      } else if (input.type === "number") {
        if (input.value !== "") params[name] = Number(input.value);
      } else if (input.value !== "" || input.required) {
        params[name] = input.value;
      }
    }
    const { status, data } = await api("POST", "/api/jobs", { backend: "comfy", template: form.elements.template.value, params });
    if (status === 202) {
      message.replaceChildren(T.submitted + " ", el("a", { href: `/jobs/${data.id}`, text: data.id }));
      refreshJobs();
    } else {
      message.textContent = errorText(data);
    }
  });
  // The live queue and the latest outputs.
  const queue = $("[data-testid=queue]");
  const recent = $("[data-testid=recent-outputs]");
  // The latest preview shown of each live job, kept across redraws of the queue.
  const previews = new Map();
  // The tab says how many jobs run; one that ends while the tab is in the background marks it (and notifies).
  const running = new Set();
  let ended = null;
  const showHomeActivity = () => {
    if (ended) showActivity(ended);
    else if (running.size) showActivity("running", `${running.size}`);
    else showActivity("idle");
  };
  const refreshJobs = async () => {
    const { status, data } = await api("GET", "/api/jobs?limit=30");
    if (status !== 200 || !data) return;
    const waiting = data.jobs.filter((j) => j.status === "awaiting_confirmation");
    const live = data.jobs.filter((j) => ["queued", "submitted", "running"].includes(j.status));
    const waitingRows = waiting.map((job) => {
      const cost = job.approval && job.approval.estimatedCost ? job.approval.estimatedCost.usd : null;
      const button = el("button", { type: "button", class: "danger", "data-testid": "confirm-job", text: T.confirm_job });
      button.addEventListener("click", async () => {
        const problem = await modal.job(job.id);
        if (problem) message.textContent = problem;
      });
      return el("li", { "data-testid": "awaiting-job", "data-job": job.id },
        el("a", { href: `/jobs/${job.id}`, text: job.template || T.workflow }), " ",
        el("span", { class: "status awaiting_confirmation", text: T.awaiting }), " ",
        el("b", { class: "cost", "data-testid": "awaiting-cost", text: cost === null ? "—" : `$${cost.toFixed(3)}` }), " ",
        button);
    });
    const liveRows = live.map((job) => {
      const img = el("img", { class: "preview", "data-testid": "queue-preview", alt: T.preview, hidden: true });
      if (previews.has(job.id)) setPreview(img, previews.get(job.id));
      return el("li", { "data-job": job.id },
        el("a", { href: `/jobs/${job.id}`, text: job.template || job.backend }), " ",
        el("span", { class: `status ${job.status}`, text: job.status }), " ",
        el("progress", { max: 100, value: job.progress }), img);
    });
    for (const id of previews.keys()) if (!live.some((job) => job.id === id)) previews.delete(id);
    for (const job of live) running.add(job.id);
    for (const id of running) if (!live.some((job) => job.id === id)) running.delete(id);
    showHomeActivity();
    const rows = [...waitingRows, ...liveRows];
    queue.replaceChildren(...(rows.length ? rows : [el("li", { class: "muted", text: "—" })]));
    const outputs = data.jobs.filter((j) => j.status === "succeeded").flatMap((j) => j.outputs.map((o) => ({ job: j, o }))).slice(0, 8);
    if (outputs.length) {
      recent.replaceChildren(...outputs.map(({ job, o }) => el("a", { href: `/jobs/${job.id}` },
        o.content_type.startsWith("image/") ? el("img", { src: o.url, alt: o.name, loading: "lazy" }) : el("span", { text: o.name }))));
    }
  };
  every(3000, refreshJobs);
  // Live: each running job's preview as it comes, in place; a job that changes state redraws the lists at once.
  const stream = new EventSource("/api/events");
  stream.addEventListener("preview", (event) => {
    const job = JSON.parse(event.data);
    loadPreview(job.id, event.lastEventId, (shown) => {
      previews.set(job.id, shown);
      const img = $(`li[data-job="${CSS.escape(job.id)}"] img.preview`, queue);
      if (img) setPreview(img, shown);
    });
  });
  stream.addEventListener("state", (event) => {
    const job = JSON.parse(event.data);
    if (FINAL.includes(job.status)) {
      if (running.delete(job.id) && document.hidden) {
        ended = job.status === "succeeded" ? "done" : "failed";
        notifyEnded(job);
      }
    } else if (job.status !== "awaiting_confirmation") {
      running.add(job.id);
    }
    showHomeActivity();
    refreshJobs();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) { ended = null; showHomeActivity(); }
  });
  setupNotifyButton();
}

// ---- The payment modal (home and job pages): a FLUX request, or a ComfyUI job with paid nodes ----

function paymentModal(onDone) {
  const modal = $("[data-testid=flux-modal]");
  const note = $("[data-testid=flux-message]", modal);
  const confirmButton = $("[data-testid=flux-confirm]", modal);
  const newKey = () => (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
  let pay = null;
  const capInput = $("[data-testid=flux-max]", modal);
  // `cap`: the run cannot be priced in advance; the person gives the most it may spend (at least `cost`).
  const show = (fields, cost, send, cap = false) => {
    for (const [name, value] of Object.entries(fields)) $(`[data-field=${name}]`, modal).textContent = value;
    for (const node of $$("[data-paid-only]", modal)) node.hidden = !("nodes" in fields);
    for (const node of $$("[data-cap-only]", modal)) node.hidden = !cap;
    capInput.value = cap ? cost.toFixed(2) : "";
    $("[data-testid=flux-cost]", modal).textContent = `${cap ? "≥ " : ""}$${cost.toFixed(3)}`;
    note.textContent = "";
    confirmButton.disabled = false;
    pay = send;
    modal.showModal();
  };
  $("[data-testid=flux-cancel]", modal).addEventListener("click", () => {
    pay = null;
    modal.close();
    onDone(null);
  });
  confirmButton.addEventListener("click", async () => {
    if (!pay) return;
    confirmButton.disabled = true;
    note.textContent = T.paying;
    const { status, data } = await pay();
    if (status === 202) {
      modal.close();
      pay = null;
      onDone(data);
    } else {
      note.textContent = errorText(data);
      confirmButton.disabled = status === 403 || status === 402;
    }
  });
  return {
    /** A FLUX dry run: its payload and price; Confirm pays under one idempotency key. */
    flux(body, dry) {
      const payload = dry.payload;
      const key = newKey();
      show({
        model: dry.model,
        prompt: payload.prompt,
        size: payload.width ? `${payload.width} × ${payload.height}` : (payload.aspect_ratio || "—"),
        raw: payload.raw ? T.yes : T.no,
      }, dry.estimatedCost.usd, () => api("POST", "/api/flux/generate",
        { ...body, dryRun: false, confirmToken: dry.confirmToken }, { "Idempotency-Key": key }));
    },
    /** A job waiting with paid nodes: asks the server for its dry run (402 with a token), shows it, and confirms.
     *  Answers an error text when the server will not price it (generation disabled, say). */
    async job(id) {
      const { status, data } = await api("POST", `/api/jobs/${id}/confirm`, {});
      const dry = data && data.error && data.error.details;
      if (status !== 402 || !dry || !(dry.confirmToken || dry.openEnded)) return errorText(data);
      const inputs = dry.paidNodes.length ? dry.paidNodes[0].inputs || {} : {};
      const key = newKey();
      // Where the job came from (a prompt parked from ComfyUI's editor, say), so the approver knows whose it is.
      const { data: job } = await api("GET", `/api/jobs/${id}`);
      const params = (job && job.params) || {};
      const origin = { editor: T.from_editor, panel: T.from_panel }[params.origin] || T.from_api;
      // Each paid node: its unit price × how many times it runs (once per item of a list it is fed).
      const priced = (n) => {
        const unit = n.unitPriceUsd === null || n.unitPriceUsd === undefined ? "?" : n.unitPriceUsd.toFixed(3);
        const runs = n.runs === 1 ? "" : n.runs ? ` × ${n.runs} ${T.runs}` : ` × ${T.open_runs}`;
        return `${n.display_name} (${n.class_type}) ~$${unit}${runs}`;
      };
      // A run the graph does not fix is confirmed for the cap the person gives: a token for that cap, then the
      // confirmation with it.
      const withCap = async () => {
        const max = Number(capInput.value);
        if (!(max >= dry.estimatedCost.usd && max > 0)) return { status: 422, data: { error: { message: T.max_needed } } };
        const asked = await api("POST", `/api/jobs/${id}/confirm`, { maxUsd: max });
        const token = asked.data && asked.data.error && asked.data.error.details && asked.data.error.details.confirmToken;
        if (!token) return asked;
        return api("POST", `/api/jobs/${id}/confirm`, { confirmToken: token, maxUsd: max }, { "Idempotency-Key": key });
      };
      show({
        model: T.workflow,
        nodes: dry.paidNodes.map(priced).join(", "),
        source: [origin, params.client, params.user_agent].filter(Boolean).join(" · "),
        prompt: inputs.prompt || "—",
        size: inputs.width ? `${inputs.width} × ${inputs.height}` : (inputs.aspect_ratio || "—"),
        raw: inputs.raw === undefined ? "—" : (inputs.raw ? T.yes : T.no),
      }, dry.estimatedCost.usd, dry.openEnded ? withCap : () => api("POST", `/api/jobs/${id}/confirm`,
        { confirmToken: dry.confirmToken }, { "Idempotency-Key": key }), Boolean(dry.openEnded));
      return null;
    },
  };
}

// ---- Diagnostics ----

function dl(target, rows) {
  target.replaceChildren(...rows.flatMap(([term, value, dynamic]) => [el("dt", { text: term }), el("dd", { text: value, "data-dynamic": dynamic || null })]));
}

function diagnosticsPage() {
  const show = (data) => {
    setBadge($("#diag-overall"), data.overall);
    $("#diag-checked").textContent = new Date(data.checked_at).toLocaleTimeString();
    $("#diag-reasons").replaceChildren(...data.reasons.map((r) => el("li", { text: r })));
    const service = data.services.comfy;
    $("#d-service").textContent = `${T["state_" + service.status] || service.status} · ${service.backend}` + (service.pid ? ` · pid ${service.pid}` : "") + (service.restarts ? ` · ${service.restarts}↻` : "");
    $("#d-panel").textContent = data.services.panel;
    $("#d-worker").textContent = data.services.worker;
    const comfy = data.comfy;
    const devices = comfy.devices.map((d) => `${d.name} (${d.type}, ${bytes(d.vram_free)} / ${bytes(d.vram_total)})`).join(", ");
    dl($("#d-comfy"), [
      ["URL", comfy.url, true],
      [T.online, T[comfy.status] || comfy.status],
      [T.version, comfy.version || "—"],
      [T.devices, devices || "—", true],
      [T.memory, comfy.ram_total ? `${bytes(comfy.ram_free)} / ${bytes(comfy.ram_total)}` : "—", true],
      [T.queue, comfy.queue ? `${comfy.queue.running} ${T.running} · ${comfy.queue.pending} ${T.pending}` : "—"],
    ]);
    dl($("#d-models"), comfy.models ? Object.entries(comfy.models).map(([folder, count]) => [folder, `${count} ${T.files}`]) : [["—", T.offline]]);
    const paths = data.model_paths;
    const box = $("#d-paths");
    if (!paths.configured) box.replaceChildren(el("p", { text: T.paths_unset }));
    else if (paths.error) box.replaceChildren(el("p", { text: paths.error }));
    else if (!paths.exists) box.replaceChildren(el("p", { text: T.paths_missing }), el("code", { text: paths.path }));
    else {
      const problems = (paths.problems || []).map((p) => el("li", { class: p.severity, text: `${p.message}${p.line ? ` (${p.line}:${p.column})` : ""}` }));
      box.replaceChildren(el("p", { text: paths.valid ? T.paths_valid : T.paths_invalid }), el("code", { text: paths.path }),
        el("ul", { class: "problems" }, ...problems),
        el("p", {}, ...Object.entries(paths.counts || {}).map(([k, v]) => `${k}: ${v} ${T.files}. `)));
    }
    const flux = data.external.flux, v0 = data.external.v0;
    const fluxText = [`${T.key} ${flux.configured ? T.set : T.not_set}`, `${T.generation} ${flux.allowGeneration ? T.allowed : T.disabled}`];
    if (flux.reachable !== null && flux.reachable !== undefined) fluxText.push(flux.reachable ? T.reachable : T.unreachable);
    if (typeof flux.credits === "number") fluxText.push(`${flux.credits} ${T.credits}`);
    dl($("#d-external"), [
      ["FLUX", fluxText.join(" · ")],
      [T.budget_today, flux.budget ? `${money(flux.budget.left)} / ${money(flux.budget.limit)}` : "—"],
      ["v0", v0.configured ? (T[v0.status] || v0.status || "—") : T.not_configured],
    ]);
    const db = data.database;
    dl($("#d-database"), [
      ["", db.ok ? T.healthy : (db.error || T.down)],
      [T.path, db.path, true],
      [T.size, bytes(db.size_bytes), true],
      [T.jobs, String(db.jobs ?? "—"), true],
      [T.messages, String(db.messages ?? "—"), true],
    ]);
    const fleet = data.fleet;
    dl($("#d-fleet"), fleet.instances.map((i) => {
      const online = (i.backends || []).filter((b) => b.online === true).length;
      const parts = [i.id, i.url, `${T.heartbeat} ${new Date(i.heartbeat_at).toLocaleTimeString()}`, `${T.backends_online} ${online}/${(i.backends || []).length}`];
      if (i.stale) parts.push(T.stale);
      // The name (a host name by default) and the times differ from run to run: the value is marked dynamic.
      return [i.id === fleet.instance ? T.this_instance : "", parts.join(" · "), true];
    }));
  };
  const refresh = async () => {
    const { status, data } = await api("GET", "/api/status");
    if (status === 200 && data) show(data);
  };
  every(10000, refresh);

  const note = $("#diag-message");
  const igniteState = el("span", { "data-state": "idle" });
  note.after(igniteState);
  setupIgnite($("[data-testid=diag-ignite]"), igniteState, null, refresh);
  $("[data-testid=diag-rescan]").addEventListener("click", async () => {
    const { status, data } = await api("GET", "/api/models?refresh=1");
    note.textContent = status === 200 ? T.rescanned : errorText(data);
    refresh();
  });
  $("[data-testid=diag-create-paths]").addEventListener("click", async () => {
    const base = window.prompt(T.confirm_paths, $("#models-dir").value);
    if (!base) return;
    const { status, data } = await api("POST", "/api/comfy/create-default-paths", { base_path: base, create_folders: true });
    note.textContent = status === 200 ? `${T.paths_written} ${data.path}` : errorText(data);
    refresh();
  });
  const viewer = $("[data-testid=log-viewer]");
  const loadLog = async () => {
    const lines = $("#log-form").elements.lines.value || 200;
    const { status, data } = await api("GET", `/api/logs/comfy?lines=${encodeURIComponent(lines)}&missing=empty`);
    const target = $("[data-testid=log-lines]");
    if (status === 200) target.textContent = data.lines.join("\n") || T.no_log;
    else if (status === 0) target.textContent = errorText(data);
    else target.textContent = data && data.error && data.error.code === "log_not_found" ? T.no_log : errorText(data);
  };
  viewer.addEventListener("toggle", () => { if (viewer.open) loadLog(); });
  $("#log-form").addEventListener("submit", (event) => { event.preventDefault(); loadLog(); });
}

// ---- Builder ----

function bubble(message) {
  const links = (message.links || []).map((link) => el("a", { href: link.url, target: "_blank", rel: "noopener noreferrer", text: T[link.label] || link.url }));
  return el("article", { class: `bubble ${message.role}` },
    el("header", { text: message.role === "user" ? T.you : T.assistant }),
    el("div", { class: "text", text: message.content }), ...links);
}

function builderPage() {
  const form = $("[data-testid=builder-form]");
  const list = $("[data-testid=builder-messages]");
  const status = $("[data-testid=builder-status]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = form.elements.message.value.trim();
    if (!text) return;
    const send = $("[data-testid=builder-send]");
    send.disabled = true;
    status.textContent = T.sending;
    const answer = await api("POST", "/api/builder/messages", { message: text });
    send.disabled = false;
    const empty = $(".empty", list);
    if (empty) empty.remove();
    if (answer.status === 200) {
      for (const message of answer.data.messages) list.append(bubble(message));
      form.elements.message.value = "";
      status.textContent = T.v0_ready;
    } else {
      status.textContent = errorText(answer.data);
    }
  });
}

// ---- Settings ----

function settingsPage() {
  $("[data-testid=lang-select]").addEventListener("change", (event) => {
    document.cookie = `lang=${event.target.value}; path=/; max-age=31536000; samesite=lax`;
    window.location.reload();
  });
}

// ---- Jobs ----

function jobsPage() {
  const table = $("[data-testid=jobs-table]");
  every(3000, async () => {
    const live = $$("tr[data-job]", table).filter((row) => ["queued", "submitted", "running"].includes($(".status", row).textContent));
    for (const row of live) {
      const { status, data } = await api("GET", `/api/jobs/${row.dataset.job}`);
      if (status !== 200) continue;
      const badge = $(".status", row);
      badge.textContent = data.status;
      badge.className = `status ${data.status}`;
      $("progress", row).value = data.progress;
    }
  });
}

function jobPage() {
  const section = $("[data-job]");
  const id = section.dataset.job;
  const badge = $("[data-testid=job-status]");
  const cancel = $("#job-cancel");
  const confirm = $("[data-testid=job-confirm]");
  if (confirm) {
    const modal = paymentModal((data) => { if (data) window.location.reload(); });
    confirm.addEventListener("click", async () => {
      const problem = await modal.job(id);
      $("[data-testid=job-message]").textContent = problem || "";
    });
  }
  if (cancel) {
    cancel.addEventListener("click", async () => {
      const { status, data } = await api("POST", `/api/jobs/${id}/cancel`);
      if (status !== 200) showScriptError(errorText(data));
    });
  }
  setupNotifyButton();
  const again = $("[data-testid=job-again]");
  if (again) {
    again.addEventListener("click", async () => {
      again.disabled = true;
      const { status, data } = await api("POST", `/api/jobs/${id}/again`);
      if (status === 202) window.location.href = `/jobs/${data.id}`;
      else { again.disabled = false; showScriptError(errorText(data)); }
    });
  }
  const status = badge.textContent;
  if (FINAL.includes(status)) {
    showActivity(status === "succeeded" ? "done" : "failed");
    return;
  }
  if (!["queued", "submitted", "running", "needs_reconcile"].includes(status)) return;
  showActivity("running");
  const events = new EventSource(`/api/jobs/${id}/events`);
  const show = (event) => {
    const job = JSON.parse(event.data);
    badge.textContent = job.status;
    badge.className = `status ${job.status}`;
    $("[data-testid=job-progress]").value = job.progress;
    $("#job-node").textContent = job.current_node || "";
    if (FINAL.includes(job.status)) {
      events.close();
      notifyEnded(job);
      window.location.reload();
      return;
    }
    showActivity("running", job.status === "running" ? `${Math.round(job.progress)}%` : "");
  };
  // The stream names its events (state, progress, resubmitted, preview): each is listened for by name.
  for (const kind of ["state", "progress", "resubmitted"]) events.addEventListener(kind, show);
  const preview = $("[data-testid=job-preview]");
  if (preview) events.addEventListener("preview", (event) => loadPreview(id, event.lastEventId, (shown) => setPreview(preview, shown)));
  // On a dropped connection the browser reconnects by itself with Last-Event-ID: nothing is missed or repeated.
}


/** Shows preview `shown` ({src, number}) in `img`. */
function setPreview(img, shown) {
  img.src = shown.src;
  img.dataset.number = shown.number;
  img.hidden = false;
}

// Job `id`'s preview `number`, handed to `loaded` ({src, number}) once it has loaded: the one shown stays until
// then, and a preview that is already gone (the job just ended; the server answers 204) changes nothing.
function loadPreview(id, number, loaded) {
  const next = new Image();
  next.onload = () => loaded({ src: next.src, number });
  next.src = `/api/jobs/${id}/preview?n=${encodeURIComponent(number)}`;
}

// ---- Gallery ----

function galleryPage() {
  const form = $("[data-testid=gallery-filters]");
  const grid = $("[data-testid=gallery-grid]");
  const empty = $("[data-testid=gallery-empty]");
  const sentinel = $("[data-testid=gallery-more]");
  // The filters live in the address: a filtered gallery can be bookmarked, shared and reloaded.
  for (const [name, value] of new URLSearchParams(window.location.search)) {
    if (form.elements[name]) form.elements[name].value = value;
  }
  const filters = () => {
    const query = new URLSearchParams();
    for (const field of form.elements) if (field.name && field.value) query.set(field.name, field.value);
    return query;
  };
  const tile = (item) => {
    const media = item.thumbnail_url
      ? el("img", { src: item.thumbnail_url, alt: item.prompt || item.name, loading: "lazy" })
      : item.content_type.startsWith("video/")
        ? el("video", { src: item.url, preload: "metadata", muted: true, controls: true })
        : el("span", { class: "file", text: item.name });
    const pick = el("input", { type: "checkbox", class: "pick", "data-testid": "gallery-pick", "aria-label": T.select, title: T.select });
    pick.addEventListener("change", () => {
      if (pick.checked) selected.set(`${item.job_id}/${item.name}`, item);
      else selected.delete(`${item.job_id}/${item.name}`);
      showSelection();
    });
    return el("figure", { class: "tile", "data-testid": "gallery-item", "data-job": item.job_id, "data-name": item.name }, pick,
      item.thumbnail_url ? el("a", { href: `/jobs/${item.job_id}` }, media) : media,
      el("figcaption", {}, el("a", { href: `/jobs/${item.job_id}`, text: item.prompt || item.template || item.backend }),
        el("time", { datetime: item.created_at, text: item.created_at.slice(0, 16).replace("T", " ") })));
  };
  // Selecting several: download them, or delete their jobs with their files (after a confirmation).
  const selected = new Map();
  const bar = $("[data-testid=gallery-selection]");
  const showSelection = () => {
    bar.hidden = selected.size === 0;
    $("[data-testid=gallery-selected]", bar).textContent = `${selected.size} ${T.selected}`;
  };
  $("[data-testid=gallery-clear]", bar).addEventListener("click", () => {
    selected.clear();
    for (const box of $$("input.pick", grid)) box.checked = false;
    showSelection();
  });
  $("[data-testid=gallery-download]", bar).addEventListener("click", () => {
    for (const item of selected.values()) {
      const link = el("a", { href: item.url, download: item.name, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
    }
  });
  const dialog = $("[data-testid=gallery-confirm]");
  $("[data-testid=gallery-delete]", bar).addEventListener("click", () => {
    const jobs = new Set([...selected.values()].map((item) => item.job_id));
    $("[data-testid=gallery-confirm-text]", dialog).textContent = T.delete_confirm.replace("{n}", String(jobs.size));
    dialog.returnValue = "";
    dialog.showModal();
  });
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "delete") return;
    const jobs = new Set([...selected.values()].map((item) => item.job_id));
    for (const id of jobs) {
      const { status, data } = await api("DELETE", `/api/jobs/${id}`);
      if (status !== 204 && status !== 404) { showScriptError(errorText(data)); continue; }
      for (const tileNode of $$(`[data-job="${CSS.escape(id)}"]`, grid)) tileNode.remove();
      for (const [key, item] of selected) if (item.job_id === id) selected.delete(key);
    }
    showSelection();
    empty.hidden = grid.children.length > 0;
  });
  // Keyset pages, loaded as the end of the grid comes into view; a change of filters starts again.
  let cursor = null, done = false, loading = false, generation = 0;
  const more = async () => {
    if (loading || done) return;
    loading = true;
    const mine = generation;
    const query = filters();
    if (cursor) query.set("cursor", cursor);
    const { status, data } = await api("GET", `/api/gallery?${query}`);
    if (mine !== generation) return;
    loading = false;
    if (status !== 200 || !data) { done = true; showScriptError(errorText(data)); return; }
    grid.append(...data.items.map(tile));
    cursor = data.next_cursor || null;
    done = !cursor;
    empty.hidden = grid.children.length > 0;
    if (!done && nearEnd()) more();
  };
  // Where the sentinel is now: an observer's entry may be older than the page just appended (it is computed at a
  // frame and delivered later), and would load a page nobody scrolled to.
  const nearEnd = () => sentinel.getBoundingClientRect().top < window.innerHeight + 400;
  const restart = () => {
    generation += 1;
    selected.clear();
    showSelection();
    cursor = null; done = false; loading = false;
    grid.replaceChildren();
    const query = filters().toString();
    window.history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
    more();
  };
  let typing = null;
  form.addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(restart, event.target.name === "q" ? 250 : 0);
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); restart(); });
  new IntersectionObserver((seen) => { if (seen.some((e) => e.isIntersecting) && nearEnd()) more(); }, { rootMargin: "400px" }).observe(sentinel);
  more();
}

const PAGES = { gallery: galleryPage, home: homePage, diagnostics: diagnosticsPage, builder: builderPage, settings: settingsPage, jobs: jobsPage, job: jobPage };
const page = document.querySelector("main") && document.querySelector("main").dataset.page;
if (PAGES[page]) PAGES[page]();
