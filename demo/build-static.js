// `npm run build`: copies the socket.io browser client from node_modules into demo/static/vendor/, where Flask
// serves it. demo/static/vendor/ is a build output (git-ignored); the version is pinned in package.json.
"use strict";
const fs = require("fs");
const path = require("path");

const root = __dirname; // demo/
const dist = path.join(root, "node_modules", "socket.io-client", "dist");
const target = path.join(root, "static", "vendor");
const files = ["socket.io.min.js", "socket.io.min.js.map"];

if (!fs.existsSync(path.join(dist, files[0]))) {
  console.error(`build-static: ${path.join(dist, files[0])} is missing: run \`npm ci\` first`);
  process.exit(1);
}
const version = require(path.join(root, "node_modules", "socket.io-client", "package.json")).version;
fs.mkdirSync(target, { recursive: true });
for (const file of files) {
  const source = path.join(dist, file);
  if (fs.existsSync(source)) {
    fs.copyFileSync(source, path.join(target, file));
  }
}
fs.writeFileSync(path.join(target, "VERSION"), `socket.io-client ${version}\n`);
console.log(`build-static: socket.io-client ${version} -> demo/static/vendor/${files[0]}`);
