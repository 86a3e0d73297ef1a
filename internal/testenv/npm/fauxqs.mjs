// Starts fauxqs (an SQS/SNS emulator) for queuekit's tests on 127.0.0.1.
// FAUXQS_PORT picks the port (default 0: any free one). It prints one line,
// "fauxqs listening on PORT", once it accepts requests, and exits when its
// standard input closes, so it never outlives the test process that
// started it (internal/testenv/sqs.go), however that process ends.
import { startFauxqs } from "fauxqs";

const server = await startFauxqs({
  port: Number.parseInt(process.env.FAUXQS_PORT ?? "0", 10),
  logger: false,
});
process.stdout.write(`fauxqs listening on ${server.port}\n`);

const stop = () => {
  server.stop().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
};
process.stdin.on("end", stop);
process.stdin.on("error", stop);
process.stdin.resume();
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
