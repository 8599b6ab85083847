// Tap to explain, for the student page and the dashboard: an element with
// `data-explain="one plain line"` is marked with a small "?", and a tap (or a click, or Enter
// on it) shows its line in a bubble under it; a second tap, a tap elsewhere or Escape hides
// it (the bubble lets taps through to what it covers). One listener on the document serves every such element, so a label whose text a page
// rewrites later keeps its explanation (the line is an attribute, not a child). The same line
// is the element's `title`, for a mouse's hover.

const bubble = document.createElement('div');
bubble.id = 'explain-bubble';
bubble.className = 'explain-bubble';
bubble.setAttribute('role', 'tooltip');
bubble.hidden = true;
let shownFor = null;

/** Marks every `[data-explain]` under `root` (again after a page adds some). */
export function markExplanations(root = document) {
  for (const el of root.querySelectorAll('[data-explain]')) {
    el.classList.add('explainable');
    el.title = el.dataset.explain;
    if (!el.hasAttribute('tabindex')) el.tabIndex = 0;
  }
}

/** Sets (or changes) the line of `el`. */
export function setExplanation(el, text) {
  el.dataset.explain = text;
  markExplanations(el.parentElement ?? document);
  if (shownFor === el) show(el);
}

function show(el) {
  if (!bubble.isConnected) document.body.appendChild(bubble);
  bubble.textContent = el.dataset.explain;
  bubble.hidden = false;
  shownFor = el;
  el.setAttribute('aria-describedby', bubble.id);
  // Under the element (under a label's value too, so the number stays in sight), inside
  // the page's width.
  const r = (el.matches('dt') && el.closest('dl > div') || el).getBoundingClientRect();
  const width = Math.min(bubble.offsetWidth, document.documentElement.clientWidth - 16);
  const left = Math.max(8, Math.min(r.left, document.documentElement.clientWidth - width - 8));
  bubble.style.left = `${left + window.scrollX}px`;
  bubble.style.top = `${r.bottom + window.scrollY + 6}px`;
}

function hide() {
  bubble.hidden = true;
  shownFor?.removeAttribute('aria-describedby');
  shownFor = null;
}

function toggle(el) {
  if (shownFor === el) hide();
  else show(el);
}

document.addEventListener('click', (e) => {
  const el = e.target.closest?.('[data-explain]');
  if (!el) return hide();
  // A control inside an explained element keeps its own click.
  const control = e.target.closest('button, input, select, a, textarea');
  if (control && control !== el && el.contains(control)) return;
  toggle(el);
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') return hide();
  if ((e.key === 'Enter' || e.key === ' ') && e.target.matches?.('[data-explain]')) {
    e.preventDefault();
    toggle(e.target);
  }
});
window.addEventListener('resize', hide);

markExplanations();
