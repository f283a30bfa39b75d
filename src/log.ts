import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/**
 * Structured JSON logs. Tokens are never passed to the logger; the redact list is the belt
 * to those braces, in case a frame or header object is ever logged whole.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'message-service' },
      redact: {
        paths: ['token', '*.token', '*.*.token', 'authorization', '*.authorization', 'headers.authorization', 'req.headers.authorization'],
        censor: '[redacted]',
      },
    },
    destination,
  );
}
