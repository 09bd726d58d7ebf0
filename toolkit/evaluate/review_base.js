// The review pages' shared script (toolkit/evaluate/review_base.py inlines it at the top of each
// page's script). A page defines render(state) and binds its choices with bindDecisions(); its
// screens are the <section> elements whose id ends in "-screen"; #progress and #error show every state.
"use strict";
const $ = (id) => document.getElementById(id);
let busy = false;  // one request at a time: a double key press must not decide two items

function show(screen) {
  for (const s of document.querySelectorAll('section[id$="-screen"]')) s.classList.toggle("hidden", s.id !== screen);
}

async function call(method, path, body) {
  const res = await fetch(path, {method, headers: {"Content-Type": "application/json"},
                                 body: body ? JSON.stringify(body) : undefined});
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

// a new state clears the error; the progress counts the item on screen, or what is done at the end
function showProgress(state, item) {
  $("error").textContent = "";
  $("progress").textContent = item ? `${item.position} of ${state.total}` : `${state.done} of ${state.total}`;
}

async function run(method, path, body) {
  if (busy) return;
  busy = true;
  try { render(await call(method, path, body)); }
  catch (e) { $("error").textContent = e.message; }
  finally { busy = false; }
}

// the [data-choice] buttons, and their keys (key -> choice) while `screen` is shown; undo by the
// #undo and #undo-end buttons, or U / Backspace when canUndo()
function bindDecisions(keys, screen, decide, undo, canUndo = () => true) {
  for (const b of document.querySelectorAll("[data-choice]")) b.addEventListener("click", () => decide(b.dataset.choice));
  $("undo").addEventListener("click", undo);
  $("undo-end").addEventListener("click", undo);
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "checkbox") return;  // typing (a rater's name)
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const choice = keys[e.key];
    if (choice && !$(screen).classList.contains("hidden")) { e.preventDefault(); decide(choice); }
    else if ((e.key === "u" || e.key === "U" || e.key === "Backspace") && canUndo()) { e.preventDefault(); undo(); }
  });
}
