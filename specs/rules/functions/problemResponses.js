// hangar-problem-responses: every 4xx/5xx response is an RFC 9457 problem document and
// nothing else (a second content type makes connexion answer 500; see LIBRARY-NOTES.md).
import { isObject, label, operationsOf, responsesOf, routeOf } from './lib/openapi.js';

const PROBLEM = 'application/problem+json';

export default (pathItem, _options, context) => {
  const results = [];
  const route = routeOf(context.path);
  for (const { method, op, path } of operationsOf(pathItem, context.path)) {
    for (const [code, response] of Object.entries(responsesOf(op))) {
      if (!/^[45]/.test(code) || !isObject(response)) continue;
      const types = isObject(response.content) ? Object.keys(response.content) : [];
      if (types.length !== 1 || types[0] !== PROBLEM) {
        const has = types.length ? types.join(', ') : 'no content';
        results.push({ message: `${label(method, route)}: ${code} must be ${PROBLEM} only (has ${has}).`, path: [...path, 'responses', code] });
      }
    }
  }
  return results;
};
