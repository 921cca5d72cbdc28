// Norm explorer: a threshold slider over the output-norm histogram (counts embedded as JSON in #explorer-data).
// Slider positions are bin edges; the outlier count at edge i is the sum of counts in bins i.. (norm >= edge).
(function () {
  "use strict";
  var dataEl = document.getElementById("explorer-data");
  if (!dataEl) return; // a page without a diagnose run has no explorer
  var data = JSON.parse(dataEl.textContent);
  var edges = data.edges;
  var models = data.models;
  var slider = document.getElementById("norm-slider");
  var canvas = document.getElementById("norm-canvas");
  var logx = document.getElementById("explorer-logx");
  var logy = document.getElementById("explorer-logy");
  var colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

  // suffix[m][i] = tokens of model m in bins i..end, so each slider move costs O(models)
  var suffix = models.map(function (m) {
    var s = new Array(m.counts.length + 1);
    s[m.counts.length] = 0;
    for (var i = m.counts.length - 1; i >= 0; i--) s[i] = s[i + 1] + m.counts[i];
    return s;
  });

  function fmtNorm(v) {
    return Number(v.toPrecision(4)).toString();
  }

  function setText(id, text) {
    var el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  function update() {
    var i = parseInt(slider.value, 10);
    var t = edges[i];
    var out = document.getElementById("norm-threshold");
    out.textContent = fmtNorm(t);
    out.setAttribute("data-threshold", String(t));
    models.forEach(function (m, k) {
      var n = suffix[k][i];
      var ratio = m.total ? (100 * n) / m.total : 0;
      setText("outlier-count-" + m.key, String(n));
      setText("outlier-ratio-" + m.key, ratio.toFixed(2) + "%");
      if (k === 0) {
        setText("outlier-count", String(n));
        setText("outlier-ratio", ratio.toFixed(2) + "%");
      }
    });
    draw(i);
  }

  function ticks(lo, hi, log) {
    var out = [];
    if (log) {
      for (var e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
        [1, 2, 5].forEach(function (f) {
          var v = f * Math.pow(10, e);
          if (v >= lo && v <= hi) out.push(v);
        });
      }
      return out;
    }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / 5 || 1)));
    if ((hi - lo) / step > 10) step *= 2;
    if ((hi - lo) / step > 10) step *= 2.5;
    for (var v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
    return out;
  }

  function draw(cur) {
    var ctx = canvas.getContext("2d");
    var W = canvas.width, H = canvas.height, L = 56, R = 12, T = 12, B = 36;
    var useLogX = logx.checked, useLogY = logy.checked;
    ctx.clearRect(0, 0, W, H);
    var x0 = useLogX ? Math.log(edges[0]) : 0;
    var x1 = useLogX ? Math.log(edges[edges.length - 1]) : edges[edges.length - 1];
    function X(v) {
      var u = useLogX ? Math.log(v) : v;
      return L + ((u - x0) / (x1 - x0 || 1)) * (W - L - R);
    }
    // y: share of tokens per bin (log x) or per unit norm (linear x), as in the static figure
    var ys = models.map(function (m) {
      return m.counts.map(function (c, j) {
        var s = m.total ? c / m.total : 0;
        return useLogX ? s : s / (edges[j + 1] - edges[j]);
      });
    });
    var ymax = 0, ymin = Infinity;
    ys.forEach(function (y) {
      y.forEach(function (v) {
        if (v > ymax) ymax = v;
        if (v > 0 && v < ymin) ymin = v;
      });
    });
    if (!(ymax > 0)) ymax = 1;
    if (!isFinite(ymin)) ymin = ymax / 10;
    ymin = Math.min(ymin, ymax / 10) / 2;
    function Y(v) {
      var f = useLogY ? (Math.log(Math.max(v, ymin)) - Math.log(ymin)) / (Math.log(ymax) - Math.log(ymin)) : v / ymax;
      return H - B - f * (H - B - T);
    }
    ctx.fillStyle = "rgba(214,39,40,0.08)"; // the outlier side of the threshold
    ctx.fillRect(X(edges[cur]), T, W - R - X(edges[cur]), H - B - T);
    ys.forEach(function (y, k) {
      ctx.beginPath();
      ctx.moveTo(X(edges[0]), Y(0));
      y.forEach(function (v, j) {
        ctx.lineTo(X(edges[j]), Y(v));
        ctx.lineTo(X(edges[j + 1]), Y(v));
      });
      ctx.lineTo(X(edges[edges.length - 1]), Y(0));
      ctx.strokeStyle = colors[k % colors.length];
      ctx.globalAlpha = 0.25;
      ctx.fillStyle = colors[k % colors.length];
      ctx.fill();
      ctx.globalAlpha = 1;
      ctx.lineWidth = 1.5;
      ctx.stroke();
      // [CLS] and register mean norms as triangles on the top edge
      [models[k].cls].concat(models[k].registers || []).forEach(function (v) {
        if (v == null || v < edges[0] || v > edges[edges.length - 1]) return;
        ctx.beginPath();
        ctx.moveTo(X(v) - 4, T);
        ctx.lineTo(X(v) + 4, T);
        ctx.lineTo(X(v), T + 7);
        ctx.fill();
      });
    });
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(L, T);
    ctx.lineTo(L, H - B);
    ctx.lineTo(W - R, H - B);
    ctx.stroke();
    ctx.fillStyle = "#333";
    ctx.font = "11px sans-serif";
    ctx.textAlign = "center";
    ticks(edges[0], edges[edges.length - 1], useLogX).forEach(function (v) {
      ctx.fillRect(X(v), H - B, 1, 4);
      ctx.fillText(fmtNorm(v), X(v), H - B + 15);
    });
    ctx.fillText("output patch-token norm", (L + W - R) / 2, H - 4);
    ctx.save();
    ctx.translate(12, (T + H - B) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(useLogY ? "share of tokens (log)" : "share of tokens", 0, 0);
    ctx.restore();
    ctx.strokeStyle = "#d62728";
    ctx.setLineDash([5, 3]);
    ctx.beginPath();
    ctx.moveTo(X(edges[cur]), T);
    ctx.lineTo(X(edges[cur]), H - B);
    ctx.stroke();
    ctx.setLineDash([]);
  }

  document.querySelectorAll(".swatch").forEach(function (el) {
    var k = models.findIndex(function (m) {
      return m.key === el.getAttribute("data-key");
    });
    if (k >= 0) el.style.background = colors[k % colors.length];
  });
  slider.addEventListener("input", update);
  slider.addEventListener("change", update);
  logx.addEventListener("change", update);
  logy.addEventListener("change", update);
  document.getElementById("explorer-reset").addEventListener("click", function () {
    slider.value = String(data.start);
    update();
  });
  update();
})();
