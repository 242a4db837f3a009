/* regrow dashboard login page: show the refusal (?error=1) and keep ?next= for the form. */
(function () {
  "use strict";
  try {
    var q = new URLSearchParams(window.location.search);
    var error = document.getElementById("login-error");
    if (error && q.get("error") === "1") error.hidden = false;
    var next = document.getElementById("next");
    if (next) next.value = q.get("next") || "./";
  } catch (e) { /* an old browser: keep the defaults */ }
})();
