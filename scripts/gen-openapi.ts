// Writes docs/openapi.json: the server API's OpenAPI document, made from the same schemas that
// validate its requests (src/api/schemas.ts). `--check` exits 1 when the checked-in copy differs.
import { readFileSync, writeFileSync } from 'node:fs';
import { createServerApi, openApiText } from '../src/api/server-api.js';
import { MemoryEngine } from '../src/engine/memory.js';
import { createLogger } from '../src/log.js';
import { createMetrics } from '../src/metrics/index.js';

const FILE = 'docs/openapi.json';
const app = await createServerApi({
  apiKey: 'document-only-key-0000',
  engine: new MemoryEngine(),
  metrics: createMetrics(),
  log: createLogger('silent'),
  bodyLimit: 65536,
  isDraining: () => false,
});
const text = openApiText(app);
await app.close();
if (process.argv.includes('--check')) {
  const current = readFileSync(FILE, 'utf8');
  if (current !== text) {
    console.error(`${FILE} is stale: run npm run openapi`);
    process.exit(1);
  }
  console.log(`${FILE} is up to date`);
} else {
  writeFileSync(FILE, text);
  console.log(`wrote ${FILE}`);
}
