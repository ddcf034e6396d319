// liverseg pages: one small script, no libraries. Each page is picked by <body data-page>.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrf = () => ($('meta[name="csrf-token"]') || {}).content || "";

  // ---------------------------------------------------------------- common
  function initTheme() {
    const btn = $("#theme-toggle");
    if (!btn) return;
    btn.addEventListener("click", () => {
      const next = document.documentElement.getAttribute("data-theme") === "light" ? "dark" : "light";
      document.documentElement.setAttribute("data-theme", next);
      try { window.localStorage.setItem("liverseg-theme", next); } catch (e) { /* ignore */ }
    });
  }

  // <button data-confirm-dialog="ID" data-action=... data-name=... data-user-id=...> opens <dialog id=ID>
  function initDialogs() {
    $$("[data-confirm-dialog]").forEach((btn) => {
      btn.addEventListener("click", () => {
        const dlg = document.getElementById(btn.dataset.confirmDialog);
        if (!dlg) return;
        const form = $("form", dlg);
        if (btn.dataset.action) form.setAttribute("action", btn.dataset.action);
        $$("[data-fill]", dlg).forEach((el) => { el.textContent = btn.dataset[el.dataset.fill.replace(/-(\w)/g, (m, c) => c.toUpperCase())] || ""; });
        $$("[data-fill-value]", dlg).forEach((el) => { el.value = btn.dataset[el.dataset.fillValue.replace(/-(\w)/g, (m, c) => c.toUpperCase())] || ""; });
        if (typeof dlg.showModal === "function") dlg.showModal();
        else if (window.confirm($("h2", dlg).textContent)) form.submit();
      });
    });
    $$("dialog [data-close]").forEach((b) => b.addEventListener("click", () => b.closest("dialog").close()));
  }

  // ---------------------------------------------------------------- upload
  async function entriesToFiles(items) {
    // Drag-and-drop of folders: walk FileSystemEntry trees (webkitGetAsEntry).
    const out = [];
    const readAll = (reader) => new Promise((resolve) => {
      const all = [];
      const next = () => reader.readEntries((batch) => { if (!batch.length) resolve(all); else { all.push(...batch); next(); } }, () => resolve(all));
      next();
    });
    async function walk(entry, prefix) {
      if (entry.isFile) {
        const file = await new Promise((res, rej) => entry.file(res, rej));
        out.push({ file, path: prefix + file.name });
      } else if (entry.isDirectory) {
        for (const child of await readAll(entry.createReader())) await walk(child, prefix + entry.name + "/");
      }
    }
    const entries = items.map((it) => (it.webkitGetAsEntry ? it.webkitGetAsEntry() : null)).filter(Boolean);
    for (const e of entries) await walk(e, "");
    return out;
  }

  function initUpload() {
    const form = $("#upload-form");
    const zone = $("#dropzone");
    const fileInput = $("#file-input");
    const folderInput = $("#folder-input");
    const selection = $("#selection");
    const errorBox = $("#upload-error");
    const progress = $("#upload-progress");
    let chosen = null; // [{file, path}]

    const describe = (list) => {
      if (!list || !list.length) return "No file chosen.";
      const bytes = list.reduce((a, x) => a + x.file.size, 0);
      const size = bytes > 1e9 ? (bytes / 1e9).toFixed(2) + " GB" : bytes > 1e6 ? (bytes / 1e6).toFixed(1) + " MB" : Math.max(1, Math.round(bytes / 1e3)) + " kB";
      return list.length === 1 ? `${list[0].path} (${size})` : `${list.length} files from ${list[0].path.split("/")[0]} (${size})`;
    };
    const choose = (list) => {
      chosen = list;
      selection.textContent = describe(list);
      zone.classList.toggle("has-files", !!(list && list.length));
      errorBox.classList.add("hidden");
    };
    fileInput.addEventListener("change", () => { folderInput.value = ""; choose(Array.from(fileInput.files).map((f) => ({ file: f, path: f.name }))); });
    folderInput.addEventListener("change", () => { fileInput.value = ""; choose(Array.from(folderInput.files).map((f) => ({ file: f, path: f.webkitRelativePath || f.name }))); });
    ["dragenter", "dragover"].forEach((ev) => zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("drag"); }));
    ["dragleave", "drop"].forEach((ev) => zone.addEventListener(ev, () => zone.classList.remove("drag")));
    zone.addEventListener("drop", async (e) => {
      e.preventDefault();
      const items = Array.from(e.dataTransfer.items || []);
      let list = items.length && items[0].webkitGetAsEntry ? await entriesToFiles(items) : Array.from(e.dataTransfer.files).map((f) => ({ file: f, path: f.name }));
      fileInput.value = ""; folderInput.value = "";
      choose(list);
    });

    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (!chosen || !chosen.length) { showError("Choose a file or a DICOM folder first."); return; }
      const data = new FormData();
      data.append("csrf_token", csrf());
      data.append("note", $("#note").value);
      if ($("#pixel-size") && $("#pixel-size").value) data.append("pixel_size_mm", $("#pixel-size").value);
      chosen.forEach((x) => data.append("files", x.file, x.path));
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.getAttribute("action") || window.location.pathname);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRFToken", csrf());
      const bar = $(".bar", progress);
      const label = $(".label", progress);
      progress.classList.remove("hidden");
      $("#upload-button").disabled = true;
      xhr.upload.addEventListener("progress", (ev) => {
        if (ev.lengthComputable) {
          const p = ev.loaded / ev.total;
          bar.style.width = (100 * p).toFixed(1) + "%";
          label.textContent = p < 1 ? `Uploading… ${Math.round(100 * p)} %` : "Checking the upload…";
        }
      });
      xhr.addEventListener("load", () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (err) { /* not JSON */ }
        if (xhr.status === 202 && body.url) { window.location.assign(body.url); return; }
        showError(body.error || `The upload failed (HTTP ${xhr.status}).`);
      });
      xhr.addEventListener("error", () => showError("The connection to the server failed during the upload; try again."));
      xhr.send(data);
    });
    function showError(msg) {
      errorBox.textContent = msg.charAt(0).toUpperCase() + msg.slice(1);
      errorBox.classList.remove("hidden");
      progress.classList.add("hidden");
      $("#upload-button").disabled = false;
    }
  }

  // ---------------------------------------------------------------- job progress
  function initJob() {
    const box = $("#job");
    const url = box.dataset.statusUrl;
    const setBar = (p) => { $("#job-progress .bar").style.width = (100 * p).toFixed(1) + "%"; $("#job-percent").textContent = Math.round(100 * p) + " %"; };
    setBar(parseFloat($("#job-progress .bar").dataset.value || "0"));
    let delay = 1000;
    async function poll() {
      try {
        const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
        if (r.status === 401) { window.location.reload(); return; }
        const s = await r.json();
        const badge = $("#job-status");
        badge.textContent = s.status;
        badge.className = "badge " + s.status;
        $("#job-stage").textContent = s.status === "running" ? s.stage : "";
        setBar(s.status === "done" ? 1 : s.progress);
        if (s.status === "done") { window.location.reload(); return; }
        if (s.status === "failed") {
          $("#job-error").textContent = s.error || "The job failed.";
          $("#job-error").classList.remove("hidden");
          $("#retry-form").classList.remove("hidden");
          $("#job-progress").classList.add("hidden");
          $("#job-hint").classList.add("hidden");
          return;
        }
        delay = 1000;
      } catch (err) {
        delay = Math.min(delay * 2, 10000);
      }
      window.setTimeout(poll, delay);
    }
    if (box.dataset.status !== "failed") window.setTimeout(poll, 300);
  }

  // The study page's viewer is reading_room.js (NiiVue).

  document.addEventListener("DOMContentLoaded", () => {
    initTheme();
    initDialogs();
    const page = document.body.dataset.page;
    if (page === "upload") initUpload();
    else if (page === "job") initJob();
  });
})();
