// The follow-up comparison page: one slice index drives both panes (linked scrolling in the
// baseline's registered space); a running comparison polls its status and reloads when done.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const $$ = (sel) => Array.from(document.querySelectorAll(sel));

  function poll() {
    const box = $("#compare-job");
    if (!box) return;
    let delay = 1000;
    async function tick() {
      try {
        const r = await fetch(box.dataset.statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
        if (r.status === 401 || r.status === 404) { window.location.reload(); return; }
        const s = await r.json();
        $("#compare-status").textContent = s.status;
        if (s.status !== "queued" && s.status !== "running") { window.location.reload(); return; }
        delay = 1500;
      } catch (e) { delay = Math.min(delay * 2, 10000); }
      window.setTimeout(tick, delay);
    }
    window.setTimeout(tick, 800);
  }

  function viewer() {
    const v = $("#compare-viewer");
    if (!v) return;
    const n = parseInt(v.dataset.slices, 10);
    const panes = [
      { img: $("#img-baseline"), base: v.dataset.baseUrl, busy: false, want: null },
      { img: $("#img-followup"), base: v.dataset.followUrl, busy: false, want: null },
    ];
    const slider = $("#slice");
    let z = parseInt(v.dataset.start, 10) || 0;
    function load(p, src) {
      if (p.busy) { p.want = src; return; }
      p.busy = true;
      const done = () => { p.busy = false; if (p.want && p.want !== src) { const w = p.want; p.want = null; load(p, w); } else p.want = null; };
      p.img.onload = done; p.img.onerror = done; p.img.src = src;
    }
    function render() {
      panes.forEach((p) => load(p, `${p.base}${z}.png`));
      slider.value = z;
      $("#slice-label").textContent = `${z + 1} / ${n}`;
      $$("#change-table tbody tr").forEach((tr) => tr.classList.toggle("current", parseInt(tr.dataset.slice, 10) === z));
    }
    function go(k) { k = Math.max(0, Math.min(n - 1, k)); if (k !== z) { z = k; render(); } }
    slider.addEventListener("input", () => go(parseInt(slider.value, 10)));
    $("#slice-prev").addEventListener("click", () => go(z - 1));
    $("#slice-next").addEventListener("click", () => go(z + 1));
    $(".viewer-panes").addEventListener("wheel", (e) => { e.preventDefault(); go(z + (e.deltaY > 0 ? 1 : -1)); }, { passive: false });
    document.addEventListener("keydown", (e) => {
      if (e.target.closest && e.target.closest("input, textarea, select")) return;
      const step = { ArrowDown: 1, ArrowRight: 1, PageDown: 10, ArrowUp: -1, ArrowLeft: -1, PageUp: -10 }[e.key];
      if (step) { e.preventDefault(); go(z + step); }
    });
    $$("#change-table tbody tr").forEach((tr) => {
      const jump = () => { if (tr.dataset.slice !== "") { go(parseInt(tr.dataset.slice, 10)); v.scrollIntoView({ behavior: "smooth", block: "nearest" }); } };
      tr.addEventListener("click", jump);
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") jump(); });
    });
    render();
  }

  document.addEventListener("DOMContentLoaded", () => { poll(); viewer(); });
})();
