// The reference's runner for flame-bench: the services of the reference's own e2e/services.ts
// (`math`/`add` is the method measured), on 127.0.0.1, signed when FLAME_SECRET is set and
// unsigned otherwise. Copied by flame-bench into bench/ of a temporary copy of the reference.
import { flame } from "../src";
import "../e2e/services";

const secret = process.env.FLAME_SECRET || undefined;
const security = secret ? { security: { secret } } : {};

await flame.configure({ mode: "runner", ...security });

const server = flame.createRunnerServer({ port: 0, hostname: "127.0.0.1", ...security });
console.log(`RUNNER_READY ${server.url}`);

await new Promise(() => {});
