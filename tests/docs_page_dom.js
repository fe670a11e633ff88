// The least of a DOM that projector/apidocs.html's script uses, for running it under Node.js
// where no browser is installed. The script is appended after this file, with BASE_URL set
// (the /docs address); fetch is Node's own, over real HTTP. Prints what the page rendered.
"use strict";
class Node {
  constructor(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.dataset = {}; this.ownText = ""; }
  append(...children) { this.children.push(...children); }
  setAttribute(key, value) { this.attrs[key] = String(value); }
  set textContent(text) { this.ownText = String(text); this.children = []; }
  get textContent() { return this.ownText + this.children.map((c) => c.textContent).join(""); }
}
class TextNode extends Node {
  constructor(text) { super("#text"); this.ownText = String(text); }
}
globalThis.Node = Node;
const elements = {};
globalThis.document = {
  body: new Node("body"),
  createElement: (tag) => new Node(tag),
  createTextNode: (text) => new TextNode(text),
  getElementById: (id) => elements[id] || (elements[id] = new Node("div")),
};
const nodeFetch = globalThis.fetch;
const fetched = [];
globalThis.fetch = (url) => { fetched.push(url); return nodeFetch(new URL(url, BASE_URL)); };
function report() {
  const text = (id) => (elements[id] ? elements[id].textContent : "");
  console.log(JSON.stringify({
    rendered: document.body.dataset.rendered === "true",
    problem: text("problem"),
    fetched,
    index: (elements.index ? elements.index.children : []).map((a) => a.textContent),
    schemas: (elements.schemas ? elements.schemas.children : []).map((s) => s.attrs.id),
    routes: text("routes"),
  }));
}
process.once("beforeExit", report);
