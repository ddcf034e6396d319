// liverseg reading room: the study's CT in three planes and 3D with NiiVue (served from static/vendor,
// installed from npm by `make`), the mask as NiiVue's drawing layer (so it can be corrected and saved),
// the liver and lesion surfaces built on the server. Started by <section id="reading-room">.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrf = () => ($('meta[name="csrf-token"]') || {}).content || "";

  // Window presets (width, level) in HU, as radiology viewers name them.
  const PRESETS = { abdomen: [400, 40], liver: [150, 60], bone: [1800, 400], lung: [1500, -600] };
  // Label colours (RGB) and one colour per lesion surface. "cbsafe": Okabe & Ito's palette, which people
  // with red-green colour blindness tell apart (blue liver, orange tumor).
  const PALETTES = {
    standard: { liver: [47, 191, 113], tumor: [239, 78, 85],
      lesions: [[239, 78, 85], [255, 159, 64], [186, 104, 200], [66, 165, 245], [255, 214, 0], [0, 200, 200], [240, 98, 146], [160, 120, 80]] },
    cbsafe: { liver: [0, 114, 178], tumor: [230, 159, 0],
      lesions: [[230, 159, 0], [213, 94, 0], [204, 121, 167], [86, 180, 233], [240, 228, 66], [0, 158, 115], [120, 94, 240], [255, 255, 255]] },
  };
  const HIGHLIGHT = [255, 255, 0, 255];
  const PLANES = { 0: "axial", 1: "coronal", 2: "sagittal", 4: "3d" };

  function start(root) {
    const N = window.niivue;
    const status = $("#rr-message");
    const say = (text, kind) => { status.textContent = text; status.className = "rr-message " + (kind || ""); };
    if (!N || !N.Niivue) {
      say("The viewer (NiiVue) is not installed on this server: run `make` (it installs it with npm).", "error");
      root.dataset.state = "error";
      return;
    }
    const d = root.dataset;
    const is2d = d.is2d === "1";
    const n = parseInt(d.slices, 10);
    const st = {
      width: 400, level: 40, opacity: 0.45, liver: true, tumor: true,
      palette: localStorageGet("liverseg-palette") === "cbsafe" ? "cbsafe" : "standard",
      editing: false, dirty: false, selected: null, meshes: [], manifest: null, affine: null, inv: null,
    };
    const canvas = $("#rr-canvas");
    const nv = new N.Niivue({
      backColor: [0, 0, 0, 1],
      crosshairColor: [0.3, 0.75, 1, 0.8], // light blue: yellow is the picked lesion's
      crosshairWidth: 1,
      show3Dcrosshair: true,
      isColorbar: false,
      isOrientCube: false,
      isRadiologicalConvention: true, // patient's right on the screen's left, as radiologists read
      multiplanarShowRender: N.SHOW_RENDER.NEVER, // the 3D view is its own canvas, surfaces only
      meshThicknessOn2D: 1.0, // a picked lesion's surface cuts each plane: its outline on the image
      dragAndDropEnabled: false,
      drawingEnabled: false,
      penSize: 3,
      isFilledPen: false,
      maxDrawUndoBitmaps: 32,
      loadingText: "loading",
      logLevel: "warn",
      mouseEventConfig: {
        leftButton: { primary: N.DRAG_MODE.crosshair, withShift: N.DRAG_MODE.pan, withCtrl: N.DRAG_MODE.windowing },
        rightButton: N.DRAG_MODE.windowing,
        centerButton: N.DRAG_MODE.pan,
      },
    });
    // The 3D view: the patient's liver and lesion surfaces (built on the server), no volume rendering:
    // a raycast CT shows the skin, not the liver, and costs far more on a laptop.
    const canvas3d = $("#rr-canvas-3d");
    const nv3d = is2d ? null : new N.Niivue({
      backColor: [0.05, 0.06, 0.08, 1], show3Dcrosshair: true, crosshairColor: [0.3, 0.75, 1, 0.8],
      isColorbar: false, isOrientCube: true, dragAndDropEnabled: false, loadingText: "", logLevel: "warn",
    });
    const api = { nv, nv3d, state: st, ready: false, timings_ms: {} };
    const t0 = performance.now();
    const mark = (what) => { api.timings_ms[what] = Math.round(performance.now() - t0); };
    window.readingRoom = api;

    // ------------------------------------------------------------ geometry (our z, y, x = NIfTI k, j, i)
    function vox2mm(v) {
      const a = st.affine;
      return [0, 1, 2].map((r) => a[r][0] * v[0] + a[r][1] * v[1] + a[r][2] * v[2] + a[r][3]);
    }
    function currentVox() { // native voxel (i, j, k) of the crosshair
      const mm = nv.frac2mm(nv.scene.crosshairPos);
      return Array.from(nv.volumes[0].mm2vox([mm[0], mm[1], mm[2]])).map((x) => Math.round(x));
    }
    function setVox(v) {
      const dims = nv.volumes[0].hdr.dims;
      const c = [0, 1, 2].map((k) => Math.max(0, Math.min(dims[k + 1] - 1, Math.round(v[k]))));
      nv.scene.crosshairPos = nv.mm2frac(vox2mm(c));
      nv.drawScene();
      nv.createOnLocationChange();
    }
    function step(axis, by) { const v = currentVox(); v[axis] += by; setVox(v); }

    // ------------------------------------------------------------ overlay (the drawing layer holds the mask)
    function drawLut() {
      const p = PALETTES[st.palette];
      // label 3 is never saved: it is the picked lesion (tumor), shown in the highlight colour
      return { R: [0, p.liver[0], p.tumor[0], HIGHLIGHT[0]], G: [0, p.liver[1], p.tumor[1], HIGHLIGHT[1]],
        B: [0, p.liver[2], p.tumor[2], HIGHLIGHT[2]], A: [0, st.liver ? 255 : 0, st.tumor ? 255 : 0, st.tumor ? 255 : 0],
        I: [0, 1, 2, 3], labels: ["", "liver", "tumor", "tumor (picked lesion)"] };
    }
    function applyOverlay() {
      nv.setDrawColormap(drawLut());
      nv.setDrawOpacity(st.opacity);
      const p = PALETTES[st.palette];
      root.style.setProperty("--rr-liver", `rgb(${p.liver.join(",")})`);
      root.style.setProperty("--rr-tumor", `rgb(${p.tumor.join(",")})`);
    }
    function applyWindow() {
      const vol = nv.volumes[0];
      vol.cal_min = st.level - st.width / 2;
      vol.cal_max = st.level + st.width / 2;
      nv.updateGLVolume();
      $("#win-width").value = Math.round(st.width);
      $("#win-level").value = Math.round(st.level);
      $$(".rr-preset").forEach((b) => {
        const [w, l] = PRESETS[b.dataset.preset];
        b.classList.toggle("active", w === Math.round(st.width) && l === Math.round(st.level));
      });
    }

    // ------------------------------------------------------------ meshes
    function meshColor(m) {
      if (m.structure === "liver") { const c = PALETTES[st.palette].liver; return [c[0], c[1], c[2], 255]; }
      if (st.selected !== null && m.lesion_id === st.selected) return HIGHLIGHT;
      const c = PALETTES[st.palette].lesions[(m.lesion_id - 1) % PALETTES[st.palette].lesions.length];
      return [c[0], c[1], c[2], 255];
    }
    function applyMeshes() {
      if (!nv3d) return;
      const showLiver = $("#show-liver-3d") ? $("#show-liver-3d").checked : true;
      const showLesions = $("#show-lesions-3d") ? $("#show-lesions-3d").checked : true;
      st.meshes.forEach(({ entry, mesh }) => {
        nv3d.setMeshProperty(mesh.id, "rgba255", meshColor(entry));
        nv3d.setMeshProperty(mesh.id, "opacity", entry.structure === "liver" ? 0.45 : 1.0);
        nv3d.setMeshProperty(mesh.id, "visible", entry.structure === "liver" ? showLiver : showLesions);
      });
      nv3d.drawScene();
    }
    async function loadMeshes() {
      if (is2d || !d.meshesUrl) return;
      const r = await fetch(d.meshesUrl, { credentials: "same-origin" });
      if (!r.ok) return;
      st.manifest = await r.json();
      const entries = st.manifest.meshes || [];
      const list = entries.map((m) => ({ url: d.fileBase + m.file, name: m.file, rgba255: meshColor(m),
        opacity: m.structure === "liver" ? 0.45 : 1.0 }));
      if (!list.length) return;
      await nv3d.loadMeshes(list);
      st.meshes = entries.map((entry, i) => ({ entry, mesh: nv3d.meshes[i] }));
      applyMeshes();
    }

    // ------------------------------------------------------------ lesions
    // The picked lesion: its tumor voxels (26-connected, from its centre) get the display-only label 3.
    function unhighlight() {
      const b = nv.drawBitmap;
      if (!b) return;
      for (let i = 0; i < b.length; i++) if (b[i] === 3) b[i] = 2;
    }
    function highlight(v) {
      const b = nv.drawBitmap;
      if (!b) return 0;
      unhighlight();
      const dims = nv.back.dimsRAS, nx = dims[1], ny = dims[2], nz = dims[3];
      const r = Array.from(nv.frac2vox(nv.mm2frac(vox2mm(v)))).map((x) => Math.round(x));
      let seed = -1;
      for (let rad = 0; rad <= 3 && seed < 0; rad++) { // the centre of a crescent may miss it: look nearby
        for (let dz = -rad; dz <= rad && seed < 0; dz++) for (let dy = -rad; dy <= rad && seed < 0; dy++) for (let dx = -rad; dx <= rad; dx++) {
          const x = r[0] + dx, y = r[1] + dy, z = r[2] + dz;
          if (x < 0 || y < 0 || z < 0 || x >= nx || y >= ny || z >= nz) continue;
          const i = x + nx * (y + ny * z);
          if (b[i] === 2) { seed = i; break; }
        }
      }
      if (seed < 0) return 0;
      const queue = new Int32Array(b.length);
      let head = 0, tail = 0, count = 0;
      queue[tail++] = seed; b[seed] = 3;
      while (head < tail) {
        const i = queue[head++]; count++;
        const x = i % nx, y = Math.floor(i / nx) % ny, z = Math.floor(i / (nx * ny));
        for (let dz = -1; dz <= 1; dz++) for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) {
          const xx = x + dx, yy = y + dy, zz = z + dz;
          if (xx < 0 || yy < 0 || zz < 0 || xx >= nx || yy >= ny || zz >= nz) continue;
          const j = xx + nx * (yy + ny * zz);
          if (b[j] === 2) { b[j] = 3; queue[tail++] = j; }
        }
      }
      nv.refreshDrawing(true);
      return count;
    }
    function selectLesion(id, z, centroid) {
      st.selected = id;
      $$("#lesion-table tbody tr").forEach((tr) => tr.classList.toggle("current", parseInt(tr.dataset.lesion, 10) === id));
      if (centroid) setVox([centroid[2], centroid[1], z]);
      else { const v = currentVox(); v[2] = z; setVox(v); }
      api.highlighted = centroid ? highlight([centroid[2], centroid[1], centroid[0]]) : 0;
      const picked = st.meshes.find((m) => m.entry.lesion_id === id);
      if (picked) { // its surface in the 2D views too: NiiVue draws where it cuts each plane (an outline)
        nv.loadMeshes([{ url: d.fileBase + picked.entry.file, name: picked.entry.file, rgba255: HIGHLIGHT }])
          .then(() => { nv.drawScene(); api.outlined = id; });
      }
      applyMeshes();
      $("#rr-selected").textContent = id ? `Lesion ${id}` : "";
    }
    api.selectLesion = (id) => {
      const tr = $(`#lesion-table tbody tr[data-lesion="${id}"]`);
      if (tr) tr.click();
    };

    // ------------------------------------------------------------ tiles (for the wheel and for tests)
    api.tiles = () => {
      const dpr = nv.uiData && nv.uiData.dpr ? nv.uiData.dpr : window.devicePixelRatio || 1;
      const out = (nv.screenSlices || []).map((s) => ({ plane: PLANES[s.axCorSag] || String(s.axCorSag),
        x: s.leftTopWidthHeight[0] / dpr, y: s.leftTopWidthHeight[1] / dpr,
        w: s.leftTopWidthHeight[2] / dpr, h: s.leftTopWidthHeight[3] / dpr }));
      if (nv3d) { // relative to the 2D canvas, which spans the whole viewing area
        const a = canvas.getBoundingClientRect(), b = canvas3d.getBoundingClientRect();
        out.push({ plane: "3d", x: b.left - a.left, y: b.top - a.top, w: b.width, h: b.height });
      }
      return out;
    };
    function tileAt(e) {
      const rect = canvas.getBoundingClientRect();
      const x = e.clientX - rect.left, y = e.clientY - rect.top;
      return api.tiles().find((t) => x >= t.x && x < t.x + t.w && y >= t.y && y < t.y + t.h) || null;
    }

    // ------------------------------------------------------------ status line
    function showSlice() {
      const v = currentVox();
      const label = $("#slice-label");
      if (label) label.textContent = `${v[2] + 1} / ${n}`;
      const slider = $("#slice");
      if (slider) slider.value = v[2];
    }
    nv.onLocationChange = (loc) => {
      showSlice();
      if (nv3d && nv3d.meshes.length && loc && loc.mm) { // the crosshair in 3D too
        nv3d.scene.crosshairPos = nv3d.mm2frac([loc.mm[0], loc.mm[1], loc.mm[2]]);
        nv3d.drawScene();
      }
    };
    nv.onIntensityChange = (vol) => { // mouse-drag W/L
      st.width = Math.max(1, vol.cal_max - vol.cal_min);
      st.level = (vol.cal_max + vol.cal_min) / 2;
      $("#win-width").value = Math.round(st.width);
      $("#win-level").value = Math.round(st.level);
      $$(".rr-preset").forEach((b) => b.classList.remove("active"));
    };
    // NiiVue's drag W/L (right or Ctrl drag) sets cal_min/max without an event: read them when the drag ends
    canvas.addEventListener("mouseup", () => {
      if (!api.ready) return;
      const vol = nv.volumes[0];
      const w = Math.max(1, vol.cal_max - vol.cal_min), l = (vol.cal_max + vol.cal_min) / 2;
      if (Math.abs(w - st.width) > 0.5 || Math.abs(l - st.level) > 0.5) nv.onIntensityChange(vol);
    });
    canvas.addEventListener("mousemove", (e) => {
      if (!api.ready) return;
      const t = tileAt(e);
      const probe = $("#rr-probe");
      if (!t || t.plane === "3d") { probe.textContent = ""; return; }
      const rect = canvas.getBoundingClientRect();
      const dpr = nv.uiData && nv.uiData.dpr ? nv.uiData.dpr : window.devicePixelRatio || 1;
      const frac = nv.canvasPos2frac([(e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr]);
      if (!frac || frac[0] < 0 || !isFinite(frac[0])) { probe.textContent = ""; return; }
      const mm = nv.frac2mm(frac);
      const vol = nv.volumes[0];
      const v = Array.from(vol.mm2vox([mm[0], mm[1], mm[2]])).map((x) => Math.round(x));
      const dims = vol.hdr.dims;
      if (v.some((x, k) => x < 0 || x >= dims[k + 1])) { probe.textContent = ""; return; }
      const value = vol.getValue(v[0], v[1], v[2]);
      const unit = d.isHu === "1" ? " HU" : "";
      probe.textContent = `${Math.round(value)}${unit} at x ${v[0] + 1}, y ${v[1] + 1}, slice ${v[2] + 1}`;
    });

    // ------------------------------------------------------------ wheel and keys: the same direction
    canvas.parentElement.addEventListener("wheel", (e) => {
      if (!api.ready) return;
      const t = tileAt(e);
      if (!t || t.plane === "3d") return; // NiiVue zooms the 3D view itself
      e.preventDefault();
      e.stopPropagation();
      if (e.ctrlKey) { zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2); return; }
      const axis = { axial: 2, coronal: 1, sagittal: 0 }[t.plane];
      step(axis, e.deltaY > 0 ? 1 : -1); // towards you = next slice, as the arrow keys
    }, { capture: true, passive: false });
    document.addEventListener("keydown", (e) => {
      if (!api.ready || (e.target.closest && e.target.closest("input, textarea, select, button"))) return;
      // as the wheel: down (ArrowDown, PageDown, wheel towards you) = next slice, up = previous
      const by = { ArrowDown: 1, ArrowRight: 1, PageDown: 10, ArrowUp: -1, ArrowLeft: -1, PageUp: -10 }[e.key];
      if (e.key === "Home") { e.preventDefault(); const v = currentVox(); v[2] = 0; setVox(v); }
      else if (e.key === "End") { e.preventDefault(); const v = currentVox(); v[2] = n - 1; setVox(v); }
      else if (by) { e.preventDefault(); step(2, by); }
      else if ((e.ctrlKey || e.metaKey) && e.key === "z" && st.editing) { e.preventDefault(); undo(); }
    });
    function zoom(f) {
      const p = nv.scene.pan2Dxyzmm;
      nv.setPan2Dxyzmm([p[0], p[1], p[2], Math.max(0.5, Math.min(12, p[3] * f))]);
    }

    // ------------------------------------------------------------ controls
    $$(".rr-preset").forEach((b) => b.addEventListener("click", () => {
      [st.width, st.level] = PRESETS[b.dataset.preset];
      applyWindow();
    }));
    const freeWL = () => {
      const w = parseFloat($("#win-width").value), l = parseFloat($("#win-level").value);
      if (!(w >= 1) || !isFinite(l)) return;
      st.width = w; st.level = l; applyWindow();
    };
    $("#win-width").addEventListener("change", freeWL);
    $("#win-level").addEventListener("change", freeWL);
    $("#show-liver").addEventListener("change", (e) => { st.liver = e.target.checked; applyOverlay(); });
    $("#show-tumor").addEventListener("change", (e) => { st.tumor = e.target.checked; applyOverlay(); });
    $("#opacity").addEventListener("input", (e) => { st.opacity = parseInt(e.target.value, 10) / 100; applyOverlay(); });
    const palette = $("#palette");
    palette.value = st.palette;
    palette.addEventListener("change", () => {
      st.palette = palette.value === "cbsafe" ? "cbsafe" : "standard";
      localStorageSet("liverseg-palette", st.palette);
      applyOverlay(); applyMeshes();
    });
    ["#show-liver-3d", "#show-lesions-3d"].forEach((id) => { const el = $(id); if (el) el.addEventListener("change", applyMeshes); });
    $("#zoom-in").addEventListener("click", () => zoom(1.25));
    $("#zoom-out").addEventListener("click", () => zoom(0.8));
    $("#zoom-reset").addEventListener("click", () => { nv.setPan2Dxyzmm([0, 0, 0, 1]); if (nv3d) nv3d.setRenderAzimuthElevation(110, 15); });
    const slider = $("#slice");
    if (slider) slider.addEventListener("input", () => { const v = currentVox(); v[2] = parseInt(slider.value, 10); setVox(v); });
    const prev = $("#slice-prev"), next = $("#slice-next");
    if (prev) prev.addEventListener("click", () => step(2, -1));
    if (next) next.addEventListener("click", () => step(2, 1));
    $$("#lesion-table tbody tr, a.jump").forEach((el) => {
      const jump = (e) => {
        e.preventDefault();
        const id = parseInt(el.dataset.lesion, 10);
        let centroid = null;
        try { centroid = JSON.parse(el.dataset.centroid || "null"); } catch (err) { centroid = null; }
        selectLesion(id, parseInt(el.dataset.slice, 10), centroid);
        root.scrollIntoView({ behavior: "smooth", block: "nearest" });
      };
      el.addEventListener("click", jump);
      el.addEventListener("keydown", (e) => { if (e.key === "Enter") jump(e); });
    });

    // ------------------------------------------------------------ corrections
    const tools = $("#rr-tools");
    function setTool(pen) {
      nv.setPenValue(pen, $("#pen-fill").checked);
      $$(".rr-pen").forEach((b) => b.classList.toggle("active", parseInt(b.dataset.pen, 10) === pen));
    }
    function markDirty(yes) {
      st.dirty = yes;
      $("#rr-save").disabled = !yes;
      $("#rr-edit-state").textContent = yes ? "unsaved changes" : "";
    }
    function undo() {
      nv.drawUndo();
      unhighlight();
      const c = st.selected !== null ? $(`#lesion-table tbody tr[data-lesion="${st.selected}"]`) : null;
      const cen = c ? JSON.parse(c.dataset.centroid || "null") : null;
      if (cen) highlight([cen[2], cen[1], cen[0]]); else nv.refreshDrawing(true);
      markDirty(true);
    }
    $("#rr-edit").addEventListener("click", () => {
      st.editing = !st.editing;
      nv.setDrawingEnabled(st.editing);
      tools.hidden = !st.editing;
      $("#rr-edit").classList.toggle("active", st.editing);
      $("#rr-edit").textContent = st.editing ? "Stop editing" : "Correct the mask";
      if (st.editing) { setTool(parseInt(($(".rr-pen.active") || $(".rr-pen")).dataset.pen, 10)); }
    });
    $$(".rr-pen").forEach((b) => b.addEventListener("click", () => setTool(parseInt(b.dataset.pen, 10))));
    $("#pen-fill").addEventListener("change", () => setTool(nv.opts.penValue));
    $("#pen-size").addEventListener("change", (e) => { nv.opts.penSize = parseInt(e.target.value, 10); });
    $("#rr-undo").addEventListener("click", undo);
    nv.onDrawingChanged = (action) => { if (action !== "undo") markDirty(true); };
    window.addEventListener("beforeunload", (e) => { if (st.dirty) { e.preventDefault(); e.returnValue = ""; } });
    $("#rr-save").addEventListener("click", async () => {
      const btn = $("#rr-save");
      btn.disabled = true;
      say("Saving the corrected mask and measuring it again…", "busy");
      try {
        const bitmap = Uint8Array.from(nv.drawBitmap, (v) => (v === 3 ? 2 : v)); // the highlight is tumor
        const raw = await nv.volumes[0].saveToDisk("", bitmap);
        const body = await gzip(raw);
        const r = await fetch(`${d.saveUrl}?based_on=${encodeURIComponent(d.version)}`, {
          method: "PUT", credentials: "same-origin", body,
          headers: { "X-CSRFToken": csrf(), "Content-Type": "application/gzip", Accept: "application/json" },
        });
        let answer = {};
        try { answer = await r.json(); } catch (err) { /* not JSON */ }
        if (r.status !== 201) throw new Error(answer.error || `the server answered HTTP ${r.status}`);
        markDirty(false);
        api.saved = answer;
        say(`Saved as mask version ${answer.version.version}; opening its measurements…`, "ok");
        window.location.assign(`${d.studyUrl}?version=${answer.version.version}`);
      } catch (err) {
        btn.disabled = false;
        say("Not saved: " + (err && err.message ? err.message : err), "error");
      }
    });

    // ------------------------------------------------------------ load
    (async () => {
      await nv.attachToCanvas(canvas);
      mark("attach");
      if (is2d) nv.setSliceType(nv.sliceTypeAxial);
      else { // axial | coronal over sagittal | (the 3D canvas, laid over the fourth quarter)
        nv.setCustomLayout([
          { sliceType: N.SLICE_TYPE.AXIAL, position: [0, 0, 0.5, 0.5] },
          { sliceType: N.SLICE_TYPE.CORONAL, position: [0.5, 0, 0.5, 0.5] },
          { sliceType: N.SLICE_TYPE.SAGITTAL, position: [0, 0.5, 0.5, 0.5] },
        ]);
        await nv3d.attachToCanvas(canvas3d);
        nv3d.setSliceType(nv3d.sliceTypeRender);
        mark("attach3d");
      }
      say("Loading the scan…", "busy");
      await nv.loadVolumes([{ url: d.ctUrl, name: "ct.nii.gz", colormap: "gray" }]);
      mark("ct");
      const hdr = nv.volumes[0].hdr;
      st.affine = hdr.affine;
      if (d.isHu !== "1") { st.width = 255; st.level = 127.5; }
      applyWindow();
      const ok = await nv.loadDrawingFromUrl(d.maskUrl);
      if (!ok) throw new Error("the mask could not be loaded over the scan");
      applyOverlay();
      mark("mask");
      const start = parseInt(d.start, 10) || 0;
      const first = $("#lesion-table tbody tr");
      const c = first ? JSON.parse(first.dataset.centroid || "null") : null;
      const dims = hdr.dims;
      setVox(c && parseInt(first.dataset.slice, 10) === start ? [c[2], c[1], start] : [(dims[1] - 1) / 2, (dims[2] - 1) / 2, start]);
      say("Loading the 3D surfaces…", "busy");
      try {
        await loadMeshes();
        mark("meshes");
        if (nv3d) nv3d.setRenderAzimuthElevation(110, 15);
        nv.createOnLocationChange();
      } catch (err) { console.warn("meshes", err); }
      say("", "");
      api.ready = true;
      mark("ready");
      root.dataset.state = "ready";
    })().catch((err) => {
      say("The viewer could not start: " + (err && err.message ? err.message : err), "error");
      root.dataset.state = "error";
    });
  }

  async function gzip(bytes) {
    if (typeof CompressionStream !== "function") return new Blob([bytes]);
    const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"));
    return await new Response(stream).blob();
  }
  function localStorageGet(k) { try { return window.localStorage.getItem(k); } catch (e) { return null; } }
  function localStorageSet(k, v) { try { window.localStorage.setItem(k, v); } catch (e) { /* private mode */ } }

  // On a slow machine the viewer can wait for a click: localStorage "liverseg-viewer" = "manual"
  // (the link under the viewer sets it); the measurements and downloads are there either way.
  document.addEventListener("DOMContentLoaded", () => {
    const root = document.getElementById("reading-room");
    if (!root) return;
    const manual = $("#rr-manual");
    if (manual) {
      manual.textContent = localStorageGet("liverseg-viewer") === "manual" ? "load the viewer by itself again" : "don't load the viewer by itself on this browser";
      manual.addEventListener("click", (e) => {
        e.preventDefault();
        const now = localStorageGet("liverseg-viewer") === "manual" ? "auto" : "manual";
        localStorageSet("liverseg-viewer", now);
        manual.textContent = now === "manual" ? "load the viewer by itself again" : "don't load the viewer by itself on this browser";
      });
    }
    if (localStorageGet("liverseg-viewer") !== "manual") { start(root); return; }
    root.dataset.state = "manual";
    const msg = $("#rr-message");
    msg.textContent = "";
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "btn small primary";
    btn.id = "rr-open";
    btn.textContent = "Open the viewer";
    btn.addEventListener("click", () => { btn.remove(); root.dataset.state = "loading"; start(root); });
    msg.appendChild(btn);
  });
})();
