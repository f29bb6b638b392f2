// The pose editor's browser side: draws the OpenPose JSON held in props.value on a canvas, lets joints be
// dragged (shift-drag moves a whole person), people added and removed, and the pose downloaded. The JSON goes
// back to the server only when a drag ends or a button is pressed; every move is drawn here.
const canvas = element.querySelector("canvas");
const context = canvas.getContext("2d");
const status = element.querySelector(".pose-status");

// the OpenPose body convention the pose controls were trained on: 18 COCO points, 17 limbs, one colour each
const LIMBS = [[1, 2], [1, 5], [2, 3], [3, 4], [5, 6], [6, 7], [1, 8], [8, 9], [9, 10], [1, 11], [11, 12],
               [12, 13], [1, 0], [0, 14], [14, 16], [0, 15], [15, 17]];
const COLOURS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
                 [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255],
                 [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]];
const HAND_EDGES = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10], [10, 11],
                    [11, 12], [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18], [18, 19], [19, 20]];
const PARTS = ["pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d"];
// a person standing, facing the viewer, in canvas fractions (x, y) of the 18 points
const STANDING = [[0.5, 0.2], [0.5, 0.3], [0.42, 0.3], [0.38, 0.42], [0.36, 0.54], [0.58, 0.3], [0.62, 0.42],
                  [0.64, 0.54], [0.45, 0.55], [0.45, 0.7], [0.45, 0.85], [0.55, 0.55], [0.55, 0.7],
                  [0.55, 0.85], [0.48, 0.18], [0.52, 0.18], [0.46, 0.19], [0.54, 0.19]];
const PICK_RADIUS = 12;  // screen pixels around a joint that grab it

let frame = null;
let selected = -1;  // the person last touched: "Remove person" removes them
let drag = null;  // {person, part, index} or {person, whole: true}, with the last pointer position

function parse(text) {
  try {
    const data = JSON.parse(text || "");
    if (data && Array.isArray(data.people)) {
      data.canvas_width = data.canvas_width || 512;
      data.canvas_height = data.canvas_height || 512;
      return data;
    }
  } catch (error) { /* not JSON yet: an empty canvas */ }
  return {canvas_width: 512, canvas_height: 512, people: []};
}

function points(person, part) {
  const values = person[part] || [];
  const out = [];
  for (let i = 0; i + 2 < values.length; i += 3) out.push(values[i + 2] > 0 ? [values[i], values[i + 1]] : null);
  return out;
}

function line(a, b, colour, width) {
  context.strokeStyle = colour;
  context.lineWidth = width;
  context.beginPath();
  context.moveTo(a[0], a[1]);
  context.lineTo(b[0], b[1]);
  context.stroke();
}

function dot(p, colour, radius) {
  context.fillStyle = colour;
  context.beginPath();
  context.arc(p[0], p[1], radius, 0, 2 * Math.PI);
  context.fill();
}

function draw() {
  canvas.width = frame.canvas_width;
  canvas.height = frame.canvas_height;
  context.fillStyle = "black";
  context.fillRect(0, 0, canvas.width, canvas.height);
  const size = Math.max(2, Math.round(Math.min(canvas.width, canvas.height) / 128));
  frame.people.forEach((person, p) => {
    const body = points(person, PARTS[0]);
    LIMBS.forEach(([a, b], i) => {
      if (body[a] && body[b]) line(body[a], body[b], `rgba(${COLOURS[i].join(",")},0.6)`, 2 * size);
    });
    body.forEach((point, i) => point && dot(point, `rgb(${COLOURS[i].join(",")})`, size + (p === selected ? 2 : 1)));
    for (const part of PARTS.slice(1, 3)) {
      const hand = points(person, part);
      HAND_EDGES.forEach(([a, b]) => hand[a] && hand[b] && line(hand[a], hand[b], "rgb(0,128,255)", 1));
      hand.forEach((point) => point && dot(point, "rgb(0,0,255)", size / 2 + 1));
    }
    points(person, PARTS[3]).forEach((point) => point && dot(point, "white", size / 2));
  });
  status.textContent = `${frame.people.length} ${frame.people.length === 1 ? "person" : "people"}, ` +
    `${frame.canvas_width}x${frame.canvas_height}`;
}

function save() {
  props.value = JSON.stringify(frame);
  trigger("change");
}

function canvasPoint(event) {
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  return [(event.clientX - box.left) * scale, (event.clientY - box.top) * scale, scale];
}

function nearest(x, y, radius) {
  let best = null;
  frame.people.forEach((person, p) => PARTS.forEach((part) => points(person, part).forEach((point, i) => {
    if (!point) return;
    const distance = Math.hypot(point[0] - x, point[1] - y);
    if (distance <= radius && (!best || distance < best.distance)) best = {person: p, part, index: i, distance};
  })));
  return best;
}

canvas.addEventListener("pointerdown", (event) => {
  const [x, y, scale] = canvasPoint(event);
  const hit = nearest(x, y, PICK_RADIUS * scale);
  if (!hit) return;
  selected = hit.person;
  drag = event.shiftKey ? {person: hit.person, whole: true, x, y} : {...hit, x, y};
  canvas.setPointerCapture(event.pointerId);
  draw();
});

canvas.addEventListener("pointermove", (event) => {
  if (!drag) return;
  const [x, y] = canvasPoint(event);
  const person = frame.people[drag.person];
  const clamp = (v, size) => Math.min(Math.max(v, 0), size - 1);
  if (drag.whole) {
    for (const part of PARTS) {
      const values = person[part] || [];
      for (let i = 0; i + 2 < values.length; i += 3) {
        if (values[i + 2] <= 0) continue;
        values[i] = clamp(values[i] + x - drag.x, frame.canvas_width);
        values[i + 1] = clamp(values[i + 1] + y - drag.y, frame.canvas_height);
      }
    }
  } else {
    person[drag.part][3 * drag.index] = clamp(x, frame.canvas_width);
    person[drag.part][3 * drag.index + 1] = clamp(y, frame.canvas_height);
  }
  drag.x = x;
  drag.y = y;
  draw();
});

canvas.addEventListener("pointerup", () => {
  if (!drag) return;
  drag = null;
  save();
});

element.querySelector(".pose-add").addEventListener("click", () => {
  const shift = 0.08 * (frame.people.length % 5) * (frame.people.length % 2 ? 1 : -1);
  const body = STANDING.flatMap(([x, y]) => [(x + shift) * frame.canvas_width, y * frame.canvas_height, 1]);
  frame.people.push({pose_keypoints_2d: body});
  selected = frame.people.length - 1;
  draw();
  save();
});

element.querySelector(".pose-remove").addEventListener("click", () => {
  if (!frame.people.length) return;
  frame.people.splice(selected >= 0 && selected < frame.people.length ? selected : frame.people.length - 1, 1);
  selected = -1;
  draw();
  save();
});

element.querySelector(".pose-download").addEventListener("click", () => {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([JSON.stringify(frame)], {type: "application/json"}));
  link.download = "pose.json";
  link.click();
  URL.revokeObjectURL(link.href);
});

function load() {
  frame = parse(props.value);
  selected = -1;
  draw();
}

watch("value", () => {
  if (JSON.stringify(frame) !== props.value) load();
});
load();
