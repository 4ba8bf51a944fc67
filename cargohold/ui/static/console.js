// cargohold console: after htmx replaces the whole page body (a boosted link or form),
// move the keyboard focus to the new page's main content, as a full page load would.
// Live fragments (polls) change nothing of the focus.
document.addEventListener("htmx:afterSettle", function (ev) {
  if (ev.detail && ev.detail.boosted) {
    var main = document.getElementById("main");
    if (main) { main.focus({ preventScroll: true }); }
  }
});
