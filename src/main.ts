/**
 * Process entry. The stop signals are caught first, before the gateway's modules load (imported
 * only then): see signals.ts.
 */
import { catchStopSignals } from './signals.js';

const stopSignals = catchStopSignals();
const { run } = await import('./run.js');
await run(stopSignals);
