// hangar-rate-limits: every operation declares 429 with the RateLimit-* headers and
// Retry-After, and every success response carries the RateLimit-* headers, because the
// runtime sends them on every response (architecture.md, "The runtime's invoke").
import { hasHeader, isObject, label, operationsOf, responsesOf, routeOf } from './lib/openapi.js';

export default (pathItem, options, context) => {
  const results = [];
  const route = routeOf(context.path);
  for (const { method, op, path } of operationsOf(pathItem, context.path)) {
    const responses = responsesOf(op);
    const tooMany = responses['429'];
    if (!isObject(tooMany)) {
      results.push({ message: `${label(method, route)} does not declare a 429 response.`, path: [...path, 'responses'] });
    } else {
      const missing = [...options.headers, options.retryAfter].filter((name) => !hasHeader(tooMany.headers, name));
      if (missing.length) {
        results.push({ message: `${label(method, route)}: 429 lacks header(s) ${missing.join(', ')}.`, path: [...path, 'responses', '429'] });
      }
    }
    for (const [code, response] of Object.entries(responses)) {
      if (!/^2/.test(code) || !isObject(response)) continue;
      const missing = options.headers.filter((name) => !hasHeader(response.headers, name));
      if (missing.length) {
        results.push({ message: `${label(method, route)}: ${code} lacks header(s) ${missing.join(', ')}.`, path: [...path, 'responses', code] });
      }
    }
  }
  return results;
};
