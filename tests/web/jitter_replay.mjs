// Replays a schedule of pushes and pops (JSON on stdin) through web/jitter.js and prints
// every pop and the final stats as JSON: tests/web/test_jitter_js.py compares them
// with src/earshot/client/jitter.py's answers for the same schedule.
import { readFileSync } from "node:fs";

const [, , modulePath] = process.argv;
const { JitterBuffer } = await import(modulePath);
const sched = JSON.parse(readFileSync(0, "utf8"));
const jb = new JitterBuffer(sched.rate, sched.frame, sched.options || {});
const pops = [];
for (const step of sched.steps) {
  if (step[0] === "push") jb.push(step[1], step[2], step[1], step[3]);
  else if (step[0] === "reset") jb.reset();
  else {
    const p = jb.pop(step[1]);
    pops.push([p.offset, p.kind, p.mediaOffset, p.skipped, p.payload]);
  }
}
process.stdout.write(JSON.stringify({ pops, stats: jb.stats }));
