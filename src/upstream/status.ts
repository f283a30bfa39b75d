import type { ErrorCode } from '../protocol/errors.js';

/** Main-API status → client error code. */
export function errorCodeForStatus(status: number): ErrorCode {
  switch (status) {
    case 400:
    case 422:
      return 'bad_request';
    case 401:
      return 'unauthorized';
    case 403:
      return 'forbidden';
    case 404:
      return 'not_found';
    case 413:
      return 'too_large';
    case 429:
      return 'rate_limited';
  }
  // Other 4xx are the client's request being refused; 3xx and 5xx are the main API's trouble.
  if (status >= 400 && status < 500) return 'bad_request';
  return 'upstream_unavailable';
}
