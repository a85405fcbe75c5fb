// Small enhancements to server-rendered pages; each page works without them.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // An event page with pending deliveries reloads itself so a retry is seen landing.
  const refreshS = Number(document.body.dataset.refreshS || 0);
  if (refreshS > 0) {
    setTimeout(() => window.location.reload(), refreshS * 1000);
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", () => {
      const source = document.getElementById(button.dataset.copy);
      if (source && navigator.clipboard) {
        navigator.clipboard.writeText(source.textContent.trim()).then(() => {
          button.textContent = "Copied";
        });
      }
    });
  }
});
