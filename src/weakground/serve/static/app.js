// The weakground page: pick or upload a photo, type phrases, POST /api/locate, draw each answer on a canvas.
// Plain browser JavaScript, no build step and nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
let chosen = null;  // the File (upload) or Blob (demo photo) to send

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function setBusy(busy, text) {
  $("submit").disabled = busy;
  $("caption").disabled = busy;
  $("status").textContent = text || "";
}

function preview(blob) {
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.hidden = false;
}

async function init() {
  try {
    const health = await (await fetch("/api/health")).json();
    $("served").textContent = `Method: ${health.method}; uploads up to ${health.max_upload_bytes / 1048576} MB.` +
      (health.captioner ? ` Captioner: ${health.captioner}.` : "");
    $("caption").hidden = !health.captioner;  // the server has POST /api/caption only with --caption-checkpoint
  } catch (e) { /* the form still works; errors show on submit */ }
  try {
    const photos = await (await fetch("/api/demo-photos")).json();
    for (const p of photos) {
      const opt = document.createElement("option");
      opt.value = p.url;
      opt.textContent = p.name;
      $("demo").appendChild(opt);
    }
  } catch (e) { /* no demo photos: upload still works */ }
}

$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  if (!file) return;
  chosen = file;
  $("demo").value = "";
  preview(file);
  showError("");
});

$("demo").addEventListener("change", async () => {
  const url = $("demo").value;
  if (!url) return;
  $("image").value = "";
  const response = await fetch(url);
  if (!response.ok) { showError(`Could not load the demo photo (HTTP ${response.status}).`); return; }
  const blob = await response.blob();
  chosen = new File([blob], url.split("/").pop() + (blob.type === "image/jpeg" ? ".jpg" : ".png"),
                    { type: blob.type });
  preview(chosen);
  showError("");
});

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("image did not decode"));
    img.src = src;
  });
}

// Long base64 strings would drown the JSON view: show their length instead.
function readableJson(answer) {
  return JSON.stringify(answer, (key, value) =>
    typeof value === "string" && key.endsWith("_png") ? `<${value.length} base64 characters>` : value, 2);
}

async function drawResult(card, photo, answer, r) {
  const canvas = document.createElement("canvas");
  canvas.width = photo.naturalWidth;
  canvas.height = photo.naturalHeight;
  canvas.style.width = Math.min(photo.naturalWidth, answer.results.length > 2 ? 270 : answer.results.length > 1 ? 420 : 880) + "px";
  canvas.dataset.point = r.point.join(",");
  canvas.dataset.boxes = String(r.boxes.length);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(photo, 0, 0);
  const sx = canvas.width / answer.image.width;
  const sy = canvas.height / answer.image.height;
  if (r.heatmap_png && $("show-heat").checked) {
    const heat = await loadImage("data:image/png;base64," + r.heatmap_png);
    ctx.globalAlpha = 0.45;
    ctx.drawImage(heat, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
  }
  const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 300));
  if ($("show-boxes").checked) {
    r.boxes.forEach(([x1, y1, x2, y2], i) => {
      for (const [colour, width] of [["rgba(0,0,0,0.6)", line + 2], [i === 0 ? "#fff" : "#ffe066", line]]) {
        ctx.strokeStyle = colour;
        ctx.lineWidth = width;
        ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
      }
    });
  }
  const px = (r.point[0] + 0.5) * sx, py = (r.point[1] + 0.5) * sy, arm = 5 * line;
  for (const [colour, width] of [["#000", line + 2], ["#fff", line]]) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.beginPath();
    ctx.moveTo(px - arm, py - arm); ctx.lineTo(px + arm, py + arm);
    ctx.moveTo(px + arm, py - arm); ctx.lineTo(px - arm, py + arm);
    ctx.stroke();
  }
  card.appendChild(canvas);
}

async function render(answer) {
  const results = $("results");
  results.replaceChildren();
  const photo = await loadImage("data:image/png;base64," + answer.image_png);
  for (const r of answer.results) {
    const card = document.createElement("figure");
    card.className = "result";
    card.dataset.phrase = r.phrase;
    const title = document.createElement("h2");
    title.textContent = r.phrase;
    if (r.found === false) {
      // The map is still drawn, for a look, but the answer is "not here".
      card.classList.add("not-found");
      const badge = document.createElement("span");
      badge.className = "verdict";
      badge.textContent = "not found";
      title.append(" ", badge);
    }
    card.dataset.found = String(r.found);
    card.appendChild(title);
    await drawResult(card, photo, answer, r);
    const facts = document.createElement("figcaption");
    facts.className = "facts";
    const boxes = r.boxes.length === 1 ? "1 box" : `${r.boxes.length} boxes`;
    const presence = r.presence === null || r.presence === undefined ? "" :
      ` · presence <span class="presence">${r.presence.toFixed(2)}</span>`;
    facts.innerHTML = `point <span class="point">(${r.point[0]}, ${r.point[1]})</span> · peak ` +
      `<span class="peak">${r.peak.toFixed(3)}</span> · <span class="nboxes">${boxes}</span> ` +
      `(${answer.boxes})${presence}`;
    card.appendChild(facts);
    results.appendChild(card);
  }
  $("json").textContent = readableJson(answer);
  $("json-details").hidden = false;
  results.dataset.state = "done";
}

$("locate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const phrases = $("phrases").value.split("\n").map((p) => p.trim()).filter((p) => p);
  if (!chosen) { showError("Choose a photo first: upload one or pick a bundled one."); return; }
  if (!phrases.length) { showError("Type at least one phrase."); return; }
  const form = new FormData();
  form.append("image", chosen, chosen.name || "upload");
  for (const p of phrases) form.append("phrases", p);
  form.append("image_png", "true");
  const threshold = $("threshold").value;
  if (threshold !== "") form.append("threshold", threshold);
  const boxKind = $("box-kind").value;
  if (boxKind !== "") form.append("boxes", boxKind);  // instance + a threshold: the server explains the clash
  $("results").dataset.state = "busy";
  setBusy(true, "Locating…");
  const started = performance.now();
  try {
    const response = await fetch("/api/locate", { method: "POST", body: form });
    const text = await response.text();
    let answer;
    try { answer = JSON.parse(text); } catch (e) { answer = { detail: text.slice(0, 300) }; }
    if (!response.ok) {
      $("results").replaceChildren();
      $("results").dataset.state = "error";
      showError(`Error ${response.status}: ${answer.detail || response.statusText}`);
      setBusy(false, "");
      return;
    }
    await render(answer);
    setBusy(false, `${answer.results.length} phrase(s) in ${Math.round(performance.now() - started)} ms ` +
                   `(server ${Math.round(answer.elapsed_ms)} ms).`);
  } catch (e) {
    $("results").dataset.state = "error";
    showError(`The server did not answer: ${e.message}`);
    setBusy(false, "");
  }
});

// The caption as text, each grounded object word marked, and the photo with each word's box and label.
async function renderCaption(answer) {
  const section = $("caption-result");
  section.replaceChildren();
  const title = document.createElement("h2");
  title.textContent = "Caption";
  const text = document.createElement("p");
  text.className = "caption-text";
  const objects = [...answer.objects];
  for (const [i, word] of answer.caption.split(" ").entries()) {
    if (i) text.append(" ");
    if (objects.length && objects[0].word === word) {
      const mark = document.createElement("mark");
      mark.textContent = word;
      mark.title = objects.shift().class;
      text.append(mark);
    } else {
      text.append(word);
    }
  }
  const photo = await loadImage($("preview").src);
  const canvas = document.createElement("canvas");
  canvas.width = photo.naturalWidth;
  canvas.height = photo.naturalHeight;
  canvas.style.width = Math.min(photo.naturalWidth, 880) + "px";
  canvas.dataset.boxes = String(answer.objects.length);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(photo, 0, 0);
  const sx = canvas.width / answer.image.width, sy = canvas.height / answer.image.height;
  const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 300));
  ctx.font = `${6 * line}px sans-serif`;
  for (const obj of answer.objects) {
    const [x1, y1, x2, y2] = obj.box;
    for (const [colour, width] of [["rgba(0,0,0,0.6)", line + 2], ["#ffe066", line]]) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    }
    ctx.fillStyle = "#ffe066";
    ctx.fillText(obj.word, x1 * sx + line, y1 * sy + 7 * line);
  }
  section.append(title, text, canvas);
  section.hidden = false;
  section.dataset.state = "done";
}

$("caption").addEventListener("click", async () => {
  showError("");
  if (!chosen) { showError("Choose a photo first: upload one or pick a bundled one."); return; }
  const form = new FormData();
  form.append("image", chosen, chosen.name || "upload");
  setBusy(true, "Writing a caption…");
  try {
    const response = await fetch("/api/caption", { method: "POST", body: form });
    const text = await response.text();
    let answer;
    try { answer = JSON.parse(text); } catch (e) { answer = { detail: text.slice(0, 300) }; }
    if (!response.ok) {
      showError(`Error ${response.status}: ${answer.detail || response.statusText}`);
      setBusy(false, "");
      return;
    }
    await renderCaption(answer);
    $("json").textContent = readableJson(answer);
    $("json-details").hidden = false;
    setBusy(false, `Caption in ${Math.round(answer.elapsed_ms)} ms on the server.`);
  } catch (e) {
    showError(`The server did not answer: ${e.message}`);
    setBusy(false, "");
  }
});

init();
