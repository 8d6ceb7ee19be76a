// Sort (click a header) and filter (text, minimum detection score, dead rows) the feature table.
// Numeric cells carry their value in data-v; the rest sort as text.
(function () {
  "use strict";
  const tableEl = document.getElementById("features");
  if (!tableEl) { return; }
  const body = tableEl.tBodies[0];
  const rows = Array.from(body.rows);
  const query = document.getElementById("q");
  const minDet = document.getElementById("mindet");
  const hideDead = document.getElementById("hidedead");
  const shown = document.getElementById("shown");
  const DETECTION_COL = 4;

  function cellValue(row, col) {
    const cell = row.cells[col];
    const v = cell.getAttribute("data-v");
    if (v !== null) { return v === "" ? -Infinity : parseFloat(v); }
    return cell.textContent.toLowerCase();
  }

  function applyFilter() {
    const q = query.value.trim().toLowerCase();
    const m = parseFloat(minDet.value) || 0;
    let n = 0;
    for (const row of rows) {
      const det = cellValue(row, DETECTION_COL);
      const ok = (!q || row.textContent.toLowerCase().includes(q)) &&
        (m <= 0 || det >= m) && !(hideDead.checked && row.classList.contains("dead"));
      row.style.display = ok ? "" : "none";
      if (ok) { n += 1; }
    }
    shown.textContent = n + " of " + rows.length + " features shown";
  }

  let sortCol = -1;
  let ascending = true;
  function sortBy(col) {
    ascending = sortCol === col ? !ascending : col === 0;
    sortCol = col;
    const sign = ascending ? 1 : -1;
    rows.sort(function (a, b) {
      const x = cellValue(a, col);
      const y = cellValue(b, col);
      if (x === -Infinity || y === -Infinity) {  // unscored rows last in either direction
        return (x === -Infinity) - (y === -Infinity);
      }
      return x < y ? -sign : x > y ? sign : 0;
    });
    for (const row of rows) { body.appendChild(row); }
    for (const th of tableEl.tHead.rows[0].cells) { th.classList.remove("asc", "desc"); }
    tableEl.tHead.rows[0].cells[col].classList.add(ascending ? "asc" : "desc");
  }

  for (const th of tableEl.tHead.rows[0].cells) {
    th.addEventListener("click", function () { sortBy(parseInt(th.getAttribute("data-col"), 10)); });
  }
  query.addEventListener("input", applyFilter);
  minDet.addEventListener("input", applyFilter);
  hideDead.addEventListener("change", applyFilter);
  applyFilter();
}());
