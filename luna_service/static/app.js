// Luna's search page: pick an image (or a library path), draw boxes, see each box's neighbours with the
// prompts that made them, take the conditioning. Text from the library is always set as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const query = { file: null, path: null, hash: null, boxes: [], width: 0, height: 0, url: null };
let textPage = 1;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function call(url, options = {}, asked = false) {
  showError("");
  const response = await fetch(url, options);
  if (response.status === 401 && !asked) {
    // A server reachable from other machines asks for its token: once, then kept in a cookie so
    // the thumbnails (plain <img> requests) carry it too.
    const token = window.prompt("This Luna server asks for its token (serve.token):");
    if (token) {
      document.cookie = `luna_token=${encodeURIComponent(token)}; path=/; SameSite=Strict; max-age=2592000`;
      return call(url, options, true);
    }
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    showError(message);
    throw new Error(message);
  }
  return response;
}

function filters() {
  const params = new URLSearchParams();
  for (const [name, id] of [["model", "f-model"], ["lora", "f-lora"], ["generator", "f-generator"],
                            ["text", "f-text"], ["after", "f-after"], ["before", "f-before"]]) {
    const value = $(id).value.trim();
    if (value) params.append(name, value);
  }
  return params;
}

function queryParams(extra = {}) {
  const params = filters();
  params.set("k", $("k").value || "6");
  params.set("temperature", $("temperature").value || "0.05");
  for (const box of query.boxes) params.append("box", box.join(","));
  if (query.path) params.set("path", query.path);
  if (query.hash) params.set("hash", query.hash);
  for (const [name, value] of Object.entries(extra)) params.set(name, value);
  return params;
}

// ---------------------------------------------------------------- the query image and its boxes

function setQuery(source) {
  if (query.url && query.file) URL.revokeObjectURL(query.url);
  Object.assign(query, { file: null, path: null, hash: null, boxes: [] }, source);
  query.url = source.file ? URL.createObjectURL(source.file)
    : `/library/file?${new URLSearchParams(source.hash ? { hash: source.hash } : { path: source.path })}`;
  const picture = $("picture");
  picture.onload = () => {
    query.width = picture.naturalWidth;
    query.height = picture.naturalHeight;
    $("stage").hidden = false;
    $("hint").hidden = false;
    $("search").disabled = false;
    $("download-all").disabled = false;
    drawBoxes();
  };
  picture.onerror = () => showError("the image could not be shown: is the path inside a library root?");
  picture.src = query.url;
}

function drawBoxes() {
  const layer = $("boxes");
  layer.replaceChildren();
  const scale = $("picture").clientWidth / (query.width || 1);
  query.boxes.forEach(([x, y, w, h], i) => {
    const box = el("div", { class: "box" }, el("span", { class: "label", text: String(i + 1) }),
      el("button", { class: "remove", type: "button", title: "remove this box", text: "×",
                     onclick: (event) => { event.stopPropagation(); query.boxes.splice(i, 1); drawBoxes(); } }));
    box.style.left = `${x * scale}px`;
    box.style.top = `${y * scale}px`;
    box.style.width = `${w * scale}px`;
    box.style.height = `${h * scale}px`;
    layer.append(box);
  });
}

function installBoxDrawing() {
  const stage = $("stage");
  let start = null;
  let ghost = null;
  const point = (event) => {
    const rect = $("picture").getBoundingClientRect();
    const scale = query.width / rect.width;
    const x = Math.min(Math.max(event.clientX - rect.left, 0), rect.width);
    const y = Math.min(Math.max(event.clientY - rect.top, 0), rect.height);
    return { x, y, scale };
  };
  stage.addEventListener("mousedown", (event) => {
    if (event.button !== 0 || event.target.classList.contains("remove")) return;
    start = point(event);
    ghost = el("div", { class: "box" });
    $("boxes").append(ghost);
    event.preventDefault();
  });
  window.addEventListener("mousemove", (event) => {
    if (!start) return;
    const now = point(event);
    ghost.style.left = `${Math.min(start.x, now.x)}px`;
    ghost.style.top = `${Math.min(start.y, now.y)}px`;
    ghost.style.width = `${Math.abs(now.x - start.x)}px`;
    ghost.style.height = `${Math.abs(now.y - start.y)}px`;
  });
  window.addEventListener("mouseup", (event) => {
    if (!start) return;
    const end = point(event);
    const s = start.scale;
    const x = Math.round(Math.min(start.x, end.x) * s);
    const y = Math.round(Math.min(start.y, end.y) * s);
    const w = Math.round(Math.abs(end.x - start.x) * s);
    const h = Math.round(Math.abs(end.y - start.y) * s);
    start = null;
    if (w >= 4 && h >= 4) query.boxes.push([x, y, Math.min(w, query.width - x), Math.min(h, query.height - y)]);
    drawBoxes();
  });
  window.addEventListener("resize", drawBoxes);
}

// ---------------------------------------------------------------- results

function card(item, withScore) {
  const byHash = new URLSearchParams({ hash: item.content_hash });
  const loras = (item.loras || []).map((l) => `${l.name}:${l.weight}`).join(", ");
  const settings = [item.sampler, item.scheduler !== item.sampler ? item.scheduler : null, item.seed && `seed ${item.seed}`, item.steps && `${item.steps} steps`,
                    item.cfg_scale && `cfg ${item.cfg_scale}`].filter(Boolean).join(" · ");
  const prompt = el("div", { class: "prompt", title: "click to show all", text: item.prompt || "(no prompt)" });
  prompt.addEventListener("click", () => prompt.classList.toggle("open"));
  return el("article", { class: "card" },
    el("a", { href: `/library/file?${byHash}`, target: "_blank", rel: "noopener" },
      el("img", { class: "thumb", loading: "lazy", alt: item.prompt || "library image",
                  src: `/library/thumbnail?${byHash}` })),
    el("div", { class: "body" },
      withScore ? el("div", { class: "score",
                              text: `similarity ${item.similarity.toFixed(3)} · weight ${(item.weight * 100).toFixed(0)}%` })
                : null,
      prompt,
      item.negative_prompt ? el("div", { class: "negative", text: `negative: ${item.negative_prompt}` }) : null,
      el("div", { class: "meta", text: [item.generator, item.model].filter(Boolean).join(" · ") }),
      loras ? el("div", { class: "meta", text: `LoRAs: ${loras}` }) : null,
      settings ? el("div", { class: "meta", text: settings }) : null,
      item.modified ? el("div", { class: "meta", text: item.modified.replace("T", " ").replace("+00:00", " UTC") }) : null,
      el("div", { class: "path", text: item.path || "" }),
      el("div", { class: "links" },
        el("a", { href: `/library/file?${byHash}`, target: "_blank", rel: "noopener", text: "open image" }),
        el("button", { type: "button", class: "link", text: "search with this",
                       onclick: () => { switchTab("by-image"); setQuery({ hash: item.content_hash }); } }))));
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {  // no clipboard permission: select it for the person to copy
    const area = el("textarea", { readonly: "" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "copied";
  setTimeout(() => { button.textContent = "Copy mixed prompt"; }, 1500);
}

async function download(boxes) {
  const params = queryParams({ source: $("source").value, format: "safetensors" });
  params.delete("box");
  for (const box of boxes) params.append("box", box.join(","));
  const response = await call(`/condition?${params}`, { method: "POST", body: query.file || new Blob() });
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: "luna-conditioning.safetensors" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function search() {
  const button = $("search");
  button.disabled = true;
  try {
    const response = await call(`/search?${queryParams()}`, { method: "POST", body: query.file || new Blob() });
    const answer = await response.json();
    const groups = answer.results.map((result, i) => {
      const title = result.box ? `Box ${i + 1} · ${result.box[0]},${result.box[1]} ${result.box[2]}×${result.box[3]}`
                               : "Whole image";
      const copy = el("button", { type: "button", text: "Copy mixed prompt" });
      copy.addEventListener("click", () => copyText(result.mixed_prompt, copy));
      const take = el("button", { type: "button", text: "Download .safetensors",
                                  onclick: () => download(result.box ? [result.box] : []) });
      return el("section", { class: "group" },
        el("div", { class: "group-head" }, el("h2", { text: title }),
           el("span", { class: "meta", text: `${result.neighbors.length} neighbours · index v${answer.index_version}` }),
           copy, take, el("div", { class: "mixed", text: `mixed prompt: ${result.mixed_prompt}` })),
        el("div", { class: "cards" }, ...result.neighbors.map((n) => card(n, true))));
    });
    $("results").replaceChildren(...groups);
  } finally {
    button.disabled = false;
  }
}

async function textSearch(page = 1) {
  textPage = page;
  const params = filters();
  params.set("q", $("q").value);
  params.set("page", String(page));
  params.set("per_page", "24");
  const answer = await (await call(`/library/search?${params}`)).json();
  const pages = Math.max(1, Math.ceil(answer.total / answer.per_page));
  const pager = el("div", { class: "pager" },
    el("button", { type: "button", text: "‹ previous", ...(page <= 1 ? { disabled: "" } : {}),
                   onclick: () => textSearch(textPage - 1) }),
    el("span", { text: `page ${answer.page} of ${pages} · ${answer.total} images` }),
    el("button", { type: "button", text: "next ›", ...(page >= pages ? { disabled: "" } : {}),
                   onclick: () => textSearch(textPage + 1) }));
  $("results").replaceChildren(pager, el("div", { class: "cards" }, ...answer.items.map((item) => card(item, false))));
}

// ---------------------------------------------------------------- start-up

function switchTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
}

async function start() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => switchTab(tab.dataset.tab));
  const drop = $("drop");
  $("file").addEventListener("change", () => { if ($("file").files[0]) setQuery({ file: $("file").files[0] }); });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) setQuery({ file });
  });
  $("path-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("path").value.trim()) setQuery({ path: $("path").value.trim() });
  });
  $("text-form").addEventListener("submit", (event) => { event.preventDefault(); textSearch(1).catch(() => {}); });
  $("search").addEventListener("click", () => search().catch(() => {}));
  $("download-all").addEventListener("click", () => download(query.boxes).catch(() => {}));
  $("clear-boxes").addEventListener("click", () => { query.boxes = []; drawBoxes(); });
  installBoxDrawing();
  try {
    const health = await (await call("/health")).json();
    $("status").textContent = `${health.profile} · index v${health.index_version ?? "—"}` +
      (health.projector ? ` · projector v${health.projector.version}` : "");
    if (health.projector) {
      $("source").append(el("option", { value: "projector", text: `projector v${health.projector.version}` }));
    }
    const facets = await (await call("/library/facets")).json();
    for (const g of facets.generators) $("f-generator").append(el("option", { value: g, text: g }));
    for (const m of facets.models) $("models").append(el("option", { value: m }));
    for (const l of facets.loras) $("loras").append(el("option", { value: l }));
  } catch (_) { /* shown in the error banner */ }
}

document.addEventListener("DOMContentLoaded", start);
