// Runs apps/pose_editor.js under node with just enough of a page for it (an element with a canvas and buttons,
// the props, trigger and watch that gr.HTML gives it), plays the actions of argv[3] on it and prints the pose
// JSON it ends with. Canvas pixels are screen pixels here. Usage: node pose_editor_harness.js SCRIPT ACTIONS
// ACTIONS: JSON [{"start": pose JSON}, ["add"], ["drag", x0, y0, x1, y1, shift], ...]
const fs = require("fs");

function node() {
  const listeners = {};
  return {
    listeners, textContent: "", width: 0, height: 0,
    addEventListener: (type, listener) => { listeners[type] = listener; },
    getContext: () => new Proxy({}, {get: (target, key) => (key in target ? target[key] : () => {})}),
    getBoundingClientRect() { return {left: 0, top: 0, width: this.frameWidth, height: this.frameHeight}; },
    setPointerCapture: () => {},
  };
}

const [script, actions] = [fs.readFileSync(process.argv[2], "utf8"), JSON.parse(process.argv[3])];
const nodes = {};
const element = {querySelector: (selector) => (nodes[selector] = nodes[selector] || node())};
const props = {value: JSON.stringify(actions[0].start)};
new Function("element", "props", "trigger", "watch", script)(element, props, () => {}, () => {});
const canvas = nodes.canvas;
[canvas.frameWidth, canvas.frameHeight] = [actions[0].start.canvas_width, actions[0].start.canvas_height];
for (const [action, ...args] of actions.slice(1)) {
  if (action === "add") nodes[".pose-add"].listeners.click();
  if (action === "drag") {
    const [x0, y0, x1, y1, shiftKey] = args;
    canvas.listeners.pointerdown({clientX: x0, clientY: y0, shiftKey, pointerId: 1});
    for (let i = 1; i <= 4; i++) {
      canvas.listeners.pointermove({clientX: x0 + (x1 - x0) * i / 4, clientY: y0 + (y1 - y0) * i / 4});
    }
    canvas.listeners.pointerup({});
  }
}
console.log(JSON.stringify({value: JSON.parse(props.value), buffer: [canvas.width, canvas.height],
                            note: element.querySelector(".pose-note").textContent}));
