// Applies the saved light/dark theme before the page paints (loaded in <head>).
(function () {
  var saved = null;
  try { saved = window.localStorage.getItem("liverseg-theme"); } catch (e) { /* storage disabled */ }
  if (!saved && window.matchMedia && window.matchMedia("(prefers-color-scheme: light)").matches) saved = "light";
  document.documentElement.setAttribute("data-theme", saved === "light" ? "light" : "dark");
})();
