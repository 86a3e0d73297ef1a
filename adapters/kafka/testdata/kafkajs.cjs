// kafkajs side of the Kafka adapter's interop tests (interop_test.go), run
// with NODE_PATH pointing at internal/testenv/npm/node_modules:
//
//   node kafkajs.cjs produce BROKERS TOPIC      < JSON lines {key, value, headers}
//   node kafkajs.cjs consume BROKERS TOPIC GROUP N
//
// value is base64; key null means keyless. produce uses kafkajs' default
// (Java-compatible murmur2) partitioner and no compression, acks=-1, and
// prints "produced N". consume reads the topic from the beginning in GROUP
// and prints one JSON line {partition, offset, key, value, headers} per
// message until it has N; a consumer crash (such as KafkaJSNotImplemented
// for a codec it lacks) exits 2 with the error on stderr.
"use strict";
const { Kafka, Partitioners, logLevel } = require("kafkajs");

const [mode, brokers, topic, group, want] = process.argv.slice(2);
const kafka = new Kafka({
  clientId: "queuekit-interop",
  brokers: brokers.split(","),
  logLevel: logLevel.NOTHING,
  retry: { retries: 5 },
});
const fail = (code, what, err) => {
  process.stderr.write(`${what}: ${err && err.name}: ${err && err.message}\n`);
  process.exit(code);
};
setTimeout(() => fail(3, "timeout", new Error("no result within 60s")), 60000).unref();

async function produce() {
  const lines = require("fs").readFileSync(0, "utf8").split("\n").filter(Boolean);
  const messages = lines.map((l) => {
    const m = JSON.parse(l);
    return { key: m.key, value: Buffer.from(m.value, "base64"), headers: m.headers };
  });
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false });
  await producer.connect();
  await producer.send({ topic, acks: -1, messages });
  await producer.disconnect();
  process.stdout.write(`produced ${messages.length}\n`);
}

async function consume() {
  const n = Number.parseInt(want, 10);
  const consumer = kafka.consumer({ groupId: group, retry: { retries: 0 } });
  consumer.on(consumer.events.CRASH, (e) => fail(2, "consumer crashed", e.payload.error));
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let got = 0;
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const headers = {};
      for (const [k, v] of Object.entries(message.headers || {})) {
        const last = Array.isArray(v) ? v[v.length - 1] : v;
        headers[k] = Buffer.isBuffer(last) ? last.toString("utf8") : String(last);
      }
      process.stdout.write(JSON.stringify({
        partition,
        offset: message.offset,
        key: message.key === null ? null : message.key.toString("utf8"),
        value: message.value === null ? null : message.value.toString("base64"),
        headers,
      }) + "\n");
      if (++got === n) {
        // Leave the group, then exit (stdout is a pipe: already written).
        setImmediate(() => consumer.disconnect().finally(() => process.exit(0)));
        setTimeout(() => process.exit(0), 5000).unref();
      }
    },
  });
}

(mode === "produce" ? produce() : mode === "consume" ? consume() : Promise.reject(new Error(`unknown mode ${mode}`)))
  .catch((err) => fail(1, mode, err));
