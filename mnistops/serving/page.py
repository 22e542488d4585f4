"""``GET /``: draw a digit, see the prediction. Self-contained (inline CSS/JS, no CDN).

The drawing goes to ``POST /predict`` as a PNG. The API key is typed into ``#key`` and kept in the
browser's localStorage (never in the URL). Stable ids for browser tests: ``#canvas``, ``#predict``,
``#clear``, ``#digit``, ``#bars``, ``#key`` (plus ``#auto``, ``#status``, ``#meta``, and ``#ood``:
"this does not look like a digit", shown when the answer's ``ood`` is true).
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mnistops: draw a digit</title>
<style>
  :root { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; color: #1d2330; background: #f4f6fa; }
  body { margin: 0; display: flex; justify-content: center; }
  main { max-width: 720px; width: 100%; padding: 16px; }
  h1 { font-size: 1.3rem; margin: 8px 0 12px; }
  .row { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
  .card { background: #fff; border-radius: 10px; box-shadow: 0 1px 4px rgba(0,0,0,.12); padding: 14px; }
  #canvas { width: 280px; height: 280px; background: #000; border-radius: 6px; touch-action: none; cursor: crosshair;
            display: block; }
  .buttons { display: flex; gap: 8px; margin-top: 10px; align-items: center; }
  button { font-size: 1rem; padding: 6px 16px; border-radius: 6px; border: 1px solid #3557c5; background: #3557c5;
           color: #fff; cursor: pointer; }
  button#clear { background: #fff; color: #3557c5; }
  #digit { font-size: 4rem; font-weight: 700; text-align: center; min-height: 5rem; line-height: 5rem; }
  #bars { display: grid; grid-template-columns: 1.2em 180px 4em; gap: 3px 8px; font-size: .9rem;
          align-items: center; }
  .bar { height: 14px; background: #dfe4ee; border-radius: 3px; overflow: hidden; }
  .bar > div { height: 100%; width: 0; background: #3557c5; transition: width .15s; }
  .top > div { background: #1f9d55; }
  label { font-size: .9rem; }
  #key { width: 260px; padding: 4px 6px; font-family: monospace; }
  #status { font-size: .85rem; color: #666; min-height: 1.2em; margin-top: 8px; }
  #status.error { color: #b42318; }
  #meta { font-size: .8rem; color: #666; }
  #ood { font-size: .95rem; color: #9a3412; background: #fff4e5; border-radius: 6px; padding: 4px 8px;
         margin-bottom: 8px; text-align: center; }
</style>
</head>
<body>
<main>
  <h1>Draw a digit (0-9)</h1>
  <p><label>API key <input id="key" type="password" autocomplete="off" placeholder="Bearer key of this endpoint">
  </label></p>
  <div class="row">
    <div class="card">
      <canvas id="canvas" width="280" height="280" aria-label="drawing area"></canvas>
      <div class="buttons">
        <button id="predict" type="button">Predict</button>
        <button id="clear" type="button">Clear</button>
        <label><input id="auto" type="checkbox" checked> auto</label>
      </div>
      <div id="status"></div>
    </div>
    <div class="card">
      <div id="digit" aria-live="polite">?</div>
      <div id="ood" role="status" hidden>this does not look like a digit</div>
      <div id="bars"></div>
      <div id="meta"></div>
    </div>
  </div>
</main>
<script>
(function () {
  "use strict";
  var canvas = document.getElementById("canvas"), ctx = canvas.getContext("2d");
  var keyBox = document.getElementById("key"), statusBox = document.getElementById("status");
  var digitBox = document.getElementById("digit"), bars = document.getElementById("bars");
  var meta = document.getElementById("meta"), auto = document.getElementById("auto");
  var oodBox = document.getElementById("ood");
  var STORE = "mnistops.key", drawing = false, dirty = false, last = null, busy = false;

  try { keyBox.value = localStorage.getItem(STORE) || ""; } catch (e) {}
  keyBox.addEventListener("change", function () { try { localStorage.setItem(STORE, keyBox.value.trim()); } catch (e) {} });

  for (var i = 0; i < 10; i++) {
    var lab = document.createElement("span"); lab.textContent = i;
    var bar = document.createElement("div"); bar.className = "bar"; bar.id = "bar-" + i;
    bar.appendChild(document.createElement("div"));
    var val = document.createElement("span"); val.id = "p-" + i; val.textContent = "";
    bars.appendChild(lab); bars.appendChild(bar); bars.appendChild(val);
  }

  function clearCanvas() {
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    dirty = false; digitBox.textContent = "?"; meta.textContent = ""; setStatus(""); oodBox.hidden = true;
    for (var i = 0; i < 10; i++) { show(i, 0, false); }
  }
  function show(i, p, top) {
    var bar = document.getElementById("bar-" + i);
    bar.className = top ? "bar top" : "bar";
    bar.firstChild.style.width = (100 * p).toFixed(1) + "%";
    document.getElementById("p-" + i).textContent = p ? (100 * p).toFixed(1) + "%" : "";
  }
  function setStatus(text, error) { statusBox.textContent = text; statusBox.className = error ? "error" : ""; }
  function point(ev) {
    var r = canvas.getBoundingClientRect();
    return { x: (ev.clientX - r.left) * canvas.width / r.width, y: (ev.clientY - r.top) * canvas.height / r.height };
  }
  function stroke(p) {
    ctx.strokeStyle = "#fff"; ctx.fillStyle = "#fff"; ctx.lineWidth = 20; ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.beginPath();
    if (last) { ctx.moveTo(last.x, last.y); ctx.lineTo(p.x, p.y); ctx.stroke(); }
    else { ctx.arc(p.x, p.y, 10, 0, 2 * Math.PI); ctx.fill(); }
    last = p; dirty = true;
  }
  canvas.addEventListener("pointerdown", function (ev) {
    ev.preventDefault(); drawing = true; last = null; canvas.setPointerCapture(ev.pointerId); stroke(point(ev));
  });
  canvas.addEventListener("pointermove", function (ev) { if (drawing) { ev.preventDefault(); stroke(point(ev)); } });
  function end(ev) {
    if (!drawing) return;
    drawing = false; last = null;
    if (auto.checked) predict();
  }
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("pointerleave", end);

  function predict() {
    if (!dirty) { setStatus("draw a digit first"); return; }
    if (busy) return;
    busy = true; setStatus("predicting...");
    canvas.toBlob(function (blob) {
      var form = new FormData(); form.append("file", blob, "digit.png");
      var headers = {}, key = keyBox.value.trim();
      if (key) { headers["Authorization"] = "Bearer " + key; try { localStorage.setItem(STORE, key); } catch (e) {} }
      var t0 = performance.now();
      fetch("predict", { method: "POST", body: form, headers: headers }).then(function (resp) {
        return resp.json().then(function (body) { return { ok: resp.ok, status: resp.status, body: body }; });
      }).then(function (r) {
        if (!r.ok) { setStatus(r.status + ": " + (r.body.error || "error"), true); return; }
        var pred = r.body.predictions[0], best = pred.digit;
        digitBox.textContent = best;
        oodBox.hidden = !pred.ood;
        oodBox.title = "ood_score " + Number(pred.ood_score).toFixed(3);
        for (var i = 0; i < 10; i++) { show(i, pred.probabilities[i], i === best); }
        meta.textContent = r.body.model + " v" + r.body.version + " (" + r.body.deployment + ") - request " +
          r.body.request_id;
        setStatus("answered in " + Math.round(performance.now() - t0) + " ms");
      }).catch(function (e) { setStatus("request failed: " + e, true); })
        .finally(function () { busy = false; });
    }, "image/png");
  }
  document.getElementById("predict").addEventListener("click", predict);
  document.getElementById("clear").addEventListener("click", clearCanvas);
  clearCanvas();
})();
</script>
</body>
</html>
"""
