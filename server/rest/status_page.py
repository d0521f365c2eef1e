"""The status page (``GET /`` or ``GET /status`` on the REST port): one HTML page rendered here
from the status document (status.py), with its CSS and a small script inline (no external
assets: it works offline, behind TLS, on any worker of ``--workers``). The script fetches the
page again every few seconds and swaps its ``<main>`` in place, so there is one renderer;
without JavaScript the page is still complete. ``GET /status.json`` serves the document."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

HTML_PATHS = frozenset({"/", "/status"})
JSON_PATH = "/status.json"
REFRESH_SECONDS = 2

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:24px;
align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}header span{color:#b9c0cf}
main{padding:8px 20px 24px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;margin:14px 0;
padding:10px 14px}
h2{font-size:15px;margin:4px 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 10px 4px 0;border-bottom:1px solid #eef0f3;
vertical-align:top}
th{color:#5b6475;font-weight:600}
.state{font-weight:600;border-radius:3px;padding:0 6px}
.AVAILABLE{background:#dcf5e3;color:#146c2e}.LOADING,.START{background:#fff2cc;color:#7a5b00}
.UNLOADING,.END{background:#eceef2;color:#4b5263}.bad{background:#fde2e1;color:#a4161a}
.muted{color:#8a92a3}.num{font-variant-numeric:tabular-nums}
#updated{margin-left:auto}
"""

_SCRIPT = """
(function(){
  var every=%d*1000, note=document.getElementById('updated');
  function refresh(){
    fetch(location.pathname,{cache:'no-store'}).then(function(r){
      if(!r.ok) throw new Error('HTTP '+r.status); return r.text();
    }).then(function(text){
      var page=new DOMParser().parseFromString(text,'text/html');
      document.querySelector('main').replaceWith(page.querySelector('main'));
      note.textContent='updated '+new Date().toLocaleTimeString();
    }).catch(function(e){ note.textContent='refresh failed: '+e.message; })
      .finally(function(){ setTimeout(refresh, every); });
  }
  setTimeout(refresh, every);
})();
""" % REFRESH_SECONDS  # noqa: UP031 (the script's braces rule out str.format)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    if not body:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text(value: Any) -> str:
    return '<span class="muted">-</span>' if value is None or value == "" else \
        escape(str(value))


def _models(models: list[dict[str, Any]]) -> str:
    rows = []
    for model in models:
        versions = " ".join(
            f'<span class="state {escape(v["state"]) if not v["error"] else "bad"}" '
            f'title="{escape(v["error"] or "")}">{v["version"]} {escape(v["state"])}</span>'
            for v in model["versions"]) or '<span class="muted">no version yet</span>'
        labels = ", ".join(f"{escape(label)} &rarr; {version}"
                           for label, version in model["labels"].items())
        errors = model["errors"]
        rows.append([f'<b>{escape(model["name"])}</b>', versions, labels or _text(None),
                     f'<span class="num">{model["requests"]}</span>',
                     f'<span class="num{" bad" if errors else ""}">{errors}</span>',
                     f'<span class="num">{model["batch_queue_depth"]}</span>'])
    return _table(["Model", "Versions (state)", "Labels", "Requests", "Errors",
                   "Batch queue"], rows, "No models configured.")


def _rollout(name: str, rollout: dict[str, Any]) -> str:
    arms = _table(["Arm", "Version", "Weight", "Configured", "Requests", "Errors", "Tripped"], (
        [_text(arm["label"] or f'version {arm["version"]}'), _text(arm["version"]),
         f'<span class="num">{arm["weight"]:g}</span>',
         f'<span class="num">{arm["configured_weight"]:g}</span>',
         f'<span class="num">{arm["requests"]}</span>', f'<span class="num">{arm["errors"]}</span>',
         '<span class="state bad">tripped</span>' if arm["tripped"] else "no"]
        for arm in rollout["arms"]), "No arms.")
    guard = rollout["guard"]
    guard_text = (f'<span class="state bad">tripped</span> {escape(guard["reason"])}'
                  if guard["tripped"] else '<span class="state AVAILABLE">ok</span>')
    sticky = rollout.get("sticky_metadata_key") or ""
    parts = [f"<h2>Rollout of {escape(name)}</h2>", arms,
             f"<p>Guard: {guard_text}"
             + (f' &middot; sticky key <code>{escape(sticky)}</code>' if sticky else "")
             + "</p>"]
    shadow = rollout.get("shadow")
    if shadow is not None:
        agreement = shadow["argmax_agreement"]
        parts.append("<p>Shadow " + _text(shadow["label"] or f'version {shadow["version"]}')
                     + f': fraction {shadow["fraction"]:g}, mirrored {shadow["mirrored"]}, '
                     f'compared {shadow["compared"]}, mismatches {shadow["mismatches"]}, '
                     f'errors {shadow["errors"]}, dropped {shadow["dropped"]}, '
                     f'max |diff| {shadow["max_abs_diff"]:.3g}'
                     + ("" if agreement is None else f", argmax agreement {agreement:.1%}")
                     + (' <span class="state bad">stopped</span>' if shadow["tripped"] else "")
                     + "</p>")
    return "<section>" + "".join(parts) + "</section>"


def _load_errors(errors: list[dict[str, Any]]) -> str:
    return _table(["When", "Model", "Version", "Error"], (
        [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(error["time"])),
         escape(error["model"]), str(error["version"]),
         f'<span class="bad">{escape(error["error"])}</span>'] for error in errors),
        "No load errors.")


def render(document: dict[str, Any]) -> bytes:
    """The status page for a status document (StatusBoard.document)."""
    server = document["server"]
    info = " ".join(f"<span>{escape(str(key))}: {escape(str(value))}</span>"
                    for key, value in server.items() if key not in ("time",))
    rollouts = "".join(_rollout(name, rollout)
                       for name, rollout in sorted(document["rollouts"].items()))
    html = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>pyserving status</title><style>{_STYLE}</style></head><body>"
        f'<header><h1>pyserving</h1>{info}<span id="updated"></span></header>'
        "<main>"
        f'<section><h2>Models</h2>{_models(document["models"])}</section>'
        f"{rollouts}"
        f'<section><h2>Recent load errors</h2>'
        f'{_load_errors(document["recent_load_errors"])}</section>'
        f"</main><script>{_SCRIPT}</script></body></html>")
    return html.encode("utf-8")
